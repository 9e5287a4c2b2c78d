"""Batched receive/send (sitelink_relay.mmsg), both backends, over loopback sockets.

Only 127.0.0.1 is used; nothing needs root.  The "failing destination" is the
loopback broadcast address on a socket without SO_BROADCAST: the kernel refuses it
(EACCES) before anything is sent.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sitelink_relay import mmsg

LOOPBACK = "127.0.0.1"
LOOPBACK_PACKED = socket.inet_aton(LOOPBACK)
LOOPBACK_BROADCAST = "127.255.255.255"  # refused with EACCES without SO_BROADCAST
IP_RECVTTL = 12
BACKENDS = [
    pytest.param(
        "mmsg",
        marks=pytest.mark.skipif(not mmsg.HAVE_MMSG, reason="no recvmmsg/sendmmsg in libc"),
    ),
    "python",
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return mmsg.BACKENDS[request.param]


@pytest.fixture
def socks():
    made = []

    def make(pktinfo=True, blocking=False):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        made.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        if pktinfo:
            s.setsockopt(socket.IPPROTO_IP, mmsg.IP_PKTINFO, 1)
        s.bind((LOOPBACK, 0))
        s.setblocking(blocking)
        return s

    yield make
    for s in made:
        s.close()


def recv_all(rx, expected, timeout=5.0):
    """recv() until `expected` datagrams arrived; copies of every field."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        n = rx.recv()
        if not n:
            time.sleep(0.005)
            continue
        assert n <= rx.batch
        for field in (rx.payloads, rx.sources, rx.ifindex, rx.dests, rx.truncated):
            assert len(field) == n
        got += [
            (bytes(rx.payloads[i]), rx.sources[i], rx.ifindex[i], rx.dests[i], rx.truncated[i])
            for i in range(n)
        ]
    return got


def lo_index():
    return socket.if_nametoindex("lo")


def test_batch_receive_keeps_every_datagram_intact(backend, socks):
    receiver_cls, _unused = backend
    rx, tx = socks(), socks()
    datagrams = [b"", b"a", os.urandom(200), os.urandom(1472), os.urandom(65507), b"last"]
    for d in datagrams:
        tx.sendto(d, rx.getsockname())
    r = receiver_cls(rx, batch=64)
    got = recv_all(r, len(datagrams))
    assert [g[0] for g in got] == datagrams
    assert {g[1] for g in got} == {tx.getsockname()}
    assert all(isinstance(g[1][0], str) and isinstance(g[1][1], int) for g in got)
    assert {g[2] for g in got} == {lo_index()}
    assert {g[3] for g in got} == {LOOPBACK_PACKED}
    assert not any(g[4] for g in got)
    assert r.recv() == 0


def test_payloads_are_views_of_exact_length(backend, socks):
    receiver_cls, _unused = backend
    rx, tx = socks(), socks()
    tx.sendto(b"0123456789", rx.getsockname())
    r = receiver_cls(rx)
    assert recv_all(r, 0) == []  # nothing read yet
    deadline = time.monotonic() + 5
    n = 0
    while not n and time.monotonic() < deadline:
        n = r.recv()
    assert n == 1
    assert isinstance(r.payloads[0], memoryview)
    assert len(r.payloads[0]) == 10 and r.payloads[0] == b"0123456789"


def test_batch_limit_and_order(backend, socks):
    receiver_cls, _unused = backend
    rx, tx = socks(), socks()
    for i in range(10):
        tx.sendto(b"%d" % i, rx.getsockname())
    r = receiver_cls(rx, batch=4)
    counts = []
    payloads = []
    for _unused in range(4):
        n = r.recv()
        counts.append(n)
        payloads += [bytes(p) for p in r.payloads]
    assert counts == [4, 4, 2, 0]
    assert payloads == [b"%d" % i for i in range(10)]
    assert r.payloads == [] and r.sources == [] and r.truncated == []


def test_receive_limit(backend, socks):
    """recv(limit): at most that many this time (a hub reads fewer broadcasts a batch)."""
    receiver_cls, _unused = backend
    rx, tx = socks(), socks()
    for i in range(13):
        tx.sendto(b"%d" % i, rx.getsockname())
    r = receiver_cls(rx, batch=8)
    counts, payloads = [], []
    deadline = time.monotonic() + 5
    for limit in (3, 0, 100, None):  # 0 reads one all the same; 100 or None: a batch
        n = 0
        while not n and time.monotonic() < deadline:
            n = r.recv(limit)
        counts.append(n)
        payloads += [bytes(p) for p in r.payloads]
    assert counts == [3, 1, 8, 1]
    assert payloads == [b"%d" % i for i in range(13)]


