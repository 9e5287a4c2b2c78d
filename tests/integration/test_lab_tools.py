"""The lab's test tools (lab/traffic.py forge-*/capture, lab/lanhost.py router helpers).

A tiny lab of our own, built and removed here (no VMs), shaped like labctl.py's:

    stranger 10.77.1.10 --+                          +-- far 10.77.2.20
                          +-- wan1 [router ns] wan2 --+
    target   10.77.1.20 --+   .1.1/24      .2.1/24

The router namespace holds one bridge per segment and forwards between them; the
hosts are namespaces on veths. A state.json describing it lets lanhost.Lab drive
it as it drives a booted lab. Test traffic never leaves these namespaces: forged
sources are TEST-NET addresses that nothing routes, and every destination is a
host of this topology.

Needs root, ``ip netns`` and (for the ICMP tests) nft; skipped otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

LAB_DIR = Path(__file__).resolve().parents[2] / "lab"
sys.path.insert(0, str(LAB_DIR))
import lanhost  # noqa: E402


def _load_traffic():
    spec = importlib.util.spec_from_file_location("lab_traffic", LAB_DIR / "traffic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


traffic = _load_traffic()

ROUTER1, ROUTER2 = "10.77.1.1/24", "10.77.2.1/24"
HOSTS = {  # name: (segment, address/prefix, gateway)
    "stranger": ("wan1", "10.77.1.10/24", "10.77.1.1"),
    "target": ("wan1", "10.77.1.20/24", "10.77.1.1"),
    "far": ("wan2", "10.77.2.20/24", "10.77.2.1"),
}
TARGET, FAR = "10.77.1.20", "10.77.2.20"
FORGED = "198.51.100.7"  # TEST-NET-2: owned by nobody here, routed nowhere
INNER_SRC, INNER_DST = "192.168.1.10", "192.168.2.20"
PORT = 6799


def _prereqs():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux with iproute2 (ip)"
    res = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10, check=False)
    if res.returncode != 0:
        return "ip netns unavailable"
    return None


pytestmark = pytest.mark.skipif(_prereqs() is not None, reason=_prereqs() or "")
needs_nft = pytest.mark.skipif(shutil.which("nft") is None, reason="needs nft")


def run(*cmd, check=True):
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


class MiniLab:
    """Namespaces recorded before they are created; removed by those names only."""

    def __init__(self, state_dir: Path):
        self.token = secrets.token_hex(3)
        self.state_dir = state_dir
        self.namespaces: list[str] = []

    def add_ns(self, name):
        if os.path.exists(f"/run/netns/{name}"):
            raise RuntimeError(f"namespace {name} already exists; not touching it")
        self.namespaces.append(name)
        run("ip", "netns", "add", name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build(self):
        tok = self.token
        router = self.add_ns(f"ltr-{tok}")
        # Explicitly: forwarding on, no reverse-path filter (forged sources have no route).
        for key in ("ip_forward=1", "conf.all.rp_filter=0", "conf.default.rp_filter=0"):
            run("ip", "netns", "exec", router, "sysctl", "-qw", f"net.ipv4.{key}")
        segments = {}
        for i, (seg, addr) in enumerate((("wan1", ROUTER1), ("wan2", ROUTER2))):
            br = f"ltb{tok}{i}"
            segments[seg] = {"bridge": br, "router": addr}
            run("ip", "-n", router, "link", "add", br, "type", "bridge")
            run("ip", "-n", router, "addr", "add", addr, "dev", br)
            run("ip", "-n", router, "link", "set", br, "up")
        hosts = {}
        for i, (name, (seg, addr, gw)) in enumerate(HOSTS.items()):
            ns, veth = self.add_ns(f"lth-{tok}-{name}"), f"ltv{tok}{i}"
            hosts[name] = {"netns": ns, "veth": veth, "segment": seg, "address": addr}
            run("ip", "-n", router, "link", "add", veth, "type", "veth",
                "peer", "name", "eth0", "netns", ns)  # fmt: skip
            run("ip", "-n", router, "link", "set", veth, "master", segments[seg]["bridge"], "up")
            run("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "route", "add", "default", "via", gw)
        state = {"lab_ns": router, "segments": segments, "hosts": hosts, "token": tok}
        (self.state_dir / "state.json").write_text(json.dumps(state))

    def teardown(self):
        for ns in reversed(self.namespaces):
            if not os.path.exists(f"/run/netns/{ns}"):
                continue
            # Anything still running in a namespace of ours was started by this test.
            for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            run("ip", "netns", "del", ns, check=False)
        left = [ns for ns in self.namespaces if os.path.exists(f"/run/netns/{ns}")]
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    mini = MiniLab(tmp_path_factory.mktemp("lablab"))
    try:
        mini.build()
        yield lanhost.Lab(mini.state_dir)
    finally:
        mini.teardown()


def _token():
    return "lab-tools-" + secrets.token_hex(8)


# ----------------------------------------------------------------------------- packets


def test_forged_packets_have_valid_checksums():
    payload = b"lab-tools payload, odd length!"
    udp = traffic.udp_datagram(FORGED, TARGET, 40000, PORT, payload)
    pseudo = socket.inet_aton(FORGED) + socket.inet_aton(TARGET)
    pseudo += struct.pack("!BBH", 0, 17, len(udp))
    assert traffic.checksum(pseudo + udp) == 0
    assert struct.unpack("!HHH", udp[:6]) == (40000, PORT, 8 + len(payload))
    inner = traffic.ipv4_packet(INNER_SRC, INNER_DST, 17, udp)
    outer = traffic.ipv4_packet(FORGED, TARGET, 4, inner, df=True)
    for header, proto in ((outer[:20], 4), (inner[:20], 17)):
        assert traffic.checksum(header) == 0
        assert header[9] == proto
    assert struct.unpack("!H", outer[2:4])[0] == len(outer) == 40 + len(udp)
    assert outer[6] & 0x40 and not inner[6] & 0x40  # DF on the outer header only
    assert outer[12:20] == socket.inet_aton(FORGED) + socket.inet_aton(TARGET)


# ----------------------------------------------------------------------------- forging


@pytest.mark.parametrize("dest", [TARGET, FAR], ids=["on-link", "routed"])
def test_forge_udp_arrives_with_the_forged_source(lab, dest):
    token = _token()
    host = "target" if dest == TARGET else "far"
    listener = lab.background(host, "udp-listen", str(PORT), "5", "--token", token, "--count", "3")
    try:
        sent = lab.traffic("stranger", "forge-udp", FORGED, dest, str(PORT), "3", "--token", token)
        got = listener.result(timeout=15)
    finally:
        listener.stop()
    assert sent["sent"] == 3 and sent["token"] == token
    assert sent["marker"] == token.encode().hex()
    assert got["seen"] == {token: 3}
    assert [d["source"] for d in got["datagrams"]] == [FORGED] * 3
    assert all(d["tokens"] == [token] for d in got["datagrams"])


def test_udp_listen_output_unchanged_without_token(lab):
    listener = lab.background("target", "udp-listen", str(PORT), "1")
    try:
        lab.traffic("stranger", "forge-udp", FORGED, TARGET, str(PORT), "1")
        got = listener.result(timeout=15)
    finally:
        listener.stop()
    assert set(got) == {"datagrams"}
    assert [set(d) for d in got["datagrams"]] == [{"source", "size", "sha256"}]


# ----------------------------------------------------------------------------- capture


def test_capture_counts_forged_ipip_and_finds_only_the_sent_marker(lab):
    token, unsent = _token(), _token()
    hosts = (FORGED, TARGET)
    captures = {
        "sent": lab.capture("wan1", 20, hosts=hosts, markers=[token.encode()]),
        "unsent": lab.capture("wan1", 20, hosts=hosts, markers=[unsent.encode().hex()]),
        "elsewhere": lab.capture("wan1", 20, hosts=("10.77.9.9",)),
    }
    try:
        sent = lab.traffic(
            "stranger", "forge-ipip", FORGED, TARGET, INNER_SRC, INNER_DST, str(PORT), "5",
            "--token", token,
        )  # fmt: skip
        got = {name: bg.finish() for name, bg in captures.items()}
    finally:
        for bg in captures.values():
            bg.stop()
    assert sent["sent"] == 5
    marker = token.encode().hex()
    for name, result in got.items():
        assert result["kernel_drops"] == 0, (name, result)
    # The target has no ipip handler and may answer "protocol unreachable" (ICMP
    # quoting the packet, token included): hence >= for markers, == for protocol 4.
    assert got["sent"]["protocols"].get("4") == 5, got["sent"]
    assert got["sent"]["ipip_inner"] == {"17": 5}, got["sent"]
    assert got["sent"]["marker_seen"] is True
    assert got["sent"]["markers"][marker] >= 5
    assert got["sent"]["udp_ports"] == {}  # UDP inside IPIP is not outer UDP
    assert got["unsent"]["protocols"].get("4") == 5, got["unsent"]
    assert got["unsent"]["marker_seen"] is False
    assert got["unsent"]["markers"] == {unsent.encode().hex(): 0}
    assert got["elsewhere"]["ipv4"] == 0
    assert got["elsewhere"]["frames"] >= 5  # the frames were there, the filter left them


def test_capture_sees_routed_udp_and_its_port(lab):
    token = _token()
    capture = lab.capture("wan2", 20, hosts=(FORGED,), markers=[token.encode()])
    try:
        lab.traffic("stranger", "forge-udp", FORGED, FAR, "4500", "4", "--token", token)
        got = capture.finish()
    finally:
        capture.stop()
    assert got["protocols"].get("17") == 4, got
    assert got["udp_ports"] == {"4500": 4}
    # far has no listener: its "port unreachable" to FORGED quotes the datagram.
    assert got["markers"] == {token.encode().hex(): 4 + got["protocols"].get("1", 0)}, got


def test_capture_ends_after_its_seconds(lab):
    got = lab.capture("wan2", 0.5, markers=[b"nothing"]).result(timeout=10)
    assert got["iface"] == lab.segment_bridge("wan2")
    assert got["marker_seen"] is False


# ----------------------------------------------------------------------------- MTU, ICMP


def _ping(lab, size, host="stranger", dest=FAR):
    """One ping, Don't Fragment, ICMP payload `size` (stranger to far by default).

    The sender's learnt path MTU is flushed first: each ping asks the path again.
    """
    run("ip", "-n", lab.netns(host), "route", "flush", "cache")
    done = subprocess.run(
        lab.in_lan(host, "ping", "-c", "1", "-W", "0.5", "-M", "do", "-s", str(size), dest),
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    done.text = done.stdout + done.stderr
    return done


@needs_nft
def test_router_mtu_and_frag_needed_black_hole(lab):
    bridge = lab.segment_bridge("wan2")
    assert _ping(lab, 1472).returncode == 0  # 1500 all the way
    previous = lab.set_router_mtu("wan2", 1400)
    try:
        assert previous == {bridge: 1500}
        assert lab.router_mtu(bridge) == 1400
        assert all(lab.router_mtu(port) == 1500 for port in lab.router_ports("wan2"))
        # Only what the router forwards INTO wan2 is limited, not what comes out of it.
        assert _ping(lab, 1472, host="far", dest="10.77.1.10").returncode == 0

        # The router answers "fragmentation needed" (and the sender learns the MTU)...
        ping = _ping(lab, 1472)
        assert ping.returncode != 0
        assert re.search(r"mtu ?= ?1400", ping.text), ping.text
        assert _ping(lab, 1372).returncode == 0

        # ... unless it drops them: a black hole, counted by the table.
        lab.router_drop_frag_needed(True)
        lab.router_drop_frag_needed(True)  # idempotent
        ping = _ping(lab, 1472)
        assert ping.returncode != 0
        assert "mtu" not in ping.text, ping.text
        assert lab.router_frag_needed_drops() >= 1
        lab.router_drop_frag_needed(False)
        lab.router_drop_frag_needed(False)  # idempotent
        assert lab.router_frag_needed_drops() == 0

        # A LAN host that filters them: the router sends, the host drops.
        lab.host_drop_frag_needed("stranger", True)
        try:
            ping = _ping(lab, 1472)
            assert ping.returncode != 0
            assert lab.host_frag_needed_drops("stranger") >= 1
        finally:
            lab.host_drop_frag_needed("stranger", False)
    finally:
        lab.restore_router_mtu(previous)
    assert lab.router_mtu(bridge) == 1500
    assert _ping(lab, 1472).returncode == 0


def test_router_mtu_on_ports_too(lab):
    ports = lab.router_ports("wan2")
    assert ports == [lab.state["hosts"]["far"]["veth"]]
    previous = lab.set_router_mtu("wan2", 1400, ports=True)
    try:
        assert previous == {ports[0]: 1500, lab.segment_bridge("wan2"): 1500}
        assert {dev: lab.router_mtu(dev) for dev in previous} == dict.fromkeys(previous, 1400)
        # The veth port now drops what far sends above 1400, silently.
        assert _ping(lab, 1372, host="far", dest="10.77.2.1").returncode == 0
        ping = _ping(lab, 1472, host="far", dest="10.77.2.1")
        assert ping.returncode != 0 and "mtu" not in ping.text, ping.text
    finally:
        lab.restore_router_mtu(previous)
    assert {dev: lab.router_mtu(dev) for dev in previous} == previous
