# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The broadcast relay: from every office's relay requests (office_broadcast_relay)
to each gateway's relay rules, and the relay section: the relay's own configuration
file (``contract.RELAY_CONFIG_VERSION``), as is.

An origin's broadcasts follow a breadth-first tree rooted at the origin
(``relay_tree``), so every office is reached at most once and never the origin
again. Keys are not here: the relay role writes them to ``keys_file`` from
``office_secrets``.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

from ansible_collections.sitelink.gateway.plugins.module_utils import contract

from .model import (
    Bad,
    GatewayPlan,
    NetworkPlan,
    Office,
    RelayFlow,
    RelayPort,
    RelayRequest,
    link_protection,
)
from .routing import Adjacency

# office_relay_wire and office_external_peers[].relay_wire, as the relay's config spells them.
WIRES = {"authenticated": contract.WIRE_SITELINK1, "raw": contract.WIRE_RAW}
MULTICAST = ipaddress.IPv4Network("224.0.0.0/4")


# --------------------------------------------------------------------------- the inventory


def requests(field: str, rules: Optional[list], bad: Bad) -> tuple[RelayRequest, ...]:
    """An office's relay requests (office_broadcast_relay, or an external peer's
    broadcast_relay), each problem reported to ``bad``."""
    found, seen = [], set()
    for index, rule in enumerate(rules or []):
        if rule is None:
            continue
        where = f"{field}[{index}]"
        port = rule["port"]
        if port is None:
            continue
        if not 1 <= port <= 65535:
            bad(f"{where}.port", f"{port!r} is not a UDP port number (1-65535)")
            continue
        if port in seen:
            bad(f"{where}.port", f"port {port} is listed twice")
        seen.add(port)
        to = rule["to"]
        if to == []:
            bad(f"{where}.to", "is empty (omit it to relay to every office reachable)")
            continue
        groups = _multicast_groups(f"{where}.groups", rule.get("groups"), bad)
        if groups is None:
            continue
        found.append(
            RelayRequest(port, None if to is None else tuple(dict.fromkeys(to)), index, groups)
        )
    return tuple(found)


def _multicast_groups(field: str, values: Optional[list], bad: Bad) -> Optional[tuple[str, ...]]:
    """IPv4 multicast groups, normalised and without repeats; None if one is not."""
    groups, failed = [], False
    for index, text in enumerate(values or []):
        try:
            group = ipaddress.IPv4Address(text.strip())
        except ValueError:
            group = None
        if group is None or group not in MULTICAST:
            bad(
                f"{field}[{index}]",
                f"{text!r} is not an IPv4 multicast group (224.0.0.0/4, e.g. 239.255.255.250 "
                "for SSDP)",
            )
            failed = True
            continue
        groups.append(group)
    return None if failed else tuple(str(g) for g in sorted(set(groups)))


def check_office_ids(offices: list[Office], errors: list[str]) -> None:
    """The relay's authenticated wire names an office by a few bytes of a hash of its
    name (``contract.office_id``): two offices with one id are refused."""
    ids: dict[bytes, Office] = {}
    for office in offices:
        office_id = contract.office_id(office.name)
        other = ids.setdefault(office_id, office)
        if other is not office and other.name != office.name:  # same name: build reports it
            errors.append(
                f"{office.label()}: {office.variable('name')}: relay office id "
                f"{office_id.hex()} (SHA-256 of the name, first {contract.OFFICE_ID_BYTES} "
                f"bytes) is also the one of {other.label()}; the relays could not tell their "
                "datagrams apart: rename one of the offices"
            )


def check_external_keys(
    offices: dict[str, Office], flows: list[RelayFlow], errors: list[str]
) -> None:
    """An external peer whose relay speaks the authenticated wire with ours needs a key
    for it: its links' relay keys come from its psk, never from office_tunnel_secret."""
    relaying = {o for flow in flows for hop in flow.hops for o in hop}
    for name in sorted(relaying):
        office = offices[name]
        if office.external and office.psk is None and office.relay_wire == contract.WIRE_SITELINK1:
            errors.append(
                f"{office.label()}: {office.where}.psk: required when its relay speaks the "
                "authenticated wire with ours (the link's relay key is derived from it), or "
                "set relay_wire: raw"
            )


def raw_wire_warnings(wire: str, protection: str, offices: list[Office]) -> list[str]:
    """The raw relay wire, deployment-wide or for an external peer: a warning each."""

    def risk(plain: str) -> str:
        return (
            "relay datagrams go as they are (like udp-proxy, the hand-built setup's C "
            "relay), with no origin, sequence number or signature: the relays cannot "
            "tell a forged, replayed or "
            "duplicated datagram from a new one"
            + (
                f", and with {plain} anyone on the Internet can forge them"
                if plain
                else " (IPsec still protects them between gateways)"
            )
        )

    if wire == contract.WIRE_RAW:
        plain = "office_tunnel_protection: none" if protection == "none" else ""
        return [f"deployment (every office): office_relay_wire: raw: {risk(plain)}"]
    return [
        f"{o.label()}: {o.where}.relay_wire: raw: "
        + risk("protection: none" if link_protection(protection, o) == "none" else "")
        for o in offices
        if o.external and o.relay_wire == contract.WIRE_RAW
    ]


