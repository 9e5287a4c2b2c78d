# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The parallel echo probes of verify.yml: scheduling on a fake clock, the packets, and
one real exchange over loopback (root only)."""

from __future__ import annotations

import heapq
import os
import socket
import struct

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import probe

IDENT = 0x5157


class Network:
    """Fake peers behind fake tunnels, on a fake clock.

    Each address answers after ``rtt`` seconds (None: dead), only from ``up_at`` on
    (IKE keying the link on demand: what is sent before is lost), and a send to it may
    fail with ``errors[address]``."""

    def __init__(self, rtt=0.01):
        self.t = 1000.0
        self.rtt: dict[str, float | None] = {}
        self.default_rtt = rtt
        self.up_at: dict[str, float] = {}
        self.errors: dict[str, str] = {}
        self.extra: list[tuple[float, int, tuple[str, int, int]]] = []  # replies injected
        self.pending: list[tuple[float, int, tuple[str, int, int]]] = []
        self.sent: list[tuple[float, str, int]] = []
        self.order = 0

    # the clock
    def now(self) -> float:
        return self.t

    # the transport
    def send(self, address: str, packet: bytes):
        kind, code, _sum, ident, seq = struct.unpack_from("!BBHHH", packet)
        assert (kind, code, probe.checksum(packet)) == (probe.ECHO_REQUEST, 0, 0)
        self.sent.append((self.t, address, seq))
        if address in self.errors:
            return self.errors[address]
        rtt = self.rtt.get(address, self.default_rtt)
        if rtt is not None and self.t >= self.up_at.get(address, 0.0):
            self.order += 1
            heapq.heappush(self.pending, (self.t + rtt, self.order, (address, ident, seq)))
        return None

    def receive(self, timeout: float):
        for item in self.extra:
            heapq.heappush(self.pending, item)
        self.extra = []
        until = self.t + timeout
        if self.pending and self.pending[0][0] <= until:
            self.t = max(self.t, self.pending[0][0])
        else:
            self.t = until
        out = []
        while self.pending and self.pending[0][0] <= self.t:
            out.append(heapq.heappop(self.pending)[2])
        return out

    def first_sends(self) -> dict[str, float]:
        first: dict[str, float] = {}
        for at, address, _seq in self.sent:
            first.setdefault(address, at)
        return first


def links(count: int) -> list[tuple[str, str]]:
    return [(f"sl-b{i}", f"10.{i // 250}.{i % 250}.126") for i in range(count)]


def run(net: Network, targets, **options):
    start = net.now()
    results = probe.Prober(net, net, ident=IDENT, **options).run(targets)
    return results, net.now() - start


def test_two_hundred_healthy_links_take_seconds_not_minutes():
    net = Network(rtt=0.01)
    results, elapsed = run(net, links(200))
    assert all(r["probed"] and r["received"] == 3 for r in results.values())
    assert {r["transmitted"] for r in results.values()} == {3}
    assert all(r["rtt_avg_ms"] == pytest.approx(10.0) for r in results.values())
    # four rounds of 64 at most, each three requests 0.2 s apart
    assert elapsed <= 4 * (2 * 0.2 + 0.01) + 0.01
    # one at a time, as ping did, it would have been 200 * 0.41 s
    assert elapsed < 200 * 0.41 / 20


def test_no_more_links_than_the_concurrency_are_probed_at_once():
    net = Network(rtt=0.01)
    run(net, links(200), concurrency=64)
    first = sorted(net.first_sends().values())
    # the first link is done after its third answer (0.41 s); until then only 64 started
    assert len([t for t in first if t < first[0] + 0.41]) == 64
    assert len(first) == 200


def test_a_quarter_dead_costs_one_link_wait_and_each_dead_link_is_named():
    net = Network(rtt=0.02)
    targets = links(200)
    dead = {name for i, (name, _address) in enumerate(targets) if i % 4 == 3}
    for name, address in targets:
        if name in dead:
            net.rtt[address] = None
    results, elapsed = run(net, targets)
    assert {name for name, r in results.items() if r["received"] == 0} == dead
    assert all(r["probed"] for r in results.values())
    # every dead link gets the whole wait, sending every 0.2 s
    assert {results[name]["transmitted"] for name in dead} == {75}
    # one wait, plus the few seconds the healthy ones take to pass through the slots the
    # dead ones leave (one after another, ping took 50 waits: 12.5 minutes)
    assert elapsed <= probe.LINK_WAIT + 3.0


def test_nothing_runs_past_the_deadline_and_links_never_started_are_not_called_dead():
    net = Network()
    targets = links(200)
    for _name, address in targets:
        net.rtt[address] = None
    results, elapsed = run(net, targets, deadline=20.0, link_wait=15.0, concurrency=64)
    assert elapsed == pytest.approx(20.0, abs=0.21)
    probed = [name for name, r in results.items() if r["probed"]]
    not_probed = [name for name, r in results.items() if not r["probed"]]
    # the first 64 waited 15 s; the next 64 started then and were cut at 20 s
    assert len(probed) == 128 and len(not_probed) == 72
    assert all(results[name]["transmitted"] == 0 for name in not_probed)
    assert max(at for at, _a, _s in net.sent) < net.now()


def test_a_link_keyed_on_demand_answers_once_ike_is_done():
    net = Network(rtt=0.05)
    (name, address), *_unused = targets = links(1)
    net.up_at[address] = net.now() + 4.0  # IKE takes 4 s; what is sent before is lost
    results, elapsed = run(net, targets)
    assert results[name]["received"] == 3
    assert results[name]["transmitted"] == 20 + 3
    assert 4.0 + 2 * 0.2 <= elapsed <= 4.0 + 3 * 0.2 + 0.05


def test_one_answer_of_three_is_an_answer():
    net = Network(rtt=0.01)
    (name, address), *_unused = targets = links(1)
    # only the request sent at +0.2 s gets through
    original = net.send

    def lossy(addr, packet):
        at = net.now() - start
        if not 0.1 < at < 0.3:
            net.sent.append((net.now(), addr, -1))
            return None
        return original(addr, packet)

    net.send = lossy
    start = net.now()
    results, _elapsed = run(net, targets, link_wait=2.0)
    assert results[name]["received"] == 1
    assert results[name]["transmitted"] == 10


def test_answers_not_ours_are_not_counted():
    net = Network(rtt=None)
    (name, address), *_unused = targets = links(1)
    later = net.now() + 0.1
    net.extra = [
        (later, 1, (address, IDENT ^ 1, 0)),  # another ping's identifier
        (later, 2, ("10.9.9.9", IDENT, 0)),  # our identifier, another address
        (later, 3, (address, IDENT, 999)),  # a sequence we never sent
    ]
    results, _elapsed = run(net, targets, link_wait=1.0)
    assert results[name]["received"] == 0


def test_a_send_error_is_kept_for_the_message():
    net = Network()
    (name, address), *_unused = targets = links(1)
    net.errors[address] = "Operation not permitted"
    results, _elapsed = run(net, targets, link_wait=1.0)
    assert results[name] == {
        "probed": True,
        "transmitted": 5,
        "received": 0,
        "rtt_avg_ms": None,
        "error": "Operation not permitted",
    }


def test_echo_request_and_reply_packets():
    packet = probe.echo_request(0x1234, 7, b"abc")
    assert packet[:2] == b"\x08\x00" and probe.checksum(packet) == 0
    assert struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    body = b"\x00\x00\x00\x00" + packet[4:]  # type 0 (echo reply), checksum to fill
    reply = body[:2] + struct.pack("!H", probe.checksum(body)) + body[4:]
    ip = bytes([0x45, 0, 0, 20 + len(reply)]) + bytes(8) + socket.inet_aton("10.0.0.9") + bytes(4)
    assert probe.parse_reply(ip + reply) == ("10.0.0.9", 0x1234, 7)
    assert probe.parse_reply(ip + packet) is None  # a request is not an answer
    assert probe.parse_reply(b"\x45" + bytes(10)) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs root")
def test_a_real_exchange_over_loopback():
    transport = probe.IcmpTransport("127.0.0.1")
    try:
        results = probe.Prober(transport, probe_clock()).run([("lo", "127.0.0.1")])
    finally:
        transport.close()
    assert results["lo"]["received"] == 3 and results["lo"]["error"] is None


def probe_clock():
    import time

    class Clock:
        now = staticmethod(time.monotonic)

    return Clock


def test_the_wait_for_answers_never_outlasts_the_deadline():
    net = Network(rtt=None)
    results, elapsed = run(net, links(1), deadline=1.0, interval=0.7)
    assert elapsed == pytest.approx(1.0)
    assert results["sl-b0"]["transmitted"] == 2
