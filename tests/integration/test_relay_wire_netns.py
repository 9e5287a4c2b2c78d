"""The relay as shipped, on the authenticated wire, with real sockets in namespaces.

Same topology as test_relay_netns.py (gwA with app and mon, gwB with ws and ws2, a
routed "tunnel" tun0 between them), relays in service mode with version 2 configs,
``"wire": "sitelink1"`` and a keys file.  What the issue asks the relay to prove:
exactly once with authentication, identical broadcasts from both offices, forged /
replayed / unauthenticated datagrams dropped and counted, a flood that does not
starve the other hosts, a bad reload that keeps the old config, a second relay that
refuses the port, recovery from a LAN interface recreated, multicast (SSDP), the
largest authenticated datagram intact, and two relays on one LAN that do not double.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest
from relay_lab import (
    APP,
    BCAST_A,
    BCAST_B,
    GW_A,
    GW_B,
    PEER,
    PORT,
    PYTHON,
    RELAY,
    WS,
    RelayProc,
    collect,
    drain,
    in_netns,
    lab_for_module,
    run,
)
from relay_lab import wire_config as lab_wire_config

SSDP_PORT, SSDP_GROUP = 1900, "239.255.255.250"
KEY_AB = secrets.token_bytes(32).hex()
OVERHEAD = 40  # the envelope


def wire_config(name, status_file, state_dir, keys_file, **extra):
    """relay_lab's config, with SSDP relayed too and the Prometheus file."""
    peer = PEER[name]
    rules = [
        {"port": PORT, "forward_to": [peer], "accept_from": [peer]},
        {
            "port": SSDP_PORT,
            "forward_to": [peer],
            "accept_from": [peer],
            "multicast_groups": [SSDP_GROUP],
        },
    ]
    metrics = os.path.join(os.path.dirname(status_file), "metrics.prom")
    return lab_wire_config(
        name, status_file, state_dir, keys_file, rules=rules, metrics_file=metrics, **extra
    )


def keys_doc(peer, send=KEY_AB, accept=(KEY_AB,)):
    return json.dumps({"version": 1, "peers": {peer: {"send": send, "accept": list(accept)}}})


@pytest.fixture(scope="module")
def lab():
    yield from lab_for_module()


def start(lab, name, instance="", **extra):
    run_dir = lab.status_dir(f"wire-run-{name}")
    state_dir = lab.status_dir(f"wire-state-{name}")
    status = os.path.join(run_dir, "status.json")
    keys = lab.write(f"wire-{name}-keys.json", keys_doc(PEER[name]))
    cfg = lab.write(
        f"wire-{name}.json", json.dumps(wire_config(name, status, state_dir, keys, **extra))
    )
    res = run(PYTHON, str(RELAY), "--check-config", cfg, check=False)
    assert res.returncode == 0, res.stderr
    res = run(PYTHON, str(RELAY), "--check-keys", keys, check=False)
    assert res.returncode == 0 and KEY_AB not in res.stdout + res.stderr, res
    relay = RelayProc(lab, f"wire-{name}{instance}", lab.ns[name], ["--config", cfg], status)
    relay.config, relay.keys, relay.state_dir = cfg, keys, state_dir
    return relay


@pytest.fixture(scope="module")
def relays(lab):
    return {name: start(lab, name) for name in ("gwA", "gwB")}


@pytest.fixture(scope="module")
def hosts(lab):
    return lab.host_sockets()


def peer_counters(relay):
    return next(iter(relay.status()["peers"].values()))


def dropped(relay, port=PORT):
    return relay.status()["ports"][str(port)]["dropped"]


def test_broadcasts_arrive_exactly_once_authenticated(lab, relays, hosts):
    drain(*hosts.values())
    before = peer_counters(relays["gwB"])
    payloads = [f"auth {i} {secrets.token_hex(4)}".encode() for i in range(25)]
    for p in payloads:
        hosts["app_tx"].sendto(p, (BCAST_A, PORT))
        time.sleep(0.003)
    for ws in ("ws", "ws2"):
        got = collect(hosts[ws], expected=len(payloads))
        assert sorted(got) == sorted((p, GW_B) for p in payloads), ws
    assert collect(hosts["app"], expected=len(payloads), timeout=2)  # the original only
    after = peer_counters(relays["gwB"])
    assert after["accepted"] - before["accepted"] == len(payloads)
    assert after["dropped"] == before["dropped"] == {}
    assert after["wire"] == "sitelink1" and len(after["keys"][0]) == 8


