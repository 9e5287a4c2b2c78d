"""This host's network as the relay sees it: its addresses, the LAN interface's index,
the multicast groups joined there.  Interfaces come and go, so all of it is read
again now and then, and the classifiers told."""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Iterable
from typing import Any, Optional

from . import PROG
from .classify import LIMITED_BROADCAST, MARKER_SOURCE
from .config import Config
from .netinfo import IfNames, if_index, local_ipv4
from .ports import PortState

log = logging.getLogger(PROG)

LAN_CHECK_INTERVAL = 1.0  # seconds between checks that the LAN interface is the same one
REFRESH_INTERVAL = 10.0  # seconds between full re-reads of local addresses
IP_ADD_MEMBERSHIP = getattr(socket, "IP_ADD_MEMBERSHIP", 35)
IP_MREQN = struct.Struct("=4s4si")  # struct ip_mreqn { imr_multiaddr, imr_address, imr_ifindex }


class LocalNetwork:
    """Local addresses and the LAN interface, for the ports of one relay."""

    def __init__(
        self, ports: dict[int, PortState], config: Optional[Config], compat_dest: str = ""
    ):
        self.ports = ports  # the relay's (one dict, updated in place)
        self.config = config  # None: compat mode
        self.compat_dest = compat_dest  # compat mode's DEST
        self.lan_ifindex = 0
        self.local: frozenset[str] = frozenset()
        self.broadcasts: frozenset[str] = frozenset()
        self.ifnames = IfNames()  # shared by the classifiers (peer_interfaces)

    def own_set(self) -> frozenset[str]:
        """Where our own datagrams come from (the classifiers drop them as ``own``)."""
        if self.config is not None:
            return (
                self.config.own_addresses
                | self.local
                | frozenset(self.config.siblings)
                | {MARKER_SOURCE}  # our markers (repeat memory) come from there
            )
        return self.local

    def refresh(self, initial: bool = False) -> None:
        """Re-resolve the LAN ifindex and local addresses (interfaces come and go)."""
        try:
            local, bcast = local_ipv4()
        except OSError as exc:
            log.warning("cannot enumerate local addresses: %s", exc)
            local, bcast = self.local, self.broadcasts
        changed_addrs = local != self.local
        self.local, self.broadcasts = local, bcast
        self.ifnames.clear()  # re-learnt lazily (see IfNames)
        own = self.own_set()
        if self.config is not None:
            cfg = self.config
            index = if_index(cfg.lan_interface)
            if index != self.lan_ifindex or initial:
                if index:
                    log.info("LAN interface %s has ifindex %d", cfg.lan_interface, index)
                else:
                    log.warning(
                        "LAN interface %s not found; LAN broadcasts are not relayed until it"
                        " appears",
                        cfg.lan_interface,
                    )
                self.lan_ifindex = index
                self.join_groups()
            for ps in self.ports.values():
                ps.classifier.lan_ifindex = self.lan_ifindex
                ps.classifier.own = own
        else:
            for ps in self.ports.values():
                ps.classifier.own = own
                ps.classifier.dest_is_broadcast = self.compat_dest_is_broadcast()
                ps.classifier.broadcasts = frozenset(
                    socket.inet_aton(b) for b in bcast
                ) | frozenset((LIMITED_BROADCAST,))
        if changed_addrs and not initial:
            log.info("local addresses changed: %s", ", ".join(sorted(local)))

    def lan_moved(self) -> bool:
        """The LAN interface has another ifindex (recreated, or gone): refresh."""
        return self.config is not None and if_index(self.config.lan_interface) != self.lan_ifindex

    def join_groups(self, ports: Optional[Iterable[PortState]] = None) -> None:
        """Join each port's multicast groups on the LAN interface (again, if it changed)."""
        if not self.lan_ifindex:
            return
        for ps in ports if ports is not None else self.ports.values():
            if ps.sock is None or ps.rule is None:
                continue
            for group in ps.rule.multicast_groups:
                mreq = IP_MREQN.pack(socket.inet_aton(group), b"\0\0\0\0", self.lan_ifindex)
                try:
                    ps.sock.setsockopt(socket.IPPROTO_IP, IP_ADD_MEMBERSHIP, mreq)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:  # already a member
                        log.warning("udp/%d: cannot join %s: %s", ps.port, group, exc)

    def compat_dest_is_broadcast(self) -> bool:
        dest = self.compat_dest
        return dest == "255.255.255.255" or dest in self.broadcasts

    def check_peer_interfaces(self) -> None:
        """Log the peer interfaces that do not exist (yet); nothing else depends on it."""
        if self.config is None or self.config.peer_interfaces is None:
            return
        peers_by_if: dict[str, list[str]] = {}
        for peer, name in self.config.peer_interfaces.items():
            peers_by_if.setdefault(name, []).append(peer)
        for name, peers in sorted(peers_by_if.items()):
            if not if_index(name):
                log.warning(
                    "peer interface %s not found; datagrams from %s are dropped until it appears",
                    name,
                    ", ".join(sorted(peers)),
                )

    def lan_status(self) -> dict[str, Any]:
        cfg = self.config
        if cfg is None:  # compat mode knows no LAN
            return {}
        return {
            "interface": cfg.lan_interface,
            "ifindex": self.lan_ifindex,
            "address": cfg.lan.with_prefixlen,
            "broadcast": str(cfg.lan_broadcast),
        }
