# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tunnels: one pair of IPIP tunnels per link, their names, MTUs and TTL, and the
tunnels section (as ``ipip_tunnel`` takes them)."""

from __future__ import annotations

import hashlib
from typing import Any

from ansible_collections.sitelink.gateway.plugins.module_utils import contract

from . import ipsec
from .model import GatewayPlan, Office, link_protection

IPIP_OVERHEAD = 20  # RFC 2003: one outer IPv4 header, no options
TUNNEL_TTL = 64
TUNNEL_PREFIX = "sl-"
IFNAMSIZ = contract.IFNAME_MAX  # the kernel's limit on interface names
# 6 hex digits (24 bits): two long names that share their 5-character head
# collide with odds of 1 in 16 million; collisions that remain are refused.
TUNNEL_HASH_DIGITS = 6


def tunnel_name(office: str) -> str:
    """Interface name of the tunnel that leads to ``office``.

    Derived from the office name alone, so offices coming and going never rename
    a tunnel. Names too long for the kernel keep a readable head and a hash of
    the full name.
    """
    name = TUNNEL_PREFIX + office
    if len(name) <= IFNAMSIZ:
        return name
    digest = hashlib.sha256(office.encode()).hexdigest()[:TUNNEL_HASH_DIGITS]
    head = IFNAMSIZ - len(TUNNEL_PREFIX) - len(digest) - 1
    return f"{TUNNEL_PREFIX}{office[:head]}-{digest}"


def check_names(offices: list[Office], errors: list[str]) -> None:
    """Two offices whose tunnels would have the same name: refused."""
    names: dict[str, Office] = {}
    for office in offices:
        other = names.setdefault(tunnel_name(office.name), office)
        if other is not office:
            errors.append(
                f"{office.label()}: {office.variable('name')}: tunnel name "
                f"{tunnel_name(office.name)!r} collides with the one of {other.label()}; "
                "rename one of the offices"
            )


def link_mtu(protection: str, a: Office, b: Office) -> int:
    """The MTU of the tunnels between ``a`` and ``b`` when the inventory sets none: the
    smaller WAN MTU less IPIP's header, and ESP's when the link is protected."""
    esp = link_protection(protection, a, b) == "ipsec"
    overhead = IPIP_OVERHEAD + (ipsec.ESP_OVERHEAD if esp else 0)
    return min(a.wan_mtu, b.wan_mtu) - overhead


def section(gw: GatewayPlan) -> list[dict[str, Any]]:
    office = gw.office
    tunnels = []
    for link in gw.links:
        mine, theirs = link.end(office.name), gw.peers[link.other(office.name).office]
        tunnel = {
            "name": mine.tunnel,
            "local": str(office.wan.ip),
            "remote": str(theirs.wan.ip),
            "address": str(office.lan.ip),
            "routes": list(mine.routes),
            "mtu": link.mtu,
            "ttl": TUNNEL_TTL,
            "description": f"peer {theirs.name}",
        }
        if mine.backup:
            tunnel["backup"] = mine.backup
        tunnels.append(tunnel)
    return tunnels


def backed_up(gw: GatewayPlan) -> dict[str, list[tuple[str, ...]]]:
    """Each backup tunnel of this gateway: the route lists it may carry for others."""
    found: dict[str, list[tuple[str, ...]]] = {}
    for link in gw.links:
        mine = link.end(gw.office.name)
        if mine.backup:
            found.setdefault(mine.backup, []).append(mine.routes)
    return found
