# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Echo probes through many tunnels at once: one ICMP socket, one deadline.

A hub checks hundreds of links. One ``ping`` after another costs about 0.5 s a
healthy link and the whole wait (15 s) a dead one, so 50 dead links of 200 took
most of an hour. Here every link is probed from one raw ICMP socket bound to the
gateway's LAN address: up to ``concurrency`` links at a time get an echo request
every ``interval`` until ``count`` answers came back (any answer passes) or their
own wait (``link_wait``, long enough for IKE to key an IPsec link on demand) is
over, and nothing runs past the overall ``deadline``. A link that could not even
start before the deadline is reported as not probed, never as dead.

Bounded concurrency keeps a hub from asking IKE to key hundreds of links at the
same instant (the first packet of a link without SAs starts its exchange).

``Prober`` is pure: the socket (``IcmpTransport``) and the clock are injected, so
tests drive it with a fake clock. Standard library only (Python 3.9+).
"""

from __future__ import annotations

import collections
import os
import select
import socket
import struct
from typing import Any, Optional

ECHO_REPLY = 0
ECHO_REQUEST = 8
_ICMP = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
PAYLOAD = b"sitelink.gateway probe\0"  # 24 bytes: the size ping sends (56) is not needed
COUNT = 3
INTERVAL = 0.2  # seconds between echo requests to one link (root may go this low)
LINK_WAIT = 15.0  # a link's own wait: long enough for IKE to key it on demand
DEADLINE = 60.0  # all links, whatever their number
CONCURRENCY = 64  # links probed at once
RECEIVE_BUFFER = 1 << 20


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes = PAYLOAD) -> bytes:
    """An ICMP echo request (the kernel adds the IP header of a raw ICMP socket)."""
    header = _ICMP.pack(ECHO_REQUEST, 0, 0, ident, seq)
    return _ICMP.pack(ECHO_REQUEST, 0, checksum(header + payload), ident, seq) + payload


def parse_reply(packet: bytes) -> Optional[tuple[str, int, int]]:
    """An IPv4 packet read from a raw ICMP socket -> (source, identifier, sequence) when it
    is an echo reply, else None."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    start = (packet[0] & 0x0F) * 4
    if len(packet) < start + _ICMP.size:
        return None
    kind, code, _sum, ident, seq = _ICMP.unpack_from(packet, start)
    if kind != ECHO_REPLY or code != 0:
        return None
    return socket.inet_ntoa(packet[12:16]), ident, seq


class _Link:
    __slots__ = ("address", "error", "give_up", "name", "next_send", "received", "rtts", "sent")

    def __init__(self, name: str, address: str):
        self.name, self.address = name, address
        self.sent = self.received = 0
        self.rtts: list[float] = []
        self.error: Optional[str] = None
        self.next_send = self.give_up = 0.0

    def result(self, probed: bool) -> dict[str, Any]:
        rtt = sum(self.rtts) / len(self.rtts) * 1000 if self.rtts else None
        return {
            "probed": probed,
            "transmitted": self.sent,
            "received": self.received,
            "rtt_avg_ms": round(rtt, 3) if rtt is not None else None,
            "error": self.error,
        }


def not_sent(targets: list[tuple[str, str]], error: str) -> dict[str, dict[str, Any]]:
    """Each (name, address)'s result where nothing could be sent (no socket): ``error``."""
    results = {}
    for name, address in targets:
        link = _Link(name, address)
        link.error = error
        results[name] = link.result(True)
    return results


class Prober:
    """Probes links through ``transport`` (``send(address, packet) -> error or None``,
    ``receive(timeout) -> [(source, ident, seq)]``) on ``clock`` (``now()``)."""

    def __init__(
        self,
        transport,
        clock,
        count: int = COUNT,
        interval: float = INTERVAL,
        link_wait: float = LINK_WAIT,
        deadline: float = DEADLINE,
        concurrency: int = CONCURRENCY,
        ident: Optional[int] = None,
    ):
        self.transport, self.clock = transport, clock
        self.count, self.interval, self.link_wait = count, interval, link_wait
        self.deadline, self.concurrency = deadline, max(1, concurrency)
        # Tells our answers from those of any other ping on the gateway.
        self.ident = (os.getpid() ^ int.from_bytes(os.urandom(2), "big")) & 0xFFFF
        if ident is not None:
            self.ident = ident

    def run(self, targets: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """``targets``: (name, address) pairs -> each name's result: ``probed`` (False:
        the deadline passed before its turn), ``transmitted``, ``received``,
        ``rtt_avg_ms`` and the first send ``error``."""
        clock, transport = self.clock, self.transport
        end = clock.now() + self.deadline
        waiting = collections.deque(_Link(name, address) for name, address in targets)
        active: dict[str, _Link] = {}
        results: dict[str, dict[str, Any]] = {}
        in_flight: dict[int, tuple[_Link, float]] = {}  # sequence -> (link, sent at)
        seq = 0
        while waiting or active:
            now = clock.now()
            if now >= end:
                break
            while waiting and len(active) < self.concurrency:
                link = waiting.popleft()
                link.next_send, link.give_up = now, min(now + self.link_wait, end)
                active[link.name] = link
            for link in list(active.values()):
                if now >= link.give_up:
                    results[link.name] = active.pop(link.name).result(True)
                elif now >= link.next_send:
                    error = transport.send(link.address, echo_request(self.ident, seq))
                    link.sent += 1
                    if error is None:
                        in_flight[seq] = (link, now)
                    elif link.error is None:
                        link.error = error
                    seq = (seq + 1) & 0xFFFF
                    link.next_send = now + self.interval
            if not active:
                continue
            wake = min(min(lk.next_send, lk.give_up) for lk in active.values())
            for source, ident, number in transport.receive(max(0.0, wake - clock.now())):
                entry = in_flight.get(number) if ident == self.ident else None
                if entry is None or entry[0].address != source:
                    continue
                del in_flight[number]
                link, sent_at = entry
                link.received += 1
                link.rtts.append(clock.now() - sent_at)
                if link.received >= self.count and link.name in active:
                    results[link.name] = active.pop(link.name).result(True)
        for link in active.values():
            results[link.name] = link.result(True)
        for link in waiting:
            results[link.name] = link.result(False)
        return results


class IcmpTransport:
    """One raw ICMP socket bound to ``source`` (needs CAP_NET_RAW: the module runs as root).

    Bound to the LAN address, each request leaves from it (so the answer comes back
    through the tunnel), and only packets to that address are read."""

    def __init__(self, source: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            self.sock.bind((source, 0))
            self.sock.setblocking(False)
        except OSError:
            self.sock.close()
            raise

    def send(self, address: str, packet: bytes) -> Optional[str]:
        try:
            self.sock.sendto(packet, (address, 0))
        except OSError as exc:  # e.g. unreachable, or a firewall's reject
            return exc.strerror or str(exc)
        return None

    def receive(self, timeout: float) -> list[tuple[str, int, int]]:
        ready, _unused, _unused = select.select([self.sock], [], [], timeout)
        replies: list[tuple[str, int, int]] = []
        while ready:
            try:
                packet = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                break
            reply = parse_reply(packet)
            if reply is not None:
                replies.append(reply)
        return replies

    def close(self) -> None:
        self.sock.close()