def test_identical_broadcasts_from_both_offices_all_arrive(lab, relays, hosts):
    drain(*hosts.values())
    for _unused in range(10):
        hosts["app_tx"].sendto(b"DISCOVER", (BCAST_A, PORT))
        hosts["ws_tx"].sendto(b"DISCOVER", (BCAST_B, PORT))
        time.sleep(0.02)
    at_b = [d for d, src in collect(hosts["ws2"], expected=20) if src == GW_B]
    at_a = [d for d, src in collect(hosts["mon"], expected=20) if src == GW_A]
    assert at_b == [b"DISCOVER"] * 10 and at_a == [b"DISCOVER"] * 10, json.dumps(
        [relays["gwA"].status()["ports"], relays["gwB"].status()["ports"]]
    )


def capture_one(lab, ns, ifname, port):
    """The next UDP datagram to `port` on `ifname` in `ns`, as its IP packet (AF_PACKET)."""

    def make():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        s.bind((ifname, 0x0800))
        s.settimeout(5)
        return s

    s = in_netns(ns, make)
    lab.sockets.append(s)
    return s


def udp_payload(packet, port):
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != 17:
        return None
    dport = struct.unpack("!H", packet[ihl + 2 : ihl + 4])[0]
    return packet[ihl + 8 :] if dport == port else None


def test_forged_replayed_and_unauthenticated_are_dropped_and_counted(lab, relays, hosts):
    cap = capture_one(lab, lab.ns["gwB"], "tun0", PORT)
    drain(*hosts.values())
    hosts["app_tx"].sendto(b"the real one", (BCAST_A, PORT))
    envelope = None
    deadline = time.monotonic() + 5
    while envelope is None and time.monotonic() < deadline:
        envelope = udp_payload(cap.recv(70000), PORT)
    assert envelope and envelope.endswith(b"the real one") and envelope[:2] == b"SL"
    assert collect(hosts["ws"], expected=1) == [(b"the real one", GW_B)]
    before = dropped(relays["gwB"])

    def sender():  # on gwA, from its LAN address: through the tunnel like the relay
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((GW_A, 0))
        return s

    s = in_netns(lab.ns["gwA"], sender)
    lab.sockets.append(s)
    tampered = bytearray(envelope)
    tampered[-1] ^= 0x01
    for data, delay in (
        (envelope, 0.2),  # replayed, 0.2 s later
        (envelope, 1.0),  # and again
        (b"plain, unauthenticated", 0),
        (bytes(tampered), 0),  # payload changed
        (envelope[:OVERHEAD] + b"x" * 12, 0),  # header and tag of another datagram
    ):
        time.sleep(delay)
        s.sendto(data, (GW_B, PORT))
    assert collect(hosts["ws"], expected=0, timeout=2) == []
    after = dropped(relays["gwB"])
    delta = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    assert delta == {"replay": 2, "malformed": 1, "auth": 2}, after
    assert peer_counters(relays["gwB"])["dropped"]["auth"] >= 2
    metrics = Path(relays["gwB"].status_path).with_name("metrics.prom").read_text()
    assert 'reason="auth"' in metrics and "sitelink_relay_datagrams_dropped_total" in metrics


def test_largest_authenticated_datagram_arrives_intact(lab, relays, hosts):
    drain(*hosts.values())
    big = secrets.token_bytes(65507 - OVERHEAD)
    hosts["app_tx"].sendto(big, (BCAST_A, PORT))
    assert collect(hosts["ws"], expected=1) == [(big, GW_B)]
    before = dropped(relays["gwA"]).get("too_big", 0)
    hosts["app_tx"].sendto(big + b"!", (BCAST_A, PORT))  # no room for the envelope
    assert collect(hosts["ws"], expected=0, timeout=1.5) == []
    assert dropped(relays["gwA"])["too_big"] == before + 1


def test_multicast_group_is_relayed_to_the_same_group(lab, relays):
    def member(ns_name):
        def make():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", SSDP_PORT))  # noqa: S104 - inside a test namespace
            mreq = struct.pack("=4s4s", socket.inet_aton(SSDP_GROUP), bytes(4))  # any interface
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            return s

        s = in_netns(lab.ns[ns_name], make)
        lab.sockets.append(s)
        return s

    ws = member("ws")

    def sender():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        return s

    tx = in_netns(lab.ns["app"], sender)
    lab.sockets.append(tx)
    msg = b"M-SEARCH * HTTP/1.1\r\nST: ssdp:all\r\n\r\n"
    tx.sendto(msg, (SSDP_GROUP, SSDP_PORT))
    assert collect(ws, expected=1) == [(msg, GW_B)]
    assert relays["gwB"].status()["ports"][str(SSDP_PORT)]["rebroadcast"] >= 1


