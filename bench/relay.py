"""The broadcast relay against socat, side by side, in network namespaces (needs root).

Topology (every namespace is created here, with a unique suffix, and removed at
the end; traffic never leaves them):

    snd 192.168.1.10 -- lan0 [gwA] tun0 ====== tun0 [gwB] lan0 -- rcv 192.168.2.20
                        .1.126/24                  .2.126/24

The "tunnel" is a routed veth pair whose ends carry the gateways' LAN addresses as
/32, as in tests/integration/test_relay_netns.py.  The sender broadcasts on LAN A;
the forwarder at gwA sends each datagram to gwB; the forwarder at gwB broadcasts
it on LAN B, where the receiver counts it.  For every case the relay and socat do
that same forwarding, one after the other in the same run:

    compat     sitelink-relay PORT 192.168.2.126 (gwA), PORT 192.168.2.255 (gwB)
    raw        service mode, "wire": "raw"
    sitelink1  service mode, authenticated wire (HMAC-SHA256 per datagram)
    socat      gwA: socat -u UDP-RECV:PORT UDP-SENDTO:192.168.2.126:PORT
               gwB: socat -u UDP-RECV:PORT,range=192.168.1.126/32
                              UDP-SENDTO:192.168.2.255:PORT,broadcast
               (both with the relay's 2 MiB receive buffer; at gwB the range
               option drops gwB's own broadcasts, which come back to the listening
               socket exactly as they do to the relay's)

Per hop (the figure to compare forwarders by): end to end, both forwarders, the
sender and the receiver share this host's CPUs, so a blast mostly measures how
they share them, while each real gateway is a machine of its own.  So each hop is
also blasted alone, with only its forwarder running:

    hop A      LAN A -> gwA's forwarder -> the receiver, listening on PORT in gwB's
               namespace in place of gwB's forwarder (relay, sitelink1: it counts
               envelopes, the sender's sequence number 40 bytes in);
    hop B      the sender, in gwA's namespace in place of gwA's forwarder, sends
               what that forwarder would: unicasts from 192.168.1.126:PORT to
               gwB:PORT through tun0 (relay, sitelink1: envelopes made with the
               relay's own wire.py and the key gwB's keys file accepts from gwA,
               origin office alpha, sender 192.168.1.126, one new epoch per run,
               sequence numbers counting up, HMAC computed as it sends, since the
               relay drops replays) -> gwB's forwarder -> LAN B -> the receiver.

A forwarder's capacity is its slower hop's (each gateway being its own machine);
the relay/socat ratio of those is printed per case.  One sender per hop: the
replay window is per envelope sender, and two senders racing with one sequence
space would be reordered beyond the window and dropped as stale.  A hop whose
forwarder's receive queue never overflowed was limited by the sender: its figure
is a lower bound (marked *); the JSON has the sender's CPU per datagram to see
its headroom.  The relay's status file (counters and drop reasons) is read back
after every relay run.

Loads, each measured for the relay and for socat:
    blast      the sender as fast as it can (sendmmsg, 64 per call, at nice 19 so
               that on a small machine it does not starve the forwarders):
               capacity = distinct datagrams/s delivered to the receiver in the
               steady-state window (after a warm-up); end to end and per hop;
    10k, 50k   paced datagrams/s, end to end only (they are about delivery through
               both gateways): p50/p99/max one-way latency (each datagram carries a
               sequence number and its CLOCK_MONOTONIC send time; same kernel, so
               the receiver in another namespace can subtract), loss and duplicates.

The hub case (``--cases hub``, K from ``--hub-peers``, default 10, 100, 1000): one
LAN broadcast to K peer relays on the authenticated wire, each link with its own key.
The hub's relay runs at gwA; the K peers are addresses in one more namespace, brn,
behind a veth from gwA (hub0), where all of 10.100.0.0/16 is local (one route, no
address per peer) and one receiver bound to the port gets every envelope with its
destination (IP_PKTINFO): the peer it was made for.  The receiver verifies each
envelope with that peer's key (the hub's keys file) and counts it per peer and
broadcast, so a missing, duplicated or forged envelope shows, as does a broadcast
whose copies do not share one sequence number.  Per K:

    one        20 single broadcasts, 50 ms apart (the relay idle in between): the time
               from each send to the kernel's receive time (SO_TIMESTAMPNS) of the
               last of its K envelopes, p50 and max;
    mixed      broadcasts paced to ask for 600 000 envelopes/s (more than one core
               carries), sizes 200, 201, 202 bytes in turn: each broadcast's K
               envelopes leave through sendmmsg;
    burst      the same, all 200 bytes: each peer gets its run of them as one
               segmented send (UDP_SEGMENT).

For mixed and burst, the relay's CPU time (utime + stime, /proc) and the envelopes it
sent (its status file, written on SIGUSR1, read with the relay idle before and after
the load) give the CPU time per envelope and the rate one core carries; the system
share includes the veth delivery into brn (IP and UDP receive, waking the receiver),
which on a real hub is the peers' work, while tunnel and ESP are not here.

Figures only: nothing here asserts a time.  Tables go to stdout, everything to a
JSON file (--output): end to end under "cases", per hop under "per_hop" (per case
and implementation: "A", "B", capacity_per_s = the slower hop's, limited_by,
lower_bound; per case: relay_over_socat), the per-hop capacity ratios under
"per_hop_capacity_ratio_relay_over_socat", the hub case under "hub" (per K: one,
mixed, burst) and its rates per core under "hub_per_core_per_s".  Storm control is turned off in the
relay's configs (it would cap a blast by design).  Until the relay has --keys, the
sitelink1 case is reported as skipped.  The sender and receiver are this script
(--role send|recv) run with /usr/bin/python3 inside the namespaces, batching with
the relay's own sitelink_relay/mmsg.py.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import ctypes
import importlib.util
import json
import os
import platform
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
RELAY = ROOT / "roles" / "relay" / "files" / "sitelink-relay"
MMSG = ROOT / "relay" / "sitelink_relay" / "mmsg.py"
WIRE = ROOT / "relay" / "sitelink_relay" / "wire.py"
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
DEFAULT_OUTPUT = ROOT / "bench" / "results" / "relay.json"
PORT = 6799
SENDER, GW_A, GW_B, RECEIVER = "192.168.1.10", "192.168.1.126", "192.168.2.126", "192.168.2.20"
LAN_A, LAN_B = "192.168.1.0/24", "192.168.2.0/24"
BCAST_A, BCAST_B = "192.168.1.255", "192.168.2.255"
OFFICE_A, OFFICE_B = "alpha", "bravo"
ENVELOPE = 40  # sitelink1 envelope in front of the payload (wire.OVERHEAD)
RCVBUF = 1 << 21  # what the relay asks for (ports.SOCKET_RCVBUF); socat gets the same
HEADER = struct.Struct("<QQ")  # sequence number, CLOCK_MONOTONIC send time (ns)
BATCH = 64
PR_SET_PDEATHSIG = 1
PR_SET_TIMERSLACK = 29
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
UDP_FIELDS = ("InDatagrams", "NoPorts", "InErrors", "OutDatagrams", "RcvbufErrors")
IP_PKTINFO = 8  # Python 3.11 lacks socket.IP_PKTINFO
SO_TIMESTAMPNS = 35  # SCM_TIMESTAMPNS too; not in Python's socket module
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
# The hub case (see "hub" below): K peers behind one relay.
HUB_PEERS = (10, 100, 1000)
HUB_OFFICE = "hub"
HUB_NEXT_HOP = "10.100.255.254"  # the branches' end of hub0; 10.100.0.0/16 is theirs
HUB_OFFER = 600_000  # envelopes/s the load's broadcasts ask for (broadcasts/s = this / K)
HUB_SINGLES = 20  # single broadcasts for the time to reach all K
HUB_SPREAD = 3  # the mixed load's sizes: size, size + 1, size + 2 in turn
HUB_LOADS = (("mixed", HUB_SPREAD), ("burst", 1))
HUB_SINGLE_RATE = 20  # a second: the relay is idle between them
HUB_RCVBUF = (1 << 30) - 1  # the K peers' queue (the kernel doubles it): the verifying
# receiver is slower than the relay, and a queued envelope takes a few KiB (segments of a
# segmented send more); the host's udp_mem still caps it
HUB_QUIET = 0.5  # s without an envelope after the load's window: the receiver is done
HUB_DRAIN_MAX = 30.0  # s after the window at most

CASES = {
    "compat": "compat mode (sitelink-relay PORT DEST)",
    "raw": 'service mode, "wire": "raw"',
    "sitelink1": 'service mode, "wire": "sitelink1" (authenticated)',
    "hub": "a hub: one LAN broadcast to K peers, sitelink1 with a key per link",
}


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ sender/receiver


def _load(path: Path) -> Any:
    """One of the relay's modules (mmsg.py, wire.py), imported from its package."""
    if str(path.parent.parent) not in sys.path:
        sys.path.insert(0, str(path.parent.parent))
    return importlib.import_module(f"{path.parent.name}.{path.stem}")


def _read_go() -> tuple[int, int, int]:
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 3:
        sys.exit(0)  # the bench went away
    start, warm, duration = (int(x) for x in line)
    return start, warm, duration


def _sleep_until(t_ns: int) -> None:
    while True:
        left = t_ns - time.monotonic_ns()
        if left <= 0:
            return
        time.sleep(left / 1e9)


