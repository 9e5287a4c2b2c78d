# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan for people: text for network administrators, and a picture.

``gateway_text`` explains one gateway's plan (the ``office_plan`` shape),
``network_text`` the whole network, ``dot`` draws the topology as Graphviz
source and ``svg`` runs Graphviz on it. Pure functions with no Ansible
imports; the same plan always gives byte-identical output.

Picture layout: offices are placed here (pinned positions), not by Graphviz,
whenever the shape is known, so Graphviz only draws straight lines and stays
fast at a thousand offices. Hub-and-spoke: the hubs in the middle, the other
offices on a ring around them; past 16 offices the ring alternates between
two radii so that every spoke passes between two offices of the inner one
(with two hubs, the places where a spoke would pass over the other hub stay
empty). A small mesh: one ring. Explicit links: ``neato`` (``sfdp`` past 200
offices). A large mesh is drawn without its links (the legend says every pair
is linked): only the links that relayed broadcasts cross are drawn, from the
relaying offices in the middle, or a grid of offices naming what they relay.

Relayed broadcasts are arrows: one per port and way on a link, each in its
port's colour, drawn from the office that sends to the one that receives (so
every arrowhead has the colour of what arrives there). Graphviz could draw a
two-way link as one line with a colour list and ``dir=both``, but then the
head gets the list's first colour and the tail its second, whatever the ports'
directions, and a third port gets no arrowhead at all. The offices where a
relayed broadcast starts say so ("relays PORT"), once per rule; arrows carry a
label only when their colour is shared by several ports.
"""

from __future__ import annotations

import functools
import html
import ipaddress
import math
import re
import subprocess
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

from ansible_collections.sitelink.gateway.plugins.module_utils import contract

from .ipsec import OWN_KEY, UNPROTECTED
from .model import Link, NetworkPlan, Office, RelayFlow, link_protection

WIDTH = 100  # text line length

# --------------------------------------------------------------------------- picture settings

FONT = "Helvetica"
HUB_FILL = "#fbd9a4"
BRANCH_FILL = "#d6e6f5"
EXTERNAL_FILL = "#ffffff"
LINK_COLOR = "#a0a0a0"
PORT_COLORS = (
    "#d62728",
    "#1f77b4",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
)
MESH_DRAWN_UP_TO = 12  # offices; a larger mesh is drawn without its links
MAX_DRAWN_LINKS = 1500  # beyond this, only the links that relay traffic crosses are drawn
MAX_RELAY_EDGES = 1000  # beyond this (undrawn links), relay origins are only named
MAX_CENTRE = 12  # relay origins placed in the middle of an undrawn mesh
NAME_IN_PICTURE = 24  # characters of an office name shown in a node (tooltip: all)
ARROW_SPACING = 0.2  # inches: how far apart Graphviz fans out the arrows of one link


class RenderError(RuntimeError):
    """Graphviz is missing or failed."""


# --------------------------------------------------------------------------- text helpers


def _natural(name: str) -> tuple[Any, ...]:
    """Sort key: office2 before office10."""
    parts = re.split(r"(\d+)", name)
    return (tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts), name)


def _plural(count: int, word: str, plural: Optional[str] = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _wrap(head: str, items: Sequence[str], indent: str, width: int = WIDTH) -> list[str]:
    """``indent + head`` then the items joined by ", ", broken only between items."""
    lines: list[str] = []
    line = indent + head
    for index, item in enumerate(items):
        piece = item + ("," if index < len(items) - 1 else "")
        if index == 0:
            line += piece
        elif len(line) + 1 + len(piece) > width:
            lines.append(line)
            line = indent + "    " + piece
        else:
            line += " " + piece
    lines.append(line.rstrip())
    return lines


@functools.lru_cache(maxsize=65536)
def _net(text: str) -> Optional[tuple[int, int, int]]:
    """(first address, prefix length, last address) of a prefix, or None. Cached:
    the same few thousand prefixes recur in every gateway's routes."""
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        return None
    return int(net.network_address), net.prefixlen, int(net.broadcast_address)


# --------------------------------------------------------------------------- one gateway


class _Relays:
    """Names relay addresses (the LAN addresses of linked gateways) by their office."""

    def __init__(self, plan: Mapping[str, Any]):
        self._plan = plan
        self.own = str(plan.get("lan", {}).get("address", ""))
        self._nets: Optional[dict[tuple[int, int], str]] = None

    def _index(self) -> dict[tuple[int, int], str]:
        """(network, length) -> peer office; built on first use (most gateways relay little)."""
        if self._nets is None:
            plan = self._plan
            peers = {link.get("tunnel"): link.get("peer") for link in plan.get("links") or []}
            self._nets = {}
            for tunnel in plan.get("tunnels") or []:
                peer = peers.get(tunnel.get("name")) or _peer_from(tunnel)
                for route in tunnel.get("routes") or []:
                    net = _net(str(route))
                    if net is not None:
                        self._nets.setdefault((net[0], net[1]), peer)
            self.lengths = sorted({length for _unused, length in self._nets}, reverse=True)
        return self._nets

    def name(self, address: str) -> str:
        if address == self.own:
            return f"{address} (this gateway)"
        try:
            ip = int(ipaddress.IPv4Address(address))
        except ValueError:
            return str(address)
        nets = self._index()
        for length in self.lengths:
            mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
            peer = nets.get((ip & mask, length))
            if peer:
                return f"{address} ({peer})"
        return str(address)

    def names(self, addresses: Iterable[str]) -> list[str]:
        return [self.name(a) for a in addresses]


