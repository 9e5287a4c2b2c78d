# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The firewall: what the gateway's own nftables table is built from.

Everything comes from the links: who may speak IPIP, IKE and ESP to this
gateway (the link peers' public addresses), what may come out of each tunnel
(the prefixes routed over it), who may reach the relay through it (the peer's
relay address), and every office LAN, which never arrives from the Internet.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from . import routing
from . import tunnels as tunnels_plan
from .model import GatewayPlan


def _peers(gw: GatewayPlan, protection: str) -> list[str]:
    """Public addresses of the link peers whose link has ``protection``."""
    return sorted(
        {str(p.wan.ip) for p in gw.peers.values() if gw.protection_to(p) == protection},
        key=ipaddress.IPv4Address,
    )


def section(gw: GatewayPlan) -> dict[str, Any]:
    office = gw.office
    tunnels = []
    backed_up = tunnels_plan.backed_up(gw)
    for link in gw.links:
        peer = gw.peers[link.other(office.name).office]
        name = link.end(office.name).tunnel
        sources = link.end(office.name).routes
        if name in backed_up:
            # A backup tunnel also brings what the tunnels it backs up would (two hubs).
            sources = routing.merge(sources, *backed_up[name])
        tunnels.append(
            {
                "name": name,
                # What leaves this tunnel must come from a LAN routed over it.
                "sources": list(sources),
                "relay_peer": str(peer.lan.ip),
                "mtu": link.mtu,
            }
        )
    return {
        "wan_interface": office.wan_interface,
        "lan_interface": office.lan_interface,
        "protection": gw.protection,
        "input_policy": office.firewall_input_policy,
        "forward_policy": office.firewall_forward_policy,
        "management_sources": list(office.management_sources),
        "link_peers": sorted({str(p.wan.ip) for p in gw.peers.values()}, key=ipaddress.IPv4Address),
        # Links whose protection differs from the deployment's (external peers' own
        # choice): whose IPIP must come out of ESP, and whose may come without it.
        "ipsec_peers": _peers(gw, "ipsec"),
        "plain_peers": _peers(gw, "none"),
        "office_lans": list(gw.office_lans),  # collapsed by the planner
        "tunnels": tunnels,
        "relay_ports": sorted(gw.relay),
    }
