"""Unit tests for the relay package (relay/sitelink_relay; no root, no network needed)."""

from __future__ import annotations

import copy
import errno
import json
import os
import socket
import struct
import sys
import time
import types
from pathlib import Path

import pytest
from sitelink_relay import (
    classify,
    cli,
    config,
    configure,
    localnet,
    loop,
    mmsg,
    netinfo,
    notify,
    ports,
    status,
    stormguard,
)


def _facade():
    """Every public name of the relay's modules in one namespace (tests predate the split).

    Monkeypatch the module that uses a name (e.g. ``configure.open_socket``), not this.
    """
    names = {}
    for module in (config, netinfo, classify, notify, status, ports, loop, cli):
        names.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    return types.SimpleNamespace(**names)


relay = _facade()
# The program as shipped to gateways (a zipapp built from these sources).
RELAY_PATH = Path(__file__).resolve().parents[2] / "roles" / "relay" / "files" / "sitelink-relay"

LAN = "192.168.1.126/24"
LAN_IFINDEX = 3
TUN_IFINDEX = 7
BCAST = socket.inet_aton("192.168.1.255")
ALL_ONES = socket.inet_aton("255.255.255.255")
GW_A = socket.inet_aton("192.168.1.126")
PEER = "192.168.2.126"
HUB_SRC = "192.168.3.126"  # a branch whose datagrams this relay passes on (transit)
PEER_C = "192.168.4.126"

BASE_CONFIG = {
    "version": 1,
    "lan": {"interface": "eth0", "address": LAN},
    "own_addresses": ["172.16.1.12"],
    "wire": "raw",
    "rules": [{"port": 6799, "forward_to": [PEER], "accept_from": [PEER]}],
    "status_file": "/run/sitelink-relay/status.json",
}


def make_classifier(forward=True, accept=(PEER,), window=2.0, transit=None):
    import ipaddress

    return relay.Classifier(
        ipaddress.IPv4Interface(LAN),
        LAN_IFINDEX,
        frozenset({"192.168.1.126", "172.16.1.12"}),
        frozenset(accept),
        forward,
        repeat_window=window,
        transit=transit,
    )


# ------------------------------------------------------------------ classification


