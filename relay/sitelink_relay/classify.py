"""What to do with one received datagram: a verdict, and nothing else."""

from __future__ import annotations

import ipaddress
import socket
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Optional
from zlib import crc32

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
DROP_REPEATED = "repeated"  # a LAN host repeating what we just re-broadcast (a repeater)
DROP_TRUNCATED = "truncated"  # larger than the receive buffer (cannot happen for IPv4)
DROP_PEER_BROADCAST = "peer_broadcast"  # peer datagram addressed to a broadcast/multicast
DROP_NO_FORWARD_TO = "no_forward_to"  # LAN broadcast on a port with no forward_to peers
DROP_SAME_DESTINATION = "same_destination"  # compat: already addressed to DEST
DROP_REASONS = (
    DROP_OWN,
    DROP_FOREIGN,
    DROP_WRONG_INTERFACE,
    DROP_PEER_INTERFACE,
    DROP_REPEATED,
    DROP_TRUNCATED,
    DROP_PEER_BROADCAST,
    DROP_NO_FORWARD_TO,
    DROP_SAME_DESTINATION,
)

LIMITED_BROADCAST = b"\xff\xff\xff\xff"

# A LAN broadcast carrying a payload we re-broadcast on that LAN less than this long
# ago is a repeater's echo (a host or bridge that re-sends what it hears), unless its
# source is one of that payload's own senders (see RepeatMemory).  Repeaters answer
# in milliseconds; the window is short so that a host whose own beacon happens to
# carry the same bytes as another office's is rarely inside it (and, once outside,
# is learnt as a sender for good).
REPEAT_WINDOW = 0.25
REPEAT_MAX_ENTRIES = 4096
# A LAN host that broadcast a payload while we had not just re-broadcast the same
# bytes is one of its senders for this long (refreshed with each copy).
SENDER_MEMORY = 30.0
SENDER_MAX_ENTRIES = 4096
# Re-broadcasts count for echoes once they are on the LAN: when the relay reads back
# the marker it sends itself just before them (see RepeatMemory), or after this long.
PENDING_MAX = 0.05
MAX_MARKERS = 64  # markers on their way at once (more: the oldest is taken as lost)
MARKER_SOURCE = "127.0.0.1"
IN_LAN_CACHE_MAX = 4096


def payload_key(payload: Any) -> int:
    """A payload's fingerprint for the repeat memory: CRC-32 and length (cheap: it is
    taken for every re-broadcast).  Only peers' datagrams are remembered, so nobody on
    a LAN can plant a collision; a chance one drops one datagram in 2**32."""
    return crc32(payload) | (len(payload) << 32)