def _peer_from(tunnel: Mapping[str, Any]) -> str:
    description = str(tunnel.get("description") or "")
    return description[5:] if description.startswith("peer ") else ""


def gateway_text(plan: Mapping[str, Any]) -> str:
    """One gateway's plan (``gateway.office_plan``) as text for its administrator."""
    lan = plan.get("lan") or {}
    wan = plan.get("wan") or {}
    lan_if = lan.get("interface") or "the LAN interface"
    wan_if = wan.get("interface") or "the WAN interface"
    lines = [f"Gateway of office {plan.get('office')} ({plan.get('role', 'branch')})"]
    lines.append(
        f"  LAN  {lan_if}: {lan.get('cidr')} (office LAN {lan.get('network')}, "
        f"broadcast {lan.get('broadcast')})"
    )
    wan_line = f"  WAN  {wan_if}: {wan.get('cidr')}"
    if wan.get("gateway"):
        wan_line += f", ISP router {wan['gateway']}"
    lines.append(f"{wan_line}, path MTU {wan.get('mtu')}")

    relays = _Relays(plan)
    peers = {link.get("tunnel"): link.get("peer") for link in plan.get("links") or []}
    tunnels = plan.get("tunnels") or []
    lines.append("")
    if not tunnels:
        lines.append("Tunnels: none (this office has no link to another office)")
    else:
        addresses = {t.get("address") for t in tunnels}
        head = f"Tunnels: {len(tunnels)} (IPIP)"
        if len(addresses) == 1:
            head += f"; this gateway's address inside them: {addresses.pop()}"
        lines.append(head)
        external = (plan.get("ipsec") or {}).get("external") or {}
        for tunnel in tunnels:
            peer = peers.get(tunnel.get("name")) or _peer_from(tunnel) or "?"
            lines.append(
                f"  {tunnel.get('name')} to {peer}: {tunnel.get('local')} -> "
                f"{tunnel.get('remote')}, MTU {tunnel.get('mtu')}, TTL {tunnel.get('ttl')}"
            )
            if peer in external:
                lines.append(f"    external peer, protection: {external[peer]}")
            routes = tunnel.get("routes") or []
            if routes:
                lines.extend(
                    _wrap(
                        f"routes {_plural(len(routes), 'prefix', 'prefixes')} into it: ",
                        routes,
                        "    ",
                    )
                )
            else:
                lines.append("    routes nothing into it")
    lines.extend(_protection_lines(plan, tunnels))
    lines.extend(_firewall_lines(plan, wan_if))

    masquerade = plan.get("masquerade") or {}
    sources = masquerade.get("sources") or []
    lines.append("")
    if sources:
        lines.append(
            "Masquerade: packets from other offices that leave on "
            f"{masquerade.get('interface') or lan_if} get source {masquerade.get('address')},"
        )
        networks = _plural(len(sources), "network")
        lines.append(f"  so LAN hosts see the gateway and reply to it; from {networks}:")
        lines.extend(_wrap("", sources, "    "))
    else:
        lines.append("Masquerade: none (LAN hosts see other offices' own addresses)")

    relay = plan.get("relay") or {}
    rules = relay.get("rules") or []
    lines.append("")
    if not rules:
        lines.append("Broadcast relay: none (no UDP broadcast leaves or enters this LAN)")
    else:
        lines.append(
            f"Broadcast relay: {_plural(len(rules), 'UDP port')} (relays talk between "
            "gateways' LAN addresses, through tunnels)"
        )
        lines.extend(_wire_lines(relay, relays))
        for rule in rules:
            groups = rule.get("multicast_groups") or []
            also = f" (and multicast {', '.join(groups)})" if groups else ""
            lines.append(f"  UDP port {rule.get('port')}{also}:")
            lines.extend(_relay_lines(rule, relays, lan_if))
    return "\n".join(lines) + "\n"


