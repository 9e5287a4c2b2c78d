# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""From the inventory's office variables to one plan per gateway.

``plan_network`` is the only validator: it checks every office (types and
values from ``schema``, then what only the whole network shows: overlaps,
duplicates, links, relay targets), collects every problem, and raises one
``PlanError`` listing them all, each as "office 'x' (host y): variable:
problem". Only then are links chosen (``topologies``), routes computed
(``routing``), the broadcast relay planned (``relay``) and each gateway's plan
filled; each feature module (``tunnels``, ``ipsec``, ``masquerade``, ``relay``)
checks, warns and plans its own part.

Peers come from every office in the inventory, never from the hosts of the
current play: ``--limit branch-17`` still sees the hub.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections import Counter
from typing import Any, Optional

from ansible_collections.sitelink.gateway.plugins.module_utils import contract

from . import ipsec, masquerade, relay, rollout, routing, schema, tunnels
from .model import (
    Bad,
    GatewayPlan,
    Link,
    LinkEnd,
    NetworkPlan,
    Office,
    PlanError,
    link_protection,
)
from .topologies import STRATEGIES

OFFICE_NAME = re.compile(rf"^[a-z0-9][a-z0-9_-]{{0,{contract.OFFICE_NAME_MAX - 1}}}$")
IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
MTU_RANGE = (576, 65535)
SECRET_MIN_LENGTH = 16


# --------------------------------------------------------------------------- one office


def _address_with_prefix(value: str) -> ipaddress.IPv4Interface:
    if "/" not in value:
        raise ValueError("needs an IPv4 address with its prefix length")
    iface = ipaddress.IPv4Interface(value.strip())
    net = iface.network
    if net.prefixlen > 30:
        raise ValueError(f"prefix /{net.prefixlen} leaves no room for other hosts")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"{iface.ip} is the network or broadcast address of {net}")
    return iface


def _parse_address(field: str, value: Any, bad: Bad) -> Optional[ipaddress.IPv4Interface]:
    try:
        return _address_with_prefix(value)
    except ValueError as exc:
        bad(field, f"{value!r}: {exc} (e.g. 192.168.1.126/24)")
        return None


def _check_name(field: str, name: Any, bad: Bad) -> None:
    if not isinstance(name, str) or not OFFICE_NAME.match(name):
        bad(
            field,
            f"{name!r} must be lower-case letters, digits, '-' or '_' (at most 63, "
            "starting with a letter or digit)",
        )


def _check_mtu(field: str, mtu: Optional[int], bad: Bad) -> None:
    if mtu is not None and not MTU_RANGE[0] <= mtu <= MTU_RANGE[1]:
        bad(field, f"{mtu!r} is not an MTU between {MTU_RANGE[0]} and {MTU_RANGE[1]}")


def _management_sources(values: dict[str, Any], bad: Bad) -> tuple[str, ...]:
    """Who may reach SSH under a hardened input policy: addresses or prefixes, v4 or v6."""
    sources = []
    for index, text in enumerate(values["office_management_sources"] or []):
        try:
            sources.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            bad(
                f"office_management_sources[{index}]",
                f"{text!r} is not an address or prefix (e.g. 198.51.100.7 or 2001:db8::/48)",
            )
    if values["office_firewall_input_policy"] == "drop" and not values["office_management_sources"]:
        bad(
            "office_management_sources",
            "is empty while office_firewall_input_policy is drop: nothing could reach SSH, "
            "Ansible included; name where you manage the gateway from",
        )
    return tuple(dict.fromkeys(sources))