def role_send(args: argparse.Namespace) -> int:
    mmsg = _load(MMSG)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)  # 1 us: precise pacing
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
    # inside the bench's namespaces; hop B: gwA's LAN address and the relay port, as a
    # peer relay sends from
    sock.bind((args.bind, args.bind_port))
    sender = mmsg.Sender(BATCH, sock)
    add = sender.add
    dest = (args.dest, args.port)
    pad = bytes(max(0, args.size - HEADER.size))
    pack = HEADER.pack
    clock = time.monotonic_ns
    sealed = bool(args.seal_keys)
    if sealed:  # hop B of sitelink1: what gwA's relay would send, made with the relay's code
        wire = _load(WIRE)
        tag = wire.load_keys(args.seal_keys)[args.seal_peer].accept[0].tag
        hpack = wire.HEADER.pack
        magic, version, kind, group = wire.MAGIC, wire.VERSION, wire.KIND_BROADCAST, wire.NO_GROUP
        office = wire.office_id(args.seal_office)
        origin = socket.inet_aton(args.seal_sender)
        epoch = args.seal_epoch

        def datagram(seq: int, ts: int) -> tuple:
            body = pack(seq, ts) + pad
            head = hpack(magic, version, kind, office, origin, epoch, seq, group)
            return (head, tag(head, body), body)

    else:

        def datagram(seq: int, ts: int) -> tuple:
            return (pack(seq, ts), pad)

        if args.size_spread > 1:  # paced only: sizes size .. size + spread - 1, in turn
            pads = [bytes(max(0, args.size + i - HEADER.size)) for i in range(args.size_spread)]

            def datagram(seq: int, ts: int) -> tuple:
                return (pack(seq, ts), pads[seq % len(pads)])

    start, warm, duration = _read_go()
    measure_from = start + warm
    end = measure_from + duration
    errors = 0
    seq = 0
    first_measured = -1
    _sleep_until(start)
    cpu_start = time.process_time()
    if args.rate <= 0:  # blast: one timestamp per batch
        while True:
            now = clock()
            if now >= end:
                break
            if first_measured < 0 and now >= measure_from:
                first_measured = seq
            if sealed:  # a new envelope each (the relay drops replays): ~1 us of HMAC
                for _unused in range(BATCH):  # the 64th add sends the batch
                    body = pack(seq, now) + pad
                    head = hpack(magic, version, kind, office, origin, epoch, seq, group)
                    add((head, tag(head, body), body), dest)
                    seq += 1
            else:
                for _unused in range(BATCH):  # the 64th add sends the batch
                    add((pack(seq, now), pad), dest)
                    seq += 1
            errors += len(sender.flush())
    else:  # paced against the clock; each datagram stamped just before its batch goes out
        rate = args.rate
        while True:
            now = clock()
            if now >= end:
                break
            if first_measured < 0 and now >= measure_from:
                first_measured = seq
            due = (now - start) * rate // 1_000_000_000 + 1
            while seq < due:
                add(datagram(seq, clock()), dest)
                seq += 1
            errors += len(sender.flush())
            left = start + seq * 1_000_000_000 // rate - clock()
            if left > 0:
                time.sleep(left / 1e9)
    errors += len(sender.flush())
    if first_measured < 0:
        first_measured = seq
    elapsed = (clock() - start) / 1e9
    print(
        json.dumps(
            {
                "sent": seq,
                "sent_measured": seq - first_measured,
                "send_errors": errors,
                "elapsed": elapsed,
                "cpu": time.process_time() - cpu_start,
                "backend": mmsg.BACKEND,
            }
        ),
        flush=True,
    )
    return 0


def _percentile(sorted_values: list, q: float) -> Optional[float]:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


def role_recv(args: argparse.Namespace) -> int:
    mmsg = _load(MMSG)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 23)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
    sock.bind(("0.0.0.0", args.port))  # noqa: S104 - inside the bench's receiver namespace
    sock.setblocking(False)
    offset = args.offset  # hop A of sitelink1: the envelope comes first
    size = args.size + offset
    bufsize = max(2048, size + 64)
    rx = mmsg.Receiver(sock, BATCH, bufsize)
    fast = isinstance(rx, mmsg.MmsgReceiver) and offset % 8 == 0
    if fast:  # sequence numbers and timestamps straight from the slots, in C
        slot = (bufsize + 7) & ~7
        words = memoryview(rx._data).cast("Q")
        v_seq = words[offset // 8 :: slot // 8]
        v_ts = words[offset // 8 + 1 :: slot // 8]
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    clock = time.monotonic_ns
    start, warm, duration = _read_go()
    measure_from = start + warm
    window_end = measure_from + duration
    end = window_end + int(args.drain * 1e9)
    paced = args.rate > 0
    seen = bytearray(1 << 20)
    unique = dups = measured = in_window = short = 0
    latencies: list = []
    lat_append = latencies.append
    while True:
        now = clock()
        if now >= end:
            break
        if not poller.poll(min(100.0, (end - now) / 1e6)):
            continue
        while True:
            n = rx.recv()
            if not n:
                break
            t = clock()
            if fast:
                seqs = v_seq[:n].tolist()
                stamps = v_ts[:n].tolist()
                sizes = [len(p) for p in rx.payloads]
                if sizes.count(size) != n:
                    short += n - sizes.count(size)
            else:
                pairs = [
                    HEADER.unpack_from(p, offset)
                    for p in rx.payloads
                    if len(p) >= offset + HEADER.size
                ]
                short += n - len(pairs)
                seqs = [p[0] for p in pairs]
                stamps = [p[1] for p in pairs]
            new = 0
            for seq, ts in zip(seqs, stamps):
                if seq >= len(seen):
                    if seq > 1 << 32:
                        short += 1
                        continue
                    seen.extend(bytes(max(seq + 1 - len(seen), len(seen))))
                if seen[seq]:
                    dups += 1
                    continue
                seen[seq] = 1
                new += 1
                if ts >= measure_from:
                    measured += 1
                    if paced:
                        lat_append(t - ts)
            unique += new
            if measure_from <= t < window_end:
                in_window += new
            if n < BATCH:
                break
    latencies.sort()
    us = 1e-3
    result = {
        "received": unique,
        "received_measured": measured,
        "duplicates": dups,
        "malformed": short,
        "in_window": in_window,
        "window": duration / 1e9,
        "backend": mmsg.BACKEND,
    }
    if paced:
        result["latency_us"] = {
            "p50": _round(_percentile(latencies, 0.50), us),
            "p99": _round(_percentile(latencies, 0.99), us),
            "max": _round(latencies[-1] if latencies else None, us),
            "mean": _round(sum(latencies) / len(latencies) if latencies else None, us),
        }
    print(json.dumps(result), flush=True)
    return 0


class HubCheck:
    """The K peers' side of the hub case: each envelope verified with the key of the
    peer it was sent to (its destination address), and counted per peer and broadcast.

    Per envelope: the destination must be one of the K peers, the envelope the hub's
    (magic, version, kind, origin office, sender), the tag the one that peer's key
    gives, and the broadcast (the bench's sequence number in the payload) new for that
    peer, else it counts as malformed, foreign, auth or duplicate.  The hub's sequence
    number must be the same in every copy of one broadcast (a branch that gets it by
    two paths takes it once) and differ between broadcasts (a branch's replay window
    would drop a repeat): else seq_mismatch / seq_reused.
    """

    def __init__(self, args: argparse.Namespace, wire: Any):
        keys = wire.load_keys(args.seal_keys)  # the hub's keys file: its send key per peer
        self.addrs = sorted(keys, key=socket.inet_aton)
        self.index = {socket.inet_aton(a): i for i, a in enumerate(self.addrs)}
        self.tags = [keys[a].send.tag for a in self.addrs]
        self.prefix = (
            wire.MAGIC
            + bytes([wire.VERSION, wire.KIND_BROADCAST])
            + wire.office_id(args.seal_office)
            + socket.inet_aton(args.seal_sender)
        )
        self.sizes = range(ENVELOPE + args.size, ENVELOPE + args.size + args.size_spread)
        self.seen = [bytearray(1024) for _unused in self.addrs]  # per peer: broadcasts
        self.copies = array.array("I", bytes(4 * 1024))  # per broadcast: peers reached
        self.hub_seq = array.array("q", [-1] * 1024)  # per broadcast: the hub's seq
        self.stamps = array.array("q", bytes(8 * 1024))  # per broadcast: its send time
        self.counts = {"received": 0, "duplicates": 0, "auth": 0, "foreign": 0,
                       "malformed": 0, "seq_mismatch": 0}  # fmt: skip

    def _grow(self, seq: int) -> bool:
        if seq > 1 << 26:
            return False
        size = max(seq + 1, 2 * len(self.copies))
        for i, seen in enumerate(self.seen):
            seen.extend(bytes(size - len(seen)))
            self.seen[i] = seen
        more = size - len(self.copies)
        self.copies.frombytes(bytes(4 * more))
        self.hub_seq.extend([-1] * more)
        self.stamps.frombytes(bytes(8 * more))
        return True

    def check(self, payloads: list, dests: list) -> list:
        """Count a batch; returns (peer, broadcast) of each new, verified envelope."""
        counts = self.counts
        index, tags, prefix, sizes = self.index, self.tags, self.prefix, self.sizes
        seen, copies, hub_seq = self.seen, self.copies, self.hub_seq
        unpack = HEADER.unpack_from
        new = []
        for p, d in zip(payloads, dests):
            peer = index.get(d)
            if peer is None or len(p) not in sizes:
                counts["malformed"] += 1
                continue
            if p[:12] != prefix:
                counts["foreign"] += 1
                continue
            if tags[peer](p[:24], p[ENVELOPE:]) != p[24:ENVELOPE]:
                counts["auth"] += 1
                continue
            seq, stamp = unpack(p, ENVELOPE)
            if seq >= len(copies) and not self._grow(seq):
                counts["malformed"] += 1
                continue
            if seen[peer][seq]:
                counts["duplicates"] += 1
                continue
            seen[peer][seq] = 1
            env_seq = int.from_bytes(p[16:20], "big")
            if copies[seq] == 0:
                hub_seq[seq] = env_seq
                self.stamps[seq] = stamp
            elif hub_seq[seq] != env_seq:
                counts["seq_mismatch"] += 1
            copies[seq] += 1
            new.append((peer, seq))
        counts["received"] += len(new)
        return new

    def summary(self) -> dict[str, Any]:
        k = len(self.addrs)
        reached = [c for c in self.copies if c]
        per_peer = [sum(s) for s in self.seen]
        hub_seqs = [s for s, c in zip(self.hub_seq, self.copies) if c]
        return {
            **self.counts,
            "peers": k,
            "broadcasts": len(reached),  # reached at least one peer
            "complete": reached.count(k),  # reached every peer
            "missing": sum(k - c for c in reached),  # envelopes of those that did not come
            "seq_reused": len(hub_seqs) - len(set(hub_seqs)),
            "per_peer_min": min(per_peer) if per_peer else 0,
            "per_peer_max": max(per_peer) if per_peer else 0,
        }


def _hub_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # the verifying receiver may lag the relay: a queue that holds the whole load
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, HUB_RCVBUF)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, HUB_RCVBUF)
    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind(("0.0.0.0", port))  # noqa: S104 - the branches' namespace: every peer address
    sock.setblocking(False)
    return sock


