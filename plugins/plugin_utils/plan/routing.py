# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Routes over the links.

Routes: every gateway routes each office it can reach into the tunnel of the
next hop on a shortest path (ties go to the lowest office name, so in
hub-and-spoke both directions between two branches use the same hub). Each hop
gets strictly closer, so routes never loop. External peers are never a next
hop for anyone else's traffic: we do not run their gateway.

Each tunnel's routes are its destinations' LANs collapsed: the fewest prefixes that
cover exactly those LANs (a branch of a hub with 999 others in one /14 gets a few
routes, not 999), so a plan, the gateway's routes and its firewall grow with the
address plan, not with the number of offices.

Relay trees are the relay's (``relay.relay_tree``).
"""

from __future__ import annotations

import heapq
import ipaddress
from collections import defaultdict
from collections.abc import Iterable
from typing import Callable, Optional

Adjacency = dict[str, list[str]]  # office -> linked offices, sorted
Block = tuple[int, int]  # an IPv4 network: its address as an integer, its prefix length


def collapse(blocks: Iterable[Block]) -> list[Block]:
    """Disjoint IPv4 networks, in address order, merged into the fewest networks that
    cover exactly the same addresses (what ``ipaddress.collapse_addresses`` gives for
    them), in one pass: two halves of one network, once both are seen, become it."""
    out: list[Block] = []
    for address, length in blocks:
        while out and length > 0:
            half = 1 << (32 - length)
            below, below_length = out[-1]
            if below_length != length or below & half or below | half != address:
                break
            out.pop()
            address, length = below, length - 1
        out.append((address, length))
    return out


def merge(*texts: Iterable[str]) -> tuple[str, ...]:
    """Route lists (disjoint prefixes, as text) as one, collapsed."""
    blocks = set()
    for prefix in (p for text in texts for p in text):
        network = ipaddress.IPv4Network(prefix)
        blocks.add((int(network.network_address), network.prefixlen))
    return tuple(f"{ipaddress.IPv4Address(a)}/{n}" for a, n in collapse(sorted(blocks)))


class Prefixes:
    """Office LANs and the prefixes collapsed from them, as text and as blocks, each
    converted once per plan."""

    def __init__(self, lans: Iterable[ipaddress.IPv4Network]):
        self._text: dict[Block, str] = {}
        self._block: dict[str, Block] = {}
        for lan in lans:
            self._remember((int(lan.network_address), lan.prefixlen), str(lan))

    def _remember(self, block: Block, text: str) -> None:
        self._text[block] = text
        self._block[text] = block

    def block(self, text: str) -> Block:
        return self._block[text]

    def text(self, block: Block) -> str:
        found = self._text.get(block)
        if found is None:
            found = f"{ipaddress.IPv4Address(block[0])}/{block[1]}"
            self._remember(block, found)
        return found

    def collapsed(self, blocks: Iterable[Block]) -> tuple[str, ...]:
        return tuple(self.text(b) for b in collapse(blocks))

    def merged(self, *texts: Iterable[str]) -> tuple[str, ...]:
        """Route lists (each in address order, all disjoint) as one, collapsed."""
        return self.collapsed(heapq.merge(*(map(self.block, t) for t in texts)))


def adjacency(names: list[str], pairs) -> Adjacency:
    adj: dict[str, list[str]] = {name: [] for name in names}
    for a, b in pairs:
        adj[a].append(b)
        adj[b].append(a)
    for neighbours in adj.values():
        neighbours.sort()
    return adj


def _hops(start: str, adj: Adjacency, forwards: dict[str, bool]) -> dict[str, int]:
    """Hop counts from ``start`` to every office it reaches.

    Only offices that forward pass traffic on (``start`` always does). The
    search stops once every office is found: in hub-and-spoke and mesh that is
    after the first ring or two, not after expanding every node.
    """
    dist = {start: 0}
    frontier = [start]
    everyone = len(adj)
    while frontier and len(dist) < everyone:
        nxt = []
        for node in frontier:
            if node != start and not forwards[node]:
                continue
            for neighbour in adj[node]:
                if neighbour not in dist:
                    dist[neighbour] = dist[node] + 1
                    nxt.append(neighbour)
        frontier = nxt
    return dist


def next_hops(
    adj: Adjacency, forwards: dict[str, bool], transit: bool, order: Optional[list[str]] = None
) -> dict[tuple[str, str], list[str]]:
    """``(office, next hop) -> destinations`` routed through that hop's tunnel.

    ``forwards[x]`` says whether office x forwards for others (our gateways do,
    external peers do not). Only offices that forward get routes at all.
    Destinations appear in ``order`` (default: by name).
    """
    routes: dict[tuple[str, str], list[str]] = defaultdict(list)
    order = list(adj) if order is None else order
    if not transit:
        for dest in order:
            for node in adj[dest]:
                if forwards[node]:
                    routes[(node, dest)].append(dest)
        return routes

    # Searching from each destination gives every office's distance to it;
    # the next hop is the lowest-named neighbour one step closer.
    for dest in order:
        dist = _hops(dest, adj, forwards)
        for node, distance in dist.items():
            if node == dest or not forwards[node]:
                continue
            if distance == 1:
                hop = dest
            else:
                hop = next(n for n in adj[node] if forwards[n] and dist.get(n) == distance - 1)
            routes[(node, hop)].append(dest)
    return routes


def backup_hubs(
    adj: Adjacency, hubs: list[str], watched: Callable[[str, str], bool]
) -> dict[tuple[str, str], str]:
    """``(office, next hop) -> hub`` whose tunnel takes that link's routes while the link
    is down: the lowest-named other hub linked to both ends, when both links have a
    state to watch (``watched``: IPsec between two of our gateways).

    A branch's link to one hub is backed by the other hub; a hub's link to a branch by
    the other hub too (it reaches the branch directly). Two hubs' own link has no
    backup unless a third hub links them.
    """
    linked = {hub: set(adj[hub]) for hub in hubs}
    found: dict[tuple[str, str], str] = {}
    for office, neighbours in adj.items():
        for peer in neighbours:
            for hub in hubs:  # sorted: the first that fits is the lowest-named
                if (
                    hub not in (office, peer)
                    and office in linked[hub]
                    and peer in linked[hub]
                    and watched(office, peer)
                    and watched(office, hub)
                    and watched(hub, peer)
                ):
                    found[(office, peer)] = hub
                    break
    return found