def _parse_office(
    host: str, raw: dict[str, Any], errors: list[str], relay_wire: str = contract.WIRE_SITELINK1
) -> tuple[Optional[Office], bool]:
    """One office, and whether it is valid (an invalid one may still be compared)."""
    name = raw.get("office_name") or host
    label = f"office {name!r} (host {host})"
    start = len(errors)

    def bad(field: str, message: str) -> None:
        errors.append(f"{label}: {field}: {message}")

    values = schema.check_types(host, raw, bad)
    if values["office_name"] is not None:
        _check_name("office_name", values["office_name"], bad)
    for field in ("office_lan_interface", "office_wan_interface"):
        value = values[field]
        if value is not None and (not IFNAME.match(value) or value in (".", "..")):
            bad(field, f"{value!r} is not a valid interface name (at most 15 characters)")
    if (
        values["office_lan_interface"] is not None
        and values["office_lan_interface"] == values["office_wan_interface"]
    ):
        bad("office_wan_interface", "must differ from office_lan_interface")

    lan = wan = None
    if values["office_lan_address"] is not None:
        lan = _parse_address("office_lan_address", values["office_lan_address"], bad)
    if values["office_wan_address"] is not None:
        wan = _parse_address("office_wan_address", values["office_wan_address"], bad)

    gateway = None
    if values["office_wan_gateway"] not in (None, ""):
        text = values["office_wan_gateway"]
        try:
            gateway = ipaddress.IPv4Address(text.strip())
        except ValueError:
            bad("office_wan_gateway", f"{text!r} is not an IPv4 address")
        else:
            if wan is not None and (gateway not in wan.network or gateway == wan.ip):
                bad(
                    "office_wan_gateway",
                    f"{text} is not another address inside the WAN subnet {wan.network}",
                )
    _check_mtu("office_wan_mtu", values["office_wan_mtu"], bad)
    management = _management_sources(values, bad)
    relay_requests = relay.requests("office_broadcast_relay", values["office_broadcast_relay"], bad)
    if lan is not None and wan is not None and lan.network.overlaps(wan.network):
        bad("office_lan_address", f"LAN {lan.network} overlaps its own WAN subnet")
    if len(errors) > start:
        # Still compared with the other offices (overlaps, duplicates) when its
        # addresses are usable, so those problems come out in the same message.
        if lan is None or not OFFICE_NAME.match(str(values["office_name"])):
            return None, False
        return Office(
            name=values["office_name"], host=host, role="", lan=lan, wan=wan, wan_mtu=0
        ), False
    return Office(
        name=values["office_name"],
        host=host,
        role=values["office_role"],
        lan=lan,
        wan=wan,
        wan_mtu=values["office_wan_mtu"],
        lan_interface=values["office_lan_interface"],
        wan_interface=values["office_wan_interface"],
        wan_gateway=gateway,
        masquerade=values["office_masquerade"],
        relay=relay_requests,
        firewall_input_policy=values["office_firewall_input_policy"],
        firewall_forward_policy=values["office_firewall_forward_policy"],
        management_sources=management,
        relay_wire=relay_wire,
    ), True


def _parse_external(
    index: int,
    entry: dict[str, Any],
    errors: list[str],
    relay_wire: str = contract.WIRE_SITELINK1,
    protection: str = "ipsec",
) -> Optional[Office]:
    where = f"office_external_peers[{index}]"
    label = f"office {entry.get('name')!r} (external peer)"
    start = len(errors)

    def bad(field: str, message: str) -> None:
        errors.append(f"{label}: {where}.{field}: {message}")

    _check_name("name", entry["name"], bad)
    wan = None
    try:
        text = entry["wan_address"].strip()
        wan = ipaddress.IPv4Interface(text if "/" in text else f"{text}/32")
    except ValueError as exc:
        bad("wan_address", f"{entry['wan_address']!r}: {exc}")
    lan = _parse_address("lan_address", entry["lan_address"], bad)
    _check_mtu("wan_mtu", entry["wan_mtu"], bad)
    relay_requests = relay.requests("broadcast_relay", entry["broadcast_relay"], bad)
    own_protection = entry.get("protection") or protection
    psk = entry.get("psk")
    if psk is not None:
        _check_psk(psk, bad)
    elif own_protection == "ipsec":
        bad(
            "psk",
            "required when the link is protected (or set protection: none): the peer's own "
            "key, agreed with its administrators and vaulted, e.g. "
            'psk: "{{ vault_partner_psk }}" (`openssl rand -base64 32`)',
        )
    if len(errors) > start:
        return None
    return Office(
        name=entry["name"],
        host=None,
        role=entry["role"],
        lan=lan,
        wan=wan,
        wan_mtu=entry["wan_mtu"],
        relay=relay_requests,
        index=index,
        relay_wire=relay.WIRES[entry["relay_wire"]] if entry.get("relay_wire") else relay_wire,
        protection=own_protection,
        psk=psk,
    )


