"""sitelink_relay.mmsg with real interfaces: IP_PKTINFO in and out, both backends.

Two namespaces made here (and removed afterwards), nothing leaves them:

    host 192.168.1.10 eth0 ---- plan0 [gw] lan0 bridge 192.168.1.126/24
                                       [gw] other0 10.98.0.1/24 (default route)
                                              |
                                        [out] eth0 10.98.0.2/24

Checks what the relay depends on: a LAN broadcast's arrival interface and header
destination are reported per datagram, and a datagram sent with pktinfo (LAN
ifindex, LAN address) leaves on the LAN interface from the LAN address, even to
255.255.255.255 while the default route points elsewhere.  Needs root and ip netns.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "relay"))
from sitelink_relay import mmsg

CLONE_NEWNET = 0x40000000
PORT = 6811
HOST, GW = "192.168.1.10", "192.168.1.126"
BACKENDS = [
    pytest.param("mmsg", marks=pytest.mark.skipif(not mmsg.HAVE_MMSG, reason="no recvmmsg")),
    "python",
]


def _prereqs():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux with iproute2 (ip)"
    if subprocess.run(
        ["ip", "netns", "list"], capture_output=True, timeout=10, check=False
    ).returncode:
        return "ip netns unavailable"
    return None


def ip(*args):
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if res.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns, fn):
    """fn() in a thread that joined namespace ns (its sockets stay there)."""
    box = {}

    def target():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns})")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(10)
    if "error" in box:
        raise box["error"]
    return box["value"]


def udp(ns, pktinfo=True, broadcast=True):
    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if broadcast:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if pktinfo:
            s.setsockopt(socket.IPPROTO_IP, mmsg.IP_PKTINFO, 1)
        s.bind(("0.0.0.0", PORT))  # noqa: S104 - inside a test namespace
        s.setblocking(False)
        return s

    return in_netns(ns, make)


@pytest.fixture(scope="module")
def lab():
    reason = _prereqs()
    if reason:
        pytest.skip(reason)
    suffix = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
    names = {"gw": f"slm{suffix}gw", "host": f"slm{suffix}host", "out": f"slm{suffix}out"}
    made = []
    try:
        for name in list(names.values()):
            if os.path.exists(f"/run/netns/{name}"):
                raise RuntimeError(f"namespace {name} exists; not touching it")
            ip("netns", "add", name)
            made.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        gw, host, out = names["gw"], names["host"], names["out"]
        ip("-n", gw, "link", "add", "lan0", "type", "bridge")
        ip("-n", gw, "addr", "add", f"{GW}/24", "dev", "lan0")
        ip("-n", gw, "link", "set", "lan0", "up")
        ip("-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", "plan0", "netns", gw)
        ip("-n", gw, "link", "set", "plan0", "master", "lan0", "up")
        ip("-n", host, "addr", "add", f"{HOST}/24", "dev", "eth0")
        ip("-n", host, "link", "set", "eth0", "up")
        ip("-n", host, "route", "add", "default", "via", GW)
        ip("-n", gw, "link", "add", "other0", "type", "veth", "peer", "name", "eth0", "netns", out)
        ip("-n", gw, "addr", "add", "10.98.0.1/24", "dev", "other0")
        ip("-n", gw, "link", "set", "other0", "up")
        ip("-n", out, "addr", "add", "10.98.0.2/24", "dev", "eth0")
        ip("-n", out, "link", "set", "eth0", "up")
        ip("-n", gw, "route", "add", "default", "via", "10.98.0.2", "dev", "other0")
        names["lan_ifindex"] = in_netns(gw, lambda: socket.if_nametoindex("lan0"))
        yield names
    finally:
        for name in reversed(made):
            subprocess.run(
                ["ip", "netns", "del", name], capture_output=True, timeout=30, check=False
            )


def collect(receiver, expected, timeout=5.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        n = receiver.recv()
        if not n:
            time.sleep(0.005)
        got += [
            (
                bytes(receiver.payloads[i]),
                receiver.sources[i][0],
                receiver.ifindex[i],
                receiver.dests[i],
            )  # fmt: skip
            for i in range(n)
        ]
    return got


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_arrival_interface_and_destination(lab, backend):
    receiver_cls, _unused = mmsg.BACKENDS[backend]
    gw_sock = udp(lab["gw"])
    host_sock = udp(lab["host"])
    try:
        for payload, dest in ((b"lan", "192.168.1.255"), (b"all", "255.255.255.255")):
            host_sock.sendto(payload, (dest, PORT))
        host_sock.sendto(b"uni", (GW, PORT))
        got = collect(receiver_cls(gw_sock), 3)
        assert got == [
            (b"lan", HOST, lab["lan_ifindex"], socket.inet_aton("192.168.1.255")),
            (b"all", HOST, lab["lan_ifindex"], socket.inet_aton("255.255.255.255")),
            (b"uni", HOST, lab["lan_ifindex"], socket.inet_aton(GW)),
        ]
    finally:
        gw_sock.close()
        host_sock.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pktinfo_sends_out_of_the_lan(lab, backend):
    """Without pktinfo 255.255.255.255 follows the default route (other0); with it, lan0."""
    receiver_cls, sender_cls = mmsg.BACKENDS[backend]
    gw_sock = udp(lab["gw"])
    host_sock = udp(lab["host"])
    out_sock = udp(lab["out"])
    try:
        pktinfo = (lab["lan_ifindex"], socket.inet_aton(GW))
        sender = sender_cls(16, gw_sock)
        sender.add([b"limited-", memoryview(bytearray(b"lan"))], ("255.255.255.255", PORT), pktinfo)
        sender.add([b"subnet"], ("192.168.1.255", PORT), pktinfo)
        sender.add([b"default-route"], ("255.255.255.255", PORT))
        assert sender.flush() == []
        got = collect(receiver_cls(host_sock), 2, timeout=2.0)
        time.sleep(0.2)
        got += collect(receiver_cls(host_sock), 0)
        assert [(g[0], g[1], g[3]) for g in got] == [
            (b"limited-lan", GW, socket.inet_aton("255.255.255.255")),
            (b"subnet", GW, socket.inet_aton("192.168.1.255")),
        ]
        away = collect(receiver_cls(out_sock), 1)
        assert [(g[0], g[1]) for g in away] == [(b"default-route", "10.98.0.1")]
    finally:
        gw_sock.close()
        host_sock.close()
        out_sock.close()
