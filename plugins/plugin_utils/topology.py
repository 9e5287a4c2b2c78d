# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The office network, computed on the controller.

Pure functions, no Ansible imports: the inventory's per-office variables go in,
one plan per gateway comes out (tunnels, routes, masquerade sources, relay
config). Everything is validated first, so bad input fails before any host is
touched, with a message that names the office, its host and the variable.

Peers are computed from every office in the inventory, never from the hosts of
the current play: ``--limit branch-17`` must still see the hub.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any

# Per-office inventory variables and their defaults. roles/office/defaults/main.yml
# mirrors these (a unit test keeps the two in step).
OFFICE_DEFAULTS: dict[str, Any] = {
    "office_role": "branch",
    "office_wan_gateway": None,
    "office_wan_mtu": 1500,
    "office_masquerade": False,
    "office_broadcast_relay": [],
}
OFFICE_REQUIRED = (
    "office_lan_interface",
    "office_lan_address",
    "office_wan_interface",
    "office_wan_address",
)
OFFICE_VARIABLES = ("office_name", *OFFICE_REQUIRED, *OFFICE_DEFAULTS)

TOPOLOGIES = ("hub-and-spoke", "mesh")
ROLES = ("hub", "branch")
IPIP_OVERHEAD = 20  # RFC 2003: one outer IPv4 header, no options
TUNNEL_TTL = 64
TUNNEL_PREFIX = "sl-"
IFNAMSIZ = 15  # the kernel's limit on interface names

_OFFICE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")


class TopologyError(ValueError):
    """Invalid office inventory. ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__(
            "invalid office inventory ({} problem{}):\n  - {}".format(
                len(errors), "" if len(errors) == 1 else "s", "\n  - ".join(errors)
            )
        )


def tunnel_name(office: str) -> str:
    """Interface name of the tunnel that leads to ``office``.

    Derived from the office name alone, so adding or removing other offices never
    renames a tunnel. Names too long for the kernel keep a readable head and a
    short hash of the full name.
    """
    name = TUNNEL_PREFIX + office
    if len(name) <= IFNAMSIZ:
        return name
    digest = hashlib.sha256(office.encode()).hexdigest()[:4]
    head = IFNAMSIZ - len(TUNNEL_PREFIX) - len(digest) - 1
    return f"{TUNNEL_PREFIX}{office[:head]}-{digest}"


class _Office:
    """One validated office. Attributes are plain strings/ints for the plan."""

    __slots__ = (
        "host",
        "name",
        "role",
        "lan_interface",
        "lan",
        "wan_interface",
        "wan",
        "wan_gateway",
        "wan_mtu",
        "masquerade",
        "relay",
    )

    def label(self) -> str:
        return f"office {self.name!r} (host {self.host})"


def _boolean(value: Any) -> bool | None:
    """Booleans as Ansible's argument specs accept them ('yes', 'off', ...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "on", "true", "1", "y", "t"):
        return True
    if text in ("no", "off", "false", "0", "n", "f"):
        return False
    return None


def _interface(value: Any) -> ipaddress.IPv4Interface:
    if not isinstance(value, str) or "/" not in value:
        raise ValueError("needs an IPv4 address with its prefix length")
    iface = ipaddress.IPv4Interface(value.strip())
    net = iface.network
    if net.prefixlen > 30:
        raise ValueError(f"prefix /{net.prefixlen} leaves no room for other hosts")
    if iface.ip in (net.network_address, net.broadcast_address):
        raise ValueError(f"{iface.ip} is the network or broadcast address of {net}")
    return iface


