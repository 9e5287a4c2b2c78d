"""Relays on the authenticated wire, wired to each other in memory (no sockets).

Each simulated gateway has a fake socket; what one relay sends to another's address
is queued on that one's socket with the sender's LAN address as source, as the
tunnel would deliver it.  LAN broadcasts are queued on the sending gateway's own
socket, and re-broadcasts are recorded as what a LAN host would hear.
"""

from __future__ import annotations

import copy
import json
import socket
import struct
import time

import pytest
from sitelink_relay import config, configure, datapath, loop, mmsg, ports, siblings, storm, wire

PORT = 6799
LAN_IF = 3
GROUP = "239.255.255.250"

OFFICES = {
    # name: (LAN address/prefix, LAN host)
    "manhattan": ("192.168.1.126/24", "192.168.1.10"),
    "brooklyn": ("192.168.2.126/24", "192.168.2.20"),
    "queens": ("192.168.3.126/24", "192.168.3.30"),
    "manhattan-b": ("192.168.1.125/24", "192.168.1.10"),  # Manhattan's second gateway
    "bronx": ("192.168.4.126/24", "192.168.4.40"),
}
OFFICE_OF = {"manhattan-b": "manhattan"}
GW = {name: lan.split("/", maxsplit=1)[0] for name, (lan, _unused) in OFFICES.items()}
HOST = {name: host for name, (_unused, host) in OFFICES.items()}
BCAST = {name: GW[name].rsplit(".", 1)[0] + ".255" for name in OFFICES}
TUN_IF = {name: 10 + i for i, name in enumerate(OFFICES)}  # ifindex of the tunnel to it


def arp_table(*entries):
    """/proc/net/arp text: (address, MAC) entries on eth0, complete."""
    lines = ["IP address       HW type     Flags       HW address            Mask     Device"]
    lines += [f"{a:<16} 0x1         0x2         {mac}     *        eth0" for a, mac in entries]
    return "\n".join(lines) + "\n"


# The LAN hosts the simulated gateways' neighbour tables know (one MAC each).
NEIGHBOURS = [
    (f"192.168.{lan}.{host}", f"02:00:00:00:{lan:02x}:{host:02x}")
    for lan in (1, 2, 3)
    for host in (10, 11, 20, 30, 66)
]


# Storm control scaled down for the simulated floods: 100 datagrams/s a source.
SMALL_LIMITS = {
    "per_source_rate": 100,
    "per_source_burst": 10,
    "global_rate": 10000,
    "global_burst": 10000,
    "cutoff_seconds": 10,
}


def link_key(a: str, b: str) -> str:
    return bytes([len(a) + len(b)] * 16 + [ord(a[0]), ord(b[0])] * 8).hex()


class FakeSock:
    def __init__(self):
        self.queue = []  # (payload, src, ifindex, dst packed)
        self.sent = []  # (payload, (addr, port), anc)

    def recvmsg_into(self, buffers, ancbufsize, flags=0):
        if not self.queue:
            raise BlockingIOError
        payload, src, ifindex, dst = self.queue.pop(0)
        buffers[0][: len(payload)] = payload
        anc = [(socket.IPPROTO_IP, 8, mmsg.PKTINFO.pack(ifindex, dst, dst))]
        return len(payload), anc, 0, (src, PORT)

    def setsockopt(self, *args):
        pass  # e.g. the relay's socket filter: no kernel here

    def sendto(self, data, addr):
        assert addr[0] == "127.0.0.1", addr  # the relay's marker, back into its own queue
        self.queue.append((bytes(data), addr[0], 1, socket.inet_aton(addr[0])))

    def sendmsg(self, buffers, anc, flags, addr):
        data = b"".join(bytes(b) for b in buffers)
        size = [struct.unpack("=H", a[2])[0] for a in anc if a[:2] == (17, 103)]
        anc = [a for a in anc if a[:2] != (17, 103)]
        for i in range(0, len(data), size[0]) if size else (0,):
            # UDP_SEGMENT: the kernel cuts the buffer into datagrams of that size
            self.sent.append((data[i : i + size[0]] if size else data, addr, anc))

    def fileno(self):
        return -1

    def close(self):
        pass


@pytest.fixture(autouse=True)
def python_backend(monkeypatch):
    monkeypatch.setattr(ports, "Receiver", mmsg.PyReceiver)
    monkeypatch.setattr(ports, "Sender", mmsg.PySender)


def relay_config(
    name, peers, *, rules=None, storm_control=None, wire_name="sitelink1", siblings=()
):
    lan, _unused = OFFICES[name]
    data = {
        "version": 2,
        "office": OFFICE_OF.get(name, name),
        "lan": {"interface": "eth0", "address": lan},
        "wire": wire_name,
        "siblings": [GW[s] for s in siblings],
        "peers": {GW[p]: {"office": OFFICE_OF.get(p, p), "interface": f"sl-{p}"} for p in peers},
        "rules": rules
        or [
            {
                "port": PORT,
                "forward_to": [GW[p] for p in peers],
                "accept_from": [GW[p] for p in peers],
            }
        ],
        "status_file": None,
        "storm_control": storm_control,
        # needed by the authenticated wire; nothing is saved here (setup() is not run)
        "state_dir": "/var/lib/sitelink-relay",
    }
    return data