# What an external peer's key may hold: its administrators type it between the double
# quotes of their swanctl.conf (which takes a leading 0x or 0s as hex or base64), and it
# goes into a shell command of theirs between single quotes.
PSK_CHARACTERS = re.compile(r"[!#-&(-\[\]-~]+")


def _check_psk(psk: str, bad: Bad) -> None:
    """An external peer's own key: long enough, and typeable. Never echoed."""
    if len(psk) < SECRET_MIN_LENGTH:
        bad(
            "psk",
            f"is shorter than {SECRET_MIN_LENGTH} characters (e.g. `openssl rand -base64 32`)",
        )
    elif not PSK_CHARACTERS.fullmatch(psk):
        bad(
            "psk",
            "must be printable ASCII without spaces, quotes (\" or ') or backslashes (e.g. "
            "`openssl rand -base64 32`)",
        )
    elif psk[:2].lower() in ("0x", "0s"):
        bad(
            "psk",
            "must not start with 0x or 0s: strongSwan would read the rest as hex or base64 "
            "on the peer's side",
        )


def _check_external_keys(
    deployment: dict[str, Any], externals: list[Office], errors: list[str]
) -> None:
    """Each external peer's key is its own: not the deployment secret (which never
    leaves the collection), and not another peer's. Never echoed."""
    own = {
        "office_tunnel_secret": deployment.get("office_tunnel_secret"),
        "office_tunnel_secret_next": deployment.get("office_tunnel_secret_next"),
        "office_tunnel_secret_previous": deployment.get("office_tunnel_secret_previous"),
    }
    first: dict[str, Office] = {}
    for office in externals:
        if office.psk is None:
            continue
        where = f"{office.label()}: {office.where}.psk"
        for name, secret in own.items():
            if secret and office.psk == secret:
                errors.append(
                    f"{where}: is the deployment secret ({name}), which never leaves the "
                    "collection: give the peer a key of its own"
                )
        other = first.setdefault(office.psk, office)
        if other is not office:
            errors.append(
                f"{where}: is the same key as {other.where}.psk: each external peer gets "
                "a key of its own"
            )


# --------------------------------------------------------------------------- deployment-wide


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _deployment(
    office_vars: dict[str, dict[str, Any]], names: dict[str, str], errors: list[str]
) -> dict[str, Any]:
    """Deployment-wide variables: the same on every office, checked once."""
    values: dict[str, Any] = {}
    for spec in schema.DEPLOYMENT_FIELDS:
        seen = {host: raw.get(spec.name) for host, raw in office_vars.items()}
        counts = Counter(_canonical(v) for v in seen.values())
        majority = counts.most_common(1)[0][0] if counts else "null"
        reference = next(v for v in seen.values() if _canonical(v) == majority) if seen else None
        for host, value in sorted(seen.items()):
            if _canonical(value) != majority:
                shown = schema.without_secrets(spec, value)
                shown = "its value" if shown == schema.HIDDEN else repr(shown)
                errors.append(
                    f"office {names[host]!r} (host {host}): {spec.name}: {shown} differs from "
                    "the other offices; a deployment-wide variable must be the same everywhere "
                    "(set it once, as a group variable of the offices group)"
                )

        def bad(field: str, message: str) -> None:
            errors.append(f"deployment (every office): {field}: {message}")

        if reference is None:
            values[spec.name] = schema.default_of(spec, "")
        else:
            values[spec.name] = schema.check_value(spec, reference, spec.name, bad)
    return values


def _secret_users(deployment: dict[str, Any]) -> list[tuple[str, str]]:
    """What needs the deployment secret: (the setting, how to do without it)."""
    users = []
    if deployment.get("office_tunnel_protection") == "ipsec":
        users.append(
            (
                "office_tunnel_protection is ipsec (the default)",
                "office_tunnel_protection: none (plain, unauthenticated IPIP)",
            )
        )
    wire = deployment.get("office_relay_wire")
    if wire == "authenticated":
        users.append(
            (
                "office_relay_wire is authenticated (the default)",
                "office_relay_wire: raw (relay datagrams as they are, unauthenticated)",
            )
        )
    # External peers' links are keyed from their own psk, never from this secret.
    return users


