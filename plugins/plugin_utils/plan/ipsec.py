# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IPsec: one IKEv2 connection per protected link, protecting IP protocol 4.

ESP in transport mode between the link's two public addresses, for IPIP only:
the tunnel keeps doing the routing, IPsec only authenticates and encrypts it.
The pre-shared key is not here: the ipsec role finds it in ``office_secrets``
under the link's id.

A link is protected as the deployment says (``protection``), except a link to
an external peer, which follows that peer's own ``protection``: ``connections``
lists the protected links, ``unprotected`` the plain ones (their IPIP is not
inside ESP), and ``external`` how each external peer's link is protected and
keyed, for the texts and verify.yml (never a key). Links left plain are warned of
(``warnings``).
"""

from __future__ import annotations

from typing import Any, Optional

from .model import GatewayPlan, Office, link_protection

# ESP in transport mode, AES-GCM-16: 8 SPI+sequence, 8 IV, 16 ICV, 2 trailer, up to
# 3 padding; rounded up to 40 so the tunnel MTU stays a multiple of 4.
ESP_OVERHEAD = 40
# How an external peer's link is keyed, as the plan's texts show it.
OWN_KEY = "ipsec (own key)"
UNPROTECTED = "none (unprotected, warned)"


def warnings(
    protection: str, offices: list[Office], pairs: dict[tuple[str, str], Optional[int]]
) -> list[str]:
    """Plain IPIP links: office_tunnel_protection: none (one warning, naming the
    external peers that protect theirs anyway), else each external peer with
    protection: none."""
    if protection == "none":
        protected = sorted(o.name for o in offices if link_protection(protection, o) == "ipsec")
        return [
            "deployment (every office): office_tunnel_protection: none: every link "
            + (f"(but those to {', '.join(protected)}) " if protected else "")
            + "is plain IPIP, which anyone on the path can read, and anyone on the Internet "
            "can forge (RFC 2003 has no authentication)"
        ]
    found = []
    for office in offices:
        if office.external and office.protection == "none":
            ours = sorted(b if a == office.name else a for a, b in pairs if office.name in (a, b))
            found.append(
                f"{office.label()}: {office.where}.protection: none: its links"
                + (f" (from {', '.join(ours)})" if ours else "")
                + " are plain IPIP, which anyone on the path can read, and anyone on the "
                "Internet can forge (RFC 2003 has no authentication); give it a key of its "
                "own (psk) to protect them"
            )
    return found


def section(gw: GatewayPlan) -> dict[str, Any]:
    office = gw.office
    connections, unprotected, external = [], [], {}
    # Tunnels whose link state moves routes (two hubs): a backup, or backed up.
    ends = [lk.end(office.name) for lk in gw.links]
    failover = {e.backup for e in ends if e.backup} | {e.tunnel for e in ends if e.backup}
    for link in gw.links:
        peer = gw.peers[link.other(office.name).office]
        tunnel = link.end(office.name).tunnel
        protected = gw.protection_to(peer) == "ipsec"
        if peer.external:
            external[peer.name] = OWN_KEY if protected else UNPROTECTED
        if not protected:
            unprotected.append({"name": tunnel, "peer": peer.name, "remote": str(peer.wan.ip)})
            continue
        connection = {
            # The peer's tunnel name is unique on this gateway and readable in
            # `swanctl --list-sas`.
            "name": tunnel,
            "link": link.id,
            "peer": peer.name,
            "local": str(office.wan.ip),
            "remote": str(peer.wan.ip),
        }
        if tunnel in failover:
            connection["failover"] = True
        connections.append(connection)
    return {
        "protection": gw.protection,
        "connections": connections,
        "unprotected": unprotected,
        "external": external,
    }