class Gateway:
    def __init__(self, name, peers, keys=None, **kw):
        self.name = name
        self.probed = []  # neighbour probes the relay sent
        self.data = relay_config(name, peers, **kw)
        self.config = config.parse_config(copy.deepcopy(self.data))
        if keys is None:
            keys = {
                GW[p]: wire.PeerKeys(
                    wire.LinkKey(bytes.fromhex(link_key(*sorted((name, p))))),
                    (wire.LinkKey(bytes.fromhex(link_key(*sorted((name, p))))),),
                )
                for p in (*peers, *kw.get("siblings", ()))
            }
        self.relay = loop.Relay(
            config=self.config, config_path="/dev/null", notifier=loop.Notifier({}), keys=keys
        )
        r = self.relay
        r.neighbours.read_table = lambda: arp_table(*NEIGHBOURS)
        r.neighbours.send_probe = self.probed.append
        r.sealer = wire.Sealer(r.office_id, r.sender_id, 1000)
        r.lan_ifindex = LAN_IF
        r.datapath.lan_dest = BCAST[name]
        r.egress.lan_pktinfo = (LAN_IF, socket.inet_aton(GW[name]))
        r.local = frozenset({GW[name]})
        self.sock = FakeSock()
        self.ports = {}
        for rule in self.config.rules:
            self.ports[rule.port] = r._make_port(self.config, rule, self.sock)
            r.ports[rule.port] = self.ports[rule.port]
            self.ports[rule.port].classifier.lan_ifindex = LAN_IF
            self.ports[rule.port].classifier.ifnames.names.update(
                {TUN_IF[p]: f"sl-{p}" for p in peers}
            )
        self.heard = []  # what this gateway put on its LAN: (payload, destination)

    @property
    def ps(self):
        return self.ports[PORT]

    def lan_broadcast(self, payload, src=None, dst=None):
        dst = dst or BCAST[self.name]
        self.sock.queue.append((payload, src or HOST[self.name], LAN_IF, socket.inet_aton(dst)))

    def run(self, net):
        """Handle everything queued; deliver sends to the other gateways or the LAN."""
        for ps in self.ports.values():
            self.relay.handle_readable(ps)
        sent, self.sock.sent = self.sock.sent, []
        for payload, (addr, _port), anc in sent:
            target = net.by_addr.get(addr)
            same_lan = (
                target is not None
                and OFFICES[target.name][0].split(".")[2] == (OFFICES[self.name][0].split(".")[2])
            )
            if same_lan:  # a sibling on our LAN: a heartbeat
                target.sock.queue.append((payload, GW[self.name], LAN_IF, socket.inet_aton(addr)))
            elif target is not None:
                target.sock.queue.append(
                    (payload, GW[self.name], TUN_IF[self.name], socket.inet_aton(addr))
                )
            else:
                assert anc, "a LAN send goes out of the LAN interface"
                self.heard.append((payload, addr))
                for other in net.gateways.values():  # the other relays on this LAN hear it
                    if other is not self and BCAST[other.name] == BCAST[self.name]:
                        other.sock.queue.append(
                            (payload, GW[self.name], LAN_IF, socket.inet_aton(addr))
                        )
        return sent


class Net:
    def __init__(self, *gateways):
        self.gateways = {g.name: g for g in gateways}
        self.by_addr = {GW[g.name]: g for g in gateways}

    def settle(self, rounds=4):
        for _unused in range(rounds):
            for g in self.gateways.values():
                g.run(self)


def drops(g):
    return g.ps.dropped


def test_broadcast_crosses_once_authenticated_and_never_comes_back():
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    m.lan_broadcast(b"hello")
    net.settle()
    assert b.heard == [(b"hello", BCAST["brooklyn"])]
    assert m.heard == []
    assert b.relay.peers[GW["manhattan"]].accepted == 1
    assert m.relay.peers[GW["brooklyn"]].sent == 1


def test_the_envelope_is_on_the_wire_not_the_lan():
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    m.lan_broadcast(b"x" * 10)
    sent = m.run(Net(m, b))
    ((payload, addr, _unused),) = sent
    assert addr == (GW["brooklyn"], PORT)
    assert len(payload) == wire.OVERHEAD + 10 and payload[:2] == b"SL"
    fields = wire.HEADER.unpack(payload[: wire.HEADER_SIZE])
    assert fields[3] == wire.office_id("manhattan") and fields[4] == socket.inet_aton(
        GW["manhattan"]
    )


def test_forged_replayed_and_unauthenticated_are_dropped_and_counted():
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    m.lan_broadcast(b"real")
    ((captured, _unused, _unused),) = m.run(net)  # what an attacker on the path would record
    b.run(net)
    assert b.heard == [(b"real", BCAST["brooklyn"])]
    from_m = (GW["manhattan"], TUN_IF["manhattan"], socket.inet_aton(GW["brooklyn"]))
    b.sock.queue.append((captured, *from_m))  # replay
    b.sock.queue.append((b"raw payload", *from_m))  # unauthenticated
    forged = bytearray(captured)
    forged[-1] ^= 1
    b.sock.queue.append((bytes(forged), *from_m))  # tampered
    other = Gateway(
        "manhattan",
        ["brooklyn"],
        keys={GW["brooklyn"]: wire.PeerKeys(wire.LinkKey(bytes(32)), (wire.LinkKey(bytes(32)),))},
    )
    other.lan_broadcast(b"evil")
    other.relay.handle_readable(other.ps)
    ((evil, _unused, _unused),) = other.sock.sent
    b.sock.queue.append((evil, *from_m))  # signed with the wrong key
    b.run(net)
    assert b.heard == [(b"real", BCAST["brooklyn"])]
    assert drops(b) == {"replay": 1, "malformed": 1, "auth": 2}
    assert b.relay.peers[GW["manhattan"]].dropped == {"replay": 1, "malformed": 1, "auth": 2}


def test_stale_epoch_after_a_restart_of_the_sender():
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    m.lan_broadcast(b"old")
    ((old, _unused, _unused),) = m.run(net)
    b.run(net)
    m.relay.sealer = wire.Sealer(m.relay.office_id, m.relay.sender_id, 2000)  # restarted
    m.lan_broadcast(b"new")
    net.settle()
    b.sock.queue.append(
        (old, GW["manhattan"], TUN_IF["manhattan"], socket.inet_aton(GW["brooklyn"]))
    )
    b.run(net)
    assert [p for p, _unused in b.heard] == [b"old", b"new"]
    assert drops(b) == {"stale": 1}