def _wire_lines(relay: Mapping[str, Any], relays: _Relays) -> list[str]:
    """How the relays talk: authenticated, or raw (in capitals, as plain IPIP is); and
    the peers whose own wire differs (external peers)."""
    wire = relay.get("wire")
    others = [
        relays.name(address)
        for address, peer in (relay.get("peers") or {}).items()
        if (peer or {}).get("wire", wire) != wire
    ]
    if wire == contract.WIRE_RAW:
        lines = [
            "  NOT AUTHENTICATED (office_relay_wire: raw): datagrams go as they are, without",
            "  origin, sequence number or signature: replays and forgeries are not recognised",
        ]
        head = "authenticated with the link's key, to: "
    else:
        lines = [
            "  authenticated: each datagram carries its origin office and a sequence number, "
            "signed",
            "  with the link's own key; forged and replayed ones are dropped",
        ]
        head = "NOT AUTHENTICATED (relay_wire: raw), to: "
    if others:
        lines.extend(_wrap(head, others, "  "))
    return lines


def _protection_lines(plan: Mapping[str, Any], tunnels: list[Any]) -> list[str]:
    """The deployment's protection, and the tunnels to external peers that differ."""
    if not tunnels:
        return []
    ipsec = plan.get("ipsec") or {}
    if plan.get("protection") == "none":
        lines = [
            "  NOT PROTECTED (office_tunnel_protection: none): plain IPIP, readable by anyone",
            "  on the path and forgeable by anyone on the Internet",
        ]
        protected = [c.get("name") for c in ipsec.get("connections") or []]
        if protected:
            lines.extend(
                _wrap(
                    "but protected by IPsec ESP, with the external peer's own key: ",
                    protected,
                    "  ",
                )
            )
        return lines
    lines = [
        "  protected: IPsec ESP (transport mode, IKEv2, the link's own key) around each",
        "  tunnel's IPIP; IPIP that is not inside ESP from the peer is dropped",
    ]
    plain = [u.get("name") for u in ipsec.get("unprotected") or []]
    if plain:
        lines.extend(
            _wrap(
                "but NOT PROTECTED (an external peer's protection: none), plain IPIP: ",
                plain,
                "  ",
            )
        )
    return lines


def _firewall_lines(plan: Mapping[str, Any], wan_if: str) -> list[str]:
    fw = plan.get("firewall")
    if not fw:
        return []
    lines = ["", "Firewall (nftables table inet sitelink_firewall):"]
    peers = fw.get("link_peers") or []
    if peers:
        lines.extend(
            _wrap(
                f"  IPIP, ESP and IKE on {wan_if} only from {len(peers)} link peers: ",
                peers,
                "    ",
            )
            if len(peers) > 3
            else [f"  IPIP, ESP and IKE on {wan_if} only from: {', '.join(peers)}"]
        )
    else:
        lines.append(f"  no IPIP, ESP or IKE accepted on {wan_if} (no links)")
    lans = fw.get("office_lans") or []
    lines.append(
        f"  dropped from {wan_if}: any source inside the office LANs "
        f"({_plural(len(lans), 'prefix', 'prefixes')})"
    )
    lines.append("  dropped from a tunnel: any source not routed over it")
    ports = fw.get("relay_ports") or []
    if ports:
        lines.append(
            f"  relay port{'s' if len(ports) > 1 else ''} {', '.join(map(str, ports))}: "
            "only from the LAN, and through a tunnel only from the peer's relay"
        )
    if fw.get("input_policy") == "drop":
        mgmt = ", ".join(fw.get("management_sources") or [])
        lines.append(f"  to the gateway: only what it needs; SSH only from {mgmt}")
    else:
        lines.append("  to the gateway: everything else accepted (input policy accept)")
    if fw.get("forward_policy") == "drop":
        lines.append("  forwarded: only replies, LAN <-> tunnels, and tunnel <-> tunnel")
    else:
        lines.append("  forwarded: everything else accepted (forward policy accept)")
    lines.append("  TCP MSS clamped to the route MTU into the tunnels")
    return lines


def _relay_lines(rule: Mapping[str, Any], relays: _Relays, lan_if: str) -> list[str]:
    lines: list[str] = []
    forward = rule.get("forward_to") or []
    accept = rule.get("accept_from") or []
    if forward:
        lines.extend(
            _wrap(
                f"broadcasts seen on {lan_if} are sent to {_plural(len(forward), 'relay')}: ",
                relays.names(forward),
                "    ",
            )
        )
    else:
        lines.append(f"    broadcasts seen on {lan_if} are not sent anywhere")
    if accept:
        lines.extend(
            _wrap(
                f"re-broadcast on {lan_if}: datagrams from {_plural(len(accept), 'relay')}: ",
                relays.names(accept),
                "    ",
            )
        )
    else:
        lines.append(f"    nothing from other offices is re-broadcast on {lan_if}")
    for sender, onward in (rule.get("transit") or {}).items():
        lines.extend(
            _wrap(
                f"transit: datagrams from {relays.name(sender)} are passed on to "
                f"{_plural(len(onward), 'relay')}: ",
                relays.names(onward),
                "    ",
            )
        )
    return lines


