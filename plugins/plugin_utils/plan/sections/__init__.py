# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One gateway's plan, section by section: what each role takes as its input.

``gateway_dict`` assembles ``office_plan``; each section is a pure function of
the gateway's ``GatewayPlan`` and is tested on its own. Nothing here holds a
key: those travel in ``office_secrets`` (see ``secrets``).
"""

from __future__ import annotations

from typing import Any

from ..model import GatewayPlan
from . import firewall, ipsec, relay, tunnels


def gateway_dict(gw: GatewayPlan) -> dict[str, Any]:
    office = gw.office
    lan_address = str(office.lan.ip)
    return {
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
            "address": lan_address,
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
        "masquerade": {
            "interface": office.lan_interface,
            "address": lan_address,
            "sources": list(gw.masquerade_sources),
        },
        "relay": relay.section(gw),
    }
