# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Masquerade: an office that masquerades (office_masquerade) rewrites the source of
what the other offices send into its LAN to its own LAN address, so its hosts answer
without a route back. What it masquerades: every LAN routed to it over its links."""

from __future__ import annotations

from typing import Any

from .model import GatewayPlan, Link, Office
from .routing import Prefixes


def sources(office: Office, links: list[Link], prefixes: Prefixes) -> list[str]:
    """What ``office`` masquerades ([] when it does not): every LAN routed from it over
    ``links``, their route lists merged and collapsed (a hub's thousand branch LANs in
    a few prefixes)."""
    if not office.masquerade:
        return []
    return list(prefixes.merged(*(lk.end(office.name).routes for lk in links)))


def warnings(office: Office, masqueraded: list[str]) -> list[str]:
    """An office set to masquerade that no other office reaches: a warning."""
    if office.masquerade and not masqueraded:
        return [
            f"{office.label()}: office_masquerade: no other office reaches this office, "
            "so there is nothing to masquerade"
        ]
    return []


def section(gw: GatewayPlan) -> dict[str, Any]:
    office = gw.office
    return {
        "interface": office.lan_interface,
        "address": str(office.lan.ip),
        "sources": list(gw.masquerade_sources),
    }