def test_a_flood_does_not_starve_the_other_hosts(lab, relays, hosts):
    """mon floods for 3 s at full speed; app's 60 broadcasts all arrive at ws."""
    flood = subprocess.Popen(  # noqa: S603 - our own sender, in our namespace
        [
            "ip",
            "netns",
            "exec",
            lab.ns["mon"],
            PYTHON,
            "-c",
            "import socket,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\n"
            "end=time.monotonic()+3\n"
            "while time.monotonic()<end:\n"
            f"    for _ in range(200): s.sendto(b'flood',('{BCAST_A}',{PORT}))\n",
        ]
    )
    lab.pids.append(flood.pid)
    got = []
    # ws reads all along: its own socket buffer must not be where datagrams get lost
    reader = threading.Thread(
        target=lambda: got.extend(collect(hosts["ws"], expected=None, timeout=6, quiet=1))
    )
    try:
        drain(*hosts.values())
        reader.start()
        time.sleep(0.3)
        sent = []
        for i in range(60):
            p = f"quiet {i}".encode()
            hosts["app_tx"].sendto(p, (BCAST_A, PORT))
            sent.append(p)
            time.sleep(0.04)
        flood.wait(15)
        reader.join(10)
    finally:
        if flood.poll() is None:
            flood.kill()
            flood.wait()
    quiet = [d for d, _unused in got if d.startswith(b"quiet")]
    assert quiet == sent
    assert sum(1 for d, _unused in got if d == b"flood") <= 2000 + 1000 * 1.5
    storm = relays["gwA"].status()["storm"]
    assert storm["tripped_total"] >= 1
    assert dropped(relays["gwA"]).get("cut_off", 0) > 0


def test_bad_reload_keeps_the_running_config(lab, relays, hosts):
    relay = relays["gwB"]
    ready = lab.notify.count(relay.name, "READY=1")
    good_keys = Path(relay.keys).read_text()
    for bad in ('{"version": 1, "peers": {"x": 1}}', "\udcff not utf-8", "[" * 300000):
        Path(relay.keys).write_bytes(bad.encode("utf-8", "surrogateescape"))
        relay.proc.send_signal(signal.SIGHUP)
        ready += 1
        assert lab.notify.wait(relay.name, "READY=1", count=ready)
    cfg = Path(relay.config)
    good_cfg = cfg.read_text()
    for bad in (b'{"version": 2, "lan": {"interface": "a\\u0000b"}}', b"\xff\xfe", b"[" * 300000):
        cfg.write_bytes(bad)
        relay.proc.send_signal(signal.SIGHUP)
        ready += 1
        assert lab.notify.wait(relay.name, "READY=1", count=ready)
    assert relay.alive(), relay.log()
    assert relay.log().count("keeping the running config") == 6
    assert KEY_AB not in relay.log()
    drain(*hosts.values())
    hosts["app_tx"].sendto(b"still here", (BCAST_A, PORT))
    assert collect(hosts["ws"], expected=1) == [(b"still here", GW_B)]
    Path(relay.keys).write_text(good_keys)
    cfg.write_text(good_cfg)