# The secrets of a rotation besides office_tunnel_secret, and what each stands for.
ROTATION_STEPS = {
    "office_tunnel_secret_next": "in step 1 of a rotation it is the new secret, accepted "
    "before any gateway sends with it, and office_tunnel_secret still the old one",
    "office_tunnel_secret_previous": "in step 2 of a rotation office_tunnel_secret is the "
    "new secret and office_tunnel_secret_previous the old one",
}


def _check_protection(deployment: dict[str, Any], errors: list[str]) -> None:
    """IPsec and the authenticated relay wire need the deployment secret, and a secret
    worth the name; so do the secrets of a rotation. None is ever shown."""
    secret = deployment.get("office_tunnel_secret")
    users = _secret_users(deployment)
    if users and not secret:
        errors.append(
            "deployment (every office): office_tunnel_secret: is not set, and "
            + " and ".join(why for why, _unused in users)
            + ": set it once for the offices group, encrypted with ansible-vault (see the "
            "README, Security), or set " + " and ".join(instead for _unused, instead in users)
        )
    elif users and len(secret) < SECRET_MIN_LENGTH:
        errors.append(
            f"deployment (every office): office_tunnel_secret: is shorter than "
            f"{SECRET_MIN_LENGTH} characters (e.g. `openssl rand -base64 32`)"
        )
    for name, step in ROTATION_STEPS.items():
        value = deployment.get(name)
        if not value:
            continue
        if not secret:
            errors.append(
                f"deployment (every office): {name}: is set, but office_tunnel_secret is not "
                f"({step}; the README's Key rotation)"
            )
        elif len(value) < SECRET_MIN_LENGTH:
            errors.append(
                f"deployment (every office): {name}: is shorter than {SECRET_MIN_LENGTH} characters"
            )
    rollback = deployment.get("office_rollback_timeout")
    if rollback is not None and not (rollback == 0 or 30 <= rollback <= 3600):
        errors.append(
            f"deployment (every office): office_rollback_timeout: {rollback} must be 0 (off) "
            "or between 30 and 3600 seconds"
        )


def _check_rollout(deployment: dict[str, Any], errors: list[str]) -> None:
    """The batch settings site.yml reads as it runs: checked here, before anything runs."""
    for name, check in (
        ("office_rollout_batch", rollout.check_batch),
        ("office_rollout_max_fail_percentage", rollout.check_max_fail_percentage),
    ):
        if deployment.get(name) is not None:
            _unused, problem = check(deployment[name])
            if problem:
                errors.append(f"deployment (every office): {name}: {problem}")


# --------------------------------------------------------------------------- the network


def _check_network(offices: list[Office], errors: list[str]) -> None:
    """Problems between offices: duplicates and overlaps."""
    by_name: dict[str, Office] = {}
    for office in offices:
        other = by_name.setdefault(office.name, office)
        if other is not office:
            errors.append(
                f"{office.label()}: office_name: {office.name!r} is also used by {other.label()}"
            )

    # Sorted by network start, an overlap always shows up between neighbours or
    # with the widest network still open: O(n log n), not every pair.
    lans = sorted(offices, key=lambda o: (o.lan.network.network_address, o.lan.network.prefixlen))
    widest = None
    for office in lans:
        if widest is not None and office.lan.network.overlaps(widest.lan.network):
            errors.append(
                f"{office.label()}: {office.variable('lan_address')}: LAN {office.lan.network} "
                f"overlaps the LAN {widest.lan.network} of {widest.label()}"
            )
        if widest is None or (
            office.lan.network.broadcast_address > widest.lan.network.broadcast_address
        ):
            widest = office

    wans: dict[ipaddress.IPv4Address, Office] = {}
    for office in offices:
        if office.wan is None:  # invalid, already reported: compared by LAN only
            continue
        other = wans.setdefault(office.wan.ip, office)
        if other is not office:
            errors.append(
                f"{office.label()}: {office.variable('wan_address')}: {office.wan.ip} is also "
                f"the WAN address of {other.label()}"
            )
    # A LAN that covers another office's public address would route the tunnel's
    # own outer packets into the tunnel. One lookup per prefix length in use.
    lan_index = {o.lan.network: o for o in offices}
    prefixlens = sorted({net.prefixlen for net in lan_index})
    for addr, owner in sorted(wans.items()):
        for length in prefixlens:
            office = lan_index.get(ipaddress.IPv4Network((addr, length), strict=False))
            if office is not None and office is not owner:
                errors.append(
                    f"{office.label()}: {office.variable('lan_address')}: LAN {office.lan.network} "
                    f"contains the WAN address {addr} of {owner.label()}"
                )

    tunnels.check_names(offices, errors)
    relay.check_office_ids(offices, errors)


