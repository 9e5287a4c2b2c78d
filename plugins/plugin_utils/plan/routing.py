# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Routes over the links.

Routes: every gateway routes each office it can reach into the tunnel of the
next hop on a shortest path (ties go to the lowest office name, so in
hub-and-spoke both directions between two branches use the same hub). Each hop
gets strictly closer, so routes never loop. External peers are never a next
hop for anyone else's traffic: we do not run their gateway.

Relay trees are the relay's (``relay.relay_tree``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Optional

Adjacency = dict[str, list[str]]  # office -> linked offices, sorted


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
