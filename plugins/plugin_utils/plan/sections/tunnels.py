# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tunnels section: one IPIP tunnel per link, as ``ipip_tunnel`` takes them."""

from __future__ import annotations

from typing import Any

from ..model import TUNNEL_TTL, GatewayPlan


def section(gw: GatewayPlan) -> list[dict[str, Any]]:
    office = gw.office
    tunnels = []
    for link in gw.links:
        mine, theirs = link.end(office.name), gw.peers[link.other(office.name).office]
        tunnels.append(
            {
                "name": mine.tunnel,
                "local": str(office.wan.ip),
                "remote": str(theirs.wan.ip),
                "address": str(office.lan.ip),
                "routes": list(mine.routes),
                "mtu": link.mtu,
                "ttl": TUNNEL_TTL,
                "description": f"peer {theirs.name}",
            }
        )
    return tunnels