def _pairs(
    topology: str,
    offices: list[Office],
    links: list[dict[str, Any]],
    errors: list[str],
) -> dict[tuple[str, str], Optional[int]]:
    """Linked pairs and any MTU set on them."""
    known = {o.name for o in offices}
    pairs: dict[tuple[str, str], Optional[int]] = dict.fromkeys(
        sorted(STRATEGIES[topology](offices))
    )
    explicit: set[tuple[str, str]] = set()
    for index, link in enumerate(links):
        where = f"deployment (every office): office_links[{index}]"
        if link is None:
            continue
        between = link["between"]
        if between is None:
            continue
        if len(between) != 2 or between[0] == between[1]:
            errors.append(f"{where}.between: must name two different offices")
            continue
        unknown = [n for n in between if n not in known]
        if unknown:
            errors.append(f"{where}.between: unknown office {unknown[0]!r}")
            continue
        pair = tuple(sorted(between))
        if pair in explicit:
            errors.append(f"{where}.between: the link {pair[0]} - {pair[1]} is listed twice")
            continue
        explicit.add(pair)
        _check_mtu(f"{where}.mtu", link["mtu"], lambda f, m: errors.append(f"{f}: {m}"))
        pairs[pair] = link["mtu"]
    by_name = {o.name: o for o in offices}
    for a, b in list(pairs):
        if by_name[a].external and by_name[b].external:
            # Between two peers run by others: neither end is ours to configure.
            if (a, b) in explicit:
                errors.append(
                    f"deployment (every office): office_links: {a} - {b}: both offices are "
                    "external peers; this collection configures neither end"
                )
            del pairs[(a, b)]
    return pairs


# --------------------------------------------------------------------------- entry point


def _backup_hubs(
    topology: str, transit: bool, protection: str, offices: dict[str, Office], adj
) -> dict[tuple[str, str], str]:
    """Hub failover (``routing.backup_hubs``): hub-and-spoke with transit and two hubs
    or more, on links between our gateways that IPsec protects (its SAs say whether
    a link is up; plain IPIP says nothing)."""
    hubs = sorted(n for n, o in offices.items() if o.role == "hub" and not o.external)
    if topology != "hub-and-spoke" or not transit or len(hubs) < 2:
        return {}

    def watched(a: str, b: str) -> bool:
        ends = offices[a], offices[b]
        return not any(o.external for o in ends) and link_protection(protection, *ends) == "ipsec"

    return routing.backup_hubs(adj, hubs, watched)


