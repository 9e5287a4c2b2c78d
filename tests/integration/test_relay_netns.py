"""sitelink-relay with real sockets and real broadcasts, in network namespaces.

Topology (every namespace and link is created here and removed afterwards):

    app 192.168.1.10 --+                                    +-- ws  192.168.2.20
                       +-- lan0 [gwA] tun0 ==== tun0 [gwB] lan0
    mon 192.168.1.11 --+   .1.126/24              .2.126/24 +-- ws2 192.168.2.21
                                                    ev0 10.99.0.1/24
                                                     |
                                                   evil 10.99.0.2 (routed, not a peer)

and, for the peer_interfaces test, a gateway whose peer's datagrams must arrive on
its "tunnel" sl-peer, and an Internet host that forges the peer's source address:

    phost .21.10 -- lan0 [pgw] sl-peer ==== tun0 [ppeer] .22.126
                          wan0 203.0.113.1 -- 203.0.113.2 [pnet]

and, for the hub ("transit") tests, three more gateways in a chain, no A-B link:

    hostA .11.10 -- [hubA] .11.126 ==== [hubH] .13.126 ==== .12.126 [hubB] -- hostB .12.10
                                           |
                                     hostH .13.10

The host has no ipip module, so the tunnel is a routed veth pair whose ends carry
the gateways' LAN addresses as /32 with a peer route and a route to the other LAN
with src = own LAN address, exactly as the ipip tunnel is configured.  Relays run
as subprocesses (``ip netns exec``), as an unprivileged user when setpriv exists,
with $NOTIFY_SOCKET pointing at a socket of the test (sd_notify is checked too).
Test traffic never leaves the namespaces created here.

Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from pathlib import Path

import pytest
from relay_lab import (  # the harness, shared with test_relay_wire_netns
    APP,
    BCAST_A,
    BCAST_B,
    COMPAT_PORT,
    GW_A,
    GW_B,
    HUB_GW,
    HUB_HOST,
    HUB_SITES,
    NOBODY,
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


def service_config(lan_addr, peer, status_file, port=PORT, rule=None):
    if rule is None:
        rule = {"port": port, "forward_to": [peer], "accept_from": [peer]}
    return json.dumps(
        {
            "version": 1,
            "lan": {"interface": "lan0", "address": lan_addr},
            "wire": "raw",
            "rules": [rule],
            "status_file": status_file,
        },
        indent=1,
    )


@pytest.fixture(scope="module")
def lab():
    yield from lab_for_module()


@pytest.fixture(scope="module")
def service(lab):
    """Bidirectional service-mode relays: gwA <-> gwB on udp/6799."""
    relays = {}
    for name, lan_addr, peer in (("gwA", f"{GW_A}/24", GW_B), ("gwB", f"{GW_B}/24", GW_A)):
        status = os.path.join(lab.status_dir(f"run-{name}"), "status.json")
        cfg = lab.write(f"{name}.json", service_config(lan_addr, peer, status))
        res = run(PYTHON, str(RELAY), "--check-config", cfg, check=False)
        assert res.returncode == 0, res.stderr
        relays[name] = RelayProc(lab, name, lab.ns[name], ["--config", cfg], status)
        relays[name].config = cfg
    return relays


@pytest.fixture(scope="module")
def hosts(lab):
    """Listening sockets on udp/6799 and udp/6800 on every LAN host, plus senders."""
    h = lab.host_sockets(compat=COMPAT_PORT)
    h["evil_tx"] = lab.sock(lab.ns["evil"])
    return h


def port_delta(after, before, port=PORT):
    a = after["ports"][str(port)]
    b = before["ports"][str(port)]
    delta = {k: a[k] - b[k] for k in ("received", "forwarded", "rebroadcast", "transited")}
    reasons = set(a["dropped"]) | set(b["dropped"])
    delta["dropped"] = {
        r: a["dropped"].get(r, 0) - b["dropped"].get(r, 0)
        for r in reasons
        if a["dropped"].get(r, 0) != b["dropped"].get(r, 0)
    }
    delta["send_errors"] = a["send_errors"]
    return delta


def only_from(received, src):
    return [d for d, s in received if s != src]


# --------------------------------------------------------------------------- tests


def test_relays_ready_and_unprivileged(lab, service):
    for relay in service.values():
        assert relay.alive(), relay.log()
        status = relay.status()
        assert status["mode"] == "service"
        assert status["lan"]["interface"] == "lan0" and status["lan"]["ifindex"] > 0
        if lab.drop_privileges:
            uid_line = [
                line
                for line in Path(f"/proc/{relay.proc.pid}/status").read_text().splitlines()
                if line.startswith("Uid:")
            ][0]
            assert uid_line.split()[1:] == [str(NOBODY)] * 4
        # watchdog pings at half of WATCHDOG_USEC (1 s): expect a few within 2.5 s
        assert lab.notify.wait(relay.name, "WATCHDOG=1", count=3, timeout=5), relay.log()


def test_lan_broadcasts_arrive_exactly_once(lab, service, hosts):
    n = 25
    drain(*hosts.values())
    before = {k: r.status() for k, r in service.items()}
    payloads = [f"announce {i} {secrets.token_hex(8)}".encode() for i in range(n)]
    for p in payloads:
        hosts["app_tx"].sendto(p, (BCAST_A, PORT))
        time.sleep(0.005)
    for ws in ("ws", "ws2"):
        got = collect(hosts[ws], expected=n)
        assert sorted(d for d, _unused in got) == sorted(payloads), f"{ws} got {len(got)}"
        assert {s for _unused, s in got} == {GW_B}
    # nothing came back onto LAN A: only app's originals on app/mon
    for h in ("app", "mon"):
        got = collect(hosts[h], expected=n, timeout=2)
        assert only_from(got, APP) == [], f"echo on LAN A seen by {h}"
        assert len(got) == n
    after = {k: r.status() for k, r in service.items()}
    da, db = port_delta(after["gwA"], before["gwA"]), port_delta(after["gwB"], before["gwB"])
    assert (da["received"], da["forwarded"], da["rebroadcast"], da["dropped"]) == (n, n, 0, {})
    # gwB's own re-broadcasts come back to its socket: its filter has the kernel drop
    # them, so the relay never even reads them (and never forwards them back)
    assert (db["received"], db["forwarded"], db["rebroadcast"]) == (n, 0, n)
    assert db["dropped"] == {}
    assert da["send_errors"] == {} and db["send_errors"] == {}


def test_limited_broadcast_is_relayed(lab, service, hosts):
    drain(*hosts.values())
    hosts["app_tx"].sendto(b"to-all-ones", ("255.255.255.255", PORT))
    got = collect(hosts["ws"], expected=1)
    assert got == [(b"to-all-ones", GW_B)]
    assert only_from(collect(hosts["mon"], expected=1, timeout=2), APP) == []


def test_largest_datagram_arrives_intact(lab, service, hosts):
    drain(*hosts.values())
    big = os.urandom(65507)
    hosts["app_tx"].sendto(big, (BCAST_A, PORT))
    got = collect(hosts["ws"], expected=1)
    assert len(got) == 1 and got[0][0] == big
    assert only_from(collect(hosts["mon"], expected=1, timeout=2), APP) == []


def test_reverse_direction_and_no_echo_on_lan_b(lab, service, hosts):
    """gwB forwards LAN B broadcasts to gwA; LAN B hears each one only once."""
    drain(*hosts.values())
    payloads = [f"from-brooklyn {i}".encode() for i in range(5)]
    for p in payloads:
        hosts["ws_tx"].sendto(p, (BCAST_B, PORT))
        time.sleep(0.005)
    got = collect(hosts["mon"], expected=5)
    assert sorted(got) == sorted((p, GW_A) for p in payloads)
    got_b = collect(hosts["ws2"], expected=5)
    assert sorted(got_b) == sorted((p, WS) for p in payloads)  # originals only


def test_lan_host_repeating_a_rebroadcast_is_not_sent_back(lab, service, hosts):
    """A LAN B host repeats what gwB re-broadcast (e.g. a forgotten old udp-proxy).

    Its source is a LAN host, so only the repeat memory keeps gwB from sending it
    back to gwA, which would re-broadcast it on LAN A.
    """
    drain(*hosts.values())
    before = service["gwB"].status()
    hosts["app_tx"].sendto(b"repeat me", (BCAST_A, PORT))
    got = collect(hosts["ws2"], expected=1, quiet=0)
    assert got == [(b"repeat me", GW_B)]
    hosts["ws2_tx"].sendto(got[0][0], (BCAST_B, PORT))  # within the 2 s window
    assert only_from(collect(hosts["mon"], expected=1, timeout=2), APP) == []
    delta = port_delta(service["gwB"].status(), before)
    assert delta["dropped"] == {"repeated": 1}
    assert (delta["rebroadcast"], delta["forwarded"]) == (1, 0)


def test_non_peer_datagrams_are_not_rebroadcast(lab, service, hosts):
    drain(*hosts.values())
    before = service["gwB"].status()
    hosts["ws_tx"].sendto(b"lan host to gateway", (GW_B, PORT))
    hosts["evil_tx"].sendto(b"outsider to gateway", (GW_B, PORT))
    # same address family as the peer but not the peer
    assert collect(hosts["ws2"], expected=0) == []
    assert collect(hosts["ws"], expected=0) == []
    after = service["gwB"].status()
    delta = port_delta(after, before)
    assert delta["received"] == 2 and delta["rebroadcast"] == 0 and delta["forwarded"] == 0
    assert delta["dropped"] == {"foreign": 2}


PI_GW, PI_PEER, PI_HOST = "192.168.21.126", "192.168.22.126", "192.168.21.10"
PI_WAN, PI_NET = "203.0.113.1", "203.0.113.2"  # TEST-NET-3, only inside the namespaces


def bound_socket(lab, ns, addr):
    """A UDP socket in ns bound to addr (which may be a forged, locally added address)."""

    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, 0))
        return s

    s = in_netns(ns, make)
    lab.sockets.append(s)
    return s


def test_peer_datagrams_count_only_from_the_peers_tunnel(lab):
    """A datagram forged with the peer's source address is not re-broadcast.

    The relay on pgw accepts from 192.168.22.126 through sl-peer (peer_interfaces).
    The same source address arriving on the WAN (an Internet host that forges it) or
    on the LAN is dropped as "peer_interface".  rp_filter is off on pgw, as on a
    gateway with asymmetric routes, so only the relay stands in the way; the received
    counter proves the forged datagrams reached it.  The relay starts before its
    tunnel exists, and the tunnel is recreated (new ifindex, same name) while it runs.
    The host has no ipip module: sl-peer is a veth routed like the tunnel.
    """
    ns = {r: lab.add_ns(r) for r in ("pgw", "phost", "ppeer", "pnet")}
    lab.add_gateway_lan(ns["pgw"], f"{PI_GW}/24")
    lab.add_lan_host(ns["phost"], ns["pgw"], "pphost", PI_HOST, PI_GW)
    run("ip", "-n", ns["pnet"], "link", "add", "eth0", "type", "veth", "peer", "name", "wan0",
        "netns", ns["pgw"])  # fmt: skip
    run("ip", "-n", ns["pgw"], "addr", "add", f"{PI_WAN}/24", "dev", "wan0")
    run("ip", "-n", ns["pgw"], "link", "set", "wan0", "up")
    run("ip", "-n", ns["pnet"], "addr", "add", f"{PI_NET}/24", "dev", "eth0")
    run("ip", "-n", ns["pnet"], "link", "set", "eth0", "up")
    for conf in ("all", "default", "wan0", "lan0"):
        run("ip", "netns", "exec", ns["pgw"], "sysctl", "-qw",
            f"net.ipv4.conf.{conf}.rp_filter=0")  # fmt: skip
    # the forgers: the peer's address as a local address of the Internet and LAN hosts
    for forger in ("pnet", "phost"):
        run("ip", "-n", ns[forger], "addr", "add", f"{PI_PEER}/32", "dev", "lo")

    status = os.path.join(lab.status_dir("run-pgw"), "status.json")
    text = json.loads(
        service_config(
            f"{PI_GW}/24",
            None,
            status,
            rule={"port": PORT, "forward_to": [], "accept_from": [PI_PEER]},
        )
    )
    text["peer_interfaces"] = {PI_PEER: "sl-peer"}
    cfg = lab.write("pgw.json", json.dumps(text))
    res = run(PYTHON, str(RELAY), "--check-config", cfg, check=False)
    assert res.returncode == 0, res.stderr
    relay = RelayProc(lab, "pgw", ns["pgw"], ["--config", cfg], status)
    assert "peer interface sl-peer not found" in relay.log()

    def make_tunnel():
        lab.add_tunnel(
            (ns["pgw"], "sl-peer", PI_GW, "192.168.21.0/24"),
            (ns["ppeer"], "tun0", PI_PEER, "192.168.22.0/24"),
        )
        res = run("ip", "-n", ns["pgw"], "-o", "link", "show", "sl-peer")
        return int(res.stdout.split(":", 1)[0])

    ifindex = make_tunnel()
    listen = lab.sock(ns["phost"], PORT)
    peer = bound_socket(lab, ns["ppeer"], PI_PEER)
    forged_wan = bound_socket(lab, ns["pnet"], PI_PEER)
    forged_lan = bound_socket(lab, ns["phost"], PI_PEER)

    def exchange(tag):
        """The peer's datagram and the two forged ones: (what LAN hears, counter deltas)."""
        drain(listen)
        before = relay.status()
        forged_wan.sendto(b"forged via wan " + tag, (PI_WAN, PORT))
        forged_lan.sendto(b"forged via lan " + tag, (PI_GW, PORT))
        time.sleep(0.05)
        peer.sendto(b"peer via tunnel " + tag, (PI_GW, PORT))
        got = collect(listen, expected=1)
        return got, port_delta(relay.status(), before)

    for attempt, tag in enumerate((b"1", b"2")):
        got, delta = exchange(tag)
        assert got == [(b"peer via tunnel " + tag, PI_GW)], (attempt, got, relay.log())
        assert delta["received"] == 3  # both forgeries reached the relay (not its own echo)
        assert delta["rebroadcast"] == 1 and delta["forwarded"] == 0
        assert delta["dropped"] == {"peer_interface": 2}, delta
        assert delta["send_errors"] == {}
        if attempt == 0:  # the tunnel is deleted and made again: a new ifindex
            run("ip", "-n", ns["pgw"], "link", "del", "sl-peer")
            new_ifindex = make_tunnel()
            assert new_ifindex != ifindex
    data = relay.status()
    assert data["peer_interfaces"] == {PI_PEER: "sl-peer"}
    assert data["ports"][str(PORT)]["dropped"]["peer_interface"] == 4
    assert relay.stop() == 0, relay.log()
    assert "Traceback" not in relay.log(), relay.log()


