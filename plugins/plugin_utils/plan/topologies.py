# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One strategy per topology: which pairs of offices get a link.

A strategy returns pairs of office names, each sorted; ``office_links`` adds
its pairs to whatever the strategy returned (and is all there is for
``links``). Routing over the links is ``routing``'s job.
"""

from __future__ import annotations

from itertools import combinations
from typing import Callable

from .model import Office

Pair = tuple[str, str]


def _pair(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def hub_and_spoke(offices: list[Office]) -> set[Pair]:
    """Hubs link to every other office; branches only to the hubs."""
    hubs = [o.name for o in offices if o.role == "hub"]
    return {_pair(hub, o.name) for hub in hubs for o in offices if o.name != hub}


def mesh(offices: list[Office]) -> set[Pair]:
    """Every pair of offices."""
    return {_pair(a.name, b.name) for a, b in combinations(offices, 2)}


def explicit(offices: list[Office]) -> set[Pair]:
    """Only what ``office_links`` lists (added by the caller)."""
    return set()


STRATEGIES: dict[str, Callable[[list[Office]], set[Pair]]] = {
    "hub-and-spoke": hub_and_spoke,
    "mesh": mesh,
    "links": explicit,
}
