"""The hot path's send side: a batch's queued datagrams out, in as few system calls
as the kernel allows; a hub's fan-out (each LAN broadcast tagged for every peer);
the marker that numbers re-broadcasts; send errors counted and logged at a bounded
rate."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import struct
import time
from typing import Any, Optional

from . import PROG
from .classify import MARKER_SOURCE
from .netinfo import IP_PKTINFO, PKTINFO
from .ports import PortState

log = logging.getLogger(PROG)

ERROR_LOG_INTERVAL = 60.0  # at most one log line per (port, error) per this many seconds
# UDP segmentation offload for re-broadcast runs (Linux 4.18+): SOL_UDP, UDP_SEGMENT.
_SOL_UDP = 17
_UDP_SEGMENT = 103
_GSO_SIZE = struct.Struct("=H")
GSO_MAX_SEGMENT = 1400  # a segment must fit the LAN's MTU; 1400 leaves room everywhere
GSO_MAX_SEGMENTS = 64  # the kernel's limit (UDP_MAX_SEGMENTS) on Debian 12's 6.1
GSO_MAX_BYTES = 60000  # one send stays one (unfragmented-size) IPv4 payload
_GSO_UNSUPPORTED = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EMSGSIZE)
# The marker a relay sends itself before re-broadcasts (classify.RepeatMemory): a
# random token of this relay's, and the marker's number.
MARKER_TOKEN = 16
MARKER_NUMBER = struct.Struct("!Q")
MARKER_SIZE = MARKER_TOKEN + MARKER_NUMBER.size
LAN_QUIET = 30.0  # a port whose LAN forwarded nothing for this long tracks no repeats


def errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, f"E{exc.errno}") if exc.errno else type(exc).__name__


class Egress:
    """Sends what the hot path queued on a port (``PortState.out``)."""

    def __init__(self) -> None:
        # (LAN ifindex, LAN address): re-broadcasts leave by the LAN interface
        self.lan_pktinfo: tuple[int, bytes] = (0, b"\0\0\0\0")
        self.marker = os.urandom(MARKER_TOKEN)  # what this relay sends itself (markers)
        self._error_log: dict[tuple[int, str], tuple[float, int]] = {}

    def send(self, ps: PortState) -> None:
        """Everything a batch queued on ``ps``, markers first where repeats are tracked."""
        if ps.out:
            if ps.repeat is not None:
                self._mark_rebroadcasts(ps)
            self._send_out(ps)
        if ps.fans:
            self._send_fans(ps)
        self.flush(ps)

    def flush(self, ps: PortState) -> None:
        for addr, exc in ps.tx.flush(ps.sock):
            self.send_error(ps, addr[0], exc)

    def send_error(self, ps: PortState, dest: str, exc: OSError) -> None:
        name = errname(exc)
        ps.send_errors[name] = ps.send_errors.get(name, 0) + 1
        key = (ps.port, name)
        now = time.monotonic()
        last, suppressed = self._error_log.get(key, (0.0, 0))
        if last and now - last < ERROR_LOG_INTERVAL:
            self._error_log[key] = (last, suppressed + 1)
            return
        self._error_log[key] = (now, 0)
        log.warning(
            "udp/%d: sending to %s failed: %s%s",
            ps.port,
            dest,
            exc,
            f" ({suppressed} more since last report)" if suppressed else "",
        )

    def _mark_rebroadcasts(self, ps: PortState) -> None:
        """Remember this batch's re-broadcasts (classify.RepeatMemory), and send the
        marker that numbers them into our own queue, just before they leave: what we
        read before it was there before they left (not their echo); a repeater's echo
        can only come after it.

        Only while the LAN broadcasts on this port (something was forwarded in the
        last LAN_QUIET seconds): an echo is a LAN broadcast, so on a quiet LAN a
        repeater's first echo wakes the memory up (one extra copy), and a one-way port
        pays nothing for it."""
        now = time.monotonic()
        if ps.forwarded != ps.forwarded_seen:
            ps.forwarded_seen = ps.forwarded
            ps.lan_until = now + LAN_QUIET
        elif now >= ps.lan_until:
            return
        lan = ps.lan_dests
        bodies = [
            parts[0] for dest, items in ps.out.items() if dest[0] in lan for parts, _unused in items
        ]
        if not bodies:
            return
        repeat = ps.repeat
        repeat.remember(bodies, now)
        marker = ps.marker + MARKER_NUMBER.pack(repeat.mark())
        with contextlib.suppress(OSError):  # lost: they count after PENDING_MAX
            ps.sock.sendto(marker, (MARKER_SOURCE, ps.port))  # type: ignore[union-attr]

    def _send_out(self, ps: PortState) -> None:
        """Send this batch's datagrams, destination by destination.

        A run of datagrams of one size to one destination (a burst of announcements,
        or a blast) goes out in ONE system call with UDP segmentation offload
        (UDP_SEGMENT): the kernel routes it once and cuts it into the datagrams, at
        about a quarter of the cost of separate sends.  Where the kernel or the path
        cannot (EIO, EINVAL...), that destination falls back to one datagram each.
        Order is kept per destination (across destinations it does not matter).
        """
        out = ps.out
        ps.out = {}
        add = ps.tx.add
        for dest, items in out.items():
            pktinfo = self.lan_pktinfo if dest[0] in ps.lan_dests else None
            count = len(items)
            gso = dest not in ps.no_gso
            i = 0
            while i < count:
                size = items[i][1]
                j = i + 1
                if gso and 0 < size <= GSO_MAX_SEGMENT:
                    limit = min(count, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // size)
                    while j < limit and items[j][1] == size:
                        j += 1
                if j - i > 1 and self._send_gso(ps, dest, size, items[i:j], pktinfo):
                    i = j
                    continue
                for k in range(i, j):
                    add(items[k][0], dest, pktinfo)
                i = j

    def _send_fans(self, ps: PortState) -> None:
        """This batch's LAN broadcasts to the fanout peers (the authenticated wire),
        after the batch's other datagrams.

        Each broadcast gets a tag per peer (wire.FanoutKeys: that link's key), then
        its envelopes go out together (sender.send_fans: sendmmsg, the arrays filled
        list by list).  A run of same-size broadcasts (a burst, a blast) goes to each
        peer as one segmented send instead, as in _send_out; a peer where the kernel
        cannot gets them one by one.  Order is kept per peer.
        """
        fans = ps.fans
        ps.fans = []
        tags_for = ps.fanout.keys.tags
        count = len(fans)
        if count == 1:  # a lone broadcast (the usual case below full load)
            header, payload, _unused = fans[0]
            self._send_fan_batch(ps, [(header, tags_for(header, payload), payload)])
            return
        pending: list = []  # broadcasts with their tags, for one send_fans call
        i = 0
        while i < count:
            size = fans[i][2]
            j = i + 1
            if 0 < size <= GSO_MAX_SEGMENT:
                limit = min(count, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // size)
                while j < limit and fans[j][2] == size:
                    j += 1
            if j - i == 1:
                header, payload, _unused = fans[i]
                pending.append((header, tags_for(header, payload), payload))
            else:
                if pending:
                    self._send_fan_batch(ps, pending)
                    pending = []
                self._send_fan_run(ps, fans[i:j], size)
            i = j
        if pending:
            self._send_fan_batch(ps, pending)

    def _send_fan_batch(self, ps: PortState, pending: list) -> None:
        fanout = ps.fanout
        for addr, exc in ps.tx.send_fans(ps.sock, pending, fanout.dests, fanout.names):
            self.send_error(ps, addr[0], exc)

    def _send_fan_run(self, ps: PortState, run: list, size: int) -> None:
        """Same-size broadcasts: to each peer, one segmented send of its envelopes."""
        fanout = ps.fanout
        by_key = fanout.keys.tags_by_key([header + payload for header, payload, _unused in run])
        add = ps.tx.add
        for dest, tags in zip(fanout.dests, by_key):
            items = [
                ((header, tag, payload), size) for (header, payload, _unused), tag in zip(run, tags)
            ]
            if dest in ps.no_gso or not self._send_gso(ps, dest, size, items, None):
                for parts, _unused in items:
                    add(parts, dest, None)

    def _send_gso(
        self,
        ps: PortState,
        dest: tuple[str, int],
        size: int,
        items: list[tuple[tuple[Any, ...], int]],
        pktinfo: Optional[tuple[int, bytes]],
    ) -> bool:
        """One UDP_SEGMENT send of ``items`` (``size`` bytes each); False: send them singly."""
        anc = [(_SOL_UDP, _UDP_SEGMENT, _GSO_SIZE.pack(size))]
        if pktinfo is not None:
            anc.append(
                (socket.IPPROTO_IP, IP_PKTINFO, PKTINFO.pack(pktinfo[0], pktinfo[1], bytes(4)))
            )
        try:
            ps.sock.sendmsg(  # type: ignore[union-attr]
                [b"".join([part for parts, _unused in items for part in parts])], anc, 0, dest
            )
        except OSError as exc:
            if exc.errno in _GSO_UNSUPPORTED:
                ps.no_gso.add(dest)
                log.info(
                    "udp/%d: no UDP segmentation offload to %s (%s): one send each",
                    ps.port,
                    dest[0],
                    exc,
                )
                return False
            for _unused in items:
                self.send_error(ps, dest[0], exc)
        return True