# --------------------------------------------------------------------------- planning


def relay_tree(
    origin: str, adj: Adjacency, forwards: dict[str, bool], transit: bool
) -> dict[str, Optional[str]]:
    """Parent of every office an origin's broadcasts can reach (origin: None)."""
    parent: dict[str, Optional[str]] = {origin: None}
    frontier = [origin]
    while frontier:
        nxt = []
        for node in frontier:
            if node != origin and (not transit or not forwards[node]):
                continue
            for neighbour in adj[node]:
                if neighbour not in parent:
                    parent[neighbour] = node
                    nxt.append(neighbour)
        frontier = nxt
    return parent


def _second_paths(
    origin: str,
    children: dict[str, set[str]],
    wanted: set[str],
    hubs: list[str],
    adj: Adjacency,
    ours: dict[str, bool],
) -> None:
    """Hub failover: every target a hub serves gets the datagram from each other hub
    too, which the origin (or the first hub) also sends to. A target keeps the first
    copy and drops the second as a replay (the authenticated wire's sequence numbers),
    so while one hub is dead the other's copy is the one kept."""
    parent = {child: p for p, kids in children.items() for child in kids}
    linked = {hub: set(adj[hub]) for hub in hubs}
    for hub in hubs:
        if hub == origin:
            continue
        served = {
            c
            for c in wanted
            # Our branches only: a hub is no second path's end (two hubs would send
            # each other the same datagram), nor an external peer (its relay is not ours).
            if c not in (origin, hub)
            and c not in linked
            and ours[c]
            and parent.get(c) in linked
            and parent[c] != hub
            and c in linked[hub]
        }
        if not served:
            continue
        if hub not in parent:
            if hub not in adj[origin]:
                continue  # it never sees the origin's datagrams
            children.setdefault(origin, set()).add(hub)
        children.setdefault(hub, set()).update(served)


def plan(
    offices: dict[str, Office],
    adj: Adjacency,
    forwards: dict[str, bool],
    transit: bool,
    errors: list[str],
    warnings: list[str],
    failover_hubs: Optional[list[str]] = None,
) -> tuple[dict[str, dict[int, RelayPort]], list[RelayFlow]]:
    """Each gateway's relay ports, from every office's relay requests. With
    ``failover_hubs`` (two hubs, authenticated wire), each hub a target is served
    through sends it a copy too (``_second_paths``)."""
    ports: dict[str, dict[int, RelayPort]] = {name: {} for name in offices}
    flows: list[RelayFlow] = []
    # (office, port, previous hop) -> (re-broadcast?, onward hops, origin): with the
    # raw wire a relay knows a datagram only by its sender, so two origins whose
    # datagrams arrive from the same sender must want the same treatment.
    decided: dict[tuple[str, int, str], tuple[bool, frozenset[str], str]] = {}

    for origin in sorted(offices.values(), key=lambda o: o.name):
        if not origin.relay:
            continue
        tree = relay_tree(origin.name, adj, forwards, transit)
        for request in origin.relay:
            where = f"{origin.label()}: {origin.variable('broadcast_relay')}[{request.index}].to"
            targets = (
                request.to
                if request.to is not None
                else tuple(n for n in sorted(tree) if n != origin.name)
            )
            usable = []
            for target in targets:
                if target == origin.name:
                    errors.append(f"{where}: an office cannot relay to itself")
                elif target not in offices:
                    errors.append(f"{where}: unknown office {target!r}")
                elif target not in tree:
                    how = "by a chain of links" if transit else "by a link (office_transit is off)"
                    errors.append(
                        f"{where}: office {target!r} is not reachable from {origin.name!r} {how}"
                    )
                else:
                    usable.append(target)
            if not targets:
                warnings.append(f"{where}: no other office is reachable; nothing is relayed")
            if not usable:
                continue
            children: dict[str, set[str]] = {}
            for target in usable:
                node = target
                while node != origin.name:
                    parent = tree[node]
                    children.setdefault(parent, set()).add(node)
                    node = parent
            wanted = set(usable)
            if failover_hubs:
                _second_paths(origin.name, children, wanted, failover_hubs, adj, forwards)
            hops: list[tuple[str, str]] = []
            conflict = False
            for parent in _tree_order(origin.name, children):
                for child in sorted(children[parent]):
                    hops.append((parent, child))
                    onward = frozenset(children.get(child, ()))
                    key = (child, request.port, parent)
                    treatment = (child in wanted, onward, origin.name)
                    previous = decided.setdefault(key, treatment)
                    if previous[:2] != treatment[:2] and not conflict:
                        conflict = True
                        errors.append(
                            f"{where}: port {request.port} from {parent!r} reaches "
                            f"{child!r} for both {previous[2]!r} and {origin.name!r}, which "
                            "need different onward relaying there; relay these offices "
                            "directly (office_links) or split the port"
                        )
            if conflict:
                continue
            port = request.port
            # Every rule this flow's datagrams cross relays its multicast groups too.
            groups = request.groups
            for parent, child in hops:
                onward = children.get(child, set())
                if parent == origin.name and not origin.external:
                    rule = _port(ports, parent, port)
                    rule.forward_to.add(relay_address(offices[child]))
                    rule.multicast_groups.update(groups)
                if offices[child].external:
                    continue  # its side is configured by whoever runs it
                sender = relay_address(offices[parent])
                rule = _port(ports, child, port)
                rule.multicast_groups.update(groups)
                if child in wanted:
                    rule.accept_from.add(sender)
                if onward:
                    rule.transit.setdefault(sender, set()).update(
                        relay_address(offices[n]) for n in onward
                    )
            flows.append(RelayFlow(origin.name, port, tuple(sorted(wanted)), tuple(hops), groups))
    return ports, flows