# --------------------------------------------------------------------------- the network

_TOPOLOGY = {
    "hub-and-spoke": "hub-and-spoke (hubs link to every office, branches to the hubs)",
    "mesh": "mesh (every pair of offices is linked)",
    "links": "links (only the pairs listed in office_links)",
}


def _offices_sorted(plan: NetworkPlan) -> list[Office]:
    return sorted(plan.offices.values(), key=lambda o: (o.role != "hub", _natural(o.name)))


def _counts(plan: NetworkPlan) -> str:
    offices = list(plan.offices.values())
    hubs = sum(o.role == "hub" for o in offices)
    external = sum(o.external for o in offices)
    return (
        f"{_plural(len(offices), 'office')} ({_plural(hubs, 'hub')}, "
        f"{_plural(len(offices) - hubs, 'branch', 'branches')}; {external} external)"
    )


def _external_lines(plan: NetworkPlan) -> list[str]:
    """Each external peer: how its links are protected and keyed (never the key), its
    relay wire, and the file its administrators get."""
    externals = [o for o in _offices_sorted(plan) if o.external]
    if not externals:
        return []
    lines = [
        "",
        "External peers (protection and key of their links, relay wire; their side: "
        "external/<name>.txt):",
    ]
    rows = []
    for office in externals:
        protection = link_protection(plan.protection, office)
        rows.append(
            (
                office.name,
                OWN_KEY if protection == "ipsec" else UNPROTECTED,
                "relay wire raw"
                if office.relay_wire == contract.WIRE_RAW
                else "relay wire authenticated",
            )
        )
    lines.extend(_table(rows))
    return lines