class RepeatMemory:
    """What we re-broadcast on the LAN lately, to tell a repeater's echo from a beacon.

    ``remember`` is given each batch's re-broadcast payloads, ``repeated`` every LAN
    broadcast about to be forwarded while something was re-broadcast in the last
    SENDER_MEMORY seconds (else ``quiet``).  A payload re-broadcast less than
    ``window`` seconds ago is an echo when a LAN host sends it, unless that host is
    one of the payload's own senders: a host that broadcast those bytes while we had
    not just re-broadcast them (the same discovery request sent at two offices, a
    periodic announcement), learnt for SENDER_MEMORY seconds and refreshed with
    each copy.  A host heard while we re-broadcast nothing at all gets that benefit
    once, for its first copy that matches (its beacon may have been on its way when
    the other office's identical one arrived).  A pure repeater's copies always
    follow our re-broadcasts, so it is never a sender, and gets at most that one pass
    after each quiet spell.

    Causality: a copy that reached us before our re-broadcast was sent cannot be its
    echo.  Remembered payloads stay pending until ``activate``: right before it sends
    them, the relay sends itself a marker (from 127.0.0.1) numbered by ``mark``, and
    activates what that number covers when it reads the marker back; whatever it
    read before the marker was queued before the re-broadcasts left, and a repeater's
    echo can only come after it.  (A lost marker: PENDING_MAX.)
    While nothing is re-broadcast, LAN broadcasts are not hashed: ``quiet`` only
    notes their sources (a one-way port pays one set lookup per datagram).
    """

    __slots__ = (
        "window",
        "_entries",
        "_expiries",
        "_current",
        "_current_since",
        "_batches",
        "_gen",
        "_senders",
        "_quiet",
        "_until",
        "_learn_until",
    )

    def __init__(self, window: float = REPEAT_WINDOW):
        self.window = window
        self._entries: dict[int, float] = {}  # payload key -> expiry (on the LAN)
        self._expiries: deque[tuple[float, list[int]]] = deque()  # the same, by expiry
        # re-broadcast, not known to be on the LAN yet: since the last marker, and
        # behind each marker still on its way, (its number, when, keys), oldest first
        self._current: list[int] = []
        self._current_since = 0.0
        self._batches: deque[tuple[int, float, list[int]]] = deque()
        self._gen = 0  # the next marker's number
        self._senders: dict[tuple[str, int], float] = {}  # (source, key) -> expiry
        self._quiet: set[str] = set()  # sources heard while nothing was re-broadcast
        self._until = 0.0  # expiry of the newest entry
        self._learn_until = 0.0  # senders are learnt until then (0.0: nothing to do)

    def remember(self, payloads: Iterable[Any], now: float) -> None:
        """The payloads of a batch's re-broadcasts (one call per batch)."""
        current = self._current
        if not current:
            self._current_since = now
        elif len(current) >= REPEAT_MAX_ENTRIES:
            self.activate(now)  # bounded (without markers: tests)
            self._current_since = now
        current.extend([crc32(p) | (len(p) << 32) for p in payloads])  # payload_key
        self._learn_until = now + SENDER_MEMORY

    @property
    def unmarked(self) -> bool:
        """Re-broadcasts remembered since the last marker."""
        return bool(self._current)

    def mark(self) -> int:
        """The number of the marker that goes out before the re-broadcasts pending now."""
        gen = self._gen
        self._gen = gen + 1
        batches = self._batches
        batches.append((gen, self._current_since, self._current))
        self._current = []
        if len(batches) > MAX_MARKERS:  # markers lost (a full queue): do not wait for them
            self.activate(self._current_since, batches[0][0])
        return gen

    def activate(self, now: float, gen: Optional[int] = None) -> None:
        """What marker ``gen`` covers (None: everything pending) is on the LAN now:
        echoes of it count from here."""
        batches = self._batches
        entries = self._entries
        expiries = self._expiries
        expiry = now + self.window
        while batches and (gen is None or batches[0][0] <= gen):
            keys = batches.popleft()[2]
            entries.update(dict.fromkeys(keys, expiry))
            expiries.append((expiry, keys))
        if gen is None and self._current:
            entries.update(dict.fromkeys(self._current, expiry))
            expiries.append((expiry, self._current))
            self._current = []
        self._until = expiry
        if len(entries) > REPEAT_MAX_ENTRIES:  # the oldest go (expired ones first)
            while len(expiries) > 1 and len(entries) > REPEAT_MAX_ENTRIES:  # not the newest
                old, keys = expiries.popleft()
                for k in keys:
                    if entries.get(k) == old:  # not re-broadcast again since
                        del entries[k]

    @property
    def pending(self) -> bool:
        return bool(self._current or self._batches)

    def _oldest_pending(self) -> float:
        return self._batches[0][1] if self._batches else self._current_since

    def quiet(self, src: str) -> None:
        quiet = self._quiet
        if src not in quiet:
            if len(quiet) >= SENDER_MAX_ENTRIES:
                quiet.clear()
            quiet.add(src)

    def repeated(self, payload: Any, src: str, now: float) -> bool:
        """Whether ``src``'s LAN broadcast of ``payload`` is an echo of ours."""
        if now >= self._learn_until:  # nothing re-broadcast for SENDER_MEMORY: forget all
            self._entries.clear()
            self._expiries.clear()
            self._senders.clear()
            self._batches.clear()
            self._current = []
            self._learn_until = self._until = 0.0
            self.quiet(src)
            return False
        if (self._batches or self._current) and now - self._oldest_pending() > PENDING_MAX:
            self.activate(self._oldest_pending() + PENDING_MAX)  # the marker got lost
        key = payload_key(payload)
        senders = self._senders
        sender = (src, key)
        if now < self._until:
            expiry = self._entries.get(key)
            if expiry is not None and expiry > now:
                learnt = senders.get(sender)
                if learnt is None or learnt <= now:
                    if src not in self._quiet:
                        return True
                    # It broadcast while we re-broadcast nothing: its own beacon, this
                    # once (learnt below); a repeater gets no second pass.
                    self._quiet.discard(src)
        if len(senders) >= SENDER_MAX_ENTRIES and sender not in senders:
            self._prune(senders, now)
        senders[sender] = now + SENDER_MEMORY
        return False

    @staticmethod
    def _prune(entries: dict, now: float) -> None:
        """Forget expired entries, and the oldest half if that is not enough."""
        expired = [k for k, t in entries.items() if t <= now]
        if len(entries) - len(expired) >= SENDER_MAX_ENTRIES // 2:
            expired = list(entries)[: len(entries) // 2 or 1]
        for k in expired:
            del entries[k]

    def __len__(self) -> int:
        return len(self._entries) + len(self._current) + sum(len(b[2]) for b in self._batches)


class Classifier:
    """Decide what to do with one datagram received on one rule's port.

    Inputs are what recvmsg/IP_PKTINFO report: source address (str), arrival ifindex,
    header destination address (4 packed bytes).  Returns FORWARDED, REBROADCAST,
    TRANSIT, REBROADCAST_TRANSIT or a drop reason.  A peer unicast is re-broadcast if
    its source is in ``accept_from`` and passed on (by the relay, to the targets of
    ``transit_targets(transit)``) if its source is a transit source.  The only state
    is the repeat memory (which the relay fills with what it re-broadcasts, once a
    peer's datagram passed the wire's checks) and ``own``/``lan_ifindex``, which the
    relay refreshes.

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
        "repeat",
        "ifnames",
        "_peers",
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
        repeat_window: float = REPEAT_WINDOW,
        transit: Optional[dict[str, Iterable[str]]] = None,
        peer_interfaces: Optional[dict[str, str]] = None,
        ifnames: Optional[IfNames] = None,
        multicast_groups: Iterable[str] = (),
        siblings: Iterable[str] = (),
    ):
        self.lan_ifindex = lan_ifindex
        self.own = own
        self.accept_from = accept_from
        # sources the relay passes on; same filtering as PortState.transit
        self.transit_from = frozenset(transit_targets(transit or {}))
        self.has_forward_to = has_forward_to
        self.repeat = RepeatMemory(repeat_window)
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
            repeat = self.repeat
            if repeat._learn_until:  # something was re-broadcast lately
                if now is None:
                    now = time.monotonic()
                if repeat.repeated(payload, src, now):
                    return DROP_REPEATED
            elif src not in repeat._quiet:
                repeat.quiet(src)
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
            return peer
        return DROP_FOREIGN


class CompatClassifier:
    """The article's ``udp-proxy PORT DEST`` rule, with a working loop filter.

    Everything received is forwarded to DEST, except datagrams from our own addresses
    (our own sends, which come back to us: told by where they come from, never by
    what they say, so a peer's repeated beacon is always relayed) and datagrams
    already addressed to DEST.  When DEST is a broadcast address, datagrams that were
    themselves broadcasts are not forwarded either: a relay whose DEST is
    255.255.255.255 would otherwise hear its LAN's broadcasts (sent to the LAN's own
    broadcast address) and send every one of them out again.
    """

    __slots__ = ("own", "dest", "dest_is_broadcast", "broadcasts")

    def __init__(
        self,
        own: frozenset[str],
        dest: str,
        dest_is_broadcast: bool,
        broadcasts: frozenset[str] = frozenset(),
    ):
        self.own = own
        self.dest = socket.inet_aton(dest)
        self.dest_is_broadcast = dest_is_broadcast
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
        if self.dest_is_broadcast and (dst in self.broadcasts or dst[:1] >= b"\xe0"):
            return DROP_SAME_DESTINATION  # a broadcast already: it is on some LAN
        return FORWARDED