def test_sources_from_several_senders(backend, socks):
    receiver_cls, _unused = backend
    rx = socks()
    senders = [socks() for _unused in range(3)]
    for round_ in range(2):
        for s in senders:
            s.sendto(b"r%d" % round_, rx.getsockname())
    got = recv_all(receiver_cls(rx), 6)
    assert [g[1] for g in got] == [s.getsockname() for s in senders] * 2


def test_without_pktinfo(backend, socks):
    receiver_cls, _unused = backend
    rx, tx = socks(pktinfo=False), socks()
    tx.sendto(b"x", rx.getsockname())
    got = recv_all(receiver_cls(rx), 1)
    assert got == [(b"x", tx.getsockname(), 0, b"", False)]


def test_pktinfo_after_other_control_messages(backend, socks):
    """IP_RECVTTL adds a second control message: the general parser still finds pktinfo."""
    receiver_cls, _unused = backend
    rx, tx = socks(), socks()
    rx.setsockopt(socket.IPPROTO_IP, IP_RECVTTL, 1)
    tx.sendto(b"ttl", rx.getsockname())
    tx.sendto(b"ttl2", rx.getsockname())
    got = recv_all(receiver_cls(rx), 2)
    assert [(g[0], g[2], g[3]) for g in got] == [
        (b"ttl", lo_index(), LOOPBACK_PACKED),
        (b"ttl2", lo_index(), LOOPBACK_PACKED),
    ]


def test_truncation_flag(backend, socks):
    receiver_cls, _unused = backend
    rx, tx = socks(), socks()
    big = os.urandom(300)
    tx.sendto(big, rx.getsockname())
    tx.sendto(b"small", rx.getsockname())
    got = recv_all(receiver_cls(rx, batch=8, bufsize=100), 2)
    assert got[0][0] == big[:100] and got[0][4] is True
    assert got[1][0] == b"small" and got[1][4] is False


def test_nothing_queued_is_zero(backend, socks):
    receiver_cls, _unused = backend
    r = receiver_cls(socks())
    assert r.recv() == 0
    assert r.recv() == 0
    assert r.payloads == [] and r.sources == [] and r.ifindex == [] and r.dests == []


def test_queued_socket_error_is_raised(backend, socks):
    """An ICMP port unreachable queued on a connected socket comes out as OSError."""
    receiver_cls, _unused = backend
    closed = socks()
    dead_addr = closed.getsockname()
    closed.close()
    s = socks()
    s.connect(dead_addr)
    s.send(b"anyone?")
    r = receiver_cls(s)
    deadline = time.monotonic() + 5
    with pytest.raises(ConnectionRefusedError):
        while time.monotonic() < deadline:
            r.recv()
            time.sleep(0.005)
    assert r.recv() == 0  # reported once


def test_scatter_gather_send(backend, socks):
    receiver_cls, sender_cls = backend
    rx, tx = socks(), socks()
    sender = sender_cls(batch=8)
    readonly = memoryview(b"--ro--")[2:4]
    strided = memoryview(bytearray(b"s-t-"))[::2]  # not contiguous: copied
    parts = [b"ab", memoryview(bytearray(b"xcdx"))[1:3], bytearray(b"ef"), b"", readonly, strided]
    sender.add(parts, rx.getsockname())
    sender.add((b"",), rx.getsockname())  # an empty datagram
    sender.add([b"p%d" % i for i in range(mmsg.MAX_PARTS + 3)], rx.getsockname())  # many parts
    assert len(sender) == 3
    assert sender.flush(tx) == []
    assert len(sender) == 0
    got = recv_all(receiver_cls(rx), 3)
    assert [g[0] for g in got] == [
        b"abcdefrost",
        b"",
        b"".join(b"p%d" % i for i in range(mmsg.MAX_PARTS + 3)),
    ]
    assert {g[1] for g in got} == {tx.getsockname()}