def _parse_office(host: str, raw: dict[str, Any], errors: list[str]) -> _Office | None:
    """Validate one office's variables; append problems to ``errors``."""
    office = _Office()
    office.host = host
    name = raw.get("office_name", host)
    office.name = name if isinstance(name, str) else str(name)
    start = len(errors)

    def bad(field: str, message: str) -> None:
        errors.append(f"{office.label()}: {field}: {message}")

    if not isinstance(name, str) or not _OFFICE_NAME.match(name):
        bad(
            "office_name",
            f"{name!r} must be lower-case letters, digits, '-' or '_' (at most 63, "
            "starting with a letter or digit)",
        )

    values = dict(OFFICE_DEFAULTS)
    # An unset (null) variable means "use the default", as in role defaults.
    values.update({k: v for k, v in raw.items() if v is not None})
    for field in OFFICE_REQUIRED:
        if values.get(field) in (None, ""):
            bad(field, "is required")
    if len(errors) > start:
        return None

    for field in ("office_lan_interface", "office_wan_interface"):
        value = values[field]
        if not isinstance(value, str) or not _IFNAME.match(value) or value in (".", ".."):
            bad(field, f"{value!r} is not a valid interface name (at most 15 characters)")
    office.lan_interface = values["office_lan_interface"]
    office.wan_interface = values["office_wan_interface"]
    if office.lan_interface == office.wan_interface:
        bad("office_wan_interface", "must differ from office_lan_interface")

    for field, attr in (("office_lan_address", "lan"), ("office_wan_address", "wan")):
        try:
            setattr(office, attr, _interface(values[field]))
        except ValueError as exc:
            setattr(office, attr, None)
            bad(field, f"{values[field]!r}: {exc} (e.g. 192.168.1.126/24)")

    office.wan_gateway = None
    gateway = values["office_wan_gateway"]
    if gateway not in (None, ""):
        try:
            office.wan_gateway = ipaddress.IPv4Address(str(gateway).strip())
        except ValueError:
            bad("office_wan_gateway", f"{gateway!r} is not an IPv4 address")
        else:
            if office.wan is not None and (
                office.wan_gateway not in office.wan.network or office.wan_gateway == office.wan.ip
            ):
                bad(
                    "office_wan_gateway",
                    f"{gateway} is not another address inside the WAN subnet {office.wan.network}",
                )

    mtu = values["office_wan_mtu"]
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535:
        bad("office_wan_mtu", f"{mtu!r} is not an MTU between 576 and 65535")
    office.wan_mtu = mtu

    office.role = values["office_role"]
    if office.role not in ROLES:
        bad("office_role", f"{office.role!r} must be one of: {', '.join(ROLES)}")

    office.masquerade = _boolean(values["office_masquerade"])
    if office.masquerade is None:
        bad("office_masquerade", f"{values['office_masquerade']!r} must be true or false")

    office.relay = _parse_relay(values["office_broadcast_relay"], bad)

    if (
        office.lan is not None
        and office.wan is not None
        and office.lan.network.overlaps(office.wan.network)
    ):
        bad("office_lan_address", f"LAN {office.lan.network} overlaps its own WAN subnet")

    return office if len(errors) == start else None


def _parse_relay(rules: Any, bad) -> list[dict[str, Any]]:
    """``office_broadcast_relay``: which LAN broadcast ports go to which offices."""
    field = "office_broadcast_relay"
    if not isinstance(rules, list):
        bad(field, "must be a list of {port: N, to: [office, ...]}")
        return []
    parsed, seen = [], set()
    for index, rule in enumerate(rules):
        where = f"{field}[{index}]"
        if not isinstance(rule, dict):
            bad(where, "must be a mapping with 'port' and optionally 'to'")
            continue
        unknown = sorted(set(rule) - {"port", "to"})
        if unknown:
            bad(where, f"unknown key(s) {', '.join(unknown)} (known: port, to)")
        port = rule.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            bad(f"{where}.port", f"{port!r} is not a UDP port number (1-65535)")
            continue
        if port in seen:
            bad(f"{where}.port", f"port {port} is listed twice")
        seen.add(port)
        to = rule.get("to")
        if to is not None and (not isinstance(to, list) or not all(isinstance(o, str) for o in to)):
            bad(f"{where}.to", "must be a list of office names (omit it for every peer)")
            continue
        parsed.append({"port": port, "to": None if to is None else sorted(set(to))})
    return parsed