def test_status_cli_reads_the_file(lab, service):
    service["gwA"].status()
    res = run(PYTHON, str(RELAY), "--status", service["gwA"].status_path)
    assert "service mode" in res.stdout and str(PORT) in res.stdout


def test_reload_keeps_old_config_on_error_and_applies_good_one(lab, service, hosts):
    relay = service["gwB"]
    cfg = Path(relay.config)
    good = cfg.read_text()
    ready_before = lab.notify.count("gwB", "READY=1")
    cfg.write_text('{"version": 1, "rules": []}')
    relay.proc.send_signal(signal.SIGHUP)
    assert lab.notify.wait("gwB", "READY=1", count=ready_before + 1)
    assert "keeping the running config" in relay.log()
    drain(*hosts.values())
    hosts["app_tx"].sendto(b"after bad reload", (BCAST_A, PORT))
    assert collect(hosts["ws"], expected=1) == [(b"after bad reload", GW_B)]
    # a good config: gwB stops accepting from gwA -> nothing is re-broadcast
    data = json.loads(good)
    data["rules"][0]["accept_from"] = []
    cfg.write_text(json.dumps(data))
    relay.proc.send_signal(signal.SIGHUP)
    assert lab.notify.wait("gwB", "READY=1", count=ready_before + 2)
    drain(*hosts.values())
    hosts["app_tx"].sendto(b"after good reload", (BCAST_A, PORT))
    assert collect(hosts["ws"], expected=0) == []
    cfg.write_text(good)
    relay.proc.send_signal(signal.SIGHUP)
    assert lab.notify.wait("gwB", "READY=1", count=ready_before + 3)
    drain(*hosts.values())
    hosts["app_tx"].sendto(b"restored", (BCAST_A, PORT))
    assert collect(hosts["ws"], expected=1) == [(b"restored", GW_B)]
    assert relay.alive()


