# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ipsec section: one IKEv2 connection per link, protecting IP protocol 4.

ESP in transport mode between the link's two public addresses, for IPIP only:
the tunnel keeps doing the routing, IPsec only authenticates and encrypts it.
The pre-shared key is not here: the ipsec role finds it in ``office_secrets``
under the link's id.
"""

from __future__ import annotations

from typing import Any

from ..model import GatewayPlan


def section(gw: GatewayPlan) -> dict[str, Any]:
    office = gw.office
    connections = []
    if gw.protection == "ipsec":
        for link in gw.links:
            peer = gw.peers[link.other(office.name).office]
            connections.append(
                {
                    # The peer's tunnel name is unique on this gateway and readable in
                    # `swanctl --list-sas`.
                    "name": link.end(office.name).tunnel,
                    "link": link.id,
                    "peer": peer.name,
                    "local": str(office.wan.ip),
                    "remote": str(peer.wan.ip),
                }
            )
    return {"protection": gw.protection, "connections": connections}