def plan_network(office_vars: dict[str, dict[str, Any]]) -> NetworkPlan:
    """Validate every office and plan every gateway.

    ``office_vars`` maps each gateway's inventory hostname to every ``office_*``
    variable it has (deployment-wide ones included). Raises ``PlanError`` with
    every problem found; returns the plan otherwise.
    """
    if not office_vars:
        raise PlanError(["no offices: the offices group has no hosts"])
    errors: list[str] = []
    names = {h: str(raw.get("office_name") or h) for h, raw in office_vars.items()}
    deployment = _deployment(office_vars, names, errors)
    _check_rollout(deployment, errors)
    _check_protection(deployment, errors)
    relay_wire = relay.WIRES.get(deployment["office_relay_wire"], contract.WIRE_SITELINK1)
    parsed = [
        _parse_office(host, raw, errors, relay_wire) for host, raw in sorted(office_vars.items())
    ]
    externals = []
    for index, entry in enumerate(deployment.get("office_external_peers") or []):
        if entry is not None:
            external = _parse_external(
                index, entry, errors, relay_wire, deployment["office_tunnel_protection"]
            )
            parsed.append((external, external is not None))
            if external is not None:
                externals.append(external)
    _check_external_keys(deployment, externals, errors)
    # Overlaps and duplicates are reported in the same message as bad values.
    _check_network([o for o, _unused in parsed if o is not None], errors)
    if errors:
        raise PlanError(errors)
    offices_list: list[Office] = [o for o, _unused in parsed]

    topology = deployment["office_topology"]
    transit = deployment["office_transit"]
    if (
        topology == "hub-and-spoke"
        and len(offices_list) > 1
        and not any(o.role == "hub" for o in offices_list)
    ):
        errors.append(
            "deployment (every office): office_topology: hub-and-spoke needs at least one "
            "office with office_role: hub (or set office_topology: mesh or links)"
        )
    if errors:
        raise PlanError(errors)
    pairs = _pairs(topology, offices_list, deployment["office_links"] or [], errors)
    if errors:
        raise PlanError(errors)

    offices = {o.name: o for o in offices_list}
    adj = routing.adjacency(sorted(offices), pairs)
    forwards = {name: not o.external for name, o in offices.items()}
    # Per office once: its LAN as a block (address, length), which is also its sort key.
    lan_block = {
        name: (int(o.lan.network.network_address), o.lan.network.prefixlen)
        for name, o in offices.items()
    }
    # Destinations visited in LAN order, so every route list comes out sorted.
    routed = routing.next_hops(adj, forwards, transit, order=sorted(offices, key=lan_block.get))
    warnings: list[str] = []
    protection = deployment["office_tunnel_protection"]
    backups = _backup_hubs(topology, transit, protection, offices, adj)
    # Broadcasts through both hubs, the second copy dropped as a replay: only the
    # authenticated wire can tell a copy from a new datagram.
    failover_hubs = sorted(set(backups.values()))
    relay_ports, flows = relay.plan(
        offices,
        adj,
        forwards,
        transit,
        errors,
        warnings,
        failover_hubs if relay_wire == contract.WIRE_SITELINK1 else None,
    )
    relay.check_external_keys(offices, flows, errors)
    if errors:
        raise PlanError(errors)

    lans = routing.Prefixes(o.lan.network for o in offices_list)

    def prefixes(office: str, hop: str) -> tuple[str, ...]:
        return lans.collapsed(lan_block[d] for d in routed.get((office, hop), ()))

    warnings.extend(ipsec.warnings(protection, offices_list, pairs))
    warnings.extend(relay.raw_wire_warnings(relay_wire, protection, offices_list))

    def end(office: str, peer: str) -> LinkEnd:
        backup = backups.get((office, peer))
        return LinkEnd(
            office,
            tunnels.tunnel_name(peer),
            prefixes(office, peer),
            tunnels.tunnel_name(backup) if backup else None,
        )

    links = []
    for (a, b), mtu in sorted(pairs.items()):
        if mtu is None:
            mtu = tunnels.link_mtu(protection, offices[a], offices[b])
        links.append(Link(end(a, b), end(b, a), mtu))

    by_office: dict[str, list[Link]] = {name: [] for name in offices}
    for link in links:
        by_office[link.a.office].append(link)
        by_office[link.b.office].append(link)

    # Collapsed once here, not per gateway: every gateway's firewall gets the same list,
    # and collapsing 1000 LANs a thousand times was most of handing out 1000 plans.
    all_lans = list(lans.collapsed(sorted(lan_block.values())))
    gateways: dict[str, GatewayPlan] = {}
    for office in offices_list:
        if office.external:
            continue
        mine = sorted(by_office[office.name], key=lambda lk: lk.other(office.name).office)
        masqueraded = masquerade.sources(office, mine, lans)
        if len(offices) > 1 and not mine:
            warnings.append(
                f"{office.label()}: office_topology: this office has no link to any other "
                f"office in the {topology} topology"
            )
        warnings.extend(masquerade.warnings(office, masqueraded))
        gateways[office.host] = GatewayPlan(
            office=office,
            links=mine,
            peers={
                lk.other(office.name).office: offices[lk.other(office.name).office] for lk in mine
            },
            masquerade_sources=masqueraded,
            relay=relay_ports[office.name],
            protection=protection,
            rollback_timeout=deployment["office_rollback_timeout"],
            office_lans=all_lans,
            relay_wire=relay_wire,
        )
    return NetworkPlan(
        topology=topology,
        transit=transit,
        offices=offices,
        links=links,
        gateways=gateways,
        flows=flows,
        warnings=warnings,
        protection=protection,
        relay_wire=relay_wire,
    )
