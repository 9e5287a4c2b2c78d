# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One gateway's plan as the roles take it (``office_plan``), declared in
``contract.OFFICE_PLAN``: the gateway's own facts, then each feature's section
(``tunnels``, ``ipsec``, ``firewall``, ``masquerade``, ``relay``), each a pure
function of the gateway's ``GatewayPlan`` and tested on its own.

Nothing in it belongs to another gateway, and nothing holds a key: those travel in
``office_secrets`` (see ``secrets``).
"""

from __future__ import annotations

from typing import Any

from ansible_collections.sitelink.gateway.plugins.module_utils import contract

from . import firewall, ipsec, masquerade, relay, tunnels
from .model import GatewayPlan, NetworkPlan


def office_plan(plan: NetworkPlan, host: str) -> dict[str, Any]:
    """The plan of the gateway of inventory host ``host`` (``office_plan``)."""
    return gateway_plan(plan.gateways[host])


def gateway_plan(gw: GatewayPlan) -> dict[str, Any]:
    """``office_plan`` of one gateway."""
    office = gw.office
    return {
        "contract": contract.VERSION,
        "office": office.name,
        "role": office.role,
        "peers": [link.other(office.name).office for link in gw.links],
        # The peer's LAN address is what verify.yml pings through the tunnel. It
        # lives here, not on the tunnel: ``tunnels`` is the ipip_tunnel input as is.
        "links": [
            {
                "id": link.id,
                "offices": [link.a.office, link.b.office],
                "peer": link.other(office.name).office,
                "peer_address": str(gw.peers[link.other(office.name).office].lan.ip),
                "tunnel": link.end(office.name).tunnel,
            }
            for link in gw.links
        ],
        "lan": {
            "interface": office.lan_interface,
            "address": str(office.lan.ip),
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
        "protection": gw.protection,
        "rollback_timeout": gw.rollback_timeout,
        "tunnels": tunnels.section(gw),
        "ipsec": ipsec.section(gw),
        "firewall": firewall.section(gw),
        "masquerade": masquerade.section(gw),
        "relay": relay.section(gw),
    }
