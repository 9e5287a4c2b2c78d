"""The hot path: read a port's datagrams, act on each one's verdict, queue what leaves.

The classifier says what a datagram is (classify.py): a LAN broadcast goes to the
forward_to peers; a peer relay's datagram has its envelope checked (wire.py), then
is re-broadcast on the LAN and/or passed on to transit peers; a sibling's heartbeat
goes to the siblings' part; anything else is counted as dropped.  egress.py sends.

What a datagram needs is an attribute of ``Datapath`` itself, or a local bound once
per batch: each further object in the way costs a lookup per datagram.
"""

from __future__ import annotations

import hmac
import logging
import socket
import time
from typing import Any, Callable, Optional

from . import PROG, wire
from .classify import (
    DROP_OWN,
    FORWARDED,
    LIMITED_BROADCAST,
    MARKER_SOURCE,
    REBROADCAST,
    REBROADCAST_TRANSIT,
    SIBLING,
    TRANSIT,
)
from .egress import MARKER_NUMBER, MARKER_SIZE, MARKER_TOKEN, Egress, errname
from .ports import PeerState, PortState
from .statedir import StateDir
from .stormguard import StormGuard

log = logging.getLogger(PROG)

BATCHES = 8  # batches read from one socket before looking at the others
# Datagrams sent per handle_readable call at most, counted as what a LAN broadcast
# becomes (one per forward_to peer): a hub with 1000 peers reads 32 broadcasts, not 8
# batches of 64 (two seconds of work), so that timers (siblings' heartbeats, the
# watchdog), signals and the other ports get their turn within about 0.1 s.  Not
# fewer: a run of same-size broadcasts goes to each peer as one segmented send, the
# cheaper the longer.  A relay with up to 64 peers reads 8 full batches, as ever.
SEND_BUDGET = 8 * 64 * 64
DROP_STANDBY = "standby"  # another relay of this office relays it
DROP_TOO_BIG = "too_big"  # a LAN datagram too big for the envelope (over 65467 bytes)
DROP_GROUP = "group"  # a peer's multicast datagram for a group this port does not relay

# Bound once (a module attribute costs a lookup each time).
_unpack_header = wire.HEADER.unpack_from
_compare_digest = hmac.compare_digest
_MAGIC, _VERSION = wire.MAGIC, wire.VERSION
_HEADER_SIZE, _OVERHEAD, _MAX_PAYLOAD = wire.HEADER_SIZE, wire.OVERHEAD, wire.MAX_PAYLOAD
_NO_GROUP, _KIND_BROADCAST = wire.NO_GROUP, wire.KIND_BROADCAST
_LEASE = wire.LEASE
_EPOCH_DROPS = frozenset((wire.DROP_STALE, wire.DROP_FUTURE))
_PEER_VERDICTS = frozenset((REBROADCAST, TRANSIT, REBROADCAST_TRANSIT))

SiblingHandler = Callable[[PortState, Any, str, float], None]


def envelope_kind(dst: bytes) -> tuple[int, bytes]:
    """Envelope kind and group of a LAN datagram, from its header destination."""
    if dst == LIMITED_BROADCAST:
        return wire.KIND_LIMITED, wire.NO_GROUP
    if dst[:1] >= b"\xe0":
        return wire.KIND_MULTICAST, dst
    return wire.KIND_BROADCAST, wire.NO_GROUP


def _no_sibling(ps: PortState, payload: Any, src: str, now: float) -> None:
    """No siblings part (yet): a heartbeat is refused as malformed."""
    ps.dropped[wire.DROP_MALFORMED] = ps.dropped.get(wire.DROP_MALFORMED, 0) + 1