def hub_rule(accept_from_a):
    """hubH passes hubA's datagrams on to hubB; re-broadcasts them only if it accepts A."""
    return {
        "port": PORT,
        "forward_to": [],
        "accept_from": [HUB_GW["A"]] if accept_from_a else [],
        "transit": {HUB_GW["A"]: [HUB_GW["B"]]},
    }


class HubLab:
    """Relays on hubA (-> H), hubH (transit A -> B) and hubB (<- H); a socket per LAN host."""

    def __init__(self, lab):
        self.lab = lab
        self.ns = lab.build_hub()
        self.relays = {}
        self.listen = {}
        for site in HUB_SITES:
            name = "hub" + site
            status = os.path.join(lab.status_dir(f"run-{name}"), "status.json")
            if site == "H":
                rule = hub_rule(accept_from_a=False)
            else:  # a branch: its broadcasts to H, H's datagrams re-broadcast
                rule = {"port": PORT, "forward_to": [HUB_GW["H"]], "accept_from": [HUB_GW["H"]]}
            text = service_config(f"{HUB_GW[site]}/24", None, status, rule=rule)
            cfg = lab.write(f"{name}.json", text)
            res = run(PYTHON, str(RELAY), "--check-config", cfg, check=False)
            assert res.returncode == 0, res.stderr
            relay = RelayProc(lab, name, self.ns["gw" + site], ["--config", cfg], status)
            relay.config = cfg
            self.relays[site] = relay
            self.listen[site] = lab.sock(self.ns["host" + site], PORT)
        self.tx = lab.sock(self.ns["hostA"])

    def configure_hub(self, accept_from_a):
        """Give hubH's relay this transit rule, by SIGHUP if it changes."""
        relay = self.relays["H"]
        cfg = Path(relay.config)
        text = service_config(
            f"{HUB_GW['H']}/24", None, relay.status_path, rule=hub_rule(accept_from_a)
        )
        if cfg.read_text() == text:
            return
        ready = self.lab.notify.count(relay.name, "READY=1")
        cfg.write_text(text)
        relay.proc.send_signal(signal.SIGHUP)
        assert self.lab.notify.wait(relay.name, "READY=1", count=ready + 1), relay.log()
        port = relay.status()["ports"][str(PORT)]
        assert port["accept_from"] == ([HUB_GW["A"]] if accept_from_a else []), relay.log()
        assert port["transit"] == {HUB_GW["A"]: [HUB_GW["B"]]}