def _tree_order(root: str, children: dict[str, set[str]]) -> list[str]:
    order, frontier = [], [root]
    while frontier:
        order.extend(frontier)
        frontier = [c for node in frontier for c in sorted(children.get(node, ())) if c in children]
    return order


def _port(ports: dict[str, dict[int, RelayPort]], office: str, port: int) -> RelayPort:
    return ports[office].setdefault(port, RelayPort(port))


def relay_address(office: Office) -> str:
    """Relays talk between gateways' LAN addresses, through the tunnels."""
    return str(office.lan.ip)


def peer_ports(plan: NetworkPlan, name: str) -> dict[int, RelayPort]:
    """An external peer's relay rules, from the flows: what it sends (it is the origin)
    and what it re-broadcasts (it is a target; an external peer never passes a datagram
    on)."""
    ports: dict[int, RelayPort] = {}
    for flow in plan.flows:
        for parent, child in flow.hops:
            if name not in (parent, child):
                continue
            rule = ports.setdefault(flow.port, RelayPort(flow.port))
            rule.multicast_groups.update(flow.groups)
            if parent == name:
                rule.forward_to.add(relay_address(plan.offices[child]))
            else:
                rule.accept_from.add(relay_address(plan.offices[parent]))
    return ports


# --------------------------------------------------------------------------- the section


def _sorted_addresses(addresses) -> list[str]:
    return sorted(addresses, key=ipaddress.IPv4Address)


def _rule(port: RelayPort) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "port": port.port,
        "forward_to": _sorted_addresses(port.forward_to),
        "accept_from": _sorted_addresses(port.accept_from),
    }
    if port.transit:
        rule["transit"] = {
            source: _sorted_addresses(targets)
            for source, targets in sorted(
                port.transit.items(), key=lambda kv: ipaddress.IPv4Address(kv[0])
            )
        }
    if port.multicast_groups:
        rule["multicast_groups"] = _sorted_addresses(port.multicast_groups)
    return rule


def section(gw: GatewayPlan) -> dict[str, Any]:
    office = gw.office
    used: set[str] = set()
    for port in gw.relay.values():
        used |= port.forward_to | port.accept_from | set(port.transit)
        for targets in port.transit.values():
            used |= targets
    # Every peer relay a rule names is at the other end of one of this gateway's links.
    # Its datagrams count only when they come out of the tunnel to it: a forged source
    # arriving from the Internet is dropped by the relay too.
    peers: dict[str, dict[str, str]] = {}
    for link in gw.links:
        peer = gw.peers[link.other(office.name).office]
        address = relay_address(peer)
        if address in used:
            entry = {"office": peer.name, "interface": link.end(office.name).tunnel}
            if peer.relay_wire != gw.relay_wire:  # an external peer's own choice
                entry["wire"] = peer.relay_wire
            peers[address] = entry
    return {
        "version": contract.RELAY_CONFIG_VERSION,
        "office": office.name,
        "lan": {"interface": office.lan_interface, "address": office.lan.with_prefixlen},
        "own_addresses": [str(office.wan.ip)],
        "wire": gw.relay_wire,
        "keys_file": contract.RELAY_KEYS_FILE,
        "state_dir": contract.RELAY_STATE_DIR,
        "peers": {address: peers[address] for address in sorted(peers, key=ipaddress.IPv4Address)},
        "rules": [_rule(r) for _unused, r in sorted(gw.relay.items())],
        "status_file": contract.RELAY_STATUS_FILE,
        "metrics_file": contract.RELAY_METRICS_FILE,
    }