def test_forward_received_views_without_copying(backend, socks):
    """What the relay does: receive a batch, send the payload views on, then receive again."""
    receiver_cls, sender_cls = backend
    rx, out, tx = socks(), socks(), socks()
    data = [os.urandom(size) for size in (0, 1, 200, 65505, 3)]  # 65507 with <>
    for d in data:
        tx.sendto(d, rx.getsockname())
    r = receiver_cls(rx)
    sender = sender_cls(64, rx)
    forwarded = 0
    deadline = time.monotonic() + 5
    while forwarded < len(data) and time.monotonic() < deadline:
        n = r.recv()
        for i in range(n):
            sender.add((b"<", r.payloads[i], b">"), out.getsockname())
        assert sender.flush() == []  # to the socket given to the constructor
        forwarded += n
    got = recv_all(receiver_cls(out), len(data))
    assert [g[0] for g in got] == [b"<" + d + b">" for d in data]
    assert {g[1] for g in got} == {rx.getsockname()}


def test_layout_changes_between_batches(backend, socks):
    """One part, several parts, one again: each flush lays the iovecs out afresh."""
    receiver_cls, sender_cls = backend
    rx, tx = socks(), socks()
    sender = sender_cls(batch=32, sock=tx)
    r = receiver_cls(rx)
    for round_, nparts in enumerate((1, 3, 1, 2, 1, 1)):
        for count in (10, 3, 1):
            expected = []
            for i in range(count):
                parts = [b"%d.%d.%d:" % (round_, count, i)] + [
                    b"p%d" % k for k in range(nparts - 1)
                ]
                sender.add(parts, rx.getsockname())
                expected.append(b"".join(parts))
            assert sender.flush() == []
            assert [g[0] for g in recv_all(r, count)] == expected


def test_big_datagram_through_sender(backend, socks):
    receiver_cls, sender_cls = backend
    rx, tx = socks(), socks()
    big = os.urandom(65507)
    sender = sender_cls()
    sender.add([big[:1000], memoryview(bytearray(big[1000:]))], rx.getsockname())
    assert sender.flush(tx) == []
    assert recv_all(receiver_cls(rx), 1)[0][0] == big


@pytest.mark.parametrize("extra", [0, 6])  # few datagrams, and more than mmsg.FEW
def test_pktinfo_send(backend, socks, extra):
    """pktinfo goes out as IP_PKTINFO: a valid one is used, an unknown ifindex fails alone."""
    receiver_cls, sender_cls = backend
    rx, tx = socks(), socks()
    sender = sender_cls(batch=16)
    dest = rx.getsockname()
    good = (lo_index(), LOOPBACK_PACKED)
    sender.add([b"one"], dest, good)
    sender.add([b"two"], dest, (0x7FFFFFF0, LOOPBACK_PACKED))  # no such interface
    sender.add([b"three"], dest)
    sender.add([b"four"], dest, good)
    for i in range(extra):
        sender.add([b"x%d" % i], dest, good if i % 2 else None)
    errors = sender.flush(tx)
    assert [(addr, exc.errno) for addr, exc in errors] == [(dest, errno.ENODEV)]
    got = recv_all(receiver_cls(rx), 3 + extra)
    assert [g[0] for g in got] == [b"one", b"three", b"four"] + [b"x%d" % i for i in range(extra)]
    # the queue is reusable: no pktinfo left over from earlier batches (slot 1 had the
    # bad one), whichever way a batch is filled (1, a few, many datagrams)
    bad = (0x7FFFFFF0, LOOPBACK_PACKED)
    for count, fails in ((1, False), (2, True), (9, True), (2, True), (9, False), (3, False)):
        # when fails, the first datagram carries the bad pktinfo
        for i in range(count):
            sender.add([b"again%d" % i], dest, bad if fails and i == 0 else None)
        errors = sender.flush(tx)
        assert [addr for addr, _unused in errors] == ([dest] if fails else [])
        got = recv_all(receiver_cls(rx), count - fails)
        assert [g[0] for g in got] == [b"again%d" % i for i in range(fails, count)]


def test_failing_datagrams_do_not_stop_the_others(backend, socks):
    receiver_cls, sender_cls = backend
    rx, tx = socks(), socks()
    dest = rx.getsockname()
    refused = (LOOPBACK_BROADCAST, dest[1])  # EACCES: no SO_BROADCAST on tx
    sender = sender_cls(batch=16)
    plan = [dest, refused, refused, dest, dest, refused, dest, refused]
    for i, addr in enumerate(plan):
        sender.add([b"d%d" % i], addr)
    errors = sender.flush(tx)
    assert [addr for addr, _unused in errors] == [refused] * 4
    assert all(isinstance(exc, PermissionError) for _unused, exc in errors)
    assert all(exc.errno == errno.EACCES for _unused, exc in errors)
    got = recv_all(receiver_cls(rx), 4)
    assert [g[0] for g in got] == [b"d0", b"d3", b"d4", b"d6"]
    assert sender.flush(tx) == []  # the queue is empty and the errors were handed over