def _check_network(offices: list[_Office], errors: list[str]) -> None:
    """Problems between offices: duplicates and overlaps."""
    by_name: dict[str, _Office] = {}
    for office in offices:
        if office.name in by_name:
            errors.append(
                f"{office.label()}: office_name: {office.name!r} is also used by host "
                f"{by_name[office.name].host}"
            )
        by_name[office.name] = office

    # Sorting by network start makes overlap detection O(n log n): an overlap
    # always shows up between neighbours (or with the widest network still open).
    lans = sorted(offices, key=lambda o: (o.lan.network.network_address, o.lan.network.prefixlen))
    widest = None
    for office in lans:
        if widest is not None and office.lan.network.overlaps(widest.lan.network):
            errors.append(
                f"{office.label()}: office_lan_address: LAN {office.lan.network} overlaps "
                f"the LAN {widest.lan.network} of {widest.label()}"
            )
        if widest is None or (
            office.lan.network.broadcast_address > widest.lan.network.broadcast_address
        ):
            widest = office

    wans: dict[ipaddress.IPv4Address, _Office] = {}
    for office in offices:
        other = wans.setdefault(office.wan.ip, office)
        if other is not office:
            errors.append(
                f"{office.label()}: office_wan_address: {office.wan.ip} is also the WAN "
                f"address of {other.label()}"
            )
    # A LAN prefix that covers another office's public address would route the
    # tunnel's own outer packets into the tunnel. Look each WAN address up once
    # per LAN prefix length in use, not against every LAN.
    lan_index = {o.lan.network: o for o in offices}
    prefixlens = sorted({net.prefixlen for net in lan_index})
    for addr, owner in sorted(wans.items()):
        for length in prefixlens:
            office = lan_index.get(ipaddress.IPv4Network((addr, length), strict=False))
            if office is not None and office is not owner:
                errors.append(
                    f"{office.label()}: office_lan_address: LAN {office.lan.network} contains "
                    f"the WAN address {addr} of {owner.label()}"
                )

    names: dict[str, _Office] = {}
    for office in offices:
        other = names.setdefault(tunnel_name(office.name), office)
        if other is not office:
            errors.append(
                f"{office.label()}: office_name: tunnel name {tunnel_name(office.name)!r} "
                f"collides with the one of {other.label()}; rename one of the offices"
            )


def links(offices: list[_Office], topology: str) -> dict[str, list[str]]:
    """Peers of every office, by office name, sorted.

    In a mesh every office links to every other. In hub-and-spoke, hubs link to
    every other office and branches only to the hubs.
    """
    everyone = sorted(o.name for o in offices)
    hubs = sorted(o.name for o in offices if o.role == "hub")
    return {
        office.name: [n for n in everyone if n != office.name]
        if topology == "mesh" or office.role == "hub"
        else hubs
        for office in offices
    }


def _relay_rule(rules: dict[int, dict[str, set[str]]], port: int) -> dict[str, set[str]]:
    return rules.setdefault(port, {"forward_to": set(), "accept_from": set()})


def _plan_relay(
    offices: dict[str, _Office], peers: dict[str, list[str]], errors: list[str]
) -> dict[str, dict[int, dict[str, set[str]]]]:
    """Relay rules per office: port -> forward_to / accept_from peer addresses."""
    rules: dict[str, dict[int, dict[str, set[str]]]] = {name: {} for name in offices}
    for source in offices.values():
        for index, rule in enumerate(source.relay):
            targets = rule["to"] if rule["to"] is not None else peers[source.name]
            for target in targets:
                where = f"{source.label()}: office_broadcast_relay[{index}].to"
                if target == source.name:
                    errors.append(f"{where}: an office cannot relay to itself")
                    continue
                if target not in offices:
                    errors.append(f"{where}: unknown office {target!r}")
                    continue
                if target not in peers[source.name]:
                    errors.append(
                        f"{where}: office {target!r} has no tunnel to {source.name!r} in this "
                        "topology"
                    )
                    continue
                port = rule["port"]
                _relay_rule(rules[source.name], port)["forward_to"].add(str(offices[target].lan.ip))
                _relay_rule(rules[target], port)["accept_from"].add(str(source.lan.ip))
    return rules