def role_hub_recv(args: argparse.Namespace) -> int:
    """The K peers (every address of 10.100.0.0/16 is local in this namespace).

    ``--hub-mode one``: single broadcasts, one at a time; each envelope's arrival is the
    kernel's receive time (SO_TIMESTAMPNS), so the time for a broadcast to reach all K
    does not depend on how fast this receiver reads.  ``--hub-mode load``: a stream
    through recvmmsg, counted as it comes (the queue holds what it cannot keep up with).
    """
    mmsg = _load(MMSG)
    check = HubCheck(args, _load(WIRE))
    sock = _hub_socket(args.port)
    clock = time.monotonic_ns
    cpu_start = time.process_time()
    if args.hub_mode == "one":
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        anc_size = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(12)
        want = args.hub_expect * len(check.addrs)
        got: list = []  # (destination, kernel time, datagram)
        start, warm, duration = _read_go()
        end = start + warm + duration + int(args.drain * 1e9)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        while len(got) < want and clock() < end:
            if not poller.poll(100):
                continue
            while True:
                try:
                    data, anc, _flags, _addr = sock.recvmsg(65535, anc_size, MSG_DONTWAIT)
                except BlockingIOError:
                    break
                dst, stamp = b"", 0
                for level, kind, value in anc:
                    if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                        dst = value[8:12]
                    elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("=qq", value[:16])
                        stamp = sec * 1_000_000_000 + nsec
                got.append((dst, stamp, data))
        offset = time.time_ns() - clock()  # kernel times are CLOCK_REALTIME
        last: dict[int, int] = {}
        first: dict[int, int] = {}
        for dst, stamp, data in got:
            for _peer, seq in check.check([data], [dst]):
                mono = stamp - offset
                last[seq] = max(last.get(seq, mono), mono)
                first[seq] = min(first.get(seq, mono), mono)
        k = len(check.addrs)
        reach = sorted(
            (last[s] - check.stamps[s]) / 1e3 for s in last if check.copies[s] == k
        )  # us from the send to the last of the K envelopes
        spread = sorted((last[s] - first[s]) / 1e3 for s in last if check.copies[s] == k)
        result = {
            **check.summary(),
            "reach_all_us": {
                "p50": _round(_percentile(reach, 0.5), 1),
                "max": _round(reach[-1] if reach else None, 1),
                "min": _round(reach[0] if reach else None, 1),
            },
            "first_to_last_us": {"p50": _round(_percentile(spread, 0.5), 1)},
        }
    else:
        rx = mmsg.Receiver(sock, BATCH, 2048)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        start, warm, duration = _read_go()
        measure_from = start + warm
        window_end = measure_from + duration
        hard_end = window_end + int(HUB_DRAIN_MAX * 1e9)
        quiet = int(args.drain * 1e9)  # after the window: done once nothing came this long
        last_rx = window_end
        while True:
            now = clock()
            if now >= hard_end or (now >= window_end and now - last_rx >= quiet):
                break
            if not poller.poll(50):
                continue
            while True:
                n = rx.recv()
                if not n:
                    break
                last_rx = clock()
                check.check(rx.payloads, rx.dests)
                if n < BATCH:
                    break
        result = {**check.summary(), "drained_s": round(max(0, last_rx - window_end) / 1e9, 2)}
    result["cpu"] = round(time.process_time() - cpu_start, 3)
    print(json.dumps(result), flush=True)
    return 0


def _round(value: Optional[float], scale: float) -> Optional[float]:
    return None if value is None else round(value * scale, 1)


# ------------------------------------------------------------------------------ lab


