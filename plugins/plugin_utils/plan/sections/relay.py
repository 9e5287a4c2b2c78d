# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The relay section: the relay's own configuration file (version 2), as is.

Keys are not here: the relay role writes them to ``keys_file`` from ``office_secrets``.
"""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import Any

from ..model import GatewayPlan

CONFIG_VERSION = 2
# Where the relay role puts the link keys (the relay reads them through systemd's
# credentials), where systemd keeps the relay's epoch and replay windows across
# restarts (StateDirectory=), and what it writes while it runs (RuntimeDirectory=).
KEYS_FILE = "/etc/sitelink/relay-keys.json"
STATE_DIR = "/var/lib/sitelink-relay"
STATUS_FILE = "/run/sitelink-relay/status.json"
METRICS_FILE = "/run/sitelink-relay/metrics.prom"


def section(gw: GatewayPlan) -> dict[str, Any]:
    office = gw.office
    used: set[str] = set()
    for port in gw.relay.values():
        used |= port.forward_to | port.accept_from | set(port.transit)
        for targets in port.transit.values():
            used |= targets
    # Every peer relay a rule names is at the other end of one of this gateway's links.
    # Its datagrams count only when they come out of the tunnel to it: a forged source
    # arriving from the Internet is dropped by the relay too.
    peers: dict[str, dict[str, str]] = {}
    for link in gw.links:
        peer = gw.peers[link.other(office.name).office]
        address = str(peer.lan.ip)
        if address in used:
            entry = {"office": peer.name, "interface": link.end(office.name).tunnel}
            if peer.relay_wire != gw.relay_wire:  # an external peer's own choice
                entry["wire"] = peer.relay_wire
            peers[address] = entry
    return {
        "version": CONFIG_VERSION,
        "office": office.name,
        "lan": {"interface": office.lan_interface, "address": office.lan.with_prefixlen},
        "own_addresses": [str(office.wan.ip)],
        "wire": gw.relay_wire,
        "keys_file": KEYS_FILE,
        "state_dir": STATE_DIR,
        "peers": {address: peers[address] for address in sorted(peers, key=IPv4Address)},
        "rules": [r.to_dict() for _unused, r in sorted(gw.relay.items())],
        "status_file": STATUS_FILE,
        "metrics_file": METRICS_FILE,
    }
