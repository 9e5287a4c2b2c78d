# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The relay section: the relay's own configuration file, as is."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from ..model import GatewayPlan


def section(gw: GatewayPlan) -> dict[str, Any]:
    office = gw.office
    used: set[str] = set()
    for port in gw.relay.values():
        used |= port.forward_to | port.accept_from | set(port.transit)
        for targets in port.transit.values():
            used |= targets
    tunnels = {
        str(gw.peers[link.other(office.name).office].lan.ip): link.end(office.name).tunnel
        for link in gw.links
    }
    return {
        "version": 1,
        "lan": {"interface": office.lan_interface, "address": office.lan.with_prefixlen},
        "own_addresses": [str(office.wan.ip)],
        "wire": "raw",
        # A peer relay's datagrams count only when they come out of the tunnel to that
        # peer: a forged source arriving from the Internet is dropped by the relay too.
        "peer_interfaces": {
            addr: tunnels[addr] for addr in sorted(used, key=IPv4Address) if addr in tunnels
        },
        "rules": [r.to_dict() for _, r in sorted(gw.relay.items())],
    }