class Datapath:
    """Per-datagram work of all ports, and the state it reads (set by the relay)."""

    def __init__(
        self,
        peers: dict[str, PeerState],
        state: StateDir,
        egress: Egress,
        storm_guard: StormGuard,
        debug: bool = False,
    ):
        self.peers = peers  # the relay's (one dict, updated in place)
        self.state = state  # the replay windows, and their leases
        self._windows = state.replay.windows  # the same dict, two lookups closer
        self.egress = egress
        self.storm_guard = storm_guard
        # heartbeats go to the siblings' part (set by the relay; it needs this one)
        self.from_sibling: SiblingHandler = _no_sibling
        self.debug = debug
        self.standby = False  # another relay of this office relays (siblings.py)
        self.sealer: Optional[wire.Sealer] = None  # None: the raw wire
        self.office_id: Optional[bytes] = None
        self.sender_id = b"\0\0\0\0"
        self.lan_dest = ""  # the LAN's broadcast address (re-broadcasts)

    def handle_readable(self, ps: PortState) -> None:
        """Read what the socket has (a few batches, SEND_BUDGET at most), act on each
        datagram, send in batches."""
        rx = ps.rx
        send = self.egress.send
        fan = max(1, len(ps.fwd_raw) + len(ps.fanout.peers))  # a LAN broadcast's sends
        budget = SEND_BUDGET
        for _unused in range(BATCHES):
            limit = min(rx.batch, max(1, budget // fan))
            try:
                n = rx.recv(limit)
            except OSError as exc:
                # e.g. a queued ICMP error; never fatal
                name = "recv_" + errname(exc)
                ps.send_errors[name] = ps.send_errors.get(name, 0) + 1
                continue
            if not n:
                break
            self._handle_batch(ps, n)
            send(ps)
            budget -= n * fan
            if n < limit or budget < fan:
                break

    def _handle_batch(self, ps: PortState, n: int) -> None:
        rx = ps.rx
        payloads, sources, ifindexes, dests, truncs = (
            rx.payloads,
            rx.sources,
            rx.ifindex,
            rx.dests,
            rx.truncated,
        )
        classify = ps.classifier.classify
        storm = self.storm_guard.storm
        check = storm.check if storm is not None else None
        charge = storm.charge if storm is not None else None
        dropped = ps.dropped
        now = time.monotonic()
        debug = self.debug
        ps.received += n
        for i in range(n):
            payload = payloads[i]
            src = sources[i][0]
            dst = dests[i]
            verdict = classify(payload, src, ifindexes[i], dst, truncs[i], now)
            if debug:
                self._log_datagram(ps, src, dst, ifindexes[i], len(payload), verdict)
            if verdict == FORWARDED:
                if self.standby:
                    dropped[DROP_STANDBY] = dropped.get(DROP_STANDBY, 0) + 1
                    continue
                if check is not None:
                    why = check(src, now)
                    if why is not None:
                        dropped[why] = dropped.get(why, 0) + 1
                        continue
                self._forward(ps, payload, dst)
            elif verdict in _PEER_VERDICTS:
                self._from_peer(ps, verdict, payload, src, now)
            elif verdict == SIBLING:
                self.from_sibling(ps, payload, src, now)
            else:
                if verdict == DROP_OWN:
                    if (
                        src == MARKER_SOURCE
                        and ps.repeat is not None
                        and len(payload) == MARKER_SIZE
                        and payload[:MARKER_TOKEN] == ps.marker
                    ):
                        ps.repeat.activate(now, MARKER_NUMBER.unpack_from(payload, MARKER_TOKEN)[0])
                        ps.received -= 1  # ours: not a datagram of the port's
                        continue
                # Every datagram read counts against its source (our own excepted: the
                # kernel drops those), so that a flood of anything gets cut off.
                elif charge is not None:
                    why = charge(src, now)
                    if why is not None:
                        verdict = why
                dropped[verdict] = dropped.get(verdict, 0) + 1

    def _log_datagram(
        self, ps: PortState, src: str, dst: bytes, ifindex: int, size: int, verdict: str
    ) -> None:
        log.debug(
            "udp/%d: %s -> %s if %d, %d bytes: %s",
            ps.port,
            src,
            socket.inet_ntoa(dst) if len(dst) == 4 else "?",
            ifindex,
            size,
            verdict,
        )

    def _forward(self, ps: PortState, payload: Any, dst: bytes) -> None:
        """A LAN broadcast (or compat datagram) to the forward_to peers."""
        ps.forwarded += 1
        size = len(payload)
        if ps.fwd_raw:
            out = ps.out
            for peer, dest in ps.fwd_raw:
                queue = out.get(dest)
                if queue is None:
                    queue = out[dest] = []
                queue.append(((payload,), size))
                peer.sent += 1
        fan_peers = ps.fanout.peers
        if fan_peers:
            # Sealed once here (one header: the sequence number of this broadcast);
            # tagged per peer and sent by egress, after the batch (ports.Fanout).
            if size > _MAX_PAYLOAD:
                ps.dropped[DROP_TOO_BIG] = ps.dropped.get(DROP_TOO_BIG, 0) + 1
                return
            header = self.sealer.header(*envelope_kind(dst))  # type: ignore[union-attr]
            ps.fans.append((header, payload, size + _OVERHEAD))
            for peer in fan_peers:
                peer.sent += 1

    @staticmethod
    def _queue(ps: PortState, dest: tuple[str, int], parts: tuple[Any, ...], size: int) -> None:
        queue = ps.out.get(dest)
        if queue is None:
            queue = ps.out[dest] = []
        queue.append((parts, size))

    def _peer_drop(self, ps: PortState, peer: PeerState, why: str) -> None:
        ps.dropped[why] = ps.dropped.get(why, 0) + 1
        peer.dropped[why] = peer.dropped.get(why, 0) + 1
        if why in _EPOCH_DROPS:
            peer.refused_epoch()

    def _from_peer(self, ps: PortState, verdict: str, payload: Any, src: str, now: float) -> None:
        """A peer relay's datagram: check its envelope, re-broadcast and/or pass it on."""
        peer = self.peers.get(src)
        if peer is None:  # not in the config's peers (v1 raw config): raw
            peer = self.peers[src] = PeerState(src, None, None)
        peer.received += 1
        keys = peer.keys
        group = _NO_GROUP
        kind = _KIND_BROADCAST
        if keys is not None:
            if len(payload) < _OVERHEAD:
                return self._peer_drop(ps, peer, wire.DROP_MALFORMED)
            magic, version, kind, office, sender, epoch, seq, group = _unpack_header(payload)
            if magic != _MAGIC or version != _VERSION:
                return self._peer_drop(ps, peer, wire.DROP_MALFORMED)
            header = payload[:_HEADER_SIZE]
            body = payload[_OVERHEAD:]
            tag = payload[_HEADER_SIZE:_OVERHEAD]
            accept = keys.accept
            if not (
                (accept and _compare_digest(accept[0].tag(header, body), tag))
                or (len(accept) > 1 and keys.verify(header, body, tag))
            ):
                return self._peer_drop(ps, peer, wire.DROP_AUTH)
            if office == self.office_id or sender == self.sender_id:
                return self._peer_drop(ps, peer, wire.DROP_OWN_ORIGIN)
            window = self._windows.get(sender)
            if window is None:
                window = self.state.replay.window(sender)
            why = window.check(epoch, seq)
            if why is not None:
                if why is not _LEASE:
                    return self._peer_drop(ps, peer, why)
                self.state.lease_replay()  # saved before it is used: a crash cannot reopen it
        else:
            header = None
            body = payload
            office = peer.office_id
        peer.accepted += 1
        if self.standby:  # checked (so the replay window is current), not relayed
            return self._peer_drop(ps, peer, DROP_STANDBY)
        if verdict != TRANSIT:
            if kind == _KIND_BROADCAST:
                dest = self.lan_dest
            elif kind == wire.KIND_LIMITED:
                dest = "255.255.255.255"
            elif group in ps.groups:
                dest = socket.inet_ntoa(group)
            else:
                self._peer_drop(ps, peer, DROP_GROUP)
                dest = ""
            if dest:
                ps.rebroadcast += 1
                self._queue(ps, (dest, ps.port), (body,), len(body))
        if verdict != REBROADCAST:
            ps.transited += 1
            port = ps.port
            size = len(body)
            for target in ps.transit_peers.get(src, ()):  # never src itself
                if office is not None and target.office_id == office:
                    continue  # never back to the office it came from
                tkeys = target.keys
                if tkeys is None:
                    self._queue(ps, (target.addr, port), (body,), size)
                elif tkeys is wire.NO_KEYS:
                    continue
                else:
                    if header is None:  # a raw peer's datagram onto the authenticated wire
                        if len(body) > wire.MAX_PAYLOAD:
                            self._peer_drop(ps, peer, DROP_TOO_BIG)
                            continue
                        header = self.sealer.header(kind, group, office)  # type: ignore[union-attr]
                    self._queue(
                        ps,
                        (target.addr, port),
                        (header, tkeys.send.tag(header, body), body),
                        size + _OVERHEAD,
                    )
                target.sent += 1
        return None