def test_identical_broadcasts_from_both_offices_all_arrive():
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    for _unused in range(3):
        m.lan_broadcast(b"DISCOVER")
        b.lan_broadcast(b"DISCOVER")
        net.settle()
    assert [p for p, _unused in b.heard] == [b"DISCOVER"] * 3
    assert [p for p, _unused in m.heard] == [b"DISCOVER"] * 3
    assert "echo" not in drops(m) and "echo" not in drops(b)


def test_own_rebroadcast_heard_back_is_never_relayed():
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    m.lan_broadcast(b"once")
    net.settle()
    # Linux hands the relay its own re-broadcast back: source = its own LAN address
    b.lan_broadcast(b"once", src=GW["brooklyn"])
    net.settle()
    assert m.heard == [] and b.heard == [(b"once", BCAST["brooklyn"])]
    assert drops(b)["own"] == 1


def hub_and_branches(direct_link=False):
    """Hub Manhattan passes Brooklyn's and Queens' broadcasts on to each other."""
    hub_rule = {
        "port": PORT,
        "forward_to": [GW["brooklyn"], GW["queens"]],
        "accept_from": [GW["brooklyn"], GW["queens"]],
        "transit": {GW["brooklyn"]: [GW["queens"]], GW["queens"]: [GW["brooklyn"]]},
    }
    hub = Gateway("manhattan", ["brooklyn", "queens"], rules=[hub_rule])
    spokes = []
    for name, other in (("brooklyn", "queens"), ("queens", "brooklyn")):
        peers = ["manhattan", other] if direct_link else ["manhattan"]
        rules = [
            {
                "port": PORT,
                "forward_to": [GW[p] for p in peers],
                "accept_from": [GW[p] for p in peers],
            }
        ]
        spokes.append(Gateway(name, peers, rules=rules))
    return hub, spokes


def test_hub_fans_out_exactly_once_and_never_back_to_the_origin():
    hub, (bk, qn) = hub_and_branches()
    net = Net(hub, bk, qn)
    bk.lan_broadcast(b"from brooklyn")
    net.settle()
    assert qn.heard == [(b"from brooklyn", BCAST["queens"])]
    assert hub.heard == [(b"from brooklyn", BCAST["manhattan"])]
    assert bk.heard == []
    assert hub.ps.transited == 1


def test_two_paths_deliver_once():
    """Brooklyn reaches Queens directly and through the hub: the second copy is a replay."""
    hub, (bk, qn) = hub_and_branches(direct_link=True)
    net = Net(hub, bk, qn)
    bk.lan_broadcast(b"twice?")
    net.settle()
    assert qn.heard == [(b"twice?", BCAST["queens"])]
    assert drops(qn) == {"replay": 1}
    assert bk.heard == []  # Queens never sends Brooklyn's datagram back


def test_a_datagram_of_our_own_office_is_dropped():
    hub, (bk, qn) = hub_and_branches()
    # a hub misconfigured to pass Brooklyn's datagrams back to Brooklyn (defence in depth)
    hub.ps.transit_peers[GW["brooklyn"]] = (hub.relay.peers[GW["brooklyn"]],)
    bk.lan_broadcast(b"boomerang")
    net = Net(hub, bk, qn)
    net.settle()
    assert bk.heard == []
    assert "own_origin" not in drops(bk)  # the hub's office check stopped it already


def test_own_origin_check():
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    m.lan_broadcast(b"mine")
    m.relay.handle_readable(m.ps)
    ((payload, _unused, _unused),) = m.sock.sent
    m.sock.sent = []
    header = payload[: wire.HEADER_SIZE]
    body = payload[wire.OVERHEAD :]
    key = m.relay.peers[GW["brooklyn"]].keys.send
    # Brooklyn "returns" Manhattan's datagram to Manhattan, correctly tagged
    m.sock.queue.append(
        (
            header + key.tag(header, body) + body,
            GW["brooklyn"],
            TUN_IF["brooklyn"],
            socket.inet_aton(GW["manhattan"]),
        )
    )
    m.run(Net(m, b))
    assert m.heard == [] and drops(m) == {"own_origin": 1}


def test_multicast_groups_are_relayed_to_the_same_group():
    def rules(peer):
        return [
            {
                "port": PORT,
                "forward_to": [GW[peer]],
                "accept_from": [GW[peer]],
                "multicast_groups": [GROUP],
            }
        ]

    m = Gateway("manhattan", ["brooklyn"], rules=rules("brooklyn"))
    b = Gateway("brooklyn", ["manhattan"], rules=rules("manhattan"))
    net = Net(m, b)
    m.lan_broadcast(b"M-SEARCH", dst=GROUP)
    m.lan_broadcast(b"all ones", dst="255.255.255.255")
    m.lan_broadcast(b"other group", dst="239.1.1.1")
    net.settle()
    assert b.heard == [(b"M-SEARCH", GROUP), (b"all ones", "255.255.255.255")]
    assert drops(m) == {"foreign": 1}


def test_too_big_for_the_envelope():
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    m.lan_broadcast(b"x" * (wire.MAX_PAYLOAD + 1))
    m.lan_broadcast(b"y" * wire.MAX_PAYLOAD)
    net.settle()
    assert b.heard == [(b"y" * wire.MAX_PAYLOAD, BCAST["brooklyn"])]
    assert drops(m) == {"too_big": 1}