def test_automatic_flush_when_the_batch_is_full(backend, socks):
    receiver_cls, sender_cls = backend
    rx, tx = socks(), socks()
    dest = rx.getsockname()
    refused = (LOOPBACK_BROADCAST, dest[1])
    sender = sender_cls(batch=4, sock=tx)
    for i in range(10):
        sender.add([b"%d" % i], refused if i == 1 else dest)
    assert len(sender) == 2  # 8 went out in two automatic flushes (one refused)
    got = recv_all(receiver_cls(rx), 7)
    assert [g[0] for g in got] == [b"%d" % i for i in range(8) if i != 1]
    errors = sender.flush()  # the automatic flushes' errors come with the next flush
    assert [(addr, exc.errno) for addr, exc in errors] == [(refused, errno.EACCES)]
    assert [g[0] for g in recv_all(receiver_cls(rx), 2)] == [b"8", b"9"]


@pytest.mark.parametrize("batch", [64, 4])  # one sendmmsg call, and several
def test_fan_out_gives_each_destination_its_own_tag(backend, socks, batch):
    """send_fans: header + the destination's tag + payload, per broadcast and
    destination, in order; what add() queued before goes first."""
    receiver_cls, sender_cls = backend
    rxs, tx = [socks() for _unused in range(3)], socks()
    dests = [r.getsockname() for r in rxs]
    sender = sender_cls(batch=batch, sock=tx)
    # one part each, laid out in bulk, and an IP_PKTINFO (bad: that one fails) in slot 0
    bad = (0x7FFFFFF0, LOOPBACK_PACKED)
    for i in range(mmsg.FEW + 1):
        sender.add([b"before%d" % i], dests[2], bad if i == 0 else None)
    assert [addr for addr, _unused in sender.flush(tx)] == [dests[2]]
    sender.add([b"queued first"], dests[1])
    received = memoryview(bytearray(b"..payload-one..payload-two-longer.."))
    fans = [
        (b"H1" * 12, [b"tag-%d" % i + bytes(11) for i in range(3)], received[2:13]),
        (b"H2" * 12, [bytearray(b"ba-%d" % i) for i in range(3)], received[15:33]),
        (b"H3", [b"a", b"", b"ccc"], b"read-only payload"),
        (b"H4", [b"x", b"y", b"z"], b""),
    ]
    assert sender.send_fans(tx, fans, dests, mmsg.sockaddr_names(dests)) == []
    assert len(sender) == 0
    for i, rx in enumerate(rxs):
        expected = [bytes(h) + bytes(tags[i]) + bytes(p) for h, tags, p in fans]
        first = [b"queued first"] if i == 1 else []
        first += [b"before%d" % n for n in range(1, mmsg.FEW + 1)] if i == 2 else []
        assert [g[0] for g in recv_all(receiver_cls(rx), len(first) + 4)] == first + expected
    # the arrays serve ordinary batches again afterwards (many, a few, one)
    for count in (9, 3, 1):
        for i in range(count):
            sender.add([b"after%d" % i], dests[0])
        assert sender.flush(tx) == []
        got = recv_all(receiver_cls(rxs[0]), count)
        assert [g[0] for g in got] == [b"after%d" % i for i in range(count)]