def network_text(plan: NetworkPlan) -> str:
    """The whole network as text: offices, links, relay flows, warnings."""
    lines = [f"Network: {_TOPOLOGY.get(plan.topology, plan.topology)}"]
    if plan.transit:
        lines.append("Transit: on (offices without a link reach each other through gateways)")
    else:
        lines.append("Transit: off (an office reaches only the offices it has a link with)")
    # Links to external peers that chose otherwise than the deployment (listed below).
    others = sum(plan.link_protection(lk) != plan.protection for lk in plan.links)
    but = f" but {_plural(others, 'link')} (below)" if others else ""
    if plan.protection == "none":
        lines.append(f"Protection: NONE (plain IPIP: readable and forgeable on the path){but}")
    else:
        lines.append(
            f"Protection: IPsec ESP around every link's IPIP (IKEv2, one key per link){but}"
        )
    if plan.relay_wire == contract.WIRE_RAW:
        lines.append("Relay wire: RAW (datagrams as they are: no origin, sequence or signature)")
    else:
        lines.append("Relay wire: authenticated (origin, sequence, signed with the link's key)")
    lines.append(
        f"{_counts(plan)}, {_plural(len(plan.links), 'link')}, "
        f"{_plural(len(plan.flows), 'relay flow')}, {_plural(len(plan.warnings), 'warning')}"
    )

    lines += ["", "Offices (name, gateway host, role, LAN, WAN address):"]
    rows = [
        (o.name, o.host or "external", o.role, str(o.lan.network), str(o.wan.ip))
        for o in _offices_sorted(plan)
    ]
    lines.extend(_table(rows))

    lines += ["", "Links (a - b, tunnel at a / at b, MTU, prefixes routed a->b / b->a):"]
    links = sorted(plan.links, key=lambda lk: (_natural(lk.a.office), _natural(lk.b.office)))
    rows = [
        (
            f"{link.a.office} - {link.b.office}",
            f"{link.a.tunnel} / {link.b.tunnel}",
            f"mtu {link.mtu}",
            f"routes {len(link.a.routes)} / {len(link.b.routes)}",
        )
        for link in links
    ]
    lines.extend(_table(rows) or ["  none"])
    lines.extend(_external_lines(plan))

    lines += ["", "Relay flows (UDP broadcasts from one office's LAN, re-broadcast at targets):"]
    everyone = len(plan.offices) - 1
    for flow in plan.flows:
        also = f" (and multicast {', '.join(flow.groups)})" if flow.groups else ""
        head = f"{flow.origin}:{flow.port}{also} -> "
        if len(flow.targets) == everyone > 1:
            lines.append(f"  {head}every other office ({everyone})")
        else:
            targets = sorted(flow.targets, key=_natural)
            lines.extend(_wrap(f"{head}{_plural(len(targets), 'office')}: ", targets, "  "))
        children: dict[str, list[str]] = {}
        for parent, child in flow.hops:
            children.setdefault(parent, []).append(child)
        if list(children) == [flow.origin]:
            lines.append("    sent directly, no office passes it on")
            continue
        for parent, kids in children.items():
            verb = "sends to" if parent == flow.origin else "passes on to"
            kids = sorted(kids, key=_natural)
            lines.extend(_wrap(f"{parent} {verb} ", kids, "    "))
    if not plan.flows:
        lines.append("  none")

    lines += ["", f"Warnings: {len(plan.warnings) or 'none'}"]
    for warning in plan.warnings:
        lines.extend(
            textwrap.wrap(
                warning,
                WIDTH,
                initial_indent="  - ",
                subsequent_indent="    ",
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n".join(lines) + "\n"


def _table(rows: Sequence[Sequence[str]], cap: int = 32) -> list[str]:
    """Rows in aligned columns (a column is never padded beyond ``cap``)."""
    if not rows:
        return []
    widths = [min(cap, max(len(row[i]) for row in rows)) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows
    ]


# --------------------------------------------------------------------------- the picture


def _escape(text: str) -> str:
    """Text inside a DOT double-quoted string, shown literally (no escString sequences)."""
    return (
        str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", "\\n")
    )


def _q(*lines: str) -> str:
    """A quoted DOT string; several lines are centred, one per line."""
    return '"' + "\\n".join(_escape(line) for line in lines) + '"'


def _h(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _short(name: str) -> str:
    return name if len(name) <= NAME_IN_PICTURE else name[: NAME_IN_PICTURE - 3] + "..."


def _node_size(office: Office, note: str = "") -> tuple[float, float]:
    """Generous estimate of a node's size in inches (11pt Helvetica, two lines or more)."""
    chars = max(len(_short(office.name)), len(str(office.lan.network)), len(note))
    extra = int(office.external) + int(office.masquerade) + int(bool(note))
    return 0.085 * chars + 0.2, 0.5 + 0.18 * extra


def _port_colors(plan: NetworkPlan) -> dict[int, str]:
    ports = sorted({flow.port for flow in plan.flows})
    return {port: PORT_COLORS[i % len(PORT_COLORS)] for i, port in enumerate(ports)}


_Hop = tuple[str, str, int]  # from office, to office, UDP port


def _relay_hops(plan: NetworkPlan) -> dict[tuple[str, str], dict[_Hop, set[str]]]:
    """(a, b) sorted -> (from, to, port) of the relayed broadcasts that cross that
    link -> the offices whose broadcasts they are."""
    pairs: dict[tuple[str, str], dict[_Hop, set[str]]] = {}
    for flow in plan.flows:
        for frm, to in flow.hops:
            pair = (frm, to) if frm < to else (to, frm)
            pairs.setdefault(pair, {}).setdefault((frm, to, flow.port), set()).add(flow.origin)
    return pairs


def _relay_notes(plan: NetworkPlan) -> dict[str, str]:
    """Office -> "relays PORT, ...": each relay rule named once, where it starts."""
    ports: dict[str, set[int]] = {}
    for flow in plan.flows:
        ports.setdefault(flow.origin, set()).add(flow.port)
    notes = {}
    for office, mine in ports.items():
        names = [str(p) for p in sorted(mine)]
        if len(names) > 3:  # the node stays narrow; its tooltip lists them all
            names[2:] = [f"{len(names) - 2} more"]
        notes[office] = "relays " + ", ".join(names)
    return notes


def _ring(
    count: int, inner: float, outer: float, zigzag: bool, start: float = math.pi / 2
) -> list[tuple[float, float]]:
    """Positions on a ring, clockwise from ``start`` (the top); zigzag: inner, outer, inner..."""
    points = []
    for i in range(count):
        angle = start - 2 * math.pi * i / count
        radius = outer if zigzag and i % 2 else inner
        points.append((radius * math.cos(angle), radius * math.sin(angle)))
    return points


def _radial(
    centre: list[Office], ring: list[Office], notes: Mapping[str, str]
) -> dict[str, tuple[float, float]]:
    """Centre offices in the middle, the others around them (see the module docstring).

    With several offices in the middle, ring places where a line from one of them
    would pass over another are left empty.
    """
    pos: dict[str, tuple[float, float]] = {}
    gap = 0.25
    sizes = [_node_size(o, notes.get(o.name, "")) for o in centre + ring] or [(1.0, 0.6)]
    width = max(w for w, _unused in sizes)
    height = max(h for _unused, h in sizes)
    core = 0.0
    if len(centre) == 1:
        pos[centre[0].name] = (0.0, 0.0)
    elif centre:
        core = (width + 1.2) / (2 * math.sin(math.pi / len(centre)))  # room for their link
        for office, point in zip(centre, _ring(len(centre), core, core, False, math.pi)):
            pos[office.name] = point
    count = len(ring)
    if not count:
        return pos
    if count == 1 and not centre:
        pos[ring[0].name] = (0.0, 0.0)
        return pos
    least = core + width + 1.6  # room for the spokes and their labels
    if not centre:
        least = max(least, 0.45 * count)  # chords of a mesh: room for their labels
    hubs = list(pos.values())

    def places(slots: int) -> list[tuple[float, float]]:
        if slots <= 16:
            radius = max(least, (width + gap) / (2 * math.sin(math.pi / max(slots, 2))))
            return _ring(slots, radius, radius, False)
        slots += slots % 2  # an even count keeps inner and outer alternating all around
        # A spoke to an outer office passes between two inner ones.
        inner = max(least, (width / 2 + gap) / math.sin(2 * math.pi / slots))
        return _ring(slots, inner, inner + height + gap + 0.3, True)

    slots, chosen = count, places(count)
    while len(hubs) > 1 and slots <= 1.6 * count:  # else too many lines cross: keep them
        free = [p for p in places(slots) if not _hidden(p, hubs, width, height)]
        if len(free) >= count:
            chosen = [free[i * len(free) // count] for i in range(count)]  # spread evenly
            break
        slots += count - len(free)
    for office, point in zip(ring, chosen):
        pos[office.name] = point
    return pos


def _hidden(
    point: tuple[float, float], hubs: list[tuple[float, float]], width: float, height: float
) -> bool:
    """Whether a line from one hub to ``point`` would pass over another hub."""
    px, py = point
    for ax, ay in hubs:
        dx, dy = px - ax, py - ay
        length = math.hypot(dx, dy)
        if length == 0:
            continue
        ux, uy = dx / length, dy / length
        for bx, by in hubs:
            along = (bx - ax) * ux + (by - ay) * uy
            if (bx, by) == (ax, ay) or not 0 < along < length:
                continue
            across = abs((bx - ax) * uy - (by - ay) * ux)
            if across < abs(uy) * width / 2 + abs(ux) * height / 2 + 0.15:
                return True
    return False


def _grid(offices: list[Office], notes: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    sizes = [_node_size(o, notes.get(o.name, "")) for o in offices] or [(1.0, 0.6)]
    width = max(w for w, _unused in sizes) + 0.4
    height = max(h for _unused, h in sizes) + 0.4
    columns = max(1, math.ceil(math.sqrt(len(offices) * height / width)))
    return {
        office.name: ((i % columns) * width, -(i // columns) * height)
        for i, office in enumerate(offices)
    }


def _node(
    office: Office,
    point: Optional[tuple[float, float]],
    note: str = "",
    flows: Sequence[RelayFlow] = (),
) -> str:
    lines = [_short(office.name), str(office.lan.network)]
    if office.external:
        lines.append("external")
    if office.masquerade:  # other offices reach its LAN as the gateway itself
        lines.append("masquerade")
    if note:
        lines.append(note)
    tooltip = [
        f"{office.name}: {office.role}, "
        + (f"host {office.host}" if office.host else "external peer (not configured here)"),
        f"LAN {office.lan.with_prefixlen}",
        f"WAN {office.wan.ip}, MTU {office.wan_mtu}",
    ]
    for flow in flows:
        also = f" (and multicast {', '.join(flow.groups)})" if flow.groups else ""
        tooltip.append(f"relays UDP {flow.port}{also} to {_plural(len(flow.targets), 'office')}")
    attrs = [f"label={_q(*lines)}", f"tooltip={_q(*tooltip)}"]
    if office.external:
        attrs.append(f'style="rounded,dashed,filled" fillcolor="{EXTERNAL_FILL}"')
    elif office.role == "hub":
        attrs.append(f'fillcolor="{HUB_FILL}" penwidth=2 fontsize=13')
    if point is not None:
        attrs.append(f'pos="{point[0]:.2f},{point[1]:.2f}!"')
    return f"  {_q(office.name)} [{' '.join(attrs)}];"


# The heads of arrows into one end of a link, from the second on: set back by
# gaps ("none", half a head long each). Graphviz draws four shapes at most, so the
# third head is set back by one and a half heads and hides the second one's back
# half, not its tip; a fourth would hide the third.
_SET_BACK = ("normal", "nonenonenormal", "nonenonenonenormal")


def _edges(
    a: str,
    b: str,
    link: Optional[Link],
    hops: Mapping[_Hop, set[str]],
    colors: Mapping[int, str],
    labelled: set[int],
) -> list[str]:
    """One link: a grey line, or else an arrow for each port and way that relayed
    broadcasts cross it. An arrow is written ``from -- to`` with ``dir=forward``,
    so its head, and only its head, is at the office that receives, in one colour:
    the port's. Graphviz fans the arrows of one link out beside each other
    (``concentrate`` would merge them, so it stays off), but they meet again at
    the offices, where heads side by side would hide each other: the second and
    third arrow the same way have their heads set back along the line."""
    about = f"{a} - {b}"
    if link is not None:
        about += (
            f": {a} uses {link.a.tunnel}, {b} uses {link.b.tunnel}, MTU {link.mtu}; "
            f"{len(link.a.routes)} / {len(link.b.routes)} prefixes routed each way"
        )
    if not hops:
        return [f"  {_q(a)} -- {_q(b)} [tooltip={_q(about)}];"]
    heads = {a: 0, b: 0}  # arrows into each end so far
    lines = []
    for frm, to, port in sorted(hops, key=lambda hop: (hop[2], hop[0] != a)):
        origins = sorted(hops[(frm, to, port)], key=_natural)
        start = ", ".join(origins) if len(origins) <= 3 else _plural(len(origins), "office")
        attrs = f'color="{colors[port]}" penwidth=2 dir=forward '
        if heads[to]:
            attrs += f"arrowhead={_SET_BACK[min(heads[to], len(_SET_BACK) - 1)]} "
        heads[to] += 1
        if port in labelled:
            attrs += f'label="{port}" fontcolor="{colors[port]}" '
        attrs += f"tooltip={_q(f'UDP {port} {frm} -> {to}, broadcasts of {start}; {about}')}"
        lines.append(f"  {_q(frm)} -- {_q(to)} [{attrs}];")
    return lines


def dot(plan: NetworkPlan) -> str:
    """Graphviz source of the topology picture (run it with ``svg``)."""
    offices = sorted(plan.offices.values(), key=lambda o: _natural(o.name))
    links = {(link.a.office, link.b.office): link for link in plan.links}
    relay = _relay_hops(plan)
    colors = _port_colors(plan)
    notes = _relay_notes(plan)
    flows: dict[str, list[RelayFlow]] = {}
    for flow in plan.flows:
        flows.setdefault(flow.origin, []).append(flow)
    hub_and_spoke = plan.topology == "hub-and-spoke"
    centre = [o for o in offices if o.role == "hub"] if hub_and_spoke else []

    # A large mesh (or any huge number of links) is drawn without its links:
    # only those that relayed broadcasts cross, if there are not too many.
    summarised = (plan.topology == "mesh" and len(offices) > MESH_DRAWN_UP_TO) or len(
        plan.links
    ) > MAX_DRAWN_LINKS
    drawn = list(links)
    relay_drawn = True
    if summarised:
        drawn = sorted(relay, key=lambda p: (_natural(p[0]), _natural(p[1])))
        if not hub_and_spoke:
            centre = [o for o in offices if o.name in notes] if len(notes) <= MAX_CENTRE else []
        if len(drawn) > MAX_RELAY_EDGES or (drawn and not centre):
            drawn, relay_drawn = [], False

    engine = "neato"
    pos: Optional[dict[str, tuple[float, float]]] = None
    if centre or (plan.topology == "mesh" and not summarised):
        names = {o.name for o in centre}
        pos = _radial(centre, [o for o in offices if o.name not in names], notes)
    elif summarised or not drawn:
        pos = _grid(offices, notes)
    elif len(offices) > 200:
        engine = "sfdp"

    graph = [
        f"layout={engine}",
        f'fontname="{FONT}"',
        "outputorder=edgesfirst",
        "splines=false",
        f"nodesep={ARROW_SPACING}",  # neato: the gap between arrows on one link
    ]
    if pos is not None:
        extent = max((max(abs(x), abs(y)) for x, y in pos.values()), default=1.0)
        graph.append('overlap="true"')  # placed here, without overlaps
    else:
        extent = math.sqrt(len(offices))
        graph += ['overlap="prism"' if engine == "sfdp" else 'overlap="false"', 'sep="+16"']
    plain = not relay_drawn or any(pair not in relay for pair in drawn)
    legend = _legend(plan, colors, summarised, relay_drawn, bool(drawn), plain)
    graph += [
        f"fontsize={min(36, max(12, round(extent * 1.5)))}",  # the legend grows with the picture
        "labelloc=b",
        "labeljust=l",
        "pad=0.4",
        f"label={legend}",
    ]
    out = [
        "graph sitelink {",
        "  graph [" + " ".join(graph) + "];",
        f'  node [shape=box style="rounded,filled" fillcolor="{BRANCH_FILL}" '
        f'fontname="{FONT}" fontsize=11 margin="0.08,0.04"];',
        f'  edge [color="{LINK_COLOR}" fontname="{FONT}" fontsize=9 arrowsize=0.8 len=1.6];',
    ]
    for office in offices:
        point = None if pos is None else pos[office.name]
        out.append(_node(office, point, notes.get(office.name, ""), flows.get(office.name, ())))
    # Ports that share a colour (more ports than colours) are named on their arrows.
    shared = Counter(colors.values())
    labelled = {port for port, color in colors.items() if shared[color] > 1}
    for a, b in drawn:
        hops = relay.get((a, b), {}) if relay_drawn else {}
        out.extend(_edges(a, b, links.get((a, b)), hops, colors, labelled))
    out.append("}")
    return "\n".join(out) + "\n"


def _legend(
    plan: NetworkPlan,
    colors: dict[int, str],
    summarised: bool,
    relay_drawn: bool,
    drawn: bool,
    plain: bool,
) -> str:
    """The picture's legend: an HTML-like table, shown as the graph's label."""
    offices = list(plan.offices.values())
    transit = "on" if plan.transit else "off"
    head = [
        f"<b>Office network: {_h(plan.topology)}, transit {transit}</b>",
        _h(f"{_counts(plan)}, {_plural(len(plan.links), 'link')}"),
    ]
    if summarised:
        if plan.topology == "mesh" and _complete(plan):
            head.append(_h(f"every pair of offices is linked ({len(plan.links)} links, not drawn)"))
        else:
            head.append(_h(f"{_plural(len(plan.links), 'link')}, not drawn"))
        if relay_drawn and drawn:
            head.append("arrows: only on the links that relayed broadcasts cross")
    samples = []
    if any(o.role == "hub" and not o.external for o in offices):
        samples.append((f'bgcolor="{HUB_FILL}"', "hub", "hub office (name, LAN)"))
    if any(o.role != "hub" and not o.external for o in offices):
        samples.append((f'bgcolor="{BRANCH_FILL}"', "branch", "branch office (name, LAN)"))
    if any(o.external for o in offices):
        samples.append(('style="dashed"', "external", "external peer, not configured here"))
    if any(o.masquerade for o in offices):
        samples.append(
            (
                "",
                "masquerade",
                "its LAN sees other offices as the gateway (SNAT): servers need no route",
            )
        )
    line = "&#8212;&#8212;&#8212;"
    if plan.links and drawn and plain:
        samples.append(("", f'<font color="{LINK_COLOR}">{line}</font>', "link: two IPIP tunnels"))
    tail = []
    if relay_drawn and colors:
        samples.append(
            ("", "relays PORT", "its LAN's UDP broadcasts on PORT are relayed to other offices")
        )
        by_color: dict[str, list[str]] = {}
        for port in sorted(colors):
            by_color.setdefault(colors[port], []).append(str(port))
        for color, ports in by_color.items():
            swatch = f'<font color="{color}">{line}&#9654;</font>'
            samples.append(
                ("", swatch, f"UDP {', '.join(ports)} broadcasts, relayed the way it points")
            )
        if any(frm != flow.origin for flow in plan.flows for frm, _unused in flow.hops):
            tail.append(_h('an arrow from an office not marked "relays PORT": passed on'))
        if len(by_color) < len(colors):
            tail.append("ports that share a colour: named on their arrows")
    elif colors:
        tail.append("relayed broadcasts: see &quot;relays PORT&quot; on their origins")
    if plan.warnings:
        tail.append(f"{_plural(len(plan.warnings), 'warning')}: see the text report")

    cells = [f'<tr><td colspan="2" align="left">{row}</td></tr>' for row in head]
    for attrs, sample, meaning in samples:
        box = f' border="1" {attrs}' if attrs else ""
        cells.append(f'<tr><td{box}>{sample}</td><td align="left">{_h(meaning)}</td></tr>')
    cells += [f'<tr><td colspan="2" align="left">{row}</td></tr>' for row in tail]
    return (
        '<<table border="0" cellpadding="12"><tr><td>'  # keeps the legend off the offices
        '<table border="1" color="#c0c0c0" cellborder="0" cellspacing="2" cellpadding="3">'
        + "".join(cells)
        + "</table></td></tr></table>>"
    )


def _complete(plan: NetworkPlan) -> bool:
    """Every pair linked, except pairs of external peers (never linked)."""
    n = len(plan.offices)
    e = sum(o.external for o in plan.offices.values())
    return len(plan.links) == n * (n - 1) // 2 - e * (e - 1) // 2


# --------------------------------------------------------------------------- Graphviz


def svg(dot_source: str, dot_binary: str = "dot", timeout: int = 120) -> bytes:
    """The picture as SVG: runs ``dot_binary -Tsvg`` on ``dot_source``.

    Raises ``RenderError`` when Graphviz is missing, fails, or takes longer than
    ``timeout`` seconds.
    """
    try:
        result = subprocess.run(
            [dot_binary, "-Tsvg"],
            input=dot_source.encode("utf-8"),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise RenderError(
            f"Graphviz is not installed: {dot_binary!r} not found "
            "(install the graphviz package, e.g. apt-get install graphviz)"
        ) from None
    except PermissionError as exc:
        raise RenderError(f"cannot run Graphviz {dot_binary!r}: {exc}") from None
    except subprocess.TimeoutExpired:
        raise RenderError(f"Graphviz {dot_binary!r} took longer than {timeout} s") from None
    if result.returncode != 0 or not result.stdout:
        message = result.stderr.decode("utf-8", "replace").strip() or "no output"
        raise RenderError(
            f"Graphviz {dot_binary!r} failed (exit status {result.returncode}): {message}"
        )
    return result.stdout
