"""The authenticated wire between relays ("sitelink1"): envelope, keys, replay windows.

Every datagram a relay sends to a peer relay carries a 40-byte envelope in front of the
application's payload::

    0   2  magic b"SL"
    2   1  version (1)
    3   1  kind: 0 LAN broadcast, 1 limited broadcast (255.255.255.255), 2 multicast,
           3 heartbeat of a sibling relay (same office, same LAN)
    4   4  origin office id (first 4 bytes of SHA-256 of the office name)
    8   4  sender: LAN address of the relay that made the envelope
    12  4  epoch of that relay (grows with every start; survives restarts)
    16  4  sequence number within the epoch
    20  4  multicast group (kind 2), else 0
    24 16  HMAC-SHA256 over bytes 0-23 and the payload, truncated to 16 bytes

The key is the link's relay key (one per pair of offices, derived on the controller),
so a hub that passes a branch's datagram on re-tags it with the next link's key and
leaves bytes 0-23 alone.  Receivers keep one replay window per sender: a datagram seen
before, or older than the window, or from an older epoch, is dropped, which also makes
delivery exactly-once when a datagram reaches an office by two paths.  An epoch more
than a day ahead of the receiver's clock is refused as "future" and never stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import os
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any, Optional

from . import contract
from .files import DuplicateKey, FileProblem, no_duplicate_keys, read_regular

MAGIC = b"SL"
VERSION = 1
HEADER = struct.Struct("!2sBB4s4sII4s")
HEADER_SIZE = HEADER.size  # 24
TAG_SIZE = 16
OVERHEAD = HEADER_SIZE + TAG_SIZE  # 40
MAX_UDP_PAYLOAD = 65507  # IPv4
MAX_PAYLOAD = MAX_UDP_PAYLOAD - OVERHEAD
PREFIX = MAGIC + bytes([VERSION])

KIND_BROADCAST = 0  # the LAN's own broadcast address
KIND_LIMITED = 1  # 255.255.255.255
KIND_MULTICAST = 2
KIND_HEARTBEAT = 3  # between relays of one office on one LAN; payload: 1 = active
KINDS = (KIND_BROADCAST, KIND_LIMITED, KIND_MULTICAST, KIND_HEARTBEAT)

REPLAY_WINDOW = 1024  # sequence numbers remembered behind the newest one per sender
SEQ_LIMIT = 1 << 32
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1
KEY_SIZE = 32
KEYS_VERSION = contract.RELAY_KEYS_VERSION
NO_GROUP = b"\0\0\0\0"

# Drop reasons of the wire (the classifier has the others).
DROP_MALFORMED = "malformed"  # not an envelope of a version we speak
DROP_AUTH = "auth"  # tag does not match any accepted key of the sending peer
DROP_REPLAY = "replay"  # sequence number already seen (a replay, or a second path)
DROP_STALE = "stale"  # older epoch, or too far behind the window
DROP_OWN_ORIGIN = "own_origin"  # our own office's datagram, come back
DROP_FUTURE = "future"  # an epoch more than MAX_EPOCH_SKEW ahead of our clock
LEASE = ""  # ReplayWindow.check: new, but save the state before using it (falsy)

# Epochs are start times (Unix seconds): one more than a day ahead of the receiver's
# clock is refused, and a sender ignores a saved epoch half that far ahead.
MAX_EPOCH_SKEW = 86400
STUCK_STREAK = 3  # refused this many times in a row: the status lists the sender
# Replay-window leases (see ReplayState): sequence numbers per block, and the gaps
# between leases (seconds) that make the block grow or shrink.
LEASE_MIN = 64
LEASE_MAX = 1 << 16
LEASE_BUSY = 1.0
LEASE_RELAX = 5.0


# The 4 bytes that stand for an office on the wire (the plan refuses collisions): the
# planner's own function.
office_id = contract.office_id


class LinkKey:
    """HMAC-SHA256 with the pads hashed once: two ``copy()``+``update`` per datagram.

    Byte-identical to ``hmac.digest(key, msg, "sha256")[:16]`` at about half its cost.
    """

    __slots__ = ("_inner", "_outer", "fingerprint")

    def __init__(self, key: bytes):
        if len(key) != KEY_SIZE:
            raise ValueError(f"a relay key is {KEY_SIZE} bytes")
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        # shown in --status so two ends can be compared without revealing the key
        self.fingerprint = hashlib.sha256(b"sitelink-relay key fingerprint\0" + key).hexdigest()[:8]

    def tag(self, header: Any, payload: Any) -> bytes:
        inner = self._inner.copy()
        inner.update(header)
        inner.update(payload)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:TAG_SIZE]

    def __repr__(self) -> str:  # never the key itself
        return f"LinkKey({self.fingerprint})"


class FanoutKeys:
    """The send keys of several links, to tag one envelope for each (a hub's fan-out).

    ``tags(header, payload)[i]`` is ``keys[i].tag(header, payload)``: header and
    payload are joined once per message, not once per key, and the loop calls the
    hash objects' methods directly, with no method call of our own per key.  Each
    envelope still gets its own tag, with its own link's key.  ``tags_by_key`` does a
    run of messages in one call (a burst: each peer's tags, for its segmented send).
    """

    __slots__ = ("_pads",)

    def __init__(self, keys: Iterable[LinkKey]):
        self._pads = tuple((k._inner, k._outer) for k in keys)  # pylint: disable=protected-access

    def __len__(self) -> int:
        return len(self._pads)

    def tags(self, header: bytes, payload: Any) -> list[bytes]:
        message = header + payload
        tags = []
        append = tags.append
        for inner_pad, outer_pad in self._pads:
            inner = inner_pad.copy()
            inner.update(message)
            outer = outer_pad.copy()
            outer.update(inner.digest())
            append(outer.digest()[:TAG_SIZE])
        return tags

    def tags_by_key(self, messages: list[bytes]) -> list[list[bytes]]:
        """For a run of messages (header + payload each): per key, the tag of each."""
        by_key = []
        for inner_pad, outer_pad in self._pads:
            tags = []
            append = tags.append
            for message in messages:
                inner = inner_pad.copy()
                inner.update(message)
                outer = outer_pad.copy()
                outer.update(inner.digest())
                append(outer.digest()[:TAG_SIZE])
            by_key.append(tags)
        return by_key


class PeerKeys:
    """The keys of one link: the one we send with, and the ones we accept (rotation: two)."""

    __slots__ = ("send", "accept")

    def __init__(self, send: LinkKey, accept: tuple[LinkKey, ...]):
        self.send = send
        self.accept = accept

    def verify(self, header: Any, payload: Any, tag: Any) -> bool:
        return any(hmac.compare_digest(key.tag(header, payload), tag) for key in self.accept)


# A peer that should be authenticated but has no key: nothing verifies, nothing is sent.
NO_KEYS = PeerKeys(LinkKey(bytes(KEY_SIZE)), ())


class KeysError(Exception):
    """Invalid keys file; ``errors`` lists "field: problem" lines, never a key."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


def _parse_key(value: Any, where: str, errors: list[str]) -> Optional[LinkKey]:
    if not isinstance(value, str) or len(value) != 2 * KEY_SIZE:
        errors.append(f"{where}: must be {2 * KEY_SIZE} hexadecimal characters")
        return None
    try:
        return LinkKey(bytes.fromhex(value))
    except ValueError:
        errors.append(f"{where}: must be {2 * KEY_SIZE} hexadecimal characters")
        return None


def parse_keys(data: Any) -> dict[str, PeerKeys]:
    """``{"version": 1, "peers": {"<addr>": {"send": hex, "accept": [hex, ...]}}}``."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise KeysError(["(top level): must be a JSON object"])
    for key in data:
        if key not in ("version", "peers", "_comment"):
            errors.append(f"{key}: unknown key (allowed: version, peers)")
    if data.get("version") != KEYS_VERSION:
        errors.append(f"version: must be {KEYS_VERSION}")
    peers = data.get("peers")
    result: dict[str, PeerKeys] = {}
    if not isinstance(peers, dict):
        errors.append("peers: must be an object mapping a peer address to its keys")
        raise KeysError(errors)
    for addr, entry in peers.items():
        where = f"peers[{json.dumps(addr)}]"
        try:
            socket.inet_aton(addr)
            valid_addr = addr.count(".") == 3
        except (OSError, TypeError, ValueError):
            valid_addr = False
        if not valid_addr:
            errors.append(f"{where}: not an IPv4 address")
            continue
        if not isinstance(entry, dict):
            errors.append(f"{where}: must be an object with send and accept")
            continue
        for key in entry:
            if key not in ("send", "accept"):
                errors.append(f"{where}.{key}: unknown key (allowed: send, accept)")
        send = _parse_key(entry.get("send"), f"{where}.send", errors)
        accept_data = entry.get("accept")
        if not isinstance(accept_data, list) or not 1 <= len(accept_data) <= 2:
            errors.append(f"{where}.accept: must be a list of one or two keys")
            continue
        accept = [_parse_key(v, f"{where}.accept[{i}]", errors) for i, v in enumerate(accept_data)]
        if send is not None and all(k is not None for k in accept):
            result[addr] = PeerKeys(send, tuple(k for k in accept if k is not None))
    if errors:
        raise KeysError(errors)
    return result


KEYS_MAX_BYTES = 1 << 22


def load_keys(path: str) -> dict[str, PeerKeys]:
    try:
        raw = read_regular(path, KEYS_MAX_BYTES)
    except FileProblem as exc:
        raise KeysError([str(exc)]) from None
    if len(raw) > KEYS_MAX_BYTES:
        raise KeysError([f"{path}: larger than {KEYS_MAX_BYTES} bytes"])
    try:
        data = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    except DuplicateKey as exc:
        # A key's name is an address or a field, never key material.  Refused: with
        # duplicates, the last one would win silently (a stale "send", a peer twice).
        raise KeysError([f"{path}: {exc}"]) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # The message never quotes the file: it holds keys.
        kind = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "invalid JSON"
        raise KeysError([f"{path}: {kind}"]) from None
    return parse_keys(data)


class Sealer:
    """Makes the headers of our own datagrams: origin office, sender, epoch, sequence."""

    __slots__ = ("office", "sender", "epoch", "seq", "_bump")

    def __init__(self, office: bytes, sender: bytes, epoch: int, bump_epoch=None):
        self.office = office
        self.sender = sender
        self.epoch = epoch
        self.seq = 0
        self._bump = bump_epoch  # () -> new epoch, when the sequence space runs out

    def header(self, kind: int, group: bytes = NO_GROUP, office: Optional[bytes] = None) -> bytes:
        """The next header; ``office``: another origin (a raw peer's datagram we pass on)."""
        seq = self.seq
        if seq >= SEQ_LIMIT:
            self.epoch = self._bump() if self._bump is not None else self.epoch + 1
            seq = 0
        self.seq = seq + 1
        return HEADER.pack(
            MAGIC, VERSION, kind, office or self.office, self.sender, self.epoch, seq, group
        )


class ReplayWindow:
    """Which sequence numbers of one sender were seen: newest one, and a bitmap behind it.

    ``limit`` is the highest sequence number the saved state already covers (the
    lease): a new top above it must be saved before the datagram is used, so that a
    crash can never bring back a window that misses it.  Refusals are tracked too
    (``streak``: refused in a row, ``offered``: the last refused epoch) so that a
    sender stuck on ``stale`` or ``future`` shows in the status; the accept path
    does not touch them (a streak counts only while ``(epoch, top)`` stays put).
    """

    __slots__ = ("epoch", "top", "bits", "limit", "streak", "offered", "reason", "_at")

    def __init__(self, epoch: int = 0, top: int = -1, bits: int = 0):
        self.epoch = epoch
        self.top = top  # highest sequence number seen in this epoch, -1: none
        self.bits = bits  # bit i set: top - i seen
        self.limit = top  # highest sequence number the saved state covers, this epoch
        self.streak = 0
        self.offered = 0
        self.reason = ""
        self._at: tuple[int, int] = (-1, -1)  # (epoch, top) when the streak began

    def check(self, epoch: int, seq: int) -> Optional[str]:
        """None if (epoch, seq) is new and recorded; LEASE if it is new and the saved
        state must cover it first; else DROP_REPLAY, DROP_STALE or DROP_FUTURE."""
        if epoch != self.epoch:
            if epoch < self.epoch:
                return self._refuse(DROP_STALE, epoch)
            if epoch > time.time() + MAX_EPOCH_SKEW:
                # Never stored: one datagram from a clock far ahead would otherwise
                # make every later one of that sender "stale", until that day comes.
                return self._refuse(DROP_FUTURE, epoch)
            self.epoch, self.top, self.bits, self.limit = epoch, seq, 1, -1
            return LEASE
        top = self.top
        if seq > top:
            shift = seq - top
            if shift >= REPLAY_WINDOW:
                self.bits = 1
            else:
                self.bits = ((self.bits << shift) | 1) & _WINDOW_MASK
            self.top = seq
            return LEASE if seq > self.limit else None
        behind = top - seq
        if behind >= REPLAY_WINDOW:
            return self._refuse(DROP_STALE, epoch)
        mask = 1 << behind
        if self.bits & mask:
            return DROP_REPLAY
        self.bits |= mask
        return None

    def _refuse(self, reason: str, epoch: int) -> str:
        at = (self.epoch, self.top)
        if at != self._at:  # something was accepted since: a new streak
            self._at = at
            self.streak = 0
        self.streak += 1
        self.offered = epoch
        self.reason = reason
        return reason

    def stuck(self) -> bool:
        """Refused STUCK_STREAK times in a row, with nothing accepted since."""
        return self.streak >= STUCK_STREAK and self._at == (self.epoch, self.top)


class ReplayState:
    """Every sender's window, saved so that neither a restart nor a crash reopens old
    numbers.

    Saved as {sender: [epoch, mark]}; loaded back, everything up to ``mark`` counts
    as seen.  While running, ``mark`` is leased ahead of use (``lease``): top plus a
    block, written and synced before a datagram above the previous mark is used.
    A clean stop saves the exact tops (``save(exact=True)``).  After a crash the
    marks are up to one block ahead of what arrived, so that many of each sender's
    next datagrams are refused as replays: a replay cannot be told from them.  The
    block adapts: it doubles when leases come less than a second apart (a busy
    sender: few writes) and halves when they are more than LEASE_RELAX apart, the
    marks coming down with it (``relax``), so that after a crash each sender loses
    about a second's worth of its datagrams, and at least LEASE_MIN.
    """

    MAX_SENDERS = 65536

    def __init__(self, path: Optional[str] = None) -> None:
        self.windows: dict[bytes, ReplayWindow] = {}
        self.path = path  # None: nothing saved (tests; compat mode has no windows)
        self.block = LEASE_MIN
        self.leases = 0
        self.save_failures = 0
        self.save_error: Optional[str] = None  # the current failure streak's message
        self.forgotten = 0
        self._last_lease = -math.inf

    def window(self, sender: bytes) -> ReplayWindow:
        window = self.windows.get(sender)
        if window is None:
            if len(self.windows) >= self.MAX_SENDERS:
                # only authenticated senders get here, so this means a huge deployment
                self.windows.clear()
            window = self.windows[sender] = ReplayWindow()
        return window

    def dump(self, exact: bool = False) -> dict[str, list[int]]:
        return {
            socket.inet_ntoa(s): [w.epoch, w.top if exact else max(w.top, w.limit)]
            for s, w in self.windows.items()
            if w.top >= 0
        }

    def load(self, data: Any) -> int:
        """Restore from ``dump()`` output; ignores anything malformed.  Returns the count."""
        if not isinstance(data, dict):
            return 0
        count = 0
        for addr, value in data.items():
            try:
                sender = socket.inet_aton(addr)
                epoch, top = (int(v) for v in value)
            except (OSError, TypeError, ValueError):
                continue
            if len(sender) == 4 and 0 <= epoch < SEQ_LIMIT and 0 <= top < SEQ_LIMIT:
                self.windows[sender] = ReplayWindow(epoch, top, _WINDOW_MASK)
                count += 1
        return count

    def forget(self, senders: Any) -> list[str]:
        """Drop the windows of ``senders`` (addresses, or "all"); the ones dropped."""
        if senders == "all":
            gone = list(self.windows)
        else:
            gone = []
            for addr in senders:
                try:
                    sender = socket.inet_aton(addr)
                except (OSError, TypeError):
                    continue
                if sender in self.windows:
                    gone.append(sender)
        for sender in gone:
            del self.windows[sender]
        self.forgotten += len(gone)
        return sorted(socket.inet_ntoa(s) for s in gone)

    def lease(self, now: float) -> Optional[str]:
        """Extend every window's mark by a block and save, before the datagram that
        needed it is used.  Returns the error of a failed save (the marks stay
        raised, so a failing disk costs one attempt per block, not per datagram)."""
        gap = now - self._last_lease
        if gap < LEASE_BUSY:
            self.block = min(self.block * 2, LEASE_MAX)
        elif gap > LEASE_RELAX:
            self.block = max(self.block // 2, LEASE_MIN)
        self._last_lease = now
        block = self.block
        for w in self.windows.values():
            if w.top >= 0:
                w.limit = min(w.top + block, SEQ_LIMIT - 1)
        self.leases += 1
        return self.save()

    def relax(self, now: float) -> Optional[str]:
        """When leases have become rare, shrink the block and bring the marks back
        towards the tops (saved), so that a crash after a busy spell does not cost a
        busy spell's worth of datagrams.  Called now and then (the status interval)."""
        if now - self._last_lease < LEASE_RELAX or self.block <= LEASE_MIN:
            return None
        self.block = max(self.block // 2, LEASE_MIN)
        self._last_lease = now - LEASE_BUSY  # again after LEASE_RELAX, not sooner
        lowered = False
        for w in self.windows.values():
            if w.top >= 0 and w.limit > w.top + self.block:
                w.limit = w.top + self.block
                lowered = True
        return self.save() if lowered else None

    def save(self, exact: bool = False) -> Optional[str]:
        """Write the windows (synced); None, or what went wrong (also counted)."""
        if self.path is None:
            return None
        if exact:  # the marks are the tops now: the next new top leases again
            for w in self.windows.values():
                w.limit = w.top
        try:
            write_file_atomic(self.path, json.dumps(self.dump(exact)).encode())
        except OSError as exc:
            self.save_failures += 1
            self.save_error = f"{self.path}: {exc.strerror or exc}"
            return self.save_error
        self.save_error = None
        return None

    def stuck(self) -> dict[str, dict[str, Any]]:
        return {
            socket.inet_ntoa(s): {
                "streak": w.streak,
                "reason": w.reason,
                "epoch": w.epoch,
                "offered": w.offered,
            }
            for s, w in sorted(self.windows.items())
            if w.stuck()
        }


def next_epoch(previous: Optional[int], now: Optional[float] = None) -> int:
    """A new epoch: later than the previous one and than the clock (whichever is later).

    A saved epoch far ahead of the clock (a clock that was wrong, an edited file) is
    ignored: receivers refuse epochs over MAX_EPOCH_SKEW ahead of their clock, so
    continuing from it would cut this relay off from its peers.
    """
    clock = int(time.time() if now is None else now)
    if previous is not None and previous >= clock + MAX_EPOCH_SKEW // 2:
        previous = None
    return max((previous or 0) + 1, clock) % SEQ_LIMIT or 1


def read_int_file(path: str) -> Optional[int]:
    try:
        with open(path, "rb") as fh:
            value = int(fh.read(32).decode("ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if 0 <= value < SEQ_LIMIT else None


def write_file_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