def test_fan_out_failures_are_each_destinations_own(backend, socks):
    receiver_cls, sender_cls = backend
    rx0, rx1, tx = socks(), socks(), socks()
    refused = (LOOPBACK_BROADCAST, rx0.getsockname()[1])  # EACCES: no SO_BROADCAST on tx
    dests = [rx0.getsockname(), refused, rx1.getsockname()]
    sender = sender_cls(batch=4)  # 9 datagrams: three sendmmsg calls
    fans = [(b"h%d" % n, [b"a", b"b", b"c"], b"-%d" % n) for n in range(3)]
    names = mmsg.sockaddr_names(dests)
    errors = sender.send_fans(tx, fans, dests, names)
    assert [(addr, exc.errno) for addr, exc in errors] == [(refused, errno.EACCES)] * 3
    assert [g[0] for g in recv_all(receiver_cls(rx0), 3)] == [b"h0a-0", b"h1a-1", b"h2a-2"]
    assert [g[0] for g in recv_all(receiver_cls(rx1), 3)] == [b"h0c-0", b"h1c-1", b"h2c-2"]
    # a few datagrams (a branch's broadcast to its hub) take the queue's way
    errors = sender.send_fans(tx, [(b"h9", [b"x", b"y", b"z"], b"-9")], dests, names)
    assert [(addr, exc.errno) for addr, exc in errors] == [(refused, errno.EACCES)]
    assert [g[0] for g in recv_all(receiver_cls(rx0), 1)] == [b"h9x-9"]
    assert [g[0] for g in recv_all(receiver_cls(rx1), 1)] == [b"h9z-9"]
    assert sender.send_fans(tx, [], dests, mmsg.sockaddr_names(dests)) == []
    with pytest.raises(ValueError):  # a tag for every destination, no fewer
        sender.send_fans(tx, [(b"h", [b"a"], b"p")], dests, mmsg.sockaddr_names(dests))


def test_full_queue_without_a_socket(backend):
    _unused, sender_cls = backend
    sender = sender_cls(batch=2)
    sender.add([b"a"], (LOOPBACK, 9))
    sender.add([b"b"], (LOOPBACK, 9))
    with pytest.raises(ValueError):
        sender.add([b"c"], (LOOPBACK, 9))
    assert len(sender) == 2
    with pytest.raises(ValueError):
        sender.flush()


def test_flush_of_an_empty_queue(backend, socks):
    _unused, sender_cls = backend
    assert sender_cls().flush(socks()) == []


def test_blocking_socket_send(backend, socks):
    """The bench's senders use blocking sockets: sendmmsg just waits for buffer space."""
    receiver_cls, sender_cls = backend
    rx, tx = socks(), socks(blocking=True)
    sender = sender_cls(batch=32, sock=tx)
    for i in range(100):
        sender.add([i.to_bytes(4, "big"), b"." * 100], rx.getsockname())
    assert sender.flush() == []
    got = recv_all(receiver_cls(rx, batch=64), 100)
    assert [int.from_bytes(g[0][:4], "big") for g in got] == list(range(100))


def test_default_backend_and_override():
    if mmsg.HAVE_MMSG:
        assert mmsg.Receiver is mmsg.MmsgReceiver and mmsg.Sender is mmsg.MmsgSender
        assert mmsg.BACKEND == "mmsg"
    else:
        assert mmsg.Receiver is mmsg.PyReceiver and mmsg.Sender is mmsg.PySender
    src = Path(mmsg.__file__).resolve().parents[1]
    code = "from sitelink_relay import mmsg; print(mmsg.BACKEND, mmsg.Receiver.__name__)"
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, SITELINK_RELAY_NO_MMSG="1", PYTHONPATH=str(src)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["python", "PyReceiver"]
    # without ctypes at all (e.g. a hardened host where importing it fails)
    code = "import sys; sys.modules['ctypes'] = None; " + code
    res = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PYTHONPATH=str(src)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["python", "PyReceiver"]


def test_struct_layouts():
    """The ctypes structures match the C ABI the kernel expects (LP64: x86_64, aarch64)."""
    import ctypes

    if ctypes.sizeof(ctypes.c_void_p) != 8:
        pytest.skip("layout figures are for 64-bit Linux")
    assert ctypes.sizeof(mmsg.iovec) == 16
    assert ctypes.sizeof(mmsg.msghdr) == 56
    assert ctypes.sizeof(mmsg.mmsghdr) == 64
    assert ctypes.sizeof(mmsg.sockaddr_in) == 16
    assert ctypes.sizeof(mmsg.cmsghdr) == 16
    assert ctypes.sizeof(mmsg.in_pktinfo) == 12
    assert mmsg.msghdr.msg_iov.offset == 16 and mmsg.msghdr.msg_flags.offset == 48
    assert mmsg.mmsghdr.msg_len.offset == 56
    assert (
        socket.CMSG_LEN(12),
        socket.CMSG_SPACE(12),
    ) == (mmsg.CMSG_PKTINFO_LEN, mmsg.CMSG_PKTINFO_SPACE)


def test_invalid_sizes():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for cls in (mmsg.PyReceiver, mmsg.Receiver):
            with pytest.raises(ValueError):
                cls(s, batch=0)
        for cls in (mmsg.PySender, mmsg.Sender):
            with pytest.raises(ValueError):
                cls(batch=0)
    finally:
        s.close()