def test_a_second_relay_on_the_port_refuses_to_start(lab, relays):
    res = subprocess.run(  # noqa: S603
        [
            "ip",
            "netns",
            "exec",
            lab.ns["gwA"],
            PYTHON,
            str(RELAY),
            "--config",
            relays["gwA"].config,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 1
    assert "already in use" in res.stderr


def test_recovers_within_a_second_when_the_lan_interface_is_recreated(lab, relays, hosts):
    """gwB's LAN bridge is deleted and made again (new ifindex): both directions resume."""
    gw = lab.ns["gwB"]
    run("ip", "-n", gw, "link", "del", "lan0")
    run("ip", "-n", gw, "link", "add", "lan0", "type", "bridge")
    run("ip", "-n", gw, "addr", "add", f"{GW_B}/24", "dev", "lan0")
    for port in ("pws", "pws2"):
        run("ip", "-n", gw, "link", "set", port, "master", "lan0")
    run("ip", "-n", gw, "link", "set", "lan0", "up")
    recreated = time.monotonic()
    (link,) = json.loads(run("ip", "-n", gw, "-j", "link", "show", "lan0").stdout)
    drain(*hosts.values())
    arrived = None
    while time.monotonic() - recreated < 5 and arrived is None:
        # heard on the new interface: a LAN broadcast only once the relay knows its ifindex
        hosts["ws_tx"].sendto(b"back?", (BCAST_B, PORT))
        if [d for d, src in collect(hosts["app"], expected=1, timeout=0.05, quiet=0) if d]:
            arrived = time.monotonic() - recreated
    assert arrived is not None and arrived < 1.5, arrived
    assert relays["gwB"].status()["lan"]["ifindex"] == link["ifindex"]
    drain(*hosts.values())
    hosts["app_tx"].sendto(b"and the other way", (BCAST_A, PORT))
    assert collect(hosts["ws"], expected=1) == [(b"and the other way", GW_B)]


def test_epoch_survives_a_restart_and_old_datagrams_stay_dead(lab, relays, hosts):
    relay = relays["gwA"]
    epoch_file = Path(relay.state_dir) / "epoch"
    first = int(epoch_file.read_text())
    assert relay.status()["epoch"] == first
    assert relay.stop() == 0
    again = start(lab, "gwA", instance="-restarted")
    relays["gwA"] = again
    assert int(epoch_file.read_text()) > first
    drain(*hosts.values())
    hosts["app_tx"].sendto(b"new epoch", (BCAST_A, PORT))
    assert collect(hosts["ws"], expected=1) == [(b"new epoch", GW_B)]


def test_ws_can_still_reach_app(lab, relays, hosts):
    """The reverse direction, after all of the above."""
    drain(*hosts.values())
    hosts["ws_tx"].sendto(b"from brooklyn", (BCAST_B, PORT))
    assert collect(hosts["app"], expected=1) == [(b"from brooklyn", GW_A)]


def test_compat_mode_to_255_255_255_255_does_not_echo(lab):
    """`sitelink-relay 6800 255.255.255.255` on gwB: a LAN broadcast is not sent out again."""
    status = os.path.join(lab.status_dir("wire-compat"), "status.json")
    relay = RelayProc(
        lab,
        "compat255",
        lab.ns["gwB"],
        ["--status-file", status, "6800", "255.255.255.255"],
        status,
    )
    ws2 = lab.sock(lab.ns["ws2"], 6800)
    # 255.255.255.255 leaves by the default route's interface, as on the article's gateway
    run("ip", "-n", lab.ns["gwB"], "route", "add", "default", "dev", "lan0")
    tx = lab.sock(lab.ns["ws"])
    for i in range(5):
        tx.sendto(b"lan %d" % i, (BCAST_B, 6800))
    got = collect(ws2, expected=5, timeout=3)
    assert sorted(got) == sorted((b"lan %d" % i, WS) for i in range(5))  # no second copy

    # a unicast from the peer gateway is what compat mode relays
    def peer():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((GW_A, 0))
        return s

    s = in_netns(lab.ns["gwA"], peer)
    lab.sockets.append(s)
    s.sendto(b"from the peer", (GW_B, 6800))
    assert collect(ws2, expected=1) == [(b"from the peer", GW_B)]
    port = relay.status()["ports"]["6800"]
    assert port["dropped"].get("same_destination") == 5
    assert relay.stop() == 0
    run("ip", "-n", lab.ns["gwB"], "route", "del", "default", "dev", "lan0")


GW_A2 = "192.168.1.125"  # Manhattan's second gateway, on the same LAN
KEY_A2B, KEY_SIB = secrets.token_bytes(32).hex(), secrets.token_bytes(32).hex()


def test_two_relays_on_one_lan_do_not_double(lab, relays, hosts):
    """Manhattan gets a second gateway (gwA2, .125) on its LAN, with a tunnel to gwB.
    Both Manhattan relays hear every broadcast and gwB sends to both: one relays, the
    other stands by; when the active one stops, the other takes over."""
    for relay in relays.values():
        relay.stop()
    ns = lab.ns
    ns["gwA2"] = lab.add_ns("gwA2")
    run("ip", "-n", ns["gwA2"], "link", "add", "eth0", "type", "veth", "peer", "name", "pgwa2",
        "netns", ns["gwA"])  # fmt: skip
    run("ip", "-n", ns["gwA"], "link", "set", "pgwa2", "master", "lan0", "up")
    run("ip", "-n", ns["gwA2"], "addr", "add", f"{GW_A2}/24", "dev", "eth0")
    run("ip", "-n", ns["gwA2"], "link", "set", "eth0", "up")
    run("ip", "-n", ns["gwA2"], "link", "add", "tunB", "type", "veth", "peer", "name", "tunA2",
        "netns", ns["gwB"])  # fmt: skip
    for gw, dev, own, peer in (("gwA2", "tunB", GW_A2, GW_B), ("gwB", "tunA2", GW_B, GW_A2)):
        run("ip", "-n", ns[gw], "addr", "add", f"{own}/32", "peer", f"{peer}/32", "dev", dev)
        run("ip", "-n", ns[gw], "link", "set", dev, "up")
    run("ip", "-n", ns["gwA2"], "route", "add", "192.168.2.0/24", "via", GW_B, "dev", "tunB",
        "src", GW_A2)  # fmt: skip

    def relay(name, nsname, lan, peers, siblings, keys):
        run_dir = lab.status_dir(f"sib-run-{name}")
        status = os.path.join(run_dir, "status.json")
        data = {
            "version": 2,
            "office": "brooklyn" if name == "gwB" else "manhattan",
            "lan": lan,
            "wire": "sitelink1",
            "keys_file": lab.write(
                f"sib-{name}-keys.json",
                json.dumps(
                    {
                        "version": 1,
                        "peers": {a: {"send": k, "accept": [k]} for a, k in keys.items()},
                    }
                ),
            ),  # fmt: skip
            "state_dir": lab.status_dir(f"sib-state-{name}"),
            "siblings": siblings,
            "peers": peers,
            "rules": [{"port": PORT, "forward_to": list(peers), "accept_from": list(peers)}],
            "status_file": status,
        }
        cfg = lab.write(f"sib-{name}.json", json.dumps(data))
        return RelayProc(lab, f"sib-{name}", ns[nsname], ["--config", cfg], status)

    brooklyn = {"office": "brooklyn"}
    started = {
        "gwA": relay("gwA", "gwA", {"interface": "lan0", "address": f"{GW_A}/24"},
                     {GW_B: {**brooklyn, "interface": "tun0"}}, [GW_A2],
                     {GW_B: KEY_AB, GW_A2: KEY_SIB}),
        "gwA2": relay("gwA2", "gwA2", {"interface": "eth0", "address": f"{GW_A2}/24"},
                      {GW_B: {**brooklyn, "interface": "tunB"}}, [GW_A],
                      {GW_B: KEY_A2B, GW_A: KEY_SIB}),
        "gwB": relay("gwB", "gwB", {"interface": "lan0", "address": f"{GW_B}/24"},
                     {GW_A: {"office": "manhattan", "interface": "tun0"},
                      GW_A2: {"office": "manhattan", "interface": "tunA2"}}, [],
                     {GW_A: KEY_AB, GW_A2: KEY_A2B}),
    }  # fmt: skip
    time.sleep(3)  # each listens 1.5 s for its siblings before relaying

    def both_ways(n, tag, manhattan_gw):
        drain(*hosts.values())
        sent = [f"{tag} {i}".encode() for i in range(n)]
        for p in sent:
            hosts["app_tx"].sendto(p, (BCAST_A, PORT))
            hosts["ws_tx"].sendto(b"back " + p, (BCAST_B, PORT))
            time.sleep(0.01)
        at_b = [(d, s) for d, s in collect(hosts["ws2"], expected=2 * n) if s == GW_B]
        at_a = [(d, s) for d, s in collect(hosts["mon"], expected=2 * n) if s != APP]
        assert sorted(at_b) == sorted((p, GW_B) for p in sent), "each once at Brooklyn"
        assert sorted(at_a) == sorted((b"back " + p, manhattan_gw) for p in sent), (
            "each once at Manhattan, from the relaying gateway"
        )

    # Exactly one relays: the first to finish listening (no preemption afterwards).
    standby = {name: started[name].status()["standby"] for name in ("gwA", "gwA2")}
    assert sorted(standby.values()) == [False, True], standby
    active = "gwA" if standby["gwA2"] else "gwA2"
    other = "gwA2" if active == "gwA" else "gwA"
    address = {"gwA": GW_A, "gwA2": GW_A2}
    both_ways(20, "pair", address[active])
    assert started[other].status()["ports"][str(PORT)]["dropped"].get("standby", 0) >= 40
    started[active].stop()
    time.sleep(2.5)  # the other notices (1.5 s without a heartbeat) and takes over
    both_ways(10, "failover", address[other])
    assert started[other].status()["standby"] is False
    for r in started.values():
        r.stop()