def _gateway_plan(
    office: _Office,
    offices: dict[str, _Office],
    peers: list[str],
    relay_rules: dict[int, dict[str, set[str]]],
) -> dict[str, Any]:
    lan_address = str(office.lan.ip)
    tunnels = []
    for peer_name in peers:
        peer = offices[peer_name]
        tunnels.append(
            {
                "name": tunnel_name(peer.name),
                "local": str(office.wan.ip),
                "remote": str(peer.wan.ip),
                "address": lan_address,
                "routes": [str(peer.lan.network)],
                "mtu": min(office.wan_mtu, peer.wan_mtu) - IPIP_OVERHEAD,
                "ttl": TUNNEL_TTL,
                "description": f"peer {peer.name}",
            }
        )
    peer_lans = [str(offices[p].lan.network) for p in peers]
    return {
        "office": office.name,
        "role": office.role,
        "peers": peers,
        "lan": {
            "interface": office.lan_interface,
            "address": lan_address,
            "cidr": office.lan.with_prefixlen,
            "network": str(office.lan.network),
            "broadcast": str(office.lan.network.broadcast_address),
        },
        "wan": {
            "interface": office.wan_interface,
            "address": str(office.wan.ip),
            "cidr": office.wan.with_prefixlen,
            "gateway": None if office.wan_gateway is None else str(office.wan_gateway),
            "mtu": office.wan_mtu,
        },
        "tunnels": tunnels,
        "masquerade": {
            "interface": office.lan_interface,
            "address": lan_address,
            "sources": peer_lans if office.masquerade else [],
        },
        "relay": {
            "version": 1,
            "lan": {"interface": office.lan_interface, "address": office.lan.with_prefixlen},
            "own_addresses": [str(office.wan.ip)],
            "wire": "raw",
            "rules": [
                {
                    "port": port,
                    "forward_to": sorted(r["forward_to"], key=ipaddress.IPv4Address),
                    "accept_from": sorted(r["accept_from"], key=ipaddress.IPv4Address),
                }
                for port, r in sorted(relay_rules.items())
            ],
        },
    }


def network_plan(
    office_vars: dict[str, dict[str, Any]], topology: str = "hub-and-spoke"
) -> dict[str, Any]:
    """Validate every office and plan every gateway.

    ``office_vars`` maps each gateway's inventory hostname to its ``office_*``
    variables. Returns ``{"topology", "offices": {name: host}, "gateways":
    {host: plan}}``. Raises TopologyError listing every problem found.
    """
    errors: list[str] = []
    if topology not in TOPOLOGIES:
        raise TopologyError(
            [f"sitelink_topology: {topology!r} must be one of: {', '.join(TOPOLOGIES)}"]
        )
    if not office_vars:
        raise TopologyError(["no offices: the offices group has no hosts"])

    parsed = [_parse_office(host, raw, errors) for host, raw in sorted(office_vars.items())]
    offices_list = [o for o in parsed if o is not None]
    if errors:
        raise TopologyError(errors)
    _check_network(offices_list, errors)
    hubless = not any(o.role == "hub" for o in offices_list)
    if topology == "hub-and-spoke" and len(offices_list) > 1 and hubless:
        errors.append(
            "sitelink_topology: hub-and-spoke needs at least one office with "
            "office_role: hub (or set sitelink_topology: mesh)"
        )
    if errors:
        raise TopologyError(errors)

    offices = {o.name: o for o in offices_list}
    peers = links(offices_list, topology)
    relay_rules = _plan_relay(offices, peers, errors)
    if errors:
        raise TopologyError(errors)

    return {
        "topology": topology,
        "offices": {o.name: o.host for o in offices_list},
        "gateways": {
            o.host: _gateway_plan(o, offices, peers[o.name], relay_rules[o.name])
            for o in offices_list
        },
    }