def test_a_flooding_host_does_not_starve_the_others(monkeypatch):
    """5 s of a host flooding at 2000/s next to one sending 10/s (limit: 100/s a source)."""
    clock = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    m = Gateway("manhattan", ["brooklyn"], storm_control=SMALL_LIMITS)
    b = Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    for tick in range(50):  # 0.1 s each
        for i in range(200):
            m.lan_broadcast(b"flood %d" % (tick * 200 + i), src="192.168.1.66")
        m.lan_broadcast(b"quiet %d" % tick)
        net.settle(rounds=2)
        clock[0] += 0.1
    quiet = [p for p, _unused in b.heard if p.startswith(b"quiet")]
    flood = [p for p, _unused in b.heard if p.startswith(b"flood")]
    assert len(quiet) == 50  # the other host lost nothing
    assert len(flood) <= 10 + 100 * 1.2  # the burst, then about a second at its limit
    assert drops(m)["cut_off"] > 7500  # then cut off for the remaining 4 s
    assert m.relay.storm.cut_off(clock[0]) == {"192.168.1.66": pytest.approx(6.0, abs=1.0)}
    status = m.relay.status()
    assert status["storm"]["cut_off"] and status["storm"]["tripped_total"] == 1


def test_missing_key_is_refused_naming_the_peer(tmp_path):
    data = relay_config("manhattan", ["brooklyn"])
    cfg = config.parse_config(data)
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"version": 1, "peers": {}}))
    r = loop.Relay(config=cfg, keys_path=str(keys_file), notifier=loop.Notifier({}))
    with pytest.raises(
        config.ConfigError, match=r"keys: no key for peer 192.168.2.126 \(brooklyn\)"
    ):
        r.load_keys(cfg)


def test_a_peer_without_a_key_is_never_spoken_to_in_clear():
    m = Gateway("manhattan", ["brooklyn"], keys={})
    m.lan_broadcast(b"secret")
    m.relay.handle_readable(m.ps)
    assert m.sock.sent == []


def test_storm_module_defaults_match_the_config_defaults():
    assert config.STORM_DEFAULTS == {
        "per_source_rate": storm.PER_SOURCE_RATE,
        "per_source_burst": storm.PER_SOURCE_BURST,
        "global_rate": storm.GLOBAL_RATE,
        "global_burst": storm.GLOBAL_BURST,
        "cutoff_seconds": storm.CUTOFF_SECONDS,
    }


