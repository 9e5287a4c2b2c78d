"""What to do with one received datagram: a verdict, and nothing else."""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Optional

from .config import Config, Rule, transit_targets
from .netinfo import IfNames, ip_to_int

# Verdicts.  FORWARDED, REBROADCAST, TRANSIT and REBROADCAST_TRANSIT are actions;
# everything else is a drop reason.
FORWARDED = "forwarded"
REBROADCAST = "rebroadcast"
TRANSIT = "transit"  # peer datagram passed on to the rule's transit peers for that source
REBROADCAST_TRANSIT = "rebroadcast+transit"  # both of the above
SIBLING = "sibling"  # a heartbeat of another relay of our office on our LAN
DROP_OWN = "own"  # sent by this gateway (incl. our own re-broadcasts looping back)
DROP_FOREIGN = "foreign"  # neither a LAN broadcast nor a unicast from an accepted/transit peer
DROP_WRONG_INTERFACE = "wrong_interface"  # broadcast that did not arrive on the LAN interface
DROP_PEER_INTERFACE = "peer_interface"  # peer unicast not on that peer's tunnel interface
DROP_ECHO = "echo"  # payload identical to one we re-broadcast moments ago
DROP_TRUNCATED = "truncated"  # larger than the receive buffer (cannot happen for IPv4)
DROP_PEER_BROADCAST = "peer_broadcast"  # peer datagram addressed to a broadcast/multicast
DROP_NO_FORWARD_TO = "no_forward_to"  # LAN broadcast on a port with no forward_to peers
DROP_SAME_DESTINATION = "same_destination"  # compat: already addressed to DEST
DROP_REASONS = (
    DROP_OWN,
    DROP_FOREIGN,
    DROP_WRONG_INTERFACE,
    DROP_PEER_INTERFACE,
    DROP_ECHO,
    DROP_TRUNCATED,
    DROP_PEER_BROADCAST,
    DROP_NO_FORWARD_TO,
    DROP_SAME_DESTINATION,
)

LIMITED_BROADCAST = b"\xff\xff\xff\xff"

ECHO_WINDOW = 2.0  # seconds a re-broadcast payload is remembered for echo suppression
ECHO_MAX_ENTRIES = 4096
IN_LAN_CACHE_MAX = 4096