def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _child_setup() -> None:
    """In each child: die with the bench (the finally block may never run on SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Lab:
    """Namespaces, processes and files this bench created; teardown() removes all."""

    def __init__(self) -> None:
        self.suffix = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.workdir = tempfile.mkdtemp(prefix="sitelink-bench-relay-")
        self.ns: dict[str, str] = {}
        self.runs = 0  # forwarder runs so far (names their files)
        self.config_format: dict[tuple[str, str], int] = {}  # (gw, wire) -> candidate
        self.epoch = 0  # the last epoch the bench's envelope sender used

    # -- topology
    def add_ns(self, role: str) -> str:
        name = f"slb{self.suffix}{role}"
        if os.path.exists(f"/run/netns/{name}"):
            raise BenchError(f"namespace {name} already exists; not touching it")
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build(self) -> None:
        ns = self.ns
        for role in ("snd", "gwA", "gwB", "rcv"):
            ns[role] = self.add_ns(role)
        for gw, addr in (("gwA", f"{GW_A}/24"), ("gwB", f"{GW_B}/24")):
            run("ip", "-n", ns[gw], "link", "add", "lan0", "type", "bridge")
            run("ip", "-n", ns[gw], "addr", "add", addr, "dev", "lan0")
            run("ip", "-n", ns[gw], "link", "set", "lan0", "up")
        for host, gw, addr, gwaddr in (
            ("snd", "gwA", SENDER, GW_A),
            ("rcv", "gwB", RECEIVER, GW_B),
        ):
            port = "p" + host
            run("ip", "-n", ns[host], "link", "add", "eth0", "type", "veth", "peer", "name", port,
                "netns", ns[gw])  # fmt: skip
            run("ip", "-n", ns[gw], "link", "set", port, "master", "lan0", "up")
            run("ip", "-n", ns[host], "addr", "add", f"{addr}/24", "dev", "eth0")
            run("ip", "-n", ns[host], "link", "set", "eth0", "up")
            run("ip", "-n", ns[host], "route", "add", "default", "via", gwaddr)
        run("ip", "-n", ns["gwA"], "link", "add", "tun0", "type", "veth", "peer", "name", "tun0",
            "netns", ns["gwB"])  # fmt: skip
        for gw, own, peer, other in (("gwA", GW_A, GW_B, LAN_B), ("gwB", GW_B, GW_A, LAN_A)):
            run("ip", "-n", ns[gw], "addr", "add", f"{own}/32", "peer", f"{peer}/32", "dev", "tun0")
            run("ip", "-n", ns[gw], "link", "set", "tun0", "up")
            run("ip", "-n", ns[gw], "route", "add", other, "via", peer, "dev", "tun0", "src", own)

    def build_hub(self) -> None:
        """The hub case's K peers: namespace brn behind hub0 (a veth from gwA), where
        every address of 10.100.0.0/16 is local; gwA routes them through hub0."""
        ns = self.ns
        if "brn" in ns:
            return
        ns["brn"] = self.add_ns("brn")
        run("ip", "-n", ns["gwA"], "link", "add", "hub0", "type", "veth", "peer", "name", "hub0",
            "netns", ns["brn"])  # fmt: skip
        for role in ("gwA", "brn"):
            run("ip", "-n", ns[role], "link", "set", "hub0", "up")
        run("ip", "-n", ns["brn"], "addr", "add", f"{HUB_NEXT_HOP}/32", "dev", "hub0")
        run("ip", "-n", ns["brn"], "route", "add", f"{GW_A}/32", "dev", "hub0")
        run("ip", "-n", ns["brn"], "route", "add", "local", "10.100.0.0/16", "dev", "lo")
        run("ip", "-n", ns["gwA"], "route", "add", f"{HUB_NEXT_HOP}/32", "dev", "hub0", "src", GW_A)
        run("ip", "-n", ns["gwA"], "route", "add", "10.100.0.0/16", "via", HUB_NEXT_HOP,
            "dev", "hub0", "src", GW_A)  # fmt: skip

    # -- processes
    def spawn(self, ns: str, cmd: list[str], log_name: Optional[str] = None, pipes=False, nice=0):
        full = ["ip", "netns", "exec", ns]
        if nice:
            full += ["nice", "-n", str(nice)]
        full += cmd
        out: Any = subprocess.PIPE if pipes else subprocess.DEVNULL
        if log_name:
            out = open(os.path.join(self.workdir, log_name), "w")  # noqa: SIM115 - kept for the child
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=out,
                stderr=out if log_name else subprocess.PIPE if pipes else subprocess.DEVNULL,
                text=True,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops them in order
                preexec_fn=_child_setup,  # prctl only (the bench runs no threads)
            )
        finally:
            if log_name:
                out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> None:
        """Stop one process this bench started (by its pid)."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def log_tail(self, name: str, lines: int = 8) -> str:
        try:
            text = Path(self.workdir, name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def write(self, name: str, content: str, mode: int = 0o644) -> str:
        path = os.path.join(self.workdir, name)
        with open(path, "w") as fh:
            fh.write(content)
        os.chmod(path, mode)
        return path

    def udp_counters(self, role: str) -> dict[str, int]:
        res = run("ip", "netns", "exec", self.ns[role], "cat", "/proc/net/snmp", check=False)
        lines = [line.split() for line in res.stdout.splitlines() if line.startswith("Udp:")]
        if len(lines) < 2:
            return {}
        values = dict(zip(lines[0][1:], lines[1][1:]))
        return {k: int(values.get(k, 0)) for k in UDP_FIELDS}

    def teardown(self) -> None:
        for proc in list(self.procs):  # only processes this bench started
            with contextlib.suppress(Exception):
                self.stop(proc)
        for name in reversed(self.namespaces):  # only namespaces this bench created
            run("ip", "netns", "del", name, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def wait_bound(proc: subprocess.Popen, port: int, timeout: float = 10.0) -> bool:
    """Until the process (in its namespace) has a UDP socket bound to port."""
    suffix = f":{port:04X}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with open(f"/proc/{proc.pid}/net/udp") as fh:
                if any(line.split()[1].endswith(suffix) for line in list(fh)[1:]):
                    return True
        except (OSError, IndexError):
            pass
        time.sleep(0.02)
    return False


# ------------------------------------------------------------------------ forwarders


def relay_features(python: str, relay: str) -> dict[str, Any]:
    res = run(python, relay, "--help", check=False)
    version = run(python, relay, "--version", check=False).stdout.strip()
    return {
        "keys": "--keys" in res.stdout,
        "status_file": "--status-file" in res.stdout,
        "version": version,
        "help_ok": res.returncode == 0,
    }


def service_configs(gw: str, wire: str, workdir: str, run_id: str) -> list[dict[str, Any]]:
    """Config candidates for gateway gw ("A"/"B"), newest format first.

    Every run of a forwarder gets its own state directory (replay windows, epoch) and
    status file, so that one run's counters and windows do not carry into the next.
    """
    own, peer = (GW_A, GW_B) if gw == "A" else (GW_B, GW_A)
    office, peer_office = (OFFICE_A, OFFICE_B) if gw == "A" else (OFFICE_B, OFFICE_A)
    lan = {"interface": "lan0", "address": f"{own}/24"}
    rule = {"port": PORT, "forward_to": [peer], "accept_from": [peer]}
    state_dir = os.path.join(workdir, f"state{gw}-{run_id}")
    os.makedirs(state_dir, exist_ok=True)
    status = os.path.join(workdir, f"status{gw}-{run_id}.json")
    v2 = {
        "version": 2,
        "office": office,
        "lan": lan,
        "wire": wire,
        "rules": [rule],
        "storm_control": None,
        "state_dir": state_dir,
        "status_file": status,
    }
    candidates = [
        dict(v2, peers={peer: {"office": peer_office}}),
        dict(v2, peer_offices={peer: peer_office}),
    ]
    if wire == "raw":
        candidates.append(
            {"version": 1, "lan": lan, "wire": "raw", "rules": [rule], "status_file": status}
        )
    return candidates


def status_summary(path: str) -> Optional[dict[str, Any]]:
    """What a relay's status file says about the port: counters and drop reasons."""
    try:
        with open(path) as fh:
            data = json.load(fh)
        port = data["ports"][str(PORT)]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    summary = {
        k: port.get(k)
        for k in ("received", "forwarded", "rebroadcast", "dropped", "send_errors")
        if k in port
    }
    peers = {
        addr: {k: peer.get(k) for k in ("received", "accepted", "sent", "dropped")}
        for addr, peer in (data.get("peers") or {}).items()
        if isinstance(peer, dict)
    }
    if peers:
        summary["peers"] = peers
    return summary


class Forwarders:
    """The forwarders of one implementation and case: at gwA and gwB (end to end), or
    at one gateway only (one hop, the bench's sender or receiver at the other)."""

    def __init__(
        self,
        lab: Lab,
        args: argparse.Namespace,
        impl: str,
        case: str,
        gateways: tuple[str, ...] = ("gwA", "gwB"),
    ):
        self.lab, self.args, self.impl, self.case = lab, args, impl, case
        self.gateways = gateways
        lab.runs += 1
        self.run_id = f"{impl}-{case}-{lab.runs}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, str] = {}
        self.keys_files: dict[str, str] = {}  # gwX -> its keys file (sitelink1)
        self.status_files: dict[str, str] = {}  # gwX -> its status file (the relay's)

    def commands(self) -> dict[str, list[str]]:
        args = self.args
        if self.impl == "socat":
            cmds = {
                "gwA": [
                    "socat", "-u", f"UDP-RECV:{PORT},reuseaddr,rcvbuf={RCVBUF}",
                    f"UDP-SENDTO:{GW_B}:{PORT}",
                ],
                "gwB": [
                    "socat", "-u", f"UDP-RECV:{PORT},reuseaddr,rcvbuf={RCVBUF},range={GW_A}/32",
                    f"UDP-SENDTO:{BCAST_B}:{PORT},broadcast",
                ],
            }  # fmt: skip
            return {gw: cmds[gw] for gw in self.gateways}
        base = [args.python, args.relay]
        if self.case == "compat":
            cmds = {}
            for gw, dest in (("gwA", GW_B), ("gwB", BCAST_B)):
                if gw not in self.gateways:
                    continue
                cmds[gw] = [*base, str(PORT), dest]
                if args.features["status_file"]:
                    status = os.path.join(self.lab.workdir, f"status{gw[2]}-{self.run_id}.json")
                    cmds[gw] += ["--status-file", status]
                    self.status_files[gw] = status
            return cmds
        wire = "sitelink1" if self.case == "sitelink1" else "raw"
        cmds = {}
        key = secrets.token_hex(32)  # one link, one key, both ends
        for gw, peer in (("A", GW_B), ("B", GW_A)):
            if "gw" + gw not in self.gateways:
                continue
            keys_file = None
            if wire == "sitelink1":
                keys = {"version": 1, "peers": {peer: {"send": key, "accept": [key]}}}
                name = f"keys{gw}-{self.run_id}.json"
                keys_file = self.keys_files["gw" + gw] = self.lab.write(
                    name, json.dumps(keys), 0o600
                )
            path = self._config(gw, wire, keys_file)
            cmd = [*base, "--config", path]
            if keys_file:
                cmd += ["--keys", keys_file]
            cmds["gw" + gw] = cmd
            self.status_files["gw" + gw] = os.path.join(
                self.lab.workdir, f"status{gw}-{self.run_id}.json"
            )
        return cmds

    def _config(self, gw: str, wire: str, keys: Optional[str] = None) -> str:
        candidates = service_configs(gw, wire, self.lab.workdir, self.run_id)
        name = f"config{gw}-{self.run_id}.json"
        known = self.lab.config_format.get((gw, wire))
        if known is not None:  # checked once per gateway and wire; the rest is file names
            return self.lab.write(name, json.dumps(candidates[known], indent=1))
        problems = []
        for i, candidate in enumerate(candidates):
            path = self.lab.write(name, json.dumps(candidate, indent=1))
            check = [self.args.python, self.args.relay, "--check-config", path]
            res = run(*check, *(["--keys", keys] if keys else []), check=False)
            if res.returncode != 0 and "--keys goes with --config" in res.stderr:
                res = run(*check, check=False)  # a relay older than checking the keys
            if res.returncode == 0:
                self.lab.config_format[(gw, wire)] = i
                return path
            problems.append(res.stderr.strip() or res.stdout.strip())
        raise BenchError(f"the relay accepts none of the bench's {wire} configs:\n" + problems[0])

    def start(self) -> None:
        for gw, cmd in self.commands().items():
            name = f"{self.run_id}-{gw}.log"
            self.logs[gw] = name
            self.procs[gw] = self.lab.spawn(self.lab.ns[gw], cmd, log_name=name)
        for gw, proc in self.procs.items():
            if not wait_bound(proc, PORT):
                raise BenchError(
                    f"{self.impl} at {gw} did not start:\n{self.lab.log_tail(self.logs[gw])}"
                )
        time.sleep(0.2)  # let them finish starting (reading keys, status files)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs.values())

    def stop(self) -> None:
        for proc in self.procs.values():
            self.lab.stop(proc)

    def relay_status(self) -> dict[str, Any]:
        """After stop(): what each relay wrote to its status file when it stopped."""
        found = {gw: status_summary(path) for gw, path in self.status_files.items()}
        return {gw: summary for gw, summary in found.items() if summary is not None}


# --------------------------------------------------------------------------- measure


def _readline(proc: subprocess.Popen, deadline: float) -> str:
    if proc.stdout is None:
        raise BenchError("no pipe to a sender/receiver")
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise BenchError("a sender/receiver did not answer in time")
        ready, _unused, _unused = select.select([proc.stdout], [], [], left)
        if ready:
            line = proc.stdout.readline()
            if not line:
                err = proc.stderr.read() if proc.stderr else ""
                raise BenchError(f"a sender/receiver exited early: {err.strip()[-500:]}")
            return line.strip()


def _result(proc: subprocess.Popen, timeout: float) -> dict:
    """The JSON line a sender/receiver prints when it is done."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise BenchError("a sender/receiver did not finish in time") from exc
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise BenchError(f"a sender/receiver failed ({proc.returncode}): {err.strip()[-500:]}")
    return json.loads(lines[-1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (what it spent, incl. the kernel work of its calls)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Where the sender and receiver sit, and which forwarders run, for each path.  Hop A:
# LAN A -> gwA's forwarder -> the receiver at gwB's address (in place of gwB's
# forwarder).  Hop B: the sender at gwA's address (in place of gwA's forwarder, sending
# what it would: unicasts from 192.168.1.126:PORT through tun0) -> gwB's forwarder ->
# LAN B.
PATHS: dict[str, dict[str, Any]] = {
    "e2e": {"snd": "snd", "rcv": "rcv", "forwarders": ("gwA", "gwB")},
    "A": {"snd": "snd", "rcv": "gwB", "forwarders": ("gwA",)},
    "B": {"snd": "gwA", "rcv": "rcv", "forwarders": ("gwB",)},
}


def measure(
    lab: Lab,
    args: argparse.Namespace,
    rate: int,
    warm: float,
    duration: float,
    pids: dict[str, int],
    path: str = "e2e",
    send_args: tuple[str, ...] = ("--dest", BCAST_A),
    recv_args: tuple[str, ...] = (),
    drain: float = 0.5,
) -> dict:
    """One load through the running forwarders (pids: gwX -> pid) along path (PATHS)."""
    where = PATHS[path]
    script = str(Path(__file__).resolve())
    common = ["--port", str(PORT), "--size", str(args.size), "--rate", str(rate)]
    roles = sorted({*where["forwarders"], where["rcv"]})
    before = {role: lab.udp_counters(role) for role in roles}
    cpu_before = {gw: cpu_seconds(pid) for gw, pid in pids.items()}
    receiver = lab.spawn(
        lab.ns[where["rcv"]],
        [args.python, script, "--role", "recv", *common, "--drain", str(drain), *recv_args],
        pipes=True,
    )
    sender = lab.spawn(
        lab.ns[where["snd"]],
        [args.python, script, "--role", "send", *common, *send_args],
        pipes=True,
        nice=19 if rate <= 0 else 0,
    )
    try:
        deadline = time.monotonic() + 15
        for proc in (receiver, sender):
            if _readline(proc, deadline) != "ready":
                raise BenchError("unexpected sender/receiver output")
        start = time.monotonic_ns() + 50_000_000
        go = f"{start} {int(warm * 1e9)} {int(duration * 1e9)}\n"
        for proc in (receiver, sender):
            if proc.stdin is None:
                raise BenchError("no pipe to a sender/receiver")
            proc.stdin.write(go)
            proc.stdin.flush()
        wait = warm + duration + 15
        sent = _result(sender, wait)
        got = _result(receiver, wait)
    finally:
        lab.stop(sender)
        lab.stop(receiver)
    cpu = {gw: cpu_seconds(pid) - cpu_before[gw] for gw, pid in pids.items()}
    after = {role: lab.udp_counters(role) for role in roles}
    read = {r: after[r].get("InDatagrams", 0) - before[r].get("InDatagrams", 0) for r in after}
    # CPU per datagram: gwA's per datagram it read, gwB's (echoes included) per datagram
    # the receiver read from LAN B; figures that do not depend on what else the host runs
    per = {"gwA": read.get("gwA", 0), "gwB": read.get("rcv", 0)}
    expected = sent["sent_measured"]
    result: dict[str, Any] = {
        "offered_per_s": round(sent["sent"] / max(sent["elapsed"], 1e-9)),
        # the sender's own cost (incl. the kernel's delivery to the first socket): what
        # it could offer with a CPU to itself is 1e6 / this
        "sender_cpu_us_per_datagram": round(1e6 * sent["cpu"] / sent["sent"], 2)
        if sent["sent"]
        else None,
        "sent": sent["sent"],
        "sent_measured": expected,
        "send_errors": sent["send_errors"],
        "received": got["received"],  # distinct, whole run (warm-up and drain included)
        "received_measured": got["received_measured"],
        "duplicates": got["duplicates"],
        "malformed": got["malformed"],
        "lost": max(0, expected - got["received_measured"]),
        "loss_pct": round(100.0 * max(0, expected - got["received_measured"]) / expected, 3)
        if expected
        else None,
        # receive-queue overflows, per namespace (at gwB on hop A: the bench's receiver)
        "socket_drops": {
            role: after[role].get("RcvbufErrors", 0) - before[role].get("RcvbufErrors", 0)
            for role in before
        },
        "cpu_us_per_datagram": {
            gw: round(1e6 * cpu[gw] / per[gw], 2) if per[gw] else None for gw in pids
        },
    }
    if rate <= 0:
        result["capacity_per_s"] = round(got["in_window"] / got["window"])
        costs = [c for c in result["cpu_us_per_datagram"].values() if c]
        # what the slower forwarder could do with a CPU to itself
        bound = round(1e6 / max(costs)) if costs and len(costs) == len(pids) else None
        result["one_core_bound_per_s"] = bound
    else:
        result["latency_us"] = got["latency_us"]
    return result


LOADS = (("blast", 0), ("10k", 10_000), ("50k", 50_000))
IMPLS = ("relay", "socat")
HOPS = ("A", "B")
HOP_DRAIN = 0.25  # s after a hop's window; only the window counts


def bench_case(lab: Lab, args: argparse.Namespace, impl: str, case: str) -> dict:
    """End to end, both forwarders running: the blast and the paced loads."""
    fw = Forwarders(lab, args, impl, case)
    results: dict[str, Any] = {}
    try:
        fw.start()
        for load, rate in LOADS:
            duration = args.blast if rate <= 0 else args.paced
            warm = args.warm
            log(f"  {impl:5s} {case:9s} {load:5s} ({duration:g} s + {warm:g} s warm-up)")
            pids = {gw: proc.pid for gw, proc in fw.procs.items()}
            results[load] = measure(lab, args, rate, warm, duration, pids)
            if not fw.alive():
                tails = {gw: lab.log_tail(name) for gw, name in fw.logs.items()}
                raise BenchError(f"{impl} died during {load}: {tails}")
        delivered = sum(r["received_measured"] for r in results.values())
        if not delivered:
            results["error"] = "nothing arrived at the receiver"
            results["logs"] = {gw: lab.log_tail(name) for gw, name in fw.logs.items()}
    except BenchError as exc:
        results["error"] = str(exc)
    finally:
        fw.stop()
    status = fw.relay_status()
    if status:
        results["relay_status"] = status  # counters over all three loads
    return results


def bench_hop(lab: Lab, args: argparse.Namespace, impl: str, case: str, hop: str) -> dict:
    """One hop's blast, with only that hop's forwarder running (each gateway being its
    own machine, the slower hop is what one forwarder can carry)."""
    gw = PATHS[hop]["forwarders"][0]
    fw = Forwarders(lab, args, impl, case, gateways=(gw,))
    sealed = impl == "relay" and case == "sitelink1"
    result: dict[str, Any] = {"forwarder": gw}
    try:
        fw.start()
        send_args: tuple[str, ...] = ("--dest", BCAST_A)
        recv_args: tuple[str, ...] = ()
        if hop == "A" and sealed:  # the receiver gets gwA's envelopes
            recv_args = ("--offset", str(ENVELOPE))
        if hop == "B":
            send_args = ("--dest", GW_B, "--bind", GW_A, "--bind-port", str(PORT))
            if sealed:  # envelopes as gwA's relay makes them, with the key gwB accepts
                lab.epoch = max(lab.epoch + 1, int(time.time()))  # a new epoch every run
                send_args += (
                    "--seal-keys", fw.keys_files[gw], "--seal-peer", GW_A,
                    "--seal-office", OFFICE_A, "--seal-sender", GW_A,
                    "--seal-epoch", str(lab.epoch),
                )  # fmt: skip
        log(f"  {impl:5s} {case:9s} hop {hop} ({args.blast:g} s + {args.warm:g} s warm-up)")
        pids = {gw: fw.procs[gw].pid}
        result.update(
            measure(lab, args, 0, args.warm, args.blast, pids, hop, send_args, recv_args, HOP_DRAIN)
        )
        if not fw.alive():
            raise BenchError(f"{impl} died during hop {hop}: {lab.log_tail(fw.logs[gw])}")
        # the forwarder's queue never overflowed: it kept up with all the sender managed,
        # so its capacity is at least the figure (sender-bound)
        result["forwarder_queue_drops"] = result["socket_drops"].get(gw, 0)
        result["sender_bound"] = result["forwarder_queue_drops"] == 0
        if not result["capacity_per_s"]:
            result["error"] = "nothing arrived at the receiver"
            result["log"] = lab.log_tail(fw.logs[gw])
    except BenchError as exc:
        result["error"] = str(exc)
    finally:
        fw.stop()
    status = fw.relay_status().get(gw)
    if status:
        result["relay_status"] = status
    return result


# ------------------------------------------------------------------------------ hub
#
# One LAN broadcast to K peer relays, each with its own link key (a hub and its
# branches).  The hub's relay runs at gwA (LAN A, the sender there); the K peers are
# addresses in one more namespace, "brn", behind a veth from gwA (hub0): every
# address of 10.100.0.0/16 is local there (a local route, no address per peer), and
# one receiver bound to the port gets every envelope with its destination
# (IP_PKTINFO), the peer it was made for.


def hub_peer(i: int) -> str:
    return f"10.100.{i // 250}.{i % 250 + 1}"


class HubRelay:
    """The hub's relay at gwA: K peers, a key each, all in forward_to."""

    def __init__(self, lab: Lab, args: argparse.Namespace, k: int):
        self.lab, self.args, self.k = lab, args, k
        lab.runs += 1
        self.run_id = f"hub{k}-{lab.runs}"
        self.peers = [hub_peer(i) for i in range(k)]
        self.proc: Optional[subprocess.Popen] = None
        self.log = f"{self.run_id}-gwA.log"
        self.status_file = os.path.join(lab.workdir, f"status-{self.run_id}.json")
        keys = {}
        for p in self.peers:  # a key per link, as the planner derives them
            key = secrets.token_hex(32)
            keys[p] = {"send": key, "accept": [key]}
        self.keys_file = lab.write(
            f"keys-{self.run_id}.json", json.dumps({"version": 1, "peers": keys}), 0o600
        )
        state_dir = os.path.join(lab.workdir, f"state-{self.run_id}")
        os.makedirs(state_dir)
        config = {
            "version": 2,
            "office": HUB_OFFICE,
            "lan": {"interface": "lan0", "address": f"{GW_A}/24"},
            "wire": "sitelink1",
            "peers": {p: {"office": f"branch{i}"} for i, p in enumerate(self.peers)},
            "rules": [{"port": PORT, "forward_to": self.peers, "accept_from": self.peers}],
            "storm_control": None,
            "state_dir": state_dir,
            "status_file": self.status_file,
        }
        self.config = lab.write(f"config-{self.run_id}.json", json.dumps(config))

    def start(self) -> None:
        cmd = [self.args.python, self.args.relay, "--config", self.config, "--keys", self.keys_file]
        self.proc = self.lab.spawn(self.lab.ns["gwA"], cmd, log_name=self.log)
        if not wait_bound(self.proc, PORT):
            raise BenchError(f"the hub's relay did not start:\n{self.lab.log_tail(self.log)}")
        time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def counters(self) -> dict[str, Any]:
        """Its status file written now (SIGUSR1): envelopes sent, LAN datagrams read."""
        if self.proc is None:
            raise BenchError("the hub's relay is not running")
        try:
            before = os.stat(self.status_file).st_mtime_ns
        except OSError:
            before = 0
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10  # it writes between batches
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if os.stat(self.status_file).st_mtime_ns != before:
                    summary = status_summary(self.status_file)
                    if summary is not None:
                        return hub_counters(summary)
            time.sleep(0.005)
        raise BenchError("the hub's relay did not write its status on SIGUSR1")


def hub_counters(summary: dict[str, Any]) -> dict[str, Any]:
    """A relay status summary of the hub's port in a few numbers (K peers summed)."""
    peers = summary.get("peers", {})
    sent = [p.get("sent") or 0 for p in peers.values()]
    return {
        "received": summary.get("received"),
        "forwarded": summary.get("forwarded"),
        "sent": sum(sent),
        "sent_per_peer_min": min(sent) if sent else None,
        "sent_per_peer_max": max(sent) if sent else None,
        "dropped": summary.get("dropped", {}),
        "send_errors": summary.get("send_errors", {}),
    }


def cpu_split(pid: int) -> tuple[float, float, float]:
    """(user s, system s, total s): total from schedstat (ns), the split from stat (ticks)."""
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            total = int(fh.read().split()[0]) / 1e9
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0, 0.0
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck, total


def _hub_pair(
    lab: Lab,
    args: argparse.Namespace,
    hub: HubRelay,
    rate: int,
    recv_args: list[str],
    spread: int = 1,
) -> tuple[subprocess.Popen, subprocess.Popen]:
    script = str(Path(__file__).resolve())
    common = ["--port", str(PORT), "--size", str(args.size), "--size-spread", str(spread)]
    receiver = lab.spawn(
        lab.ns["brn"],
        [args.python, script, "--role", "hubrecv", *common, "--seal-keys", hub.keys_file,
         "--seal-office", HUB_OFFICE, "--seal-sender", GW_A, *recv_args],
        pipes=True,
    )  # fmt: skip
    sender = lab.spawn(
        lab.ns["snd"],
        [args.python, script, "--role", "send", *common, "--rate", str(rate), "--dest", BCAST_A],
        pipes=True,
    )
    return receiver, sender


def _go(procs: tuple[subprocess.Popen, ...], warm: float, duration: float) -> int:
    deadline = time.monotonic() + 15
    for proc in procs:
        if _readline(proc, deadline) != "ready":
            raise BenchError("unexpected sender/receiver output")
    start = time.monotonic_ns() + 50_000_000
    go = f"{start} {int(warm * 1e9)} {int(duration * 1e9)}\n"
    for proc in procs:
        if proc.stdin is None:
            raise BenchError("no pipe to a sender/receiver")
        proc.stdin.write(go)
        proc.stdin.flush()
    return start


def hub_one(lab: Lab, args: argparse.Namespace, hub: HubRelay) -> dict[str, Any]:
    """Single broadcasts, HUB_SINGLES of them, HUB_SINGLE_RATE a second (the relay idle
    in between): the time from each send to the last of its K envelopes' arrival."""
    duration = HUB_SINGLES / HUB_SINGLE_RATE
    receiver, sender = _hub_pair(
        lab, args, hub, HUB_SINGLE_RATE,
        ["--hub-mode", "one", "--hub-expect", str(HUB_SINGLES), "--drain", "1.0"],
    )  # fmt: skip
    try:
        _go((receiver, sender), 0.0, duration)
        sent = _result(sender, duration + 15)
        got = _result(receiver, duration + 15)
    finally:
        lab.stop(sender)
        lab.stop(receiver)
    got["broadcasts_sent"] = sent["sent"]
    return got


def hub_load(lab: Lab, args: argparse.Namespace, hub: HubRelay, spread: int) -> dict[str, Any]:
    """Broadcasts at HUB_OFFER/K a second (HUB_OFFER envelopes/s asked for, more than
    one core carries) for warm + hub_seconds: the relay's envelopes and CPU time from
    before the load to after it (its counters read with the relay idle, before and
    after; an idle relay spends next to nothing), and the receiver's verdicts.

    spread 1: every broadcast the same size (a burst: the relay sends each peer its
    run of them as one segmented send); HUB_SPREAD: sizes in turn, no two neighbours
    alike (each broadcast's K envelopes through sendmmsg, as a lone broadcast's)."""
    k = hub.k
    rate = max(1, HUB_OFFER // k)
    warm, duration = args.warm, args.hub_seconds
    if hub.proc is None:
        raise BenchError("the hub's relay is not running")
    pid = hub.proc.pid
    before = {r: lab.udp_counters(r) for r in ("gwA", "brn")}
    c0, cpu0 = hub.counters(), cpu_split(pid)
    receiver, sender = _hub_pair(
        lab, args, hub, rate, ["--hub-mode", "load", "--drain", str(HUB_QUIET)], spread
    )
    try:
        _go((receiver, sender), warm, duration)
        sent = _result(sender, warm + duration + 15)
        got = _result(receiver, HUB_DRAIN_MAX + 15)
    finally:
        lab.stop(sender)
        lab.stop(receiver)
    c1, cpu1 = hub.counters(), cpu_split(pid)
    after = {r: lab.udp_counters(r) for r in ("gwA", "brn")}
    envelopes = c1["sent"] - c0["sent"]
    user, system, total = (b - a for a, b in zip(cpu0, cpu1))
    ticks = user + system
    busy = warm + duration + got["drained_s"]  # until the last envelope arrived
    return {
        "broadcasts_per_s_offered": round(sent["sent"] / max(sent["elapsed"], 1e-9)),
        "broadcasts_sent": sent["sent"],
        "relay_forwarded": c1["forwarded"] - c0["forwarded"],
        "relay_envelopes": envelopes,
        # what the relay achieved on this shared machine (its queue drained after the
        # sender stopped), and per second of its own CPU time
        "relayed_per_s": round(envelopes / busy),
        "relay_cpu_s": round(total, 3),
        "relay_cpu_share": round(total / busy, 2),
        "relay_sys_fraction": round(system / ticks, 2) if ticks else None,
        "cpu_us_per_envelope": round(1e6 * total / envelopes, 3) if envelopes else None,
        # the relay's own work (Python, HMAC, the arrays), without the kernel's
        "user_us_per_envelope": round(1e6 * total * user / ticks / envelopes, 3)
        if envelopes and ticks
        else None,
        "per_core_per_s": round(envelopes / total) if total else None,
        "relay_send_errors": {
            k: v - c0["send_errors"].get(k, 0) for k, v in c1["send_errors"].items()
        },
        "receiver": got,
        # receive-queue overflows: the relay's LAN socket (gwA), the K peers' (brn)
        "socket_drops": {
            r: after[r].get("RcvbufErrors", 0) - before[r].get("RcvbufErrors", 0) for r in after
        },
    }


def bench_hub(lab: Lab, args: argparse.Namespace, k: int) -> dict[str, Any]:
    lab.build_hub()
    hub = HubRelay(lab, args, k)
    result: dict[str, Any] = {"peers": k, "load_average": round(os.getloadavg()[0], 2)}
    try:
        hub.start()
        log(f"  relay hub K={k:<5d} one broadcast at a time ({HUB_SINGLES})")
        result["one"] = hub_one(lab, args, hub)
        for load, spread in HUB_LOADS:
            log(f"  relay hub K={k:<5d} {load} ({args.hub_seconds:g} s + {args.warm:g} s warm-up)")
            result[load] = hub_load(lab, args, hub, spread)
        if not hub.alive():
            raise BenchError(f"the hub's relay died: {lab.log_tail(hub.log)}")
    except BenchError as exc:
        result["error"] = str(exc)
    finally:
        hub.stop()
    status = status_summary(hub.status_file)
    if status:
        result["relay_status"] = hub_counters(status)
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    return result


def hub_table(hub: dict[str, Any]) -> str:
    head = (
        f"{'K':>5s} {'load':6s} {'offered/s':>9s} {'relayed/s':>9s} {'cpu us/env':>10s}"
        f" {'user':>5s} {'per core/s':>10s}  {'missing':>7s} {'dup':>4s} {'auth':>4s}"
        f" {'q drops hub/K':>13s}  {'reach all K p50/max ms':>22s} {'load avg':>8s}"
    )
    lines = [
        "hub fan-out: one LAN broadcast to K peers, sitelink1 (a key per link), one relay",
        head,
        "-" * len(head),
    ]
    for r in hub.values():
        if not isinstance(r, dict) or "peers" not in r:
            continue
        k = r["peers"]
        if "error" in r:
            lines.append(f"{k:5d} error: {r['error'].splitlines()[0]}")
        one = r.get("one", {})
        reach = one.get("reach_all_us", {})
        ms = "/".join(
            "-" if reach.get(q) is None else f"{reach[q] / 1e3:.2f}" for q in ("p50", "max")
        )
        ones = f"one at a time: missing {_fmt(one.get('missing'), 0)}"
        ones += f", dup {_fmt(one.get('duplicates'), 0)}, auth {_fmt(one.get('auth'), 0)}"
        lines.append(
            f"{k:5d} {'one':6s} {ones:>66s}  {ms:>22s} {_fmt(r.get('load_average'), 8, 2)}"
        )
        for name, _unused in HUB_LOADS:
            load = r.get(name)
            if not load:
                continue
            got = load.get("receiver", {})
            drops = load.get("socket_drops", {})
            offered = load.get("broadcasts_per_s_offered")
            lines.append(
                f"{k:5d} {name:6s} {_fmt(offered * k if offered else None, 9)}"
                f" {_fmt(load.get('relayed_per_s'), 9)}"
                f" {_fmt(load.get('cpu_us_per_envelope'), 10, 2)}"
                f" {_fmt(load.get('user_us_per_envelope'), 5, 2)}"
                f" {_fmt(load.get('per_core_per_s'), 10)}  {_fmt(got.get('missing'), 7)}"
                f" {_fmt(got.get('duplicates'), 4)} {_fmt(got.get('auth'), 4)}"
                f" {(str(drops.get('gwA', '-')) + '/' + str(drops.get('brn', '-'))):>13s}"
            )
    lines.append(
        "one: 20 single broadcasts, the relay idle in between; reach all K: from a"
        " broadcast's send to the kernel's receive time of the last of its K envelopes."
        "  mixed, burst: broadcasts paced to ask for offered envelopes/s (broadcasts/s x K,"
        " more than one core carries), of sizes 200-202 bytes in turn (each broadcast's K"
        " envelopes through sendmmsg) or all 200 (a burst: each peer gets its run of them"
        " as one segmented send).  relayed: envelopes/s the relay sent from the load's start"
        " to the last arrival, on this shared machine; cpu us/env: the relay's CPU time"
        " (user + system, from before the load to after it) per envelope it sent, its"
        " sendmmsg's kernel work included and with it the veth delivery into the K peers'"
        " namespace (on a real hub: tunnel and ESP instead); user: its user-space share"
        " (Python, HMAC); per core/s: 1e6 / cpu us/env.  missing, dup,"
        " auth: envelopes of broadcasts the relay forwarded that never came, came twice, or"
        " failed their peer's key; q drops: receive-queue overflows at the relay's LAN"
        " socket (the load asks for more than it carries) and at the K peers'.  load avg:"
        " the 1-minute load average when K started (above the number of CPUs, other work"
        " competed for them)."
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- report


def _fmt(value: Any, width: int, digits: int = 0) -> str:
    if value is None:
        return "-".rjust(width)
    if isinstance(value, float) or digits:
        return f"{value:.{digits}f}".rjust(width)
    return str(value).rjust(width)


def table(report: dict) -> str:
    cap_head = (
        f"{'case':10s} {'impl':6s} {'capacity/s':>10s} {'x socat':>7s} {'offered/s':>9s}"
        f" {'cpu us/dgram A':>14s} {'B':>5s} {'1-core/s':>8s} {'x socat':>7s}"
        f"  {'queue drops A/B/rcv':>19s}"
    )
    hop_head = (
        f"{'case':10s} {'impl':6s} {'hop A/s':>9s}  {'x socat':>7s} {'cpu us':>6s}"
        f" {'hop B/s':>9s}  {'x socat':>7s} {'cpu us':>6s}  {'capacity':>9s}  {'x socat':>7s}"
        f"  {'queue drops A/B':>15s}"
    )
    lat_head = (
        f"{'case':10s} {'impl':6s} {'rate/s':>6s} {'p50 us':>8s} {'p99 us':>8s} {'max us':>8s}"
        f" {'loss %':>7s} {'lost':>6s} {'dup':>4s}"
    )
    cap = [
        "end to end, max-rate blast (both forwarders share this host's CPUs)",
        cap_head,
        "-" * len(cap_head),
    ]
    hops = [
        "per hop, max-rate blast (one forwarder running: each gateway its own machine)",
        hop_head,
        "-" * len(hop_head),
    ]
    lat = ["end to end, latency and loss: paced", lat_head, "-" * len(lat_head)]
    drops: list[str] = []
    statuses = 0  # relay runs whose status file was read
    for case, per_impl in report["cases"].items():
        if "skipped" in per_impl:
            for lines in (cap, hops, lat):
                lines.append(f"{case:10s} skipped: {per_impl['skipped']}")
            continue
        socat_blast = per_impl.get("socat", {}).get("blast", {})
        socat_cap = socat_blast.get("capacity_per_s")
        socat_bound = socat_blast.get("one_core_bound_per_s")
        per_hop = report.get("per_hop", {}).get(case, {})
        for impl in IMPLS:
            res = per_impl.get(impl, {})
            if "error" in res:
                cap.append(f"{case:10s} {impl:6s} error: {res['error'].splitlines()[0]}")
            blast = res.get("blast")
            if blast:
                value = blast.get("capacity_per_s")
                ratio = _ratio(value, socat_cap)
                sdrops = blast.get("socket_drops", {})
                cpu = blast.get("cpu_us_per_datagram", {})
                bound = blast.get("one_core_bound_per_s")
                cap.append(
                    f"{case:10s} {impl:6s} {_fmt(value, 10)} {_fmt(ratio, 7, 2)}"
                    f" {_fmt(blast.get('offered_per_s'), 9)}"
                    f" {_fmt(cpu.get('gwA'), 14, 2)} {_fmt(cpu.get('gwB'), 5, 2)}"
                    f" {_fmt(bound, 8)} {_fmt(_ratio(bound, socat_bound), 7, 2)}"
                    "  "
                    + "/".join(str(sdrops.get(r, "-")) for r in ("gwA", "gwB", "rcv")).rjust(19)
                )
            hops.extend(_hop_rows(case, impl, per_hop))
            for load, rate in LOADS:
                r = res.get(load)
                if rate <= 0 or not r:
                    continue
                q = r.get("latency_us", {})
                lat.append(
                    f"{case:10s} {impl:6s} {rate:6d} {_fmt(q.get('p50'), 8, 1)}"
                    f" {_fmt(q.get('p99'), 8, 1)} {_fmt(q.get('max'), 8, 1)}"
                    f" {_fmt(r.get('loss_pct'), 7, 2)} {_fmt(r.get('lost'), 6)}"
                    f" {_fmt(r.get('duplicates'), 4)}"
                )
        e2e_relay, hop_relay = per_impl.get("relay", {}), per_hop.get("relay", {})
        statuses += len(e2e_relay.get("relay_status", {}))
        statuses += sum(1 for h in HOPS if hop_relay.get(h, {}).get("relay_status"))
        drops.extend(_relay_drops(case, e2e_relay, hop_relay))
    notes = [
        "end to end: distinct datagrams/s delivered to the receiver in the blast's"
        " steady-state window, both forwarders competing for the same CPUs; x socat:"
        " relay/socat in the same case and run; cpu: CPU time of the forwarder at gwA per"
        " datagram it read, at gwB per datagram it delivered (echoes of its own broadcasts"
        " included, and the kernel work done in its system calls); 1-core/s: 1e6 / the"
        " slower forwarder's cpu, the rate it could sustain with a CPU to itself; queue"
        " drops: receive-queue overflows during the blast.",
        "per hop: the same blast through one forwarder; hop A: LAN A -> gwA's forwarder ->"
        " the receiver at gwB's address; hop B: the sender at gwA's address (unicasts from"
        " 192.168.1.126, authenticated envelopes for the relay's sitelink1) -> gwB's"
        " forwarder -> LAN B.  capacity: the slower hop's, what the forwarder carries"
        " when each gateway is its own machine; * : its queue never overflowed (the sender"
        " could not offer more): a lower bound.  queue drops: the forwarder's receive-queue"
        " overflows on each hop.  Latency is one-way, sender to receiver, end to end.",
    ]
    env = report.get("environment", {})
    if env.get("load", 0) >= 0.5:
        notes.append(
            f"note: load average {env['load']:.2f} when the bench started on"
            f" {env.get('host_cpus')} CPUs: other work competed for the CPUs."
        )
    ratios = report.get("per_hop_capacity_ratio_relay_over_socat", {})
    if ratios:
        summary = ", ".join(f"{case} {_fmt(r, 0, 2).strip()}" for case, r in ratios.items())
        notes.append(f"per-hop capacity, relay/socat (the slower hop of each): {summary}")
    if drops:
        drops.insert(0, "relay drop reasons (its status file when it stopped):")
        drops.append("")
    elif statuses:
        drops = [
            f"relay drop reasons: none in its status files ({statuses} runs); receive-queue"
            " overflows (queue drops above) are counted by the kernel, not by the relay.",
            "",
        ]
    hub = report.get("hub")
    if hub:
        notes += ["", f"hub skipped: {hub['skipped']}" if "skipped" in hub else hub_table(hub)]
    return "\n".join([*hops, "", *cap, "", *lat, "", *drops, *notes])


def _hop_rows(case: str, impl: str, per_hop: dict) -> list[str]:
    res = per_hop.get(impl)
    if not res:
        return []
    rows = []
    cells = []
    ratios = per_hop.get("relay_over_socat", {}) if impl == "relay" else {}
    for hop in HOPS:
        r = res.get(hop, {})
        if "error" in r:
            rows.append(f"{case:10s} {impl:6s} hop {hop} error: {r['error'].splitlines()[0]}")
        mark = "*" if r.get("sender_bound") else " "
        cpu = r.get("cpu_us_per_datagram", {}).get(r.get("forwarder", ""))
        ratio = ratios.get(hop) if impl == "relay" else 1.0 if r.get("capacity_per_s") else None
        cells.append(
            f"{_fmt(r.get('capacity_per_s'), 9)}{mark} {_fmt(ratio, 7, 2)} {_fmt(cpu, 6, 2)}"
        )
    total = res.get("capacity_per_s")
    ratio = ratios.get("capacity") if impl == "relay" else 1.0 if total else None
    mark = "*" if res.get("lower_bound") else " "
    qdrops = "/".join(str(res.get(h, {}).get("forwarder_queue_drops", "-")) for h in HOPS)
    rows.insert(
        0,
        f"{case:10s} {impl:6s} {cells[0]} {cells[1]}  {_fmt(total, 9)}{mark}"
        f" {_fmt(ratio, 7, 2)}  {qdrops:>15s}",
    )
    return rows


def _relay_drops(case: str, e2e: dict, per_hop: dict) -> list[str]:
    """One line per relay run that dropped or failed to send something."""
    runs = [(f"end to end {gw}", s) for gw, s in e2e.get("relay_status", {}).items()]
    runs += [
        (f"hop {hop} {per_hop[hop].get('forwarder')}", per_hop[hop]["relay_status"])
        for hop in HOPS
        if per_hop.get(hop, {}).get("relay_status")
    ]
    lines = []
    for name, status in runs:
        counts = {**status.get("dropped", {}), **{
            f"send {k}": v for k, v in status.get("send_errors", {}).items()
        }}  # fmt: skip
        if counts:
            what = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
            lines.append(f"  {case:10s} {name}: {what} (of {status.get('received')} received)")
    return lines


def environment(args: argparse.Namespace, features: dict) -> dict:
    socat = run("socat", "-V", check=False).stdout.splitlines()
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host_cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": run(args.python, "--version", check=False).stdout.strip(),
        "relay": args.relay,
        "relay_version": features["version"],
        "socat": next((line for line in socat if "socat version" in line), "?").strip(),
        "payload_bytes": args.size,
        "blast_seconds": args.blast,
        "paced_seconds": args.paced,
        "warm_seconds": args.warm,
        "hop_drain_seconds": HOP_DRAIN,
        "load": os.getloadavg()[0],
    }


def bench(args: argparse.Namespace) -> dict:
    features = relay_features(args.python, args.relay)
    if not features["help_ok"]:
        raise BenchError(f"{args.python} {args.relay} --help failed")
    args.features = features
    report: dict[str, Any] = {
        "environment": environment(args, features),
        "cases": {},
        "per_hop": {},
    }
    lab = Lab()
    try:
        log(f"building namespaces slb{lab.suffix}*")
        lab.build()
        for case in args.cases:
            if case == "hub":
                if not features["keys"]:
                    report["hub"] = {"skipped": "relay has no --keys yet"}
                    continue
                report["hub"] = {str(k): bench_hub(lab, args, k) for k in args.hub_peers}
                continue
            if case == "sitelink1" and not features["keys"]:
                report["cases"][case] = {"skipped": "relay has no --keys yet"}
                report["per_hop"][case] = {"skipped": "relay has no --keys yet"}
                continue
            report["cases"][case] = {impl: bench_case(lab, args, impl, case) for impl in IMPLS}
            hops: dict[str, Any] = {impl: {} for impl in IMPLS}
            report["per_hop"][case] = hops
            for hop in HOPS:  # relay and socat one after the other, hop by hop
                for impl in IMPLS:
                    hops[impl][hop] = bench_hop(lab, args, impl, case, hop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not stop this
            signal.signal(signum, signal.SIG_IGN)
        lab.teardown()
        left = [n for n in lab.namespaces if os.path.exists(f"/run/netns/{n}")]
        if left:
            log(f"warning: namespaces left behind: {left}")
    summary = {}
    for case, per_impl in report["cases"].items():
        try:
            relay_cap = per_impl["relay"]["blast"]["capacity_per_s"]
            socat_cap = per_impl["socat"]["blast"]["capacity_per_s"]
            summary[case] = round(relay_cap / socat_cap, 2) if socat_cap else None
        except (KeyError, TypeError):
            continue
    report["capacity_ratio_relay_over_socat"] = summary
    bounds = {}
    for case, per_impl in report["cases"].items():
        try:
            relay_bound = per_impl["relay"]["blast"]["one_core_bound_per_s"]
            socat_bound = per_impl["socat"]["blast"]["one_core_bound_per_s"]
            bounds[case] = round(relay_bound / socat_bound, 2) if socat_bound else None
        except (KeyError, TypeError):
            continue
    report["one_core_bound_ratio_relay_over_socat"] = bounds
    report["per_hop_capacity_ratio_relay_over_socat"] = summarize_hops(report["per_hop"])
    if "hub" in report:
        report["hub_per_core_per_s"] = {
            k: {load: r.get(load, {}).get("per_core_per_s") for load, _unused in HUB_LOADS}
            for k, r in report["hub"].items()
            if isinstance(r, dict) and "peers" in r
        }
    return report


def _ratio(a: Any, b: Any) -> Optional[float]:
    return round(a / b, 2) if a and b else None


def summarize_hops(per_hop: dict) -> dict[str, Optional[float]]:
    """Per implementation: capacity = the slower hop's; per case: relay/socat ratios.

    Adds to per_hop[case][impl]: capacity_per_s, limited_by (the hop), lower_bound
    (that hop's forwarder never overflowed: the sender could not offer more); and to
    per_hop[case]: relay_over_socat {A, B, capacity}.  Returns {case: capacity ratio}.
    """
    ratios: dict[str, Optional[float]] = {}
    for case, per_impl in per_hop.items():
        if "skipped" in per_impl:
            continue
        for impl in IMPLS:
            res = per_impl.get(impl, {})
            caps = {h: res.get(h, {}).get("capacity_per_s") for h in HOPS}
            if all(caps.values()):
                slow = min(HOPS, key=lambda h: caps[h])
                res["capacity_per_s"] = caps[slow]
                res["limited_by"] = slow
                res["lower_bound"] = bool(res[slow].get("sender_bound"))
        relay, socat = per_impl.get("relay", {}), per_impl.get("socat", {})
        per_impl["relay_over_socat"] = {
            **{
                h: _ratio(
                    relay.get(h, {}).get("capacity_per_s"), socat.get(h, {}).get("capacity_per_s")
                )
                for h in HOPS
            },
            "capacity": _ratio(relay.get("capacity_per_s"), socat.get("capacity_per_s")),
        }
        ratios[case] = per_impl["relay_over_socat"]["capacity"]
    return ratios


def prerequisites(args: argparse.Namespace) -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux with iproute2 (ip)"
    if shutil.which("socat") is None:
        return "needs socat (apt-get install socat)"
    if not os.path.exists(args.relay):
        return f"{args.relay} not found (make relay)"
    if not os.path.exists(args.python):
        return f"{args.python} not found"
    return None


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", maxsplit=1)[0],
        epilog="Needs root, ip netns and socat; takes about 4 minutes (--quick: about 2.5).",
    )
    parser.add_argument("--quick", action="store_true", help="shorter loads (about 1 s each)")
    parser.add_argument(
        "--output",
        metavar="FILE",
        default=str(DEFAULT_OUTPUT),
        help="JSON results (default: %(default)s)",
    )
    parser.add_argument("--relay", metavar="PATH", default=str(RELAY), help="relay program")
    parser.add_argument("--python", metavar="PATH", default=PYTHON, help="interpreter for all")
    parser.add_argument("--size", type=int, default=200, help="payload bytes (default 200)")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {', '.join(CASES)}",
    )
    parser.add_argument(
        "--hub-peers",
        default=",".join(str(k) for k in HUB_PEERS),
        help="the hub case's numbers of peers K (default %(default)s)",
    )
    parser.add_argument("--role", choices=("send", "recv", "hubrecv"), help=argparse.SUPPRESS)
    parser.add_argument("--hub-mode", choices=("one", "load"), help=argparse.SUPPRESS)
    parser.add_argument("--hub-expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size-spread", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=PORT, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--dest", default=BCAST_A, help=argparse.SUPPRESS)
    parser.add_argument("--bind", default="0.0.0.0", help=argparse.SUPPRESS)  # noqa: S104
    parser.add_argument("--bind-port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--drain", type=float, default=0.5, help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seal-keys", help=argparse.SUPPRESS)
    parser.add_argument("--seal-peer", default=GW_A, help=argparse.SUPPRESS)
    parser.add_argument("--seal-office", default=OFFICE_A, help=argparse.SUPPRESS)
    parser.add_argument("--seal-sender", default=GW_A, help=argparse.SUPPRESS)
    parser.add_argument("--seal-epoch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is None:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [c for c in cases if c not in CASES]
        if unknown or not cases:
            parser.error(f"--cases: unknown {', '.join(unknown) or '(none)'}")
        args.cases = cases
        if not HEADER.size <= args.size <= 65507:
            parser.error(f"--size must be between {HEADER.size} and 65507")
        args.blast, args.paced, args.warm = (1.5, 1.5, 0.3) if args.quick else (3.0, 3.0, 0.5)
        args.hub_seconds = 0.75 if args.quick else 1.5
        try:
            args.hub_peers = [int(k) for k in args.hub_peers.split(",") if k.strip()]
        except ValueError:
            parser.error("--hub-peers: comma-separated numbers")
        if not args.hub_peers or not all(1 <= k <= 50000 for k in args.hub_peers):
            parser.error("--hub-peers: between 1 and 50000 each")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.role == "send":
        return role_send(args)
    if args.role == "recv":
        return role_recv(args)
    if args.role == "hubrecv":
        return role_hub_recv(args)
    problem = prerequisites(args)
    if problem:
        log(f"bench/relay.py: {problem}")
        return 2

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # Ctrl-C and kill tear everything down (even when started with SIGINT ignored)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    try:
        report = bench(args)
    except KeyboardInterrupt:
        log("interrupted; namespaces and processes removed")
        return 130
    except BenchError as exc:
        log(f"bench/relay.py: {exc}")
        return 1
    report["environment"]["bench_seconds"] = round(time.monotonic() - started, 1)
    print(table(report))
    out = Path(args.output)
    if not out.parent.exists():
        out.parent.mkdir(parents=True)
        if out.parent == DEFAULT_OUTPUT.parent:  # results are not sources
            (out.parent / ".gitignore").write_text("*\n")
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nresults: {out} ({report['environment']['bench_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