@pytest.fixture(scope="module")
def hub(lab):
    return HubLab(lab)


@pytest.mark.parametrize("accept_from_a", [False, True], ids=["transit-only", "transit+accept"])
def test_hub_passes_branch_broadcasts_on_exactly_once(lab, hub, accept_from_a):
    """A's LAN broadcast: A -> H (unicast) -> B (unicast) -> LAN B, once.

    H re-broadcasts on its own LAN only when it also accepts from A (the second case
    also checks that a SIGHUP reload applies a transit rule change).  Nothing ever
    goes back to A: A accepts from H, so anything H sent back would show up on LAN A.
    """
    hub.configure_hub(accept_from_a)
    drain(*hub.listen.values())
    before = {site: r.status() for site, r in hub.relays.items()}
    n = 5
    payloads = [f"branch-a {i} {secrets.token_hex(6)}".encode() for i in range(n)]
    for p in payloads:
        hub.tx.sendto(p, ("192.168.11.255", PORT))
        time.sleep(0.005)
    got_b = collect(hub.listen["B"], expected=n)  # then QUIET s for duplicates
    assert sorted(got_b) == sorted((p, HUB_GW["B"]) for p in payloads)
    # anything else would have arrived by now: short quiet periods suffice
    got_h = collect(hub.listen["H"], expected=n if accept_from_a else 0, quiet=0.2)
    if accept_from_a:
        assert sorted(got_h) == sorted((p, HUB_GW["H"]) for p in payloads)
    else:
        assert got_h == [], "H re-broadcast although it does not accept from A"
    got_a = collect(hub.listen["A"], expected=n, quiet=0.2)
    assert only_from(got_a, HUB_HOST["A"]) == [], "came back onto LAN A"
    assert len(got_a) == n  # the originals
    after = {site: r.status() for site, r in hub.relays.items()}
    d = {site: port_delta(after[site], before[site]) for site in HUB_SITES}
    keys = ("received", "forwarded", "rebroadcast", "transited", "dropped")
    assert tuple(d["A"][k] for k in keys) == (n, n, 0, 0, {})
    if accept_from_a:  # H's own re-broadcasts never reach it (kernel filter)
        assert tuple(d["H"][k] for k in keys) == (n, 0, n, n, {})
    else:
        assert tuple(d["H"][k] for k in keys) == (n, 0, 0, n, {})
    assert tuple(d["B"][k] for k in keys) == (n, 0, n, 0, {})
    for site, relay in hub.relays.items():
        assert d[site]["send_errors"] == {}, site
        assert relay.alive() and "Traceback" not in relay.log(), relay.log()
    res = run(PYTHON, str(RELAY), "--status", hub.relays["H"].status_path)
    assert "transit 192.168.11.126 -> 192.168.12.126" in res.stdout, res.stdout