class EchoMemory:
    """Digests of payloads we re-broadcast recently, each remembered for ``window`` s.

    ``seen`` costs nothing (no hashing) when nothing was re-broadcast within the window.
    """

    __slots__ = ("window", "_entries", "_until")

    def __init__(self, window: float = ECHO_WINDOW):
        self.window = window
        # insertion order == expiry order; OrderedDict drops its oldest entry in O(1)
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._until = 0.0  # expiry of the newest entry

    @staticmethod
    def digest(payload: Any) -> bytes:
        return hashlib.blake2b(payload, digest_size=16).digest()

    def remember(self, payload: Any, now: float) -> None:
        entries = self._entries
        if len(entries) >= ECHO_MAX_ENTRIES:
            self._prune(now)
        key = self.digest(payload)
        entries.pop(key, None)  # keep insertion order == expiry order
        self._until = entries[key] = now + self.window

    def active(self, now: float) -> bool:
        if not self._until:
            return False
        if now >= self._until:
            self._entries.clear()
            self._until = 0.0
            return False
        return True

    def seen(self, payload: Any, now: float) -> bool:
        if not self.active(now):
            return False
        expiry = self._entries.get(self.digest(payload))
        return expiry is not None and expiry > now

    def _prune(self, now: float) -> None:
        """Forget expired entries, and the oldest ones while the memory is full."""
        entries = self._entries
        popitem = entries.popitem
        while entries:
            key = next(iter(entries))
            if entries[key] > now and len(entries) < ECHO_MAX_ENTRIES:
                break
            popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class Classifier:
    """Decide what to do with one datagram received on one rule's port.

    Inputs are what recvmsg/IP_PKTINFO report: source address (str), arrival ifindex,
    header destination address (4 packed bytes).  Returns FORWARDED, REBROADCAST,
    TRANSIT, REBROADCAST_TRANSIT or a drop reason.  A peer unicast is re-broadcast if
    its source is in ``accept_from`` and passed on (by the relay, to the targets of
    ``transit_targets(transit)``) if its source is a transit source.  The only state
    is the echo memory (filled when the verdict includes a re-broadcast) and
    ``own``/``lan_ifindex``, which the relay refreshes.

    With ``peer_interfaces`` (peer -> interface name), a peer unicast that did not
    arrive on its peer's interface is dropped as DROP_PEER_INTERFACE; ``ifnames``
    (shared by the relay's classifiers) turns the arrival ifindex into a name.
    """

    __slots__ = (
        "lan_ifindex",
        "own",
        "accept_from",
        "transit_from",
        "has_forward_to",
        "echo",
        "ifnames",
        "_peers",
        "_raw_peers",
        "_groups",
        "_siblings",
        "_lan_ip",
        "_in_lan",
        "_peer_if",
        "_ifn",
        "_net",
        "_mask",
        "_bcast",
    )

    def __init__(
        self,
        lan: ipaddress.IPv4Interface,
        lan_ifindex: int,
        own: frozenset[str],
        accept_from: frozenset[str],
        has_forward_to: bool,
        echo_window: float = ECHO_WINDOW,
        transit: Optional[dict[str, Iterable[str]]] = None,
        peer_interfaces: Optional[dict[str, str]] = None,
        ifnames: Optional[IfNames] = None,
        multicast_groups: Iterable[str] = (),
        raw_peers: Optional[Iterable[str]] = None,
        siblings: Iterable[str] = (),
    ):
        self.lan_ifindex = lan_ifindex
        self.own = own
        self.accept_from = accept_from
        # sources the relay passes on; same filtering as PortState.transit
        self.transit_from = frozenset(transit_targets(transit or {}))
        self.has_forward_to = has_forward_to
        self.echo = EchoMemory(echo_window)
        # peer source -> verdict for its unicasts: one dict lookup in the hot path
        self._peers: dict[str, str] = {}
        for src in accept_from:
            self._peers[src] = REBROADCAST_TRANSIT if src in self.transit_from else REBROADCAST
        for src in self.transit_from.difference(accept_from):
            self._peers[src] = TRANSIT
        self.ifnames = ifnames if ifnames is not None else IfNames()
        self._ifn = self.ifnames.names
        # peer source -> the name its arrival interface must have (None, for a source
        # missing from peer_interfaces, matches no name); no dict: no interface check
        self._peer_if: Optional[dict[str, Optional[str]]] = None
        if peer_interfaces is not None:
            self._peer_if = {src: peer_interfaces.get(src) for src in self._peers}
        # Payload echo memory is for raw peers only (None: every peer is raw).  The
        # authenticated wire knows each datagram's origin and sequence instead, so two
        # offices broadcasting identical bytes both get through.
        self._raw_peers = None if raw_peers is None else frozenset(raw_peers)
        self._groups = frozenset(socket.inet_aton(g) for g in multicast_groups)
        # Siblings count as our own addresses (their re-broadcasts are not LAN traffic);
        # only their unicasts to us are something: heartbeats.
        self._siblings = frozenset(siblings)
        self._lan_ip = lan.ip.packed
        self._in_lan: dict[str, bool] = {}  # a LAN has few broadcasting hosts: remember
        self._net = int(lan.network.network_address)
        self._mask = int(lan.network.netmask)
        self._bcast = lan.network.broadcast_address.packed

    @classmethod
    def for_rule(
        cls,
        config: Config,
        rule: Rule,
        lan_ifindex: int,
        own: Optional[frozenset[str]] = None,
        ifnames: Optional[IfNames] = None,
    ) -> Classifier:
        return cls(
            config.lan,
            lan_ifindex,
            config.own_addresses if own is None else own,
            rule.accept_from,
            bool(rule.forward_to),
            transit=rule.transit,
            peer_interfaces=config.peer_interfaces,
            ifnames=ifnames,
            multicast_groups=rule.multicast_groups,
            raw_peers=[a for a in config.peers if config.peer_wire(a) == "raw"]
            if config.version >= 2
            else None,
            siblings=config.siblings,
        )

    def in_lan(self, src: str) -> bool:
        inside = self._in_lan.get(src)
        if inside is None:
            try:
                inside = (ip_to_int(src) & self._mask) == self._net
            except OSError:
                inside = False
            if len(self._in_lan) >= IN_LAN_CACHE_MAX:  # spoofed sources: start over
                self._in_lan.clear()
            self._in_lan[src] = inside
        return inside

    def classify(
        self,
        payload: Any,
        src: str,
        ifindex: int,
        dst: bytes,
        truncated: bool = False,
        now: Optional[float] = None,
    ) -> str:
        if truncated:
            return DROP_TRUNCATED
        if src in self.own:
            if src in self._siblings and dst == self._lan_ip and ifindex == self.lan_ifindex:
                return SIBLING
            return DROP_OWN
        peer = self._peers.get(src)
        if dst == self._bcast or dst == LIMITED_BROADCAST or dst in self._groups:
            if peer is not None:
                return DROP_PEER_BROADCAST
            if ifindex != self.lan_ifindex:
                return DROP_WRONG_INTERFACE
            if not self.in_lan(src):
                return DROP_FOREIGN
            if not self.has_forward_to:
                return DROP_NO_FORWARD_TO
            if self.echo._until:
                if now is None:
                    now = time.monotonic()
                if self.echo.seen(payload, now):
                    return DROP_ECHO
            return FORWARDED
        if peer is not None:
            if dst[:1] >= b"\xe0":  # multicast or class E: not a unicast to us
                return DROP_PEER_BROADCAST
            peer_if = self._peer_if
            if peer_if is not None:
                name = self._ifn.get(ifindex)
                if name is None:
                    name = self.ifnames.resolve(ifindex)
                if name != peer_if[src]:  # e.g. forged source, arrived from the WAN
                    return DROP_PEER_INTERFACE
            if peer != TRANSIT and (self._raw_peers is None or src in self._raw_peers):
                # re-broadcast on our LAN as is: remember it for echoes
                self.echo.remember(payload, time.monotonic() if now is None else now)
            return peer
        return DROP_FOREIGN