class TestClassifier:
    def test_lan_broadcast_is_forwarded(self):
        c = make_classifier()
        assert c.classify(b"hello", "192.168.1.10", LAN_IFINDEX, BCAST, now=1.0) == "forwarded"

    def test_limited_broadcast_is_forwarded(self):
        c = make_classifier()
        assert c.classify(b"hello", "192.168.1.10", LAN_IFINDEX, ALL_ONES, now=1.0) == "forwarded"

    @pytest.mark.parametrize("src", ["192.168.1.126", "172.16.1.12"])
    def test_own_source_dropped(self, src):
        c = make_classifier()
        # our own re-broadcast comes back on the LAN interface: must not be forwarded
        assert c.classify(b"x", src, LAN_IFINDEX, BCAST, now=1.0) == "own"
        assert c.classify(b"x", src, TUN_IFINDEX, GW_A, now=1.0) == "own"

    def test_peer_unicast_is_rebroadcast(self):
        c = make_classifier()
        assert c.classify(b"from B", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"

    @pytest.mark.parametrize("dst", [BCAST, ALL_ONES, socket.inet_aton("239.1.2.3")])
    def test_peer_to_broadcast_or_multicast_dropped(self, dst):
        c = make_classifier()
        assert c.classify(b"x", PEER, TUN_IFINDEX, dst, now=1.0) == "peer_broadcast"

    def test_peer_only_when_listed(self):
        c = make_classifier(accept=())
        assert c.classify(b"x", PEER, TUN_IFINDEX, GW_A, now=1.0) == "foreign"

    @pytest.mark.parametrize(
        "src,dst",
        [
            ("192.168.2.20", GW_A),  # non-peer at the other site
            ("192.168.1.10", GW_A),  # LAN host unicasting to the gateway
            ("192.168.2.127", GW_A),  # near miss of the peer address
            ("10.9.9.9", BCAST),  # broadcast from a source outside the LAN
        ],
    )
    def test_foreign(self, src, dst):
        c = make_classifier()
        ifindex = LAN_IFINDEX if dst == BCAST else TUN_IFINDEX
        assert c.classify(b"x", src, ifindex, dst, now=1.0) == "foreign"

    def test_broadcast_on_wrong_interface(self):
        c = make_classifier()
        assert c.classify(b"x", "192.168.1.10", TUN_IFINDEX, BCAST, now=1.0) == "wrong_interface"
        assert c.classify(b"x", "192.168.1.10", 0, ALL_ONES, now=1.0) == "wrong_interface"

    def test_no_forward_to(self):
        c = make_classifier(forward=False)
        assert c.classify(b"x", "192.168.1.10", LAN_IFINDEX, BCAST, now=1.0) == "no_forward_to"

    def test_truncated(self):
        c = make_classifier()
        assert c.classify(b"x", "192.168.1.10", LAN_IFINDEX, BCAST, True, now=1.0) == "truncated"

    def test_ifindex_refresh(self):
        c = make_classifier()
        c.lan_ifindex = 42  # interface recreated
        assert c.classify(b"x", "192.168.1.10", LAN_IFINDEX, BCAST, now=1.0) == "wrong_interface"
        assert c.classify(b"x", "192.168.1.10", 42, BCAST, now=1.0) == "forwarded"

    def test_a_lan_host_repeating_a_rebroadcast_is_dropped_as_repeated(self):
        c = make_classifier(window=2.0)
        payload = b"announce 42"
        assert c.classify(payload, PEER, TUN_IFINDEX, GW_A, now=100.0) == "rebroadcast"
        c.repeat.remember([payload], 100.0)  # the relay, once it re-broadcast it
        # a LAN host (not us) re-sends the same payload shortly after: a repeater
        assert c.classify(payload, "192.168.1.10", LAN_IFINDEX, BCAST, now=100.5) == "repeated"
        assert c.classify(payload, "192.168.1.11", LAN_IFINDEX, ALL_ONES, now=101.9) == "repeated"
        # other payloads are not affected
        assert c.classify(b"other", "192.168.1.10", LAN_IFINDEX, BCAST, now=101.0) == "forwarded"
        # window expired
        assert c.classify(payload, "192.168.1.10", LAN_IFINDEX, BCAST, now=102.1) == "forwarded"

    def test_a_hosts_own_beacon_is_never_taken_for_a_repeat(self):
        """The same bytes broadcast at both offices: the local sender sent them first."""
        c = make_classifier(window=2.0)
        c.repeat.remember([b"older"], 99.0)  # the port re-broadcasts: senders are learnt
        beacon = b"DISCOVER"
        for t in range(10):
            now = 100.0 + t * 0.5
            assert c.classify(beacon, "192.168.1.10", LAN_IFINDEX, BCAST, now=now) == "forwarded"
            c.repeat.remember([beacon], now + 0.01)  # the other office's DISCOVER, re-broadcast
        # a repeater's copy never came first: still an echo
        assert c.classify(beacon, "192.168.1.99", LAN_IFINDEX, BCAST, now=104.7) == "repeated"

    def test_a_repeater_heard_while_nothing_was_rebroadcast_gets_one_pass_only(self):
        """It repeated a LAN host's broadcast while we re-broadcast nothing: that made it
        look like a sender, once; its echoes of what we re-broadcast later are caught."""
        c = make_classifier(window=2.0)
        repeater = "192.168.1.99"
        assert c.classify(b"lan original", repeater, LAN_IFINDEX, BCAST, now=99.0) == "forwarded"
        for i, payload in enumerate([b"one", b"two", b"three"]):
            now = 100.0 + i
            c.repeat.remember([payload], now)
            c.repeat.activate(now)
            got = c.classify(payload, repeater, LAN_IFINDEX, BCAST, now=now + 0.01)
            assert got == ("forwarded" if i == 0 else "repeated"), payload

    def test_a_beacon_repeated_every_half_second_is_relayed_every_time(self):
        c = make_classifier(window=2.0)
        c.repeat.remember([b"something else"], 100.0)
        for t in range(20):
            got = c.classify(b"beacon", "192.168.1.10", LAN_IFINDEX, BCAST, now=100.0 + t / 2)
            assert got == "forwarded"

    def test_repeat_memory_accepts_memoryview(self):
        c = make_classifier()
        buf = bytearray(b"xxpayloadxx")
        c.repeat.remember([memoryview(buf)[2:9]], 5.0)
        assert c.classify(b"payload", "192.168.1.10", LAN_IFINDEX, BCAST, now=5.1) == "repeated"

    def test_no_hashing_without_recent_rebroadcast(self, monkeypatch):
        c = make_classifier()

        def boom(payload):
            raise AssertionError("hashed although nothing was re-broadcast")

        monkeypatch.setattr(classify, "payload_key", boom)
        for i in range(5):
            assert c.classify(b"x%d" % i, "192.168.1.10", LAN_IFINDEX, BCAST) == "forwarded"

    def test_repeat_memory_is_bounded(self, monkeypatch):
        monkeypatch.setattr(classify, "REPEAT_MAX_ENTRIES", 50)
        monkeypatch.setattr(classify, "SENDER_MAX_ENTRIES", 50)
        mem = relay.RepeatMemory(2.0)
        for i in range(500):
            mem.remember([b"p%d" % i], 10.0 + i * 0.001)
            mem.repeated(b"q%d" % i, f"10.0.{i // 250}.{i % 250}", 10.0 + i * 0.001)
        assert len(mem._entries) <= 50 and len(mem._current) <= 50 and len(mem._senders) <= 50
        mem.activate(10.55)
        assert mem.repeated(b"p499", "10.9.9.9", 10.6)  # pending too long: on the LAN now


class TestTransitClassifier:
    """Peer unicasts: re-broadcast (accept_from), passed on (transit), both or dropped."""

    TRANSIT = {HUB_SRC: (PEER, PEER_C)}

    def test_transit_only_source(self):
        c = make_classifier(transit=self.TRANSIT)
        assert c.classify(b"from A", HUB_SRC, TUN_IFINDEX, GW_A, now=1.0) == "transit"
        assert len(c.repeat) == 0  # the classifier remembers nothing (the relay does)
        # accept_from peers are unaffected
        assert c.classify(b"from B", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"

    def test_accepted_and_transit_source(self):
        c = make_classifier(accept=(PEER, HUB_SRC), transit=self.TRANSIT)
        verdict = c.classify(b"from A", HUB_SRC, TUN_IFINDEX, GW_A, now=1.0)
        assert verdict == "rebroadcast+transit"

    def test_neither_is_foreign(self):
        c = make_classifier(accept=(), transit=self.TRANSIT)
        assert c.classify(b"x", PEER, TUN_IFINDEX, GW_A, now=1.0) == "foreign"
        assert c.classify(b"x", PEER_C, TUN_IFINDEX, GW_A, now=1.0) == "foreign"

    @pytest.mark.parametrize("dst", [BCAST, ALL_ONES, socket.inet_aton("239.1.2.3")])
    def test_transit_source_to_broadcast_or_multicast_dropped(self, dst):
        c = make_classifier(accept=(), transit=self.TRANSIT)
        assert c.classify(b"x", HUB_SRC, TUN_IFINDEX, dst, now=1.0) == "peer_broadcast"

    def test_own_transit_source_is_own(self):
        c = make_classifier(transit={"172.16.1.12": (PEER,)})
        assert c.classify(b"x", "172.16.1.12", TUN_IFINDEX, GW_A, now=1.0) == "own"

    def test_source_whose_only_target_is_itself_is_not_passed_on(self):
        # parse_config refuses this; the classifier must not act on it either
        c = make_classifier(accept=(), transit={HUB_SRC: (HUB_SRC,)})
        assert c.classify(b"x", HUB_SRC, TUN_IFINDEX, GW_A, now=1.0) == "foreign"

    def test_lan_broadcasts_unchanged_by_transit(self):
        c = make_classifier(transit=self.TRANSIT)
        assert c.classify(b"x", "192.168.1.10", LAN_IFINDEX, BCAST, now=1.0) == "forwarded"


class TestCompatClassifier:
    def test_forward_everything_but_own(self):
        c = relay.CompatClassifier(frozenset({"192.168.1.126"}), PEER, False)
        assert c.classify(b"x", "192.168.1.10", LAN_IFINDEX, BCAST, now=1.0) == "forwarded"
        assert c.classify(b"x", "192.168.1.10", LAN_IFINDEX, BCAST, now=1.1) == "forwarded"
        assert c.classify(b"x", "192.168.1.126", LAN_IFINDEX, BCAST, now=1.2) == "own"

    def test_broadcast_dest_relays_a_peers_repeated_payload(self):
        """Defect: identical beacons every 0.5 s were dropped as echoes (2 of 6 arrived)."""
        dest_b = socket.inet_aton("192.168.2.255")
        c = relay.CompatClassifier(frozenset({"192.168.2.126"}), "192.168.2.255", True)
        gw_b = socket.inet_aton("192.168.2.126")
        for i in range(6):
            now = 1.0 + i * 0.5
            assert c.classify(b"beacon", "192.168.1.126", 9, gw_b, now=now) == "forwarded"
            # our own re-broadcast comes back: told by its source, not its payload
            assert c.classify(b"beacon", "192.168.2.126", 3, dest_b, now=now + 0.01) == "own"
        # already addressed to DEST (or any broadcast): re-sending it would duplicate it
        assert c.classify(b"y", "192.168.2.20", 3, dest_b, now=4.0) == "same_destination"
        assert c.classify(b"y", "192.168.2.20", 3, ALL_ONES, now=4.0) == "same_destination"


# ----------------------------------------------------------------------- config


def cfg_with(**changes):
    data = copy.deepcopy(BASE_CONFIG)
    for key, value in changes.items():
        if value is KeyError:
            data.pop(key)
        else:
            data[key] = value
    return data


def rule(**kw):
    r = {"port": 6799, "forward_to": [PEER], "accept_from": []}
    r.update(kw)
    return r


def test_valid_config():
    cfg = relay.parse_config(copy.deepcopy(BASE_CONFIG))
    assert cfg.lan_interface == "eth0"
    assert str(cfg.lan_broadcast) == "192.168.1.255"
    assert str(cfg.lan_network) == "192.168.1.0/24"
    assert cfg.own_addresses == {"192.168.1.126", "172.16.1.12"}
    assert cfg.rules[0].port == 6799
    assert cfg.rules[0].forward_to == (PEER,)
    assert cfg.rules[0].accept_from == {PEER}
    assert cfg.status_file == "/run/sitelink-relay/status.json"


def test_minimal_config_defaults():
    cfg = relay.parse_config(
        {"version": 1, "lan": {"interface": "eth0", "address": LAN}, "rules": [rule()]}
    )
    assert cfg.wire == "raw"
    assert cfg.own_addresses == {"192.168.1.126"}
    assert cfg.status_file == relay.DEFAULT_STATUS_FILE
    cfg = relay.parse_config(cfg_with(status_file=None))
    assert cfg.status_file is None


@pytest.mark.parametrize(
    "data,message",
    [
        (cfg_with(rules=[rule(port=70000)]), "rules[0].port: 70000 is not a port number (1-65535)"),
        (cfg_with(rules=[rule(port=0)]), "rules[0].port: 0 is not a port number"),
        (cfg_with(rules=[rule(port="6799")]), 'rules[0].port: "6799" is not a port number'),
        (cfg_with(rules=[rule(port=True)]), "rules[0].port: true is not a port number"),
        (cfg_with(rules=[{"forward_to": [PEER]}]), "rules[0].port: missing"),
        (
            cfg_with(rules=[rule(), rule(forward_to=["10.0.0.1"])]),
            "rules[1].port: 6799 is already used by rules[0]",
        ),
        (
            cfg_with(rules=[rule(forward_to=["192.168.1.126"])]),
            "rules[0].forward_to[0]: 192.168.1.126 is an address of this gateway",
        ),
        (
            cfg_with(rules=[rule(accept_from=["172.16.1.12"])]),
            "rules[0].accept_from[0]: 172.16.1.12 is an address of this gateway (own_addresses[0])",
        ),
        (
            cfg_with(rules=[rule(forward_to=["192.168.1.20"])]),
            "rules[0].forward_to[0]: 192.168.1.20 is inside the LAN 192.168.1.0/24",
        ),
        (
            cfg_with(rules=[rule(forward_to=["192.168.1.255"])]),
            "rules[0].forward_to[0]: 192.168.1.255 is inside the LAN",
        ),
        (
            cfg_with(rules=[rule(accept_from=["192.168.1.20"])]),
            "rules[0].accept_from[0]: 192.168.1.20 is inside the LAN",
        ),
        (
            cfg_with(rules=[rule(forward_to=[PEER, PEER])]),
            "rules[0].forward_to[1]: 192.168.2.126 is listed twice",
        ),
        (
            cfg_with(rules=[rule(forward_to=["224.0.0.1"])]),
            "rules[0].forward_to[0]: 224.0.0.1 is not a usable unicast address",
        ),
        (
            cfg_with(rules=[rule(forward_to=["example.org"])]),
            "rules[0].forward_to[0]: 'example.org' is not an IPv4 address",
        ),
        (
            cfg_with(rules=[rule(forward_to="192.168.2.126")]),
            "rules[0].forward_to: must be a list",
        ),
        (
            cfg_with(rules=[rule(forward_to=[], accept_from=[])]),
            "rules[0]: needs at least one address in forward_to, accept_from or transit",
        ),
        (cfg_with(rules=[rule(peers=[PEER])]), "rules[0].peers: unknown key"),
        (cfg_with(rules=["6799"]), "rules[0]: must be an object"),
        (cfg_with(rules=[]), "rules: is empty"),
        (cfg_with(rules=KeyError), "rules: missing"),
        (cfg_with(rules={"port": 6799}), "rules: must be a list"),
        (cfg_with(extra=1), "extra: unknown key (allowed: _comment, version, lan,"),
        (cfg_with(version=3), "version: 3 is not supported"),
        (cfg_with(version=KeyError), "version: missing"),
        (cfg_with(wire="hmac-sha256"), 'wire: "hmac-sha256" is not supported'),
        (cfg_with(lan=KeyError), "lan: missing"),
        (cfg_with(lan="eth0"), "lan: must be an object"),
        (cfg_with(lan={"interface": "eth0", "address": LAN, "mtu": 1}), "lan.mtu: unknown key"),
        (cfg_with(lan={"address": LAN}), "lan.interface: missing"),
        (
            cfg_with(lan={"interface": "a-very-long-ifname0", "address": LAN}),
            "lan.interface: 'a-very-long-ifname0' is not a valid interface name",
        ),
        (
            cfg_with(lan={"interface": "eth0", "address": "192.168.1.126"}),
            'lan.address: "192.168.1.126" must be the gateway\'s LAN address with prefix',
        ),
        (
            cfg_with(lan={"interface": "eth0", "address": "192.168.1.300/24"}),
            "lan.address: '192.168.1.300/24' is not an IPv4 address/prefix",
        ),
        (
            cfg_with(lan={"interface": "eth0", "address": "192.168.1.126/32"}),
            "lan.address: /32 leaves no broadcast address",
        ),
        (
            cfg_with(lan={"interface": "eth0", "address": "192.168.1.255/24"}),
            "lan.address: 192.168.1.255 is the network or broadcast address of 192.168.1.0/24",
        ),
        (cfg_with(own_addresses="172.16.1.12"), "own_addresses: must be a list"),
        (cfg_with(own_addresses=["nope"]), "own_addresses[0]: 'nope' is not an IPv4 address"),
        (
            cfg_with(own_addresses=["192.168.1.126"]),
            "own_addresses[0]: 192.168.1.126 is listed twice (also lan.address)",
        ),
        (cfg_with(status_file="status.json"), 'status_file: "status.json" must be an absolute'),
    ],
)
def test_config_errors(data, message):
    with pytest.raises(relay.ConfigError) as info:
        relay.parse_config(data)
    assert any(line.startswith(message) for line in info.value.errors), info.value.errors


def transit_rule(transit, **kw):
    return cfg_with(rules=[rule(transit=transit, **kw)])


def test_transit_config():
    data = transit_rule({HUB_SRC: [PEER, PEER_C]}, accept_from=[HUB_SRC])
    cfg = relay.parse_config(data)
    assert cfg.rules[0].transit == {HUB_SRC: (PEER, PEER_C)}
    assert cfg.rules[0].accept_from == {HUB_SRC}
    assert "transit [192.168.3.126 -> 192.168.2.126 192.168.4.126]" in cfg.summary()
    # default: no transit
    assert relay.parse_config(copy.deepcopy(BASE_CONFIG)).rules[0].transit == {}
    assert relay.parse_config(transit_rule({})).rules[0].transit == {}
    # a pure hub rule: nothing from or to its own LAN, only passing on
    cfg = relay.parse_config(transit_rule({HUB_SRC: [PEER], PEER: [HUB_SRC]}, forward_to=[]))
    assert cfg.rules[0].transit == {HUB_SRC: (PEER,), PEER: (HUB_SRC,)}
    assert cfg.rules[0].forward_to == () and cfg.rules[0].accept_from == frozenset()


T = f'rules[0].transit["{HUB_SRC}"]'


@pytest.mark.parametrize(
    "data,message",
    [
        (transit_rule([HUB_SRC, PEER]), "rules[0].transit: must be an object mapping"),
        (transit_rule("192.168.3.126"), "rules[0].transit: must be an object mapping"),
        (
            transit_rule({"example.org": [PEER]}),
            "rules[0].transit[\"example.org\"]: 'example.org' is not an IPv4 address",
        ),
        (
            transit_rule({"224.0.0.1": [PEER]}),
            'rules[0].transit["224.0.0.1"]: 224.0.0.1 is not a usable unicast address',
        ),
        (
            transit_rule({"192.168.1.126": [PEER]}),
            'rules[0].transit["192.168.1.126"]: 192.168.1.126 is an address of this gateway'
            " (lan.address)",
        ),
        (
            transit_rule({"192.168.1.20": [PEER]}),
            'rules[0].transit["192.168.1.20"]: 192.168.1.20 is inside the LAN 192.168.1.0/24',
        ),
        (transit_rule({HUB_SRC: PEER}), f"{T}: must be a list of IPv4 addresses"),
        (transit_rule({HUB_SRC: None}), f"{T}: must be a list of IPv4 addresses"),
        (transit_rule({HUB_SRC: []}), f"{T}: is empty"),
        (transit_rule({HUB_SRC: ["nope"]}), f"{T}[0]: 'nope' is not an IPv4 address"),
        (transit_rule({HUB_SRC: [7]}), f"{T}[0]: 7 is not an IPv4 address string"),
        (
            transit_rule({HUB_SRC: ["255.255.255.255"]}),
            f"{T}[0]: 255.255.255.255 is not a usable unicast address",
        ),
        (
            transit_rule({HUB_SRC: [PEER, HUB_SRC]}),
            f"{T}[1]: 192.168.3.126 is the source itself",
        ),
        (
            transit_rule({HUB_SRC: ["192.168.1.126"]}),
            f"{T}[0]: 192.168.1.126 is an address of this gateway (lan.address)",
        ),
        (
            transit_rule({HUB_SRC: ["172.16.1.12"]}),
            f"{T}[0]: 172.16.1.12 is an address of this gateway (own_addresses[0])",
        ),
        (
            transit_rule({HUB_SRC: ["192.168.1.20"]}),
            f"{T}[0]: 192.168.1.20 is inside the LAN 192.168.1.0/24",
        ),
        (
            transit_rule({HUB_SRC: ["192.168.1.255"]}),
            f"{T}[0]: 192.168.1.255 is inside the LAN",
        ),
        (transit_rule({HUB_SRC: [PEER, PEER_C, PEER]}), f"{T}[2]: 192.168.2.126 is listed twice"),
    ],
)
def test_transit_config_errors(data, message):
    with pytest.raises(relay.ConfigError) as info:
        relay.parse_config(data)
    assert any(line.startswith(message) for line in info.value.errors), info.value.errors


def test_transit_config_reports_every_problem():
    data = transit_rule({HUB_SRC: [HUB_SRC, PEER, PEER], "x": [], PEER_C: "y"})
    with pytest.raises(relay.ConfigError) as info:
        relay.parse_config(data)
    assert len(info.value.errors) == 5, info.value.errors  # self, twice, bad key, empty, list


def test_transit_check_config_cli(tmp_path, capsys):
    good = tmp_path / "hub.json"
    good.write_text(json.dumps(transit_rule({HUB_SRC: [PEER, PEER_C]})))
    assert relay.main(["--check-config", str(good)]) == 0
    assert "transit [192.168.3.126 -> 192.168.2.126 192.168.4.126]" in capsys.readouterr().out
    bad = tmp_path / "loop.json"
    bad.write_text(json.dumps(transit_rule({HUB_SRC: [HUB_SRC]})))
    assert relay.main(["--check-config", str(bad)]) == 2
    assert f"{T}[0]: 192.168.3.126 is the source itself" in capsys.readouterr().err


def test_config_not_an_object():
    with pytest.raises(relay.ConfigError, match="must be a JSON object"):
        relay.parse_config([1, 2])


def test_config_reports_all_errors():
    data = cfg_with(wire="x", rules=[rule(port=70000), rule(port=-1)])
    with pytest.raises(relay.ConfigError) as info:
        relay.parse_config(data)
    assert len(info.value.errors) == 3


def test_load_config_file_errors(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(relay.ConfigError, match="cannot read"):
        relay.load_config(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": 1,\n "lan": }')
    with pytest.raises(relay.ConfigError, match="invalid JSON at line 2 column"):
        relay.load_config(str(bad))
    dup = tmp_path / "dup.json"
    dup.write_text('{"version": 1, "version": 1}')
    with pytest.raises(relay.ConfigError, match='duplicate key "version"'):
        relay.load_config(str(dup))


def test_check_config_cli(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(BASE_CONFIG))
    assert relay.main(["--check-config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cfg_with(rules=[rule(port=70000)])))
    assert relay.main(["--check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "rules[0].port: 70000 is not a port number (1-65535)" in err


def _sitelink1_files(tmp_path, keys=True, state="state"):
    data = {
        "version": 2,
        "office": "manhattan",
        "lan": {"interface": "eth0", "address": LAN},
        "wire": "sitelink1",
        "keys_file": str(tmp_path / "keys.json"),
        "state_dir": str(tmp_path / state),
        "peers": {PEER: {"office": "brooklyn", "interface": "sl-brooklyn"}},
        "rules": [{"port": 6799, "forward_to": [PEER], "accept_from": [PEER]}],
    }
    cfg = tmp_path / "relay.json"
    cfg.write_text(json.dumps(data))
    if keys:
        key = "ab" * 32
        (tmp_path / "keys.json").write_text(
            json.dumps({"version": 1, "peers": {PEER: {"send": key, "accept": [key]}}})
        )
    return cfg


def test_check_config_checks_what_a_start_checks(tmp_path, capsys, monkeypatch):
    """Defect: a missing keys file, a peer without a key, an unwritable state_dir were
    "OK", then the relay refused to start."""
    cfg = _sitelink1_files(tmp_path)
    assert relay.main(["--check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and f"state_dir {tmp_path / 'state'} will be created" in out
    (tmp_path / "keys.json").unlink()
    assert relay.main(["--check-config", str(cfg)]) == 2
    assert "keys.json: cannot read: No such file or directory" in capsys.readouterr().err
    (tmp_path / "other-keys.json").write_text('{"version": 1, "peers": {}}')
    other = str(tmp_path / "other-keys.json")
    assert relay.main(["--check-config", str(cfg), "--keys", other]) == 2
    assert f"keys: no key for peer {PEER} (brooklyn)" in capsys.readouterr().err
    cfg = _sitelink1_files(tmp_path)
    (tmp_path / "state").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as root, modes do not bite
    assert relay.main(["--check-config", str(cfg)]) == 2
    assert f"state_dir: {tmp_path / 'state'}: not writable" in capsys.readouterr().err


def test_sitelink1_without_state_dir_is_refused(tmp_path, capsys):
    cfg = _sitelink1_files(tmp_path)
    data = json.loads(cfg.read_text())
    del data["state_dir"]
    cfg.write_text(json.dumps(data))
    assert relay.main(["--check-config", str(cfg)]) == 2
    assert "state_dir: missing (the authenticated wire" in capsys.readouterr().err


def test_config_and_keys_must_be_regular_files(tmp_path, capsys):
    fifo = tmp_path / "relay.json"
    os.mkfifo(fifo)
    assert relay.main(["--check-config", str(fifo)]) == 2  # at once: nothing waits on it
    assert "not a regular file (a FIFO)" in capsys.readouterr().err
    assert relay.main(["--check-config", str(tmp_path)]) == 2
    assert "not a regular file (a directory)" in capsys.readouterr().err
    assert relay.main(["--check-keys", str(fifo)]) == 2
    assert "not a regular file (a FIFO)" in capsys.readouterr().err


def test_check_config_as_subprocess(tmp_path):
    """What Ansible's template validate: runs (no root, interface need not exist)."""
    import subprocess

    good = tmp_path / "good.json"
    good.write_text(json.dumps(cfg_with(lan={"interface": "nosuch0", "address": LAN})))
    res = subprocess.run(
        [sys.executable, str(RELAY_PATH), "--check-config", str(good)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cfg_with(rules=[rule(port=6799), rule(port=6799)])))
    res = subprocess.run(
        [sys.executable, str(RELAY_PATH), "--check-config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 2
    assert "rules[1].port: 6799 is already used by rules[0]" in res.stderr


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["6799"],
        ["--config", "a.json", "6799", "192.168.2.126"],
        ["70000", "192.168.2.126"],
        ["6799", "not-an-ip"],
    ],
)
def test_cli_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        relay.main(argv)
    assert info.value.code == 2


def test_help_mentions_both_modes(capsys):
    with pytest.raises(SystemExit) as info:
        relay.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "PORT DEST" in out and "--config" in out and "--check-config" in out
    assert '"transit"' in out and "transited" in out
    assert '"peer_interfaces"' in out and '"peer_interface"' in out
    # the path the sitelink.gateway role installs the config at
    assert "/etc/sitelink/relay.json" in out and "/etc/sitelink-relay/" not in out
    assert "/etc/sitelink-relay/" not in relay.__doc__


# ------------------------------------------------------------------------ status


def test_format_status():
    now = 1_700_000_000.0
    data = {
        "relay_version": "1.0.0",
        "pid": 4242,
        "mode": "service",
        "started": now - 3700,
        "updated": now - 2,
        "interval": 5.0,
        "config": "/etc/sitelink/relay.json",
        "wire": "raw",
        "lan": {
            "interface": "eth0",
            "ifindex": 2,
            "address": "192.168.1.126/24",
            "broadcast": "192.168.1.255",
        },
        "ports": {
            "6799": {
                "received": 17,
                "forwarded": 10,
                "rebroadcast": 2,
                "transited": 4,
                "dropped": {"own": 3, "foreign": 2},
                "send_errors": {"ENETUNREACH": 1},
                "forward_to": [PEER],
                "accept_from": [PEER],
                "transit": {HUB_SRC: [PEER, PEER_C]},
            }
        },
    }
    text = relay.format_status(data, now=now)
    assert "pid 4242" in text and "service mode" in text and "updated 2s ago" in text
    assert "LAN eth0 (ifindex 2) address 192.168.1.126/24 broadcast 192.168.1.255" in text
    header = [line for line in text.splitlines() if line.startswith("port")][0]
    assert header.split()[:6] == [
        "port",
        "received",
        "forwarded",
        "rebroadcast",
        "transited",
        "dropped",
    ]
    row = [line for line in text.splitlines() if line.startswith("6799")][0]
    assert row.split() == ["6799", "17", "10", "2", "4", "5", "1"]
    assert (
        "port 6799: forward to 192.168.2.126; accept from 192.168.2.126;"
        " transit 192.168.3.126 -> 192.168.2.126 192.168.4.126" in text
    )
    assert "port 6799 dropped: foreign 2, own 3" in text
    assert "port 6799 send errors: ENETUNREACH 1" in text
    assert "forward to 192.168.2.126" in text
    assert "stale" not in text
    assert "stale" in relay.format_status(data, now=now + 60)
    # a status file of an older relay (no transit): shown as 0, no transit line
    for key in ("transited", "transit"):
        del data["ports"]["6799"][key]
    text = relay.format_status(data, now=now)
    row = [line for line in text.splitlines() if line.startswith("6799")][0]
    assert row.split() == ["6799", "17", "10", "2", "0", "5", "1"]
    assert "transit " not in text


def test_status_cli(tmp_path, capsys):
    path = tmp_path / "status.json"
    relay.write_json_atomic(str(path), {"pid": 1, "mode": "compat", "ports": {}})
    assert relay.main(["--status", str(path)]) == 0
    assert "compat mode" in capsys.readouterr().out
    assert not [p for p in tmp_path.iterdir() if p.name != "status.json"]  # no temp left
    assert relay.main(["--status", str(tmp_path / "nope.json")]) == 1


# --------------------------------------------------------------------- sd_notify


@pytest.fixture
def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_sd_notify_path_socket(notify_socket):
    path, sock = notify_socket
    assert relay.sd_notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": path}) is True
    assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


def test_sd_notify_abstract_socket():
    name = f"sitelink-relay-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert relay.sd_notify("WATCHDOG=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert sock.recv(4096) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_sd_notify_without_socket():
    assert relay.sd_notify("READY=1", {}) is False
    assert relay.Notifier({}).enabled is False


def test_sd_notify_dead_socket_is_not_fatal(tmp_path):
    assert relay.sd_notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval():
    n = relay.Notifier({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid())})
    assert n.watchdog_interval == pytest.approx(10.0)
    assert (
        relay.Notifier({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    )
    assert relay.Notifier({"WATCHDOG_USEC": "0"}).watchdog_interval is None


# ------------------------------------------------------------ local addresses


FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 192.168.1.0/24 2 0 2
        |-- 192.168.1.0
           /24 link UNICAST
        |-- 192.168.1.126
           /32 host LOCAL
        |-- 192.168.1.255
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
     |-- 172.16.1.12
        /32 host LOCAL
"""


def test_parse_fib_trie():
    local, bcast = relay.parse_fib_trie(FIB_TRIE)
    assert local == {"192.168.1.126", "127.0.0.1", "172.16.1.12"}
    assert bcast == {"192.168.1.255"}


def test_local_ipv4_reads_this_namespace():
    local, bcast = relay.local_ipv4()
    assert isinstance(local, frozenset) and isinstance(bcast, frozenset)
    try:
        expected = relay.parse_fib_trie(Path("/proc/net/fib_trie").read_text())[0]
    except OSError:
        pytest.skip("no /proc/net/fib_trie")
    if expected:  # empty in a namespace whose lo is down: then the ioctl fallback answers
        assert local == expected


# ------------------------------------------------- relay hot path with fake sockets


class FakeSock:
    """Stands in for a UDP socket: queued datagrams in, sends recorded or failing."""

    def __init__(self, datagrams, fail=None):
        self.queue = list(datagrams)
        self.sent = []
        self.markers = []
        self.fail = fail

    def recvmsg_into(self, buffers, ancbufsize, flags=0):
        if not self.queue:
            raise BlockingIOError
        payload, src, ifindex, dst, flags = self.queue.pop(0)
        buffers[0][: len(payload)] = payload
        anc = [(socket.IPPROTO_IP, relay.IP_PKTINFO, relay.PKTINFO.pack(ifindex, dst, dst))]
        return len(payload), anc, flags, (src, 40000)

    def _send(self, kind, payload, addr, anc=None):
        if self.fail:
            raise OSError(self.fail, os.strerror(self.fail))
        self.sent.append((kind, bytes(payload), addr, anc))

    def sendto(self, payload, addr):
        if addr[0] == "127.0.0.1":  # the relay's marker after re-broadcasts: loops back
            self.markers.append(bytes(payload))
            return
        self._send("sendto", payload, addr)

    def setsockopt(self, *args):
        pass  # e.g. the relay's socket filter: no kernel here

    def sendmsg(self, buffers, anc, flags, addr):
        # recorded as before batching: "sendto" without ancillary data, else "sendmsg"
        data = b"".join(bytes(b) for b in buffers)
        size = [struct.unpack("=H", a[2])[0] for a in anc if a[:2] == (17, 103)]
        anc = [a for a in anc if a[:2] != (17, 103)]
        kind = "sendmsg" if anc else "sendto"
        for i in range(0, len(data), size[0]) if size else (0,):
            # UDP_SEGMENT: the kernel cuts the buffer into datagrams of that size
            self._send(kind, data[i : i + size[0]] if size else data, addr, anc or None)


@pytest.fixture(autouse=True)
def python_backend(monkeypatch):
    """FakeSock has no file descriptor: batch with plain recvmsg_into/sendmsg."""
    monkeypatch.setattr(ports, "Receiver", mmsg.PyReceiver)
    monkeypatch.setattr(ports, "Sender", mmsg.PySender)


LAN_ANC = [(socket.IPPROTO_IP, 8, struct.pack("=i4s4s", LAN_IFINDEX, GW_A, b"\0\0\0\0"))]


def make_relay(sock, data=None, **kwargs):
    cfg = relay.parse_config(copy.deepcopy(BASE_CONFIG if data is None else data))
    r = relay.Relay(config=cfg, config_path="/dev/null", notifier=relay.Notifier({}), **kwargs)
    r.lan_ifindex = LAN_IFINDEX
    r.datapath.lan_dest = "192.168.1.255"
    r.egress.lan_pktinfo = (LAN_IFINDEX, GW_A)
    ps = r._make_port(cfg, cfg.rules[0], sock)
    r.ports[6799] = ps
    return r, ps


def test_handle_readable_counts_and_sends():
    big = bytes(range(256)) * 255 + b"tail"  # 65284 bytes
    sock = FakeSock(
        [
            (b"bcast", "192.168.1.10", LAN_IFINDEX, BCAST, 0),
            (big, "192.168.1.10", LAN_IFINDEX, ALL_ONES, 0),
            (b"from-b", PEER, TUN_IFINDEX, GW_A, 0),
            (b"from-b", "192.168.1.126", LAN_IFINDEX, BCAST, 0),  # our re-broadcast echo
            (b"spoof", "192.168.2.20", TUN_IFINDEX, GW_A, 0),
            (b"cut", "192.168.1.10", LAN_IFINDEX, BCAST, relay.MSG_TRUNC),
        ]
    )
    r, ps = make_relay(sock)
    r.handle_readable(ps)
    assert ps.received == 6
    assert ps.forwarded == 2
    assert ps.rebroadcast == 1
    assert ps.dropped == {"own": 1, "foreign": 1, "truncated": 1}
    assert sock.sent[0] == ("sendto", b"bcast", (PEER, 6799), None)
    assert sock.sent[1] == ("sendto", big, (PEER, 6799), None)
    kind, payload, addr, anc = sock.sent[2]
    assert (kind, payload, addr) == ("sendmsg", b"from-b", ("192.168.1.255", 6799))
    ifindex, spec_dst, _unused = relay.PKTINFO.unpack(anc[0][2])
    assert ifindex == LAN_IFINDEX and spec_dst == GW_A
    status = r.status()["ports"]["6799"]
    assert status["received"] == 6 and status["forwarded"] == 2


@pytest.mark.parametrize("err", [errno.ENETUNREACH, errno.EMSGSIZE, errno.ECONNREFUSED])
def test_send_errors_are_counted_not_fatal(err, caplog):
    sock = FakeSock(
        [(b"m%d" % i, "192.168.1.10", LAN_IFINDEX, BCAST, 0) for i in range(5)]
        + [(b"p", PEER, TUN_IFINDEX, GW_A, 0)],
        fail=err,
    )
    r, ps = make_relay(sock)
    r.handle_readable(ps)
    assert ps.received == 6 and ps.forwarded == 5 and ps.rebroadcast == 1
    assert ps.send_errors == {errno.errorcode[err]: 6}
    # rate-limited: one log line for the repeated error, not one per packet
    assert len([rec for rec in caplog.records if "failed" in rec.getMessage()]) == 1


HUB_CONFIG = cfg_with(
    rules=[
        {
            "port": 6799,
            "forward_to": [PEER],
            "accept_from": [PEER],
            "transit": {HUB_SRC: [PEER, PEER_C]},
        }
    ]
)


def test_transit_passes_on_without_rebroadcast():
    sock = FakeSock(
        [
            (b"from-a", HUB_SRC, TUN_IFINDEX, GW_A, 0),
            (b"from-b", PEER, TUN_IFINDEX, GW_A, 0),  # accept_from only: not passed on
            (b"bcast", "192.168.1.10", LAN_IFINDEX, BCAST, 0),  # forward_to only
            (b"c-spoof", PEER_C, TUN_IFINDEX, GW_A, 0),  # a transit target, not a source
        ]
    )
    r, ps = make_relay(sock, HUB_CONFIG)
    r.handle_readable(ps)
    # re-broadcasts leave after the batch's unicasts (one run per batch, see _send_lan)
    assert sorted(sock.sent, key=repr) == sorted(
        [
            ("sendto", b"from-a", (PEER, 6799), None),
            ("sendto", b"from-a", (PEER_C, 6799), None),
            ("sendmsg", b"from-b", ("192.168.1.255", 6799), LAN_ANC),
            ("sendto", b"bcast", (PEER, 6799), None),
        ],
        key=repr,
    )
    assert (ps.received, ps.forwarded, ps.rebroadcast, ps.transited) == (4, 1, 1, 1)
    assert ps.dropped == {"foreign": 1}
    assert len(ps.classifier.repeat) == 1  # only from-b was re-broadcast
    status = r.status()["ports"]["6799"]
    assert status["transited"] == 1
    assert status["transit"] == {HUB_SRC: [PEER, PEER_C]}
    assert r.status_line() == "udp/6799: 1 forwarded, 1 rebroadcast, 1 transited, 1 dropped"
    text = relay.format_status(r.status())
    assert "transit 192.168.3.126 -> 192.168.2.126 192.168.4.126" in text
    row = [line for line in text.splitlines() if line.startswith("6799")][0]
    assert row.split() == ["6799", "4", "1", "1", "1", "1", "0"]


def test_transit_and_rebroadcast_both_apply():
    data = copy.deepcopy(HUB_CONFIG)
    data["rules"][0]["accept_from"] = [PEER, HUB_SRC]
    sock = FakeSock([(b"from-a", HUB_SRC, TUN_IFINDEX, GW_A, 0)])
    r, ps = make_relay(sock, data)
    r.handle_readable(ps)
    assert sorted((kind, payload, addr) for kind, payload, addr, _unused in sock.sent) == sorted(
        [
            ("sendmsg", b"from-a", ("192.168.1.255", 6799)),
            ("sendto", b"from-a", (PEER, 6799)),
            ("sendto", b"from-a", (PEER_C, 6799)),
        ]
    )
    assert (ps.received, ps.forwarded, ps.rebroadcast, ps.transited) == (1, 0, 1, 1)
    assert ps.dropped == {}


def test_transit_never_back_to_the_source():
    """Defence in depth: a Rule that parse_config would refuse, built directly."""
    cfg = relay.parse_config(copy.deepcopy(BASE_CONFIG))
    bad = relay.Rule(6799, (PEER,), frozenset(), {HUB_SRC: (HUB_SRC, PEER_C), PEER_C: (PEER_C,)})
    sock = FakeSock(
        [
            (b"from-a", HUB_SRC, TUN_IFINDEX, GW_A, 0),
            (b"from-c", PEER_C, TUN_IFINDEX, GW_A, 0),
        ]
    )
    r = relay.Relay(config=cfg, config_path="/dev/null", notifier=relay.Notifier({}))
    ps = r._make_port(cfg, bad, sock)
    r.handle_readable(ps)
    assert sock.sent == [("sendto", b"from-a", (PEER_C, 6799), None)]
    assert ps.transit == {HUB_SRC: (PEER_C,)}
    assert ps.dropped == {"foreign": 1}  # PEER_C's only target was itself


@pytest.mark.parametrize("err", [errno.ENETUNREACH, errno.EMSGSIZE, errno.ECONNREFUSED])
def test_transit_send_errors_are_counted_not_fatal(err, caplog):
    sock = FakeSock(
        [(b"a%d" % i, HUB_SRC, TUN_IFINDEX, GW_A, 0) for i in range(4)]
        + [(b"bcast", "192.168.1.10", LAN_IFINDEX, BCAST, 0)],
        fail=err,
    )
    r, ps = make_relay(sock, HUB_CONFIG)
    r.handle_readable(ps)  # must not raise
    assert (ps.received, ps.transited, ps.forwarded) == (5, 4, 1)
    assert ps.send_errors == {errno.errorcode[err]: 4 * 2 + 1}
    assert len([rec for rec in caplog.records if "failed" in rec.getMessage()]) == 1


def test_status_file_written_atomically(tmp_path):
    r, ps = make_relay(FakeSock([(b"x", "192.168.1.10", LAN_IFINDEX, BCAST, 0)]))
    r.handle_readable(ps)
    r.status_file = str(tmp_path / "status.json")
    r.write_status()
    data = json.loads((tmp_path / "status.json").read_text())
    assert data["mode"] == "service"
    assert data["ports"]["6799"]["forwarded"] == 1
    assert data["lan"]["broadcast"] == "192.168.1.255"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json"]
    # unwritable status file: logged, not fatal
    r.status_file = str(tmp_path / "missing-dir" / "status.json")
    r.write_status()


# ------------------------------------------------------------------------ reload


def test_reload_rebinds_only_changed_ports(tmp_path, monkeypatch):
    opened = []

    def fake_open(port):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        b.close()
        opened.append(port)
        return a

    monkeypatch.setattr(configure, "open_socket", fake_open)
    monkeypatch.setattr(localnet, "local_ipv4", lambda: (frozenset({"127.0.0.1"}), frozenset()))
    path = tmp_path / "relay.json"
    conf = cfg_with(status_file=None, rules=[rule(port=6799), rule(port=6800)])
    path.write_text(json.dumps(conf))
    r = relay.Relay(
        config=relay.load_config(str(path)), config_path=str(path), notifier=relay.Notifier({})
    )
    r.setup()
    try:
        assert opened == [6799, 6800]
        sock_6799 = r.ports[6799].sock
        r.ports[6799].received = 5

        # invalid new config: logged, old one kept
        path.write_text(json.dumps(cfg_with(rules=[rule(port=70000)])))
        assert r.reload() is False
        assert sorted(r.ports) == [6799, 6800]

        # 6799 changes peers (same socket, counters kept), 6800 goes, 6801 comes
        conf = cfg_with(
            status_file=None,
            rules=[rule(port=6799, forward_to=["10.1.1.1"]), rule(port=6801)],
        )
        path.write_text(json.dumps(conf))
        assert r.reload() is True
        assert sorted(r.ports) == [6799, 6801]
        assert opened == [6799, 6800, 6801]
        assert r.ports[6799].sock is sock_6799
        assert r.ports[6799].received == 5
        assert r.ports[6799].forward_to == ("10.1.1.1",)
        assert "127.0.0.1" in r.ports[6801].classifier.own
    finally:
        r.close()


def test_reload_applies_transit_changes(tmp_path, monkeypatch):
    def fake_open(port):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        b.close()
        return a

    monkeypatch.setattr(configure, "open_socket", fake_open)
    monkeypatch.setattr(localnet, "local_ipv4", lambda: (frozenset({"127.0.0.1"}), frozenset()))
    path = tmp_path / "relay.json"
    conf = cfg_with(status_file=None, rules=[rule()])
    path.write_text(json.dumps(conf))
    r = relay.Relay(
        config=relay.load_config(str(path)), config_path=str(path), notifier=relay.Notifier({})
    )
    r.setup()
    try:
        sock = r.ports[6799].sock
        ps = r.ports[6799]
        assert ps.transit == {}
        assert ps.classifier.classify(b"x", HUB_SRC, TUN_IFINDEX, GW_A, now=1.0) == "foreign"

        # transit added: same socket, counters kept, classifier and targets updated
        ps.received, ps.transited = 7, 3
        conf["rules"][0]["transit"] = {HUB_SRC: [PEER, PEER_C]}
        path.write_text(json.dumps(conf))
        assert r.reload() is True
        ps = r.ports[6799]
        assert ps.sock is sock and (ps.received, ps.transited) == (7, 3)
        assert ps.transit == {HUB_SRC: (PEER, PEER_C)}
        assert ps.classifier.classify(b"x", HUB_SRC, TUN_IFINDEX, GW_A, now=1.0) == "transit"

        # a transit that loops back is refused: the running transit stays
        conf["rules"][0]["transit"] = {HUB_SRC: [HUB_SRC]}
        path.write_text(json.dumps(conf))
        assert r.reload() is False
        assert r.ports[6799].transit == {HUB_SRC: (PEER, PEER_C)}

        # only the targets change: that is a change of the rule too
        conf["rules"][0]["transit"] = {HUB_SRC: [PEER_C]}
        path.write_text(json.dumps(conf))
        assert r.reload() is True
        assert r.ports[6799].transit == {HUB_SRC: (PEER_C,)}

        # transit removed
        del conf["rules"][0]["transit"]
        path.write_text(json.dumps(conf))
        assert r.reload() is True
        ps = r.ports[6799]
        assert ps.transit == {} and ps.transited == 3
        assert ps.classifier.classify(b"x", HUB_SRC, TUN_IFINDEX, GW_A, now=1.0) == "foreign"
    finally:
        r.close()


# --------------------------------------------------- peer datagrams: arrival interface

WAN_IFINDEX = 2
OTHER_TUN_IFINDEX = 8  # the tunnel to another peer
TUN = "sl-brooklyn"  # the tunnel to PEER (TUN_IFINDEX)


class FakeLinks:
    """socket.if_indextoname as the relay sees it, with interfaces that come and go."""

    def __init__(self):
        self.links = {LAN_IFINDEX: "eth0", WAN_IFINDEX: "wan0", TUN_IFINDEX: TUN}
        self.links[OTHER_TUN_IFINDEX] = "sl-queens"
        self.calls = []

    def __call__(self, ifindex):
        self.calls.append(ifindex)
        if ifindex not in self.links:
            raise OSError(errno.ENXIO, "No such device or address")
        return self.links[ifindex]


@pytest.fixture
def links(monkeypatch):
    fake = FakeLinks()
    monkeypatch.setattr(relay.socket, "if_indextoname", fake)
    return fake


def pi_classifier(peer_interfaces, accept=(PEER,), transit=None, ifnames=None):
    import ipaddress

    return relay.Classifier(
        ipaddress.IPv4Interface(LAN),
        LAN_IFINDEX,
        frozenset({"192.168.1.126", "172.16.1.12"}),
        frozenset(accept),
        True,
        transit=transit,
        peer_interfaces=peer_interfaces,
        ifnames=ifnames,
    )


class TestPeerInterfaces:
    def test_accepted_on_its_tunnel(self, links):
        c = pi_classifier({PEER: TUN})
        assert c.classify(b"from B", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"
        assert c.classify(b"again", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"
        assert links.calls == [TUN_IFINDEX]  # resolved once, then cached

    @pytest.mark.parametrize(
        "ifindex",
        [LAN_IFINDEX, WAN_IFINDEX, OTHER_TUN_IFINDEX, 0, 99],
        ids=["lan", "wan", "other-tunnel", "no-pktinfo", "gone"],
    )
    def test_forged_peer_source_elsewhere_is_dropped(self, links, ifindex):
        c = pi_classifier({PEER: TUN, PEER_C: "sl-queens"}, accept=(PEER, PEER_C))
        assert c.classify(b"forged", PEER, ifindex, GW_A, now=1.0) == "peer_interface"
        # LAN broadcasts are not affected by peer_interfaces
        assert c.classify(b"forged", "192.168.1.10", LAN_IFINDEX, BCAST, now=1.1) == "forwarded"

    def test_transit_sources_are_checked_too(self, links):
        transit = {HUB_SRC: (PEER_C,)}
        c = pi_classifier({HUB_SRC: "sl-bronx", PEER: TUN}, transit=transit)
        links.links[11] = "sl-bronx"
        assert c.classify(b"a", HUB_SRC, 11, GW_A, now=1.0) == "transit"
        assert c.classify(b"a", HUB_SRC, TUN_IFINDEX, GW_A, now=1.0) == "peer_interface"
        assert c.classify(b"a", HUB_SRC, WAN_IFINDEX, GW_A, now=1.0) == "peer_interface"
        c = pi_classifier({HUB_SRC: "sl-bronx"}, accept=(HUB_SRC,), transit=transit)
        assert c.classify(b"a", HUB_SRC, 11, GW_A, now=1.0) == "rebroadcast+transit"
        assert c.classify(b"b", HUB_SRC, OTHER_TUN_IFINDEX, GW_A, now=1.0) == "peer_interface"

    def test_tunnel_recreated_with_a_new_ifindex(self, links):
        c = pi_classifier({PEER: TUN})
        assert c.classify(b"1", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"
        del links.links[TUN_IFINDEX]  # ip link del sl-brooklyn; ip link add sl-brooklyn ...
        links.links[42] = TUN
        assert c.classify(b"2", PEER, 42, GW_A, now=2.0) == "rebroadcast"
        # the WAN is still the WAN
        assert c.classify(b"3", PEER, WAN_IFINDEX, GW_A, now=3.0) == "peer_interface"

    def test_tunnel_missing_at_start(self, links):
        del links.links[TUN_IFINDEX]
        c = pi_classifier({PEER: TUN})
        assert c.classify(b"1", PEER, WAN_IFINDEX, GW_A, now=1.0) == "peer_interface"
        links.links[50] = TUN  # the tunnel comes up
        assert c.classify(b"2", PEER, 50, GW_A, now=2.0) == "rebroadcast"

    def test_flood_costs_one_lookup_per_interface(self, links):
        c = pi_classifier({PEER: TUN})
        for i in range(1000):
            for ifindex in (WAN_IFINDEX, 77):  # 77: no such interface (negative cache)
                assert c.classify(b"%d" % i, PEER, ifindex, GW_A, now=1.0) == "peer_interface"
        assert sorted(links.calls) == [WAN_IFINDEX, 77]
        assert c.ifnames.names == {WAN_IFINDEX: "wan0", 77: ""}

    def test_cache_is_bounded(self, links, monkeypatch):
        monkeypatch.setattr(netinfo, "IFNAME_CACHE_MAX", 8)
        c = pi_classifier({PEER: TUN})
        for ifindex in range(100, 200):
            c.classify(b"x", PEER, ifindex, GW_A, now=1.0)
        assert len(c.ifnames.names) <= 8
        assert c.classify(b"x", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"

    def test_without_peer_interfaces_any_interface_and_no_lookups(self, links):
        c = pi_classifier(None)
        for ifindex in (TUN_IFINDEX, WAN_IFINDEX, LAN_IFINDEX, 0):
            assert c.classify(b"%d" % ifindex, PEER, ifindex, GW_A, now=1.0) == "rebroadcast"
        assert links.calls == []

    def test_source_missing_from_the_map_is_dropped(self, links):
        """Defence in depth: parse_config refuses this; an unknown ifindex ("") must not match."""
        c = pi_classifier({}, accept=(PEER,))
        for ifindex in (TUN_IFINDEX, 77, 0):
            assert c.classify(b"x", PEER, ifindex, GW_A, now=1.0) == "peer_interface"

    def test_classifiers_share_the_relay_cache(self, links):
        ifnames = relay.IfNames()
        a = pi_classifier({PEER: TUN}, ifnames=ifnames)
        b = pi_classifier({PEER: TUN}, ifnames=ifnames)
        assert a.classify(b"x", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"
        assert b.classify(b"x", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"
        assert links.calls == [TUN_IFINDEX]
        ifnames.clear()  # what refresh() and SIGHUP do: the classifiers see it
        assert b.classify(b"y", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"
        assert links.calls == [TUN_IFINDEX, TUN_IFINDEX]


def test_ifnames_resolves_real_interfaces():
    try:
        index = socket.if_nametoindex("lo")
    except OSError:
        pytest.skip("no lo in this namespace")
    names = relay.IfNames()
    assert names.resolve(index) == "lo"
    assert names.resolve(0) == "" and names.resolve(2**31 - 1) == ""
    assert names.resolve(-1) == ""  # PKTINFO's ifindex is a signed int
    assert names.names == {index: "lo", 0: "", 2**31 - 1: "", -1: ""}


PI_CONFIG = cfg_with(peer_interfaces={PEER: TUN})


def test_peer_interfaces_config():
    cfg = relay.parse_config(copy.deepcopy(PI_CONFIG))
    assert cfg.peer_interfaces == {PEER: TUN}
    assert "peers only via [192.168.2.126 sl-brooklyn]" in cfg.summary()
    assert relay.parse_config(copy.deepcopy(BASE_CONFIG)).peer_interfaces is None
    # forward_to-only peers and transit targets need no entry; entries no rule uses are
    # allowed (the planner may name every tunnel) and do not change what is accepted
    data = cfg_with(
        rules=[rule(forward_to=[PEER, PEER_C], transit={HUB_SRC: [PEER_C]})],
        peer_interfaces={HUB_SRC: "sl-bronx", "10.20.30.40": "sl-elsewhere"},
    )
    cfg = relay.parse_config(data)
    assert cfg.peer_interfaces == {HUB_SRC: "sl-bronx", "10.20.30.40": "sl-elsewhere"}
    # no peer sources at all: an empty map is fine
    assert relay.parse_config(cfg_with(rules=[rule()], peer_interfaces={})).peer_interfaces == {}
    # two peers behind one interface (e.g. a multi-peer tunnel device)
    data = cfg_with(
        rules=[rule(accept_from=[PEER, PEER_C])], peer_interfaces={PEER: "wg0", PEER_C: "wg0"}
    )
    assert relay.parse_config(data).peer_interfaces == {PEER: "wg0", PEER_C: "wg0"}


PIW = f'peer_interfaces["{PEER}"]'


@pytest.mark.parametrize(
    "data,message",
    [
        (cfg_with(peer_interfaces=[PEER, TUN]), "peer_interfaces: must be an object mapping"),
        (cfg_with(peer_interfaces=None), "peer_interfaces: must be an object mapping"),
        (
            cfg_with(peer_interfaces={}),
            f"peer_interfaces: no interface for {PEER} (rules[0].accept_from[0])",
        ),
        (
            cfg_with(peer_interfaces={PEER_C: "sl-queens"}),
            f"peer_interfaces: no interface for {PEER} (rules[0].accept_from[0])",
        ),
        (
            cfg_with(rules=[rule(transit={HUB_SRC: [PEER]})], peer_interfaces={PEER: TUN}),
            f"peer_interfaces: no interface for {HUB_SRC} (rules[0].transit)",
        ),
        (
            cfg_with(peer_interfaces={"sl-brooklyn": PEER}),
            "peer_interfaces[\"sl-brooklyn\"]: 'sl-brooklyn' is not an IPv4 address",
        ),
        (
            cfg_with(peer_interfaces={PEER: TUN, "192.168.1.126": "sl-x"}),
            'peer_interfaces["192.168.1.126"]: 192.168.1.126 is an address of this gateway',
        ),
        (
            cfg_with(peer_interfaces={PEER: TUN, "192.168.1.20": "sl-x"}),
            'peer_interfaces["192.168.1.20"]: 192.168.1.20 is inside the LAN',
        ),
        (
            cfg_with(peer_interfaces={PEER: TUN, "224.0.0.1": "sl-x"}),
            'peer_interfaces["224.0.0.1"]: 224.0.0.1 is not a usable unicast address',
        ),
        (cfg_with(peer_interfaces={PEER: 7}), f"{PIW}: 7 is not an interface name string"),
        (cfg_with(peer_interfaces={PEER: None}), f"{PIW}: null is not an interface name string"),
        (
            cfg_with(peer_interfaces={PEER: ""}),
            f"{PIW}: '' is not a valid interface name (is empty",
        ),
        (
            cfg_with(peer_interfaces={PEER: "sl-0123456789abc"}),  # 16 characters
            f"{PIW}: 'sl-0123456789abc' is not a valid interface name (is longer than 15",
        ),
        (
            cfg_with(peer_interfaces={PEER: "sl-brooklyné123"}),  # 15 characters, 16 bytes
            f"{PIW}: 'sl-brooklyné123' is not a valid interface name (is longer than 15",
        ),
        (
            cfg_with(peer_interfaces={PEER: "sl/brooklyn"}),
            f"{PIW}: 'sl/brooklyn' is not a valid interface name (contains",
        ),
        (
            cfg_with(peer_interfaces={PEER: "sl-brooklyn\0"}),
            f"{PIW}: 'sl-brooklyn\\x00' is not a valid interface name (contains",
        ),
        (
            cfg_with(peer_interfaces={PEER: "sl brooklyn"}),
            f"{PIW}: 'sl brooklyn' is not a valid interface name (contains",
        ),
        (
            cfg_with(peer_interfaces={PEER: "sl-brooklyn\t"}),
            f"{PIW}: 'sl-brooklyn\\t' is not a valid interface name (contains",
        ),
        (
            cfg_with(peer_interfaces={PEER: "eth0:1"}),
            f"{PIW}: 'eth0:1' is not a valid interface name (contains",
        ),
        (cfg_with(peer_interfaces={PEER: ".."}), f"{PIW}: '..' is not a valid interface name"),
        (cfg_with(peer_interfaces={PEER: "eth0"}), f"{PIW}: 'eth0' is the LAN interface"),
        (
            cfg_with(lan={"interface": "eth\0", "address": LAN}),
            "lan.interface: 'eth\\x00' is not a valid interface name",
        ),
    ],
)
def test_peer_interfaces_config_errors(data, message):
    with pytest.raises(relay.ConfigError) as info:
        relay.parse_config(data)
    assert any(line.startswith(message) for line in info.value.errors), info.value.errors


V2_PEER = {
    "version": 2,
    "office": "manhattan",
    "lan": {"interface": "eth0", "address": LAN},
    "wire": "sitelink1",
    "rules": [{"port": 6799, "forward_to": [PEER], "accept_from": []}],
}


@pytest.mark.parametrize(
    "interface, message",
    [
        (7, "7 is not an interface name string"),
        ("sl/brooklyn", "'sl/brooklyn' is not a valid interface name (contains"),
        ("sl-0123456789abc", "'sl-0123456789abc' is not a valid interface name (is longer"),
        ("eth0", "'eth0' is the LAN interface; name the tunnel to that peer"),
    ],
)
def test_version_2_peer_interface_is_checked_as_in_version_1(interface, message):
    data = dict(V2_PEER, peers={PEER: {"office": "brooklyn", "interface": interface}})
    with pytest.raises(relay.ConfigError) as info:
        relay.parse_config(data)
    where = f'peers["{PEER}"].interface'
    assert any(line.startswith(f"{where}: {message}") for line in info.value.errors), (
        info.value.errors
    )


def test_peer_interfaces_one_error_per_problem():
    data = cfg_with(
        rules=[rule(accept_from=[PEER, PEER_C], transit={HUB_SRC: [PEER]})],
        peer_interfaces={PEER: "bad name", PEER_C: "sl-queens"},
    )
    with pytest.raises(relay.ConfigError) as info:
        relay.parse_config(data)
    assert info.value.errors == [
        f"{PIW}: 'bad name' is not a valid interface name (contains '/', ':', NUL or whitespace)",
        f"peer_interfaces: no interface for {HUB_SRC} (rules[0].transit); every peer whose"
        " datagrams are accepted or passed on needs its tunnel interface",
    ]


def test_peer_interfaces_check_config_cli(tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(PI_CONFIG))
    assert relay.main(["--check-config", str(good)]) == 0
    assert "peers only via [192.168.2.126 sl-brooklyn]" in capsys.readouterr().out
    bad = tmp_path / "missing.json"
    data = cfg_with(rules=[rule(accept_from=[PEER, PEER_C])], peer_interfaces={PEER_C: "sl-queens"})
    bad.write_text(json.dumps(data))
    assert relay.main(["--check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"peer_interfaces: no interface for {PEER} (rules[0].accept_from[0])" in err
    assert PEER_C + " (" not in err


def test_handle_readable_counts_peer_interface_drops(links):
    sock = FakeSock(
        [
            (b"from-b", PEER, TUN_IFINDEX, GW_A, 0),
            (b"forged-wan", PEER, WAN_IFINDEX, GW_A, 0),
            (b"forged-lan", PEER, LAN_IFINDEX, GW_A, 0),
            (b"forged-tun", PEER, OTHER_TUN_IFINDEX, GW_A, 0),
            (b"bcast", "192.168.1.10", LAN_IFINDEX, BCAST, 0),
        ]
    )
    r, ps = make_relay(sock, PI_CONFIG)
    r.handle_readable(ps)
    assert sorted((kind, payload) for kind, payload, _unused, _unused in sock.sent) == sorted(
        [
            ("sendmsg", b"from-b"),
            ("sendto", b"bcast"),
        ]
    )
    assert (ps.received, ps.forwarded, ps.rebroadcast) == (5, 1, 1)
    assert ps.dropped == {"peer_interface": 3}
    status = r.status()
    assert status["ports"]["6799"]["dropped"] == {"peer_interface": 3}
    assert status["peer_interfaces"] == {PEER: TUN}
    text = relay.format_status(status)
    assert "port 6799 dropped: peer_interface 3" in text
    assert "peers only via: 192.168.2.126 sl-brooklyn" in text
    assert "peer_interfaces" not in make_relay(FakeSock([]))[0].status()


def _fake_open(port):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.close()
    return a


def test_refresh_and_reload_rebuild_the_interface_cache(tmp_path, monkeypatch, links, caplog):
    monkeypatch.setattr(configure, "open_socket", _fake_open)
    monkeypatch.setattr(localnet, "local_ipv4", lambda: (frozenset({"127.0.0.1"}), frozenset()))
    for module in (localnet, stormguard):  # no interface exists (yet)
        monkeypatch.setattr(module, "if_index", lambda name: 0)
    path = tmp_path / "relay.json"
    conf = cfg_with(status_file=None, rules=[rule(accept_from=[PEER])])
    path.write_text(json.dumps(conf))
    r = relay.Relay(
        config=relay.load_config(str(path)), config_path=str(path), notifier=relay.Notifier({})
    )
    r.setup()
    try:
        classify = r.ports[6799].classifier.classify
        assert classify(b"x", PEER, WAN_IFINDEX, GW_A, now=1.0) == "rebroadcast"  # no check yet
        assert links.calls == []

        # peer_interfaces added, rules unchanged: the classifier is rebuilt anyway
        ps = r.ports[6799]
        ps.received = 9
        conf["peer_interfaces"] = {PEER: TUN}
        path.write_text(json.dumps(conf))
        assert r.reload() is True
        ps = r.ports[6799]
        assert ps.received == 9 and ps.classifier.ifnames is r.ifnames
        assert "peer interface sl-brooklyn not found" in caplog.text
        classify = ps.classifier.classify
        assert classify(b"x", PEER, WAN_IFINDEX, GW_A, now=1.0) == "peer_interface"
        assert classify(b"y", PEER, TUN_IFINDEX, GW_A, now=1.0) == "rebroadcast"
        assert r.ifnames.names == {WAN_IFINDEX: "wan0", TUN_IFINDEX: TUN}

        # the periodic refresh starts the cache over (an interface may have been renamed)
        links.links[TUN_IFINDEX] = "sl-renamed"
        r.refresh()
        assert r.ifnames.names == {}
        assert classify(b"z", PEER, TUN_IFINDEX, GW_A, now=1.0) == "peer_interface"
        links.links[TUN_IFINDEX] = TUN

        # SIGHUP empties it too, even when the new config is refused
        path.write_text(json.dumps(cfg_with(peer_interfaces={PEER: "bad/name"})))
        assert r.reload() is False
        assert r.ifnames.names == {}
        assert r.ports[6799].classifier.classify(b"w", PEER, TUN_IFINDEX, GW_A) == "rebroadcast"

        # peer_interfaces removed: any interface again
        del conf["peer_interfaces"]
        path.write_text(json.dumps(conf))
        assert r.reload() is True
        classify = r.ports[6799].classifier.classify
        assert classify(b"v", PEER, WAN_IFINDEX, GW_A, now=1.0) == "rebroadcast"
    finally:
        r.close()


@pytest.fixture(autouse=True)
def _restore_logger():
    logger = relay.log
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def test_a_port_has_room_for_a_hubs_fan_out_burst():
    """A LAN broadcast on a hub leaves as one envelope per peer at once: the socket asks
    for a send buffer that holds thousands (the kernel caps it at wmem_max)."""
    try:
        with open("/proc/sys/net/core/wmem_max") as fh:
            wmem_max = int(fh.read())
    except OSError:
        pytest.skip("no /proc/sys/net/core/wmem_max")
    sock = ports.open_socket(0)  # any free port
    try:
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    finally:
        sock.close()
    assert granted >= 2 * min(ports.SOCKET_SNDBUF, wmem_max)  # the kernel doubles it