def test_compat_cli_reproduces_the_article(lab, hosts):
    """`sitelink-relay PORT 192.168.2.126` on A, `sitelink-relay PORT 192.168.2.255` on B."""
    status = {}
    relays = {}
    for name, dest in (("cA", GW_B), ("cB", BCAST_B)):
        status[name] = os.path.join(lab.status_dir(f"run-{name}"), "status.json")
        gw = lab.ns["gwA" if name == "cA" else "gwB"]
        relays[name] = RelayProc(
            lab,
            name,
            gw,
            ["--status-file", status[name], str(COMPAT_PORT), dest],
            status[name],
        )
    drain(*hosts.values())
    n = 15
    payloads = [f"compat {i} {secrets.token_hex(4)}".encode() for i in range(n)]
    for p in payloads:
        hosts["app_tx"].sendto(p, (BCAST_A, COMPAT_PORT))
        time.sleep(0.005)
    for ws in ("ws_compat", "ws2_compat"):
        got = collect(hosts[ws], expected=n)
        assert sorted(got) == sorted((p, GW_B) for p in payloads), ws
    got = collect(hosts["mon_compat"], expected=n, timeout=2)
    assert only_from(got, APP) == [] and len(got) == n
    sa, sb = relays["cA"].status(), relays["cB"].status()
    pa, pb = sa["ports"][str(COMPAT_PORT)], sb["ports"][str(COMPAT_PORT)]
    assert sa["mode"] == "compat"
    assert (pa["received"], pa["forwarded"], pa["dropped"]) == (n, n, {})
    assert (pb["received"], pb["forwarded"], pb["dropped"]) == (n, n, {})  # no echo read
    for relay in relays.values():
        assert relay.stop() == 0, relay.log()
        assert lab.notify.count(relay.name, "STOPPING=1") == 1


def test_sigterm_exits_cleanly(lab, service):
    for relay in service.values():
        assert relay.alive(), relay.log()
        assert relay.stop() == 0, relay.log()
        assert lab.notify.wait(relay.name, "STOPPING=1", timeout=2)
        assert "Traceback" not in relay.log(), relay.log()