class CompatClassifier:
    """The article's ``udp-proxy PORT DEST`` rule, with a working loop filter.

    Everything received is forwarded to DEST, except datagrams from our own addresses,
    datagrams already addressed to DEST, and (when DEST is a broadcast address) echoes
    of payloads we just sent and datagrams that were themselves broadcasts: a relay
    whose DEST is 255.255.255.255 would otherwise hear its LAN's broadcasts (sent to
    the LAN's own broadcast address) and send every one of them out again.
    """

    __slots__ = ("own", "dest", "dest_is_broadcast", "echo", "broadcasts")

    def __init__(
        self,
        own: frozenset[str],
        dest: str,
        dest_is_broadcast: bool,
        echo_window: float = ECHO_WINDOW,
        broadcasts: frozenset[str] = frozenset(),
    ):
        self.own = own
        self.dest = socket.inet_aton(dest)
        self.dest_is_broadcast = dest_is_broadcast
        self.echo = EchoMemory(echo_window)
        # this host's broadcast addresses, packed (the relay refreshes them)
        self.broadcasts = frozenset(socket.inet_aton(b) for b in broadcasts) | {LIMITED_BROADCAST}

    def classify(
        self,
        payload: Any,
        src: str,
        ifindex: int,
        dst: bytes,
        truncated: bool = False,
        now: Optional[float] = None,
    ) -> str:
        if truncated:
            return DROP_TRUNCATED
        if src in self.own:
            return DROP_OWN
        if dst == self.dest:
            return DROP_SAME_DESTINATION
        if self.dest_is_broadcast:
            if dst in self.broadcasts or dst[:1] >= b"\xe0":
                return DROP_SAME_DESTINATION  # a broadcast already: it is on some LAN
            if now is None:
                now = time.monotonic()
            if self.echo.seen(payload, now):
                return DROP_ECHO
            self.echo.remember(payload, now)
        return FORWARDED