def test_two_relays_on_one_lan_do_not_double(monkeypatch):
    """Manhattan has two gateways; one relays, the other stands by and takes over."""
    clock = [50.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    m1 = Gateway("manhattan", ["brooklyn"], siblings=["manhattan-b"])
    m2 = Gateway("manhattan-b", ["brooklyn"], siblings=["manhattan"])
    b = Gateway("brooklyn", ["manhattan", "manhattan-b"])
    for m in (m1, m2):  # as setup() starts them: listening before relaying
        m.relay.standby = True
        m.relay.siblings.hold_until = clock[0] + siblings.SIBLING_TIMEOUT
    net = Net(m1, m2, b)

    def tick(seconds, alive=(m1, m2)):
        end = clock[0] + seconds
        while clock[0] < end:
            for m in alive:
                m.relay.heartbeat(clock[0])
            for g in (*alive, b):
                g.run(net)
            clock[0] += 0.25

    def office_broadcast(payload):  # both Manhattan gateways hear a Manhattan broadcast
        for m in (m1, m2):
            m.lan_broadcast(payload)

    tick(3)
    # the lower address (manhattan-b, .125) relays; manhattan (.126) stands by
    active, standby = m2, m1
    assert [active.relay.standby, standby.relay.standby] == [False, True]
    for i in range(5):
        office_broadcast(b"m %d" % i)
        b.lan_broadcast(b"b %d" % i)
        tick(0.5)
    assert [p for p, _unused in b.heard] == [b"m %d" % i for i in range(5)]
    assert [p for p, _unused in active.heard] == [b"b %d" % i for i in range(5)]
    assert standby.heard == [] and drops(standby)["standby"] >= 10
    assert drops(standby)["own"] >= 4  # the active one's re-broadcasts: never forwarded
    # the active one dies: the other takes over within the sibling timeout, still once each
    tick(siblings.SIBLING_TIMEOUT + 0.5, alive=(standby,))
    assert standby.relay.standby is False
    standby.lan_broadcast(b"after failover")
    b.lan_broadcast(b"back")
    tick(0.5, alive=(standby,))
    assert [p for p, _unused in b.heard][-1:] == [b"after failover"]
    assert [p for p, _unused in standby.heard] == [b"back"]
    status = standby.relay.status()
    assert status["standby"] is False and status["siblings"]["192.168.1.125"]["active"] is True


def test_forged_heartbeats_do_not_silence_a_relay(monkeypatch):
    clock = [50.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    m2 = Gateway("manhattan-b", ["brooklyn"], siblings=["manhattan"])
    forged = wire.HEADER.pack(
        wire.MAGIC, 1, wire.KIND_HEARTBEAT, wire.office_id("manhattan"), bytes(4), 1, 1, bytes(4)
    )
    for _unused in range(3):
        m2.sock.queue.append(
            (
                forged + bytes(16) + b"\1",
                GW["manhattan"],
                LAN_IF,
                socket.inet_aton(GW["manhattan-b"]),
            )
        )
    m2.relay.handle_readable(m2.ps)
    m2.relay.heartbeat(clock[0])
    assert m2.relay.standby is False and drops(m2) == {"auth": 3}


@pytest.mark.parametrize("wire_name", ["raw", "sitelink1"])
def test_both_wires_relay_identical_broadcasts_from_both_offices(wire_name):
    """The same bytes broadcast at both offices are each office's own: relayed both ways
    (the raw wire used to lose them as echoes of each other)."""
    m = Gateway("manhattan", ["brooklyn"], wire_name=wire_name)
    b = Gateway("brooklyn", ["manhattan"], wire_name=wire_name)
    net = Net(m, b)
    for _unused in range(5):
        m.lan_broadcast(b"DISCOVER")
        b.lan_broadcast(b"DISCOVER")
        net.settle()
    assert len(b.heard) == len(m.heard) == 5
    assert "repeated" not in drops(m) and "repeated" not in drops(b)


class Repeater:
    """A LAN host that re-sends every broadcast it hears (a second relay, a bridge...)."""

    def __init__(self, gateway, addr, copies=1):
        self.gateway, self.addr, self.copies, self.sent = gateway, addr, copies, 0
        self.seen = 0

    def run(self):
        heard = self.gateway.heard[self.seen :]
        self.seen = len(self.gateway.heard)
        for payload, dst in heard:
            for _unused in range(self.copies):
                self.gateway.lan_broadcast(payload, src=self.addr, dst=dst)
                self.sent += 1


@pytest.mark.parametrize("wire_name", ["raw", "sitelink1"])
def test_two_repeaters_one_per_lan_make_no_loop(wire_name, monkeypatch):
    """Defect: with sitelink1, one broadcast did 2222 round trips in 3 s."""
    clock = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    m = Gateway("manhattan", ["brooklyn"], wire_name=wire_name)
    b = Gateway("brooklyn", ["manhattan"], wire_name=wire_name)
    net = Net(m, b)
    for g in (m, b):  # both LANs broadcast on the port (else see the next test)
        g.lan_broadcast(b"hello from " + g.name.encode())
    net.settle()
    m.heard.clear(), b.heard.clear()
    repeaters = [Repeater(m, "192.168.1.11"), Repeater(b, "192.168.2.21")]
    m.lan_broadcast(b"announce")
    for _unused in range(50):
        net.settle(rounds=1)
        for r in repeaters:
            r.run()
        clock[0] += 0.001
    assert [p for p, _unused in b.heard] == [b"announce"]  # no extra copy
    assert m.heard == []
    assert drops(b)["repeated"] == 1 and repeaters[1].sent == 1


def test_on_a_quiet_lan_a_repeaters_first_echo_gets_through_once(monkeypatch):
    """Re-broadcasts are tracked only while the LAN broadcasts on the port: on a quiet
    LAN the first echo wakes the memory up, and goes to the other office once."""
    clock = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    repeaters = [Repeater(m, "192.168.1.11"), Repeater(b, "192.168.2.21")]
    m.lan_broadcast(b"announce")
    for _unused in range(50):
        net.settle(rounds=1)
        for r in repeaters:
            r.run()
        clock[0] += 0.001
    assert [p for p, _unused in b.heard] == [b"announce"]
    assert [p for p, _unused in m.heard] == [b"announce"]  # the one extra copy
    assert drops(m)["repeated"] == 1 and [r.sent for r in repeaters] == [1, 1]


def test_repeaters_make_no_loop_after_a_reload_either(tmp_path, monkeypatch):
    """A reload keeps the repeat memory, and the markers go on numbering it."""
    _unused, cfg_file, _unused = _keyed_relay(tmp_path)
    r = _started(cfg_file, monkeypatch)
    ps = r.ports[PORT]
    lan_if = ps.classifier.lan_ifindex
    ps.sock.queue.append((b"hi", HOST["brooklyn"], lan_if, socket.inet_aton(BCAST["brooklyn"])))
    r.handle_readable(ps)  # the LAN broadcasts on the port: re-broadcasts are tracked
    ps.sock.sent.clear()
    assert r.reload()
    ps = r.ports[PORT]
    assert ps.repeat is ps.classifier.repeat
    now = int(time.time())
    assert _deliver(r, _envelope(now, 0, b"from manhattan")) == [b"from manhattan"]
    assert len(ps.sock.queue) == 1  # the marker, sent just before the re-broadcast
    # a repeater on Brooklyn's LAN sends it back: behind the marker, so an echo
    ps.sock.queue.append(
        (b"from manhattan", "192.168.2.21", lan_if, socket.inet_aton(BCAST["brooklyn"]))
    )
    r.handle_readable(ps)
    assert ps.sock.sent == [] and ps.dropped == {"repeated": 1}


def test_a_repeater_sending_twice_gives_at_most_one_extra_copy(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    for g in (m, b):
        g.lan_broadcast(b"hello from " + g.name.encode())
    net.settle()
    m.heard.clear(), b.heard.clear()
    repeaters = [Repeater(m, "192.168.1.11", copies=2), Repeater(b, "192.168.2.21", copies=2)]
    m.lan_broadcast(b"announce")
    for _unused in range(50):
        net.settle(rounds=1)
        for r in repeaters:
            r.run()
        clock[0] += 0.001
    assert len(b.heard) == 1 and len(m.heard) == 0
    assert drops(b)["repeated"] == 2


def test_a_hosts_beacon_every_half_second_always_arrives(monkeypatch):
    """A LAN host's own repeated beacon, with the other office re-broadcasting too."""
    clock = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    for i in range(12):
        m.lan_broadcast(b"beacon")
        b.lan_broadcast(b"hello from brooklyn %d" % i)
        net.settle()
        clock[0] += 0.5
    assert [p for p, _unused in b.heard] == [b"beacon"] * 12


def test_unicasts_to_the_relay_count_against_their_source(monkeypatch):
    """Defect: a LAN host flooding the relay's own address was never cut off."""
    clock = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    m = Gateway("manhattan", ["brooklyn"], storm_control=SMALL_LIMITS)
    b = Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    for tick in range(20):  # 0.1 s each: 2 s
        for _unused in range(200):
            m.lan_broadcast(b"junk", src="192.168.1.66", dst=GW["manhattan"])
        m.lan_broadcast(b"quiet %d" % tick)
        net.settle(rounds=2)
        clock[0] += 0.1
    assert len([p for p, _unused in b.heard if p.startswith(b"quiet")]) == 20
    assert m.relay.storm.cut_off(clock[0]).keys() == {"192.168.1.66"}
    assert drops(m)["cut_off"] > 2000 and drops(m)["foreign"] <= 10 + 100 * 0.5
    # what the kernel is told to drop: our own address and the flooder
    assert m.relay.storm_guard.kernel_drops[0] == {GW["manhattan"], "192.168.1.66"}


def test_a_forged_peer_address_is_cut_off_everywhere_but_on_the_peers_tunnel(monkeypatch):
    """A LAN host flooding with the peer's address (peer_interface) is cut off, and the
    kernel is told to drop that address except on the peer's own interface."""
    clock = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    m = Gateway("manhattan", ["brooklyn"], storm_control=SMALL_LIMITS)
    b = Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    for _unused in range(10):  # 1 s
        for _unused in range(200):
            m.sock.queue.append(
                (b"forged", GW["brooklyn"], LAN_IF, socket.inet_aton(GW["manhattan"]))
            )
        net.settle(rounds=2)
        clock[0] += 0.1
    assert m.relay.storm.cut_off(clock[0]).keys() == {GW["brooklyn"]}
    plain, keep = m.relay.storm_guard.kernel_drops
    assert GW["brooklyn"] not in plain and dict(keep) == {GW["brooklyn"]: 0}  # no sl-brooklyn here
    # the real peer's datagrams (from its tunnel) are never charged: still relayed
    b.lan_broadcast(b"from brooklyn")
    net.settle()
    assert m.heard == [(b"from brooklyn", BCAST["manhattan"])]


def test_forged_lan_sources_share_one_budget(monkeypatch):
    """Defect: 230 forged sources each had a budget; the honest host got 85 of 151."""
    clock = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    limits = dict(SMALL_LIMITS, global_rate=1000, global_burst=1000)
    m = Gateway("manhattan", ["brooklyn"], storm_control=limits)
    b = Gateway("brooklyn", ["manhattan"])
    net = Net(m, b)
    forged = [f"192.168.1.{100 + i}" for i in range(150)] + [f"192.168.1.{i}" for i in range(2, 10)]
    for tick in range(30):  # 0.1 s each: 3 s, 30 datagrams a forged source (300/s)
        for i, src in enumerate(forged * 3):
            m.lan_broadcast(b"flood %d %d" % (tick, i), src=src)
        m.lan_broadcast(b"quiet %d" % tick)
        net.settle(rounds=2)
        clock[0] += 0.1
    quiet = [p for p, _unused in b.heard if p.startswith(b"quiet")]
    flood = [p for p, _unused in b.heard if p.startswith(b"flood")]
    assert len(quiet) == 30  # the honest, verified host lost nothing
    assert len(flood) <= 10 + 100 * 3.1  # all forged sources together: one source's budget
    assert drops(m)["unverified"] > 10000 and "storm" not in drops(m)
    status = m.relay.status()["storm"]
    assert status["unverified_total"] == drops(m)["unverified"] and status["cut_off"] == {}
    assert 0 < len(m.probed) <= 20 * 3.1 + 20  # probes are rate-limited


def test_one_mac_claiming_many_addresses_is_not_a_verified_neighbour():
    from sitelink_relay import neighbours

    table = arp_table(
        ("192.168.1.10", "02:00:00:00:00:10"),
        *[(f"192.168.1.{i}", "02:00:00:00:00:66") for i in range(100, 105)],
    )
    verified = neighbours.verified_addresses(neighbours.parse_arp(table, "eth0"))
    assert verified == {"192.168.1.10"}
    incomplete = table.replace("0x2 ", "0x0 ")
    assert neighbours.parse_arp(incomplete, "eth0") == {}
    assert neighbours.parse_arp(table, "eth1") == {}


def _keyed_relay(tmp_path, name="brooklyn", peers=("manhattan",), **extra):
    data = relay_config(name, list(peers))
    data["state_dir"] = str(tmp_path / "state")
    data.update(extra)
    keys = {
        GW[p]: {"send": link_key(*sorted((name, p))), "accept": [link_key(*sorted((name, p)))]}
        for p in peers
    }
    keys_file = tmp_path / "keys.json"
    keys_file.write_text(json.dumps({"version": 1, "peers": keys}))
    data["keys_file"] = str(keys_file)
    cfg_file = tmp_path / "relay.json"
    cfg_file.write_text(json.dumps(data))
    return data, cfg_file, keys_file


class NoSelector:
    def register(self, *args):
        pass

    modify = unregister = register


def _started(cfg_file, monkeypatch):
    """A relay as main() starts it, with fake sockets (no ports are bound)."""
    monkeypatch.setattr(configure, "open_socket", lambda port: FakeSock())
    r = loop.Relay(
        config=config.load_config(str(cfg_file)),
        config_path=str(cfg_file),
        notifier=loop.Notifier({}),
    )
    r.selector = NoSelector()
    r.setup()
    return r


def _envelope(epoch, seq, payload=b"hi", sender="manhattan", to="brooklyn"):
    key = wire.LinkKey(bytes.fromhex(link_key(*sorted((sender, to)))))
    sealer = wire.Sealer(wire.office_id(sender), socket.inet_aton(GW[sender]), epoch)
    sealer.seq = seq
    header = sealer.header(wire.KIND_BROADCAST)
    return header + key.tag(header, payload) + payload


def _deliver(r, data, sender="manhattan"):
    ps = r.ports[PORT]
    ps.sock.queue.append((data, GW[sender], TUN_IF[sender], socket.inet_aton(GW["brooklyn"])))
    ps.classifier.ifnames.names[TUN_IF[sender]] = f"sl-{sender}"
    r.handle_readable(ps)
    sent, ps.sock.sent = ps.sock.sent, []
    return [p for p, _unused, _unused in sent]


def test_a_replay_after_a_crash_is_dropped(tmp_path, monkeypatch):
    """Defect: windows were saved every 30 s, so a crash let the last 30 s be replayed."""
    _unused, cfg_file, _unused = _keyed_relay(tmp_path)
    r = _started(cfg_file, monkeypatch)
    envelopes = [_envelope(5000, seq, b"n%d" % seq) for seq in range(5)]
    for env in envelopes:
        assert _deliver(r, env) == [env[40:]]
    # SIGKILL: no save at stop.  The next start loads what was saved ahead of use.
    again = _started(cfg_file, monkeypatch)
    for env in envelopes:
        assert _deliver(again, env) == []
    assert again.ports[PORT].dropped == {"replay": 5}


def test_sitelink1_refuses_to_start_without_a_writable_state_dir(tmp_path, monkeypatch):
    _unused, cfg_file, _unused = _keyed_relay(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o500)
    monkeypatch.setattr(loop.os, "access", lambda path, mode: False)  # root ignores modes
    with pytest.raises(config.ConfigError, match=r"state_dir: .*state: not writable"):
        _started(cfg_file, monkeypatch)


def test_a_failed_save_warns_once_per_streak_and_is_counted(tmp_path, monkeypatch, caplog):
    _unused, cfg_file, _unused = _keyed_relay(tmp_path)
    r = _started(cfg_file, monkeypatch)
    r.replay.path = str(tmp_path / "gone" / "replay.json")  # the directory went away
    clock = [1000.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: clock[0])
    with caplog.at_level("DEBUG"):
        for seq in range(0, 400, 50):  # past the lease each time
            _deliver(r, _envelope(5000, seq))
            clock[0] += 20
    warnings = [rec for rec in caplog.records if "cannot save the replay" in rec.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    replay = r.status()["replay"]
    assert replay["save_failures"] >= 3 and "gone/replay.json" in replay["save_error"]
    (tmp_path / "gone").mkdir()
    _deliver(r, _envelope(5000, 1000))
    assert r.status()["replay"]["save_error"] is None


def test_a_future_epoch_is_refused_and_never_blocks_the_peer(tmp_path, monkeypatch):
    """Defect: one datagram with an epoch a day ahead made every later one "stale"."""
    _unused, cfg_file, _unused = _keyed_relay(tmp_path)
    r = _started(cfg_file, monkeypatch)
    now = int(time.time())
    assert _deliver(r, _envelope(now + 2 * 86400, 0, b"future")) == []
    assert _deliver(r, _envelope(now, 0, b"today")) == [b"today"]
    assert r.ports[PORT].dropped == {"future": 1}


def test_a_peer_stuck_on_stale_shows_and_can_be_forgotten(tmp_path, monkeypatch):
    _unused, cfg_file, _unused = _keyed_relay(tmp_path)
    r = _started(cfg_file, monkeypatch)
    now = int(time.time())
    assert _deliver(r, _envelope(now + 3600, 0)) == [b"hi"]  # its clock was ahead
    for seq in range(4):  # then its epoch went back (clock fixed, epoch file lost)
        assert _deliver(r, _envelope(now, seq)) == []
    status = r.status()
    assert status["replay"]["stuck"] == {
        GW["manhattan"]: {"streak": 4, "reason": "stale", "epoch": now + 3600, "offered": now}
    }
    assert status["peers"][GW["manhattan"]]["stale_streak"] == 4
    (tmp_path / "state" / "forget").write_text(json.dumps({"senders": [GW["manhattan"]]}))
    r.forget_requested()
    assert not (tmp_path / "state" / "forget").exists()
    assert _deliver(r, _envelope(now, 4)) == [b"hi"]
    status = r.status()
    assert status["replay"]["stuck"] == {} and status["replay"]["forgotten_total"] == 1
    assert status["peers"][GW["manhattan"]]["stale_streak"] == 0


def test_sighup_reads_a_new_keys_file(tmp_path, monkeypatch):
    """Defect: the keys_file of the config the relay started with was read on every reload."""
    data, cfg_file, _unused = _keyed_relay(tmp_path)
    r = _started(cfg_file, monkeypatch)
    old = r.peers[GW["manhattan"]].keys.send.fingerprint
    new_key = "ab" * 32
    other = tmp_path / "keys-2.json"
    other.write_text(
        json.dumps(
            {"version": 1, "peers": {GW["manhattan"]: {"send": new_key, "accept": [new_key]}}}
        )
    )
    data["keys_file"] = str(other)
    cfg_file.write_text(json.dumps(data))
    assert r.reload()
    assert (
        r.peers[GW["manhattan"]].keys.send.fingerprint
        == wire.LinkKey(bytes.fromhex(new_key)).fingerprint
        != old
    )
    # a bad keys file keeps the running keys
    peer = GW["manhattan"]
    other.write_text(f'{{"version": 1, "peers": {{"{peer}": {{}}, "{peer}": {{}}}}}}')
    assert not r.reload()
    assert (
        r.peers[GW["manhattan"]].keys.send.fingerprint
        == wire.LinkKey(bytes.fromhex(new_key)).fingerprint
    )


def test_sighup_takes_the_live_keys_root_put_in_the_state_dir(tmp_path, monkeypatch):
    """A rotation without a restart: systemd's credential (--keys) is the start's copy;
    the live copy in state_dir is newer, and wins at SIGHUP and at start alike."""
    data, cfg_file, keys_file = _keyed_relay(tmp_path)
    monkeypatch.setattr(configure, "open_socket", lambda port: FakeSock())
    r = loop.Relay(
        config=config.load_config(str(cfg_file)),
        config_path=str(cfg_file),
        notifier=loop.Notifier({}),
        keys_path=str(keys_file),
    )
    r.selector = NoSelector()
    r.setup()
    peer = GW["manhattan"]
    old = r.peers[peer].keys.send.fingerprint
    new_key = "cd" * 32
    live = tmp_path / "state" / "keys.json"
    live.write_text(
        json.dumps(
            {
                "version": 1,
                "peers": {
                    peer: {"send": new_key, "accept": [new_key, link_key("brooklyn", "manhattan")]}
                },
            }
        )
    )
    assert r.reload()
    new = wire.LinkKey(bytes.fromhex(new_key)).fingerprint
    assert r.peers[peer].keys.send.fingerprint == new != old
    # A start (the credential still the old file) takes the live copy too.
    again = _started(cfg_file, monkeypatch)
    assert again.peers[peer].keys.send.fingerprint == new
    # --check-config checks with the keys it is given, never the running relay's.
    live.write_text("not the keys a new config will run with")
    assert loop.start_check(config.load_config(str(cfg_file)), str(keys_file)) == []
    # Without it, the credential.
    live.unlink()
    assert _started(cfg_file, monkeypatch).peers[peer].keys.send.fingerprint == old


class GsoCountingSock(FakeSock):
    def __init__(self, fail_gso=False):
        super().__init__()
        self.calls = []  # segment size of each sendmsg (None: a plain send)
        self.fail_gso = fail_gso

    def sendmsg(self, buffers, anc, flags, addr):
        size = [struct.unpack("=H", a[2])[0] for a in anc if a[:2] == (17, 103)]
        if size and self.fail_gso:
            raise OSError(5, "Input/output error")  # EIO: no segmentation offload here
        self.calls.append(size[0] if size else None)
        super().sendmsg(buffers, anc, flags, addr)


@pytest.mark.parametrize("fail_gso", [False, True])
def test_a_run_of_rebroadcasts_is_one_segmented_send(fail_gso):
    m, b = Gateway("manhattan", ["brooklyn"]), Gateway("brooklyn", ["manhattan"])
    b.sock = GsoCountingSock(fail_gso)
    b.ps.sock = b.sock
    b.ps.tx.sock = b.sock
    b.ps.rx = mmsg.PyReceiver(b.sock, 64)
    net = Net(m, b)
    payloads = [b"%03d" % i + b"x" * 97 for i in range(10)] + [b"short"]
    for p in payloads:
        m.lan_broadcast(p)
    net.settle()
    assert [p for p, _unused in b.heard] == payloads  # in order, each once
    if fail_gso:
        assert b.ps.no_gso == {(BCAST["brooklyn"], PORT)} and b.sock.calls.count(None) == 11
    else:
        assert b.sock.calls.count(100) == 1 and b.sock.calls.count(None) == 1


def _envelopes(sock_sent):
    """What a relay sent, by destination address: (header, tag, payload) each."""
    by_dest = {}
    for payload, (addr, _port), _anc in sock_sent:
        h, o = wire.HEADER_SIZE, wire.OVERHEAD
        by_dest.setdefault(addr, []).append((payload[:h], payload[h:o], payload[o:]))
    return by_dest


@pytest.mark.parametrize("fail_gso", [False, True])
def test_a_lan_broadcast_is_sealed_once_and_tagged_for_each_peer(fail_gso):
    """A hub's fan-out: each broadcast has one header (its own sequence number, the
    same for every peer, so two paths deliver once) and a tag per peer with that
    link's key; a run of same-size broadcasts goes to each peer as one segmented
    send (or one by one where the kernel cannot)."""
    peers = ["brooklyn", "queens", "bronx"]
    hub = Gateway("manhattan", peers)
    hub.sock = GsoCountingSock(fail_gso)
    hub.ps.sock = hub.ps.tx.sock = hub.sock
    hub.ps.rx = mmsg.PyReceiver(hub.sock, 64)
    payloads = [b"alone", b"a run %d" % 1, b"a run %d" % 2, b"a run %d" % 3, b"y" * 300]
    for p in payloads:
        hub.lan_broadcast(p)
    hub.relay.handle_readable(hub.ps)
    by_dest = _envelopes(hub.sock.sent)
    assert sorted(by_dest) == sorted(GW[p] for p in peers)
    headers = None
    for peer in peers:
        got = by_dest[GW[peer]]
        assert [body for _h, _t, body in got] == payloads  # each once, in order
        key = wire.LinkKey(bytes.fromhex(link_key(*sorted(("manhattan", peer)))))
        assert [tag for _h, tag, _b in got] == [key.tag(h, b) for h, _t, b in got]
        if headers is None:
            headers = [h for h, _t, _b in got]
        assert [h for h, _t, _b in got] == headers  # one header per broadcast
        assert hub.relay.peers[GW[peer]].sent == len(payloads)
    seqs = [wire.HEADER.unpack(h)[6] for h in headers]
    assert len(set(seqs)) == len(payloads)  # a sequence number of its own each
    if fail_gso:
        assert hub.ps.no_gso == {(GW[p], PORT) for p in peers}
    else:
        assert hub.sock.calls.count(len(payloads[1]) + wire.OVERHEAD) == len(peers)


def test_too_big_for_the_envelope_counts_once_whatever_the_peers():
    hub = Gateway("manhattan", ["brooklyn", "queens"])
    hub.lan_broadcast(b"x" * (wire.MAX_PAYLOAD + 1))
    hub.relay.handle_readable(hub.ps)
    assert hub.sock.sent == [] and drops(hub) == {"too_big": 1}
    assert [hub.relay.peers[GW[p]].sent for p in ("brooklyn", "queens")] == [0, 0]


def test_a_hub_reads_no_more_broadcasts_at_once_than_its_send_budget(monkeypatch):
    """Each LAN broadcast becomes a datagram per peer: with many peers, fewer
    broadcasts are read per call, so timers and signals are not kept waiting."""
    monkeypatch.setattr(datapath, "SEND_BUDGET", 7)  # 3 peers: 2 broadcasts a call
    hub = Gateway("manhattan", ["brooklyn", "queens", "bronx"])
    for i in range(5):
        hub.lan_broadcast(b"b%d" % i)
    calls = []
    while hub.sock.queue:
        hub.relay.handle_readable(hub.ps)
        calls.append(len(hub.sock.sent))
        hub.sock.sent = []
    assert calls == [6, 6, 3]
    assert hub.ps.forwarded == 5
