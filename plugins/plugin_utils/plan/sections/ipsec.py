# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ipsec section: one IKEv2 connection per protected link, protecting IP protocol 4.

ESP in transport mode between the link's two public addresses, for IPIP only:
the tunnel keeps doing the routing, IPsec only authenticates and encrypts it.
The pre-shared key is not here: the ipsec role finds it in ``office_secrets``
under the link's id.

A link is protected as the deployment says (``protection``), except a link to
an external peer, which follows that peer's own ``protection``: ``connections``
lists the protected links, ``unprotected`` the plain ones (their IPIP is not
inside ESP), and ``external`` how each external peer's link is protected and
keyed, for the texts and verify.yml (never a key).
"""

from __future__ import annotations

from typing import Any

from ..model import GatewayPlan

# How an external peer's link is keyed, as the plan's texts show it.
OWN_KEY = "ipsec (own key)"
UNPROTECTED = "none (unprotected, warned)"


def section(gw: GatewayPlan) -> dict[str, Any]:
    office = gw.office
    connections, unprotected, external = [], [], {}
    for link in gw.links:
        peer = gw.peers[link.other(office.name).office]
        tunnel = link.end(office.name).tunnel
        protected = gw.protection_to(peer) == "ipsec"
        if peer.external:
            external[peer.name] = OWN_KEY if protected else UNPROTECTED
        if not protected:
            unprotected.append({"name": tunnel, "peer": peer.name, "remote": str(peer.wan.ip)})
            continue
        connections.append(
            {
                # The peer's tunnel name is unique on this gateway and readable in
                # `swanctl --list-sas`.
                "name": tunnel,
                "link": link.id,
                "peer": peer.name,
                "local": str(office.wan.ip),
                "remote": str(peer.wan.ip),
            }
        )
    return {
        "protection": gw.protection,
        "connections": connections,
        "unprotected": unprotected,
        "external": external,
    }
