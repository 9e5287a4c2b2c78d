"""Unit tests for sitelink.gateway.ipip_tunnel and its module_utils.

No root, network or ipip kernel module needed: live state is given as ``ip -j``
JSON shaped like iproute2 6.1 on Debian 12 prints it, and commands go to a fake
runner that records them.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import stat

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import failover, persist
from ansible_collections.sitelink.gateway.plugins.module_utils import tunnel as tu
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils import fakes
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import Exit

WAN = "172.16.1.12"
LAN = "192.168.1.126"
UNSPEC = "0.0.0.0"  # noqa: S104  (an unset tunnel endpoint, not a bind address)

BROOKLYN = {
    "name": "sl-brooklyn",
    "local": WAN,
    "remote": "172.17.2.10",
    "address": LAN,
    "routes": ["192.168.2.0/24"],
    "mtu": 1480,
    "ttl": 64,
    "description": "peer brooklyn",
}
QUEENS = {
    "name": "sl-queens",
    "local": WAN,
    "remote": "172.17.3.10",
    "address": LAN,
    "routes": ["192.168.3.0/24", "10.30.0.0/16"],
    "mtu": 1480,
    "ttl": 64,
    "description": "peer queens",
}


@pytest.fixture(autouse=True)
def _failover_files_in_tmp(tmp_path, monkeypatch):
    """The failover hook's configuration is a fixed path on a gateway: here, a temp one."""
    monkeypatch.setattr(failover, "CONFIG_PATH", str(tmp_path / "failover.json"))


# --------------------------------------------------------------------------
# ip -j fixtures (iproute2 6.1, Debian 12 kernel 6.1)


def _base(ifindex, name, flags, mtu, operstate, link_type, address, broadcast, **extra):
    entry = {"ifindex": ifindex}
    if link_type == "ipip":
        entry["link"] = None  # ipip links have no lower device: printed as "@NONE"
    entry.update(
        {
            "ifname": name,
            "flags": flags,
            "mtu": mtu,
            "qdisc": "noqueue" if link_type == "ipip" else "fq_codel",
            "operstate": operstate,
            "linkmode": "DEFAULT",
            "group": "default",
            "txqlen": 1000,
            "link_type": link_type,
            "address": address,
        }
    )
    if "POINTOPOINT" in flags:
        entry["link_pointtopoint"] = True
    entry["broadcast"] = broadcast
    entry.update(extra)
    return entry


def eth_link(ifindex, name, mac):
    return _base(
        ifindex,
        name,
        ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
        1500,
        "UP",
        "ether",
        mac,
        "ff:ff:ff:ff:ff:ff",
        promiscuity=0,
        allmulti=0,
        min_mtu=68,
        max_mtu=9000,
        inet6_addr_gen_mode="eui64",
        num_tx_queues=1,
        num_rx_queues=1,
        gso_max_size=65536,
        gso_max_segs=65535,
        parentbus="pci",
        parentdev="0000:00:03.0",
    )


def ipip_link(ifindex, name, local, remote, ttl=64, mtu=1480, alias=None, up=True):
    ptp = remote != "any"
    flags = (["POINTOPOINT"] if ptp else []) + ["NOARP"] + (["UP", "LOWER_UP"] if up else [])
    entry = _base(
        ifindex,
        name,
        flags,
        mtu,
        "UNKNOWN" if up else "DOWN",
        "ipip",
        UNSPEC if local == "any" else local,
        UNSPEC if remote == "any" else remote,
        promiscuity=0,
        allmulti=0,
        min_mtu=68,
        max_mtu=65515,
        linkinfo={
            "info_kind": "ipip",
            "info_data": {
                "proto": "ipip",
                "remote": remote,
                "local": local,
                "ttl": ttl,
                "pmtudisc": ttl != 0 or ptp,
            },
        },
        inet6_addr_gen_mode="eui64",
        num_tx_queues=1,
        num_rx_queues=1,
        gso_max_size=65536,
        gso_max_segs=65535,
    )
    if alias is not None:
        entry["ifalias"] = alias
    return entry


def lo_link():
    return _base(
        1,
        "lo",
        ["LOOPBACK", "UP", "LOWER_UP"],
        65536,
        "UNKNOWN",
        "loopback",
        "00:00:00:00:00:00",
        "00:00:00:00:00:00",
    )


def inet(local, prefixlen, label, broadcast=None, scope="global"):
    info = {"family": "inet", "local": local, "prefixlen": prefixlen}
    if broadcast:
        info["broadcast"] = broadcast
    info.update(
        {
            "scope": scope,
            "label": label,
            "valid_life_time": 4294967295,
            "preferred_life_time": 4294967295,
        }
    )
    return info


def with_addrs(link, addr_info):
    """``ip -j addr show`` repeats the link header without the -d details."""
    keep = [
        "ifindex",
        "link",
        "ifname",
        "flags",
        "mtu",
        "qdisc",
        "operstate",
        "group",
        "txqlen",
        "link_type",
        "address",
        "link_pointtopoint",
        "broadcast",
    ]
    entry = {k: link[k] for k in keep if k in link}
    entry["addr_info"] = addr_info
    return entry


def tunnel_route(dst, dev, src):
    return {"dst": dst, "dev": dev, "scope": "link", "prefsrc": src, "flags": []}


class Host:
    """Builds the three JSON documents the module reads."""

    def __init__(self, wan=WAN):
        self.links = [
            lo_link(),
            eth_link(2, "eth0", "52:54:00:12:34:56"),
            eth_link(3, "eth1", "52:54:00:12:34:57"),
        ]
        self.addrs = {
            "lo": [inet("127.0.0.1", 8, "lo", scope="host")],
            "eth0": [inet(wan, 24, "eth0", "172.16.1.255")] if wan else [],
            "eth1": [inet(LAN, 24, "eth1", "192.168.1.255")],
        }
        self.routes = [
            {"dst": "default", "gateway": "172.16.1.1", "dev": "eth0", "flags": []},
            {
                "dst": "172.16.1.0/24",
                "dev": "eth0",
                "protocol": "kernel",
                "scope": "link",
                "prefsrc": WAN,
                "flags": [],
            },
            {
                "dst": "192.168.1.0/24",
                "dev": "eth1",
                "protocol": "kernel",
                "scope": "link",
                "prefsrc": LAN,
                "flags": [],
            },
        ]

    def add_tunnel(self, t, alias=None, addrs=None, routes=None, **kw):
        ifindex = len(self.links) + 2
        alias = tu.alias_for(t["description"]) if alias is None else alias
        link = ipip_link(
            ifindex,
            t["name"],
            kw.get("local", t["local"]),
            kw.get("remote", t["remote"]),
            ttl=kw.get("ttl", t["ttl"]),
            mtu=kw.get("mtu", t["mtu"]),
            alias=alias or None,
            up=kw.get("up", True),
        )
        self.links.append(link)
        if addrs is None:
            addrs = [(t["address"], 32)]
        self.addrs[t["name"]] = [inet(a, p, t["name"]) for a, p in addrs]
        if routes is None:
            routes = [(r, t["address"]) for r in t["routes"]]
        self.routes += [tunnel_route(d, t["name"], s) for d, s in routes]
        return self

    def add_tunl0(self):
        # Created by the kernel as soon as the ipip module is loaded.
        self.links.append(ipip_link(len(self.links) + 2, "tunl0", "any", "any", ttl=0, up=False))
        self.addrs["tunl0"] = []
        return self

    def json(self):
        addr_doc = [with_addrs(lk, self.addrs.get(lk["ifname"], [])) for lk in self.links]
        return json.dumps(self.links), json.dumps(addr_doc), json.dumps(self.routes)

    def live(self):
        return tu.LiveState.from_json(*self.json())


def desired(*tunnels):
    return tu.validate_tunnels([dict(t) for t in tunnels])


def argvs(actions):
    return [" ".join(a.argv) for a in actions]


# --------------------------------------------------------------------------
# parsing


def test_parse_links_reads_ipip_details_and_ownership():
    links = Host().add_tunl0().add_tunnel(BROOKLYN).live().links
    assert links["sl-brooklyn"] == {
        "name": "sl-brooklyn",
        "kind": "ipip",
        "local": WAN,
        "remote": "172.17.2.10",
        "ttl": 64,
        "mtu": 1480,
        "alias": "sitelink-gateway: peer brooklyn",
        "owned": True,
        "up": True,
    }
    assert links["tunl0"]["owned"] is False
    assert links["tunl0"]["local"] == "any"
    assert links["eth0"]["kind"] is None


def test_parse_is_tolerant_of_empty_output_missing_keys_and_inherit():
    assert tu.parse_links("") == {}
    assert tu.parse_links("[ ]") == {}
    text = json.dumps(
        [
            {"ifname": "x", "linkinfo": {"info_kind": "ipip", "info_data": {"ttl": "inherit"}}},
            {"ifindex": 9},
        ]
    )
    link = tu.parse_links(text)["x"]
    assert link["ttl"] == 0 and link["local"] is None and link["up"] is False
    assert link["owned"] is False
    assert tu.parse_addrs(json.dumps([{"ifname": "x"}])) == {"x": []}


def test_parse_routes_normalises_host_and_default_routes_and_skips_multipath():
    text = json.dumps(
        [
            {"dst": "default", "gateway": "172.16.1.1", "dev": "eth0", "flags": []},
            {"dst": "10.1.2.3", "dev": "sl-x", "scope": "link", "flags": []},
            {"dst": "10.9.0.0/16", "metric": 100, "dev": "sl-x", "flags": []},
            {"type": "blackhole", "dst": "10.66.0.0/16", "flags": []},
            {"dst": "10.7.0.0/16", "nexthops": [{"gateway": "1.2.3.4", "dev": "eth0"}]},
        ]
    )
    routes = tu.parse_routes(text)
    assert routes["eth0"][0]["dst"] == "0.0.0.0/0"
    assert [r["dst"] for r in routes["sl-x"]] == ["10.1.2.3/32", "10.9.0.0/16"]
    assert routes["sl-x"][1]["metric"] == 100
    assert set(routes) == {"eth0", "sl-x"}


def test_parse_addrs_keeps_ipv4_only():
    doc = [
        {
            "ifname": "sl-x",
            "addr_info": [
                inet("10.0.0.1", 32, "sl-x"),
                {"family": "inet6", "local": "fe80::ac10:10c", "prefixlen": 64},
            ],
        }
    ]
    assert tu.parse_addrs(json.dumps(doc)) == {"sl-x": ["10.0.0.1/32"]}


# --------------------------------------------------------------------------
# planner


def test_create_from_empty():
    actions, removed = tu.plan(desired(BROOKLYN), Host().live())
    assert removed == []
    assert {a.kind for a in actions} == {"create"}
    assert argvs(actions) == [
        "link add name sl-brooklyn type ipip local 172.16.1.12 remote 172.17.2.10 ttl 64",
        "link set dev sl-brooklyn mtu 1480 alias sitelink-gateway: peer brooklyn up",
        "address add 192.168.1.126/32 dev sl-brooklyn",
        "route replace 192.168.2.0/24 dev sl-brooklyn src 192.168.1.126",
    ]
    # The alias is a single argv element, not split on spaces.
    assert actions[1].argv[7] == "sitelink-gateway: peer brooklyn"


def test_idempotent_when_live_matches():
    host = Host().add_tunl0().add_tunnel(BROOKLYN).add_tunnel(QUEENS)
    actions, removed = tu.plan(desired(BROOKLYN, QUEENS), host.live())
    assert actions == [] and removed == []


def test_ttl_zero_inherit_is_idempotent():
    t = dict(BROOKLYN, ttl=0)
    actions, _unused = tu.plan(desired(t), Host().add_tunnel(t).live())
    assert actions == []


def test_mtu_change_only():
    host = Host().add_tunnel(BROOKLYN, mtu=1400).add_tunnel(QUEENS)
    actions, _unused = tu.plan(desired(BROOKLYN, QUEENS), host.live())
    assert argvs(actions) == ["link set dev sl-brooklyn mtu 1480"]


def test_alias_and_down_fixed_in_place():
    host = Host().add_tunnel(BROOKLYN, alias="sitelink-gateway: old text", up=False)
    actions, _unused = tu.plan(desired(BROOKLYN), host.live())
    assert argvs(actions) == ["link set dev sl-brooklyn alias sitelink-gateway: peer brooklyn up"]


def test_link_down_lost_routes_are_readded_after_up():
    # The kernel flushes routes of a device that goes down.
    host = Host().add_tunnel(BROOKLYN, up=False, routes=[])
    actions, _unused = tu.plan(desired(BROOKLYN), host.live())
    assert argvs(actions) == [
        "link set dev sl-brooklyn up",
        "route replace 192.168.2.0/24 dev sl-brooklyn src 192.168.1.126",
    ]


def test_remote_change_recreates_only_that_tunnel():
    host = Host().add_tunnel(BROOKLYN, remote="172.17.2.99").add_tunnel(QUEENS)
    actions, removed = tu.plan(desired(BROOKLYN, QUEENS), host.live())
    assert removed == []
    assert {a.tunnel for a in actions} == {"sl-brooklyn"}
    assert {a.kind for a in actions} == {"recreate"}
    assert argvs(actions)[0] == "link del dev sl-brooklyn"
    assert argvs(actions)[1:] == argvs(tu.plan(desired(BROOKLYN), Host().live())[0])


@pytest.mark.parametrize("field,value", [("local", "172.16.1.13"), ("ttl", 255)])
def test_local_or_ttl_change_recreates(field, value):
    host = Host().add_tunnel(BROOKLYN, **{field: value})
    actions, _unused = tu.plan(desired(BROOKLYN), host.live())
    assert argvs(actions)[0] == "link del dev sl-brooklyn"
    assert len(actions) == 5


def test_purge_removes_owned_stale_tunnel_first():
    host = Host().add_tunl0().add_tunnel(BROOKLYN).add_tunnel(QUEENS)
    new = dict(BROOKLYN, name="sl-bk2", remote="172.17.2.11")
    actions, removed = tu.plan(desired(new, QUEENS), host.live())
    assert removed == ["sl-brooklyn"]
    # Deleted before the new tunnel is added, so endpoints/routes are free again.
    assert argvs(actions)[0] == "link del dev sl-brooklyn"
    assert {a.tunnel for a in actions[1:]} == {"sl-bk2"}


def test_no_purge_keeps_owned_stale_tunnel():
    host = Host().add_tunnel(BROOKLYN).add_tunnel(QUEENS)
    actions, removed = tu.plan(desired(QUEENS), host.live(), purge=False)
    assert actions == [] and removed == []


def test_empty_desired_purges_every_owned_tunnel_only():
    host = Host().add_tunl0().add_tunnel(BROOKLYN).add_tunnel(QUEENS)
    host.add_tunnel(dict(BROOKLYN, name="foreign0", remote="10.0.0.1"), alias="")
    actions, removed = tu.plan([], host.live())
    assert removed == ["sl-brooklyn", "sl-queens"]
    assert argvs(actions) == ["link del dev sl-brooklyn", "link del dev sl-queens"]


def test_foreign_ipip_link_with_same_name_fails():
    host = Host().add_tunnel(BROOKLYN, alias="")
    with pytest.raises(tu.TunnelError, match="'sl-brooklyn'.*not managed by sitelink.gateway"):
        tu.plan(desired(BROOKLYN), host.live())


def test_non_ipip_link_with_same_name_fails():
    t = dict(BROOKLYN, name="eth1")
    with pytest.raises(tu.TunnelError, match="'eth1'.*not an ipip tunnel"):
        tu.plan(desired(t), Host().live())


def test_foreign_ipip_link_without_marker_left_alone():
    host = Host().add_tunl0()
    host.add_tunnel(dict(QUEENS, name="legacy0", remote="10.9.9.9"), alias="set by hand")
    actions, removed = tu.plan(desired(BROOKLYN), host.live())
    assert removed == []
    assert {a.tunnel for a in actions} == {"sl-brooklyn"}
    assert not any("legacy0" in a.argv or "tunl0" in a.argv for a in actions)


def test_extra_route_removed_and_wrong_src_replaced():
    host = Host().add_tunnel(
        QUEENS,
        routes=[
            ("192.168.3.0/24", "192.168.1.1"),  # wrong src: replace
            ("10.99.0.0/16", LAN),  # not desired: delete
        ],
    )
    host.routes.append({"dst": "10.30.0.0/16", "dev": "sl-queens", "metric": 50, "flags": []})
    host.routes.append(
        {"dst": "10.0.0.0/8", "dev": "sl-queens", "protocol": "kernel", "scope": "link"}
    )
    actions, _unused = tu.plan(desired(QUEENS), host.live())
    assert argvs(actions) == [
        "route del 10.99.0.0/16 dev sl-queens",
        "route del 10.30.0.0/16 dev sl-queens metric 50",
        "route replace 10.30.0.0/16 dev sl-queens src 192.168.1.126",
        "route replace 192.168.3.0/24 dev sl-queens src 192.168.1.126",
    ]


def test_addresses_made_exact():
    host = Host().add_tunnel(BROOKLYN, addrs=[("10.0.0.1", 30)])
    actions, _unused = tu.plan(desired(BROOKLYN), host.live())
    assert argvs(actions) == [
        "address del 10.0.0.1/30 dev sl-brooklyn",
        "address add 192.168.1.126/32 dev sl-brooklyn",
    ]


def test_route_moving_between_tunnels_deleted_before_replaced():
    host = Host().add_tunnel(BROOKLYN).add_tunnel(QUEENS)
    bk = dict(BROOKLYN, routes=["192.168.2.0/24", "192.168.3.0/24"])
    qn = dict(QUEENS, routes=["10.30.0.0/16"])
    actions, _unused = tu.plan(desired(bk, qn), host.live())
    assert argvs(actions) == [
        "route del 192.168.3.0/24 dev sl-queens",
        "route replace 192.168.3.0/24 dev sl-brooklyn src 192.168.1.126",
    ]


def test_local_address_missing_fails():
    with pytest.raises(tu.TunnelError, match=r"'sl-brooklyn' local: 172.16.1.12 is not configured"):
        tu.plan(desired(BROOKLYN), Host(wan=None).live())


# --------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "change,message",
    [
        ({"name": "sl-this-name-is-too-long"}, "name must be 1-15"),
        ({"name": "sl brooklyn"}, "name must be 1-15"),
        ({"name": ".."}, "name must be"),
        ({"local": "172.16.1"}, "'sl-brooklyn' local: '172.16.1' is not an IPv4"),
        ({"remote": "fd00::1"}, "'sl-brooklyn' remote: 'fd00::1' is not an IPv4"),
        ({"remote": UNSPEC}, "remote: 0.0.0.0 is not a unicast"),
        ({"remote": WAN}, "local and remote are both"),
        ({"address": "192.168.1.126/24"}, "'sl-brooklyn' address: only /32"),
        ({"address": "lan"}, "address: 'lan' is not an IPv4"),
        ({"routes": ["192.168.2.1/24"]}, "'sl-brooklyn' routes: '192.168.2.1/24' is not an IPv4"),
        ({"routes": ["192.168.2.0/24", "192.168.2.0/24"]}, "listed twice"),
        ({"mtu": 67}, "'sl-brooklyn' mtu: 67 is outside 68..65515"),
        ({"mtu": 65516}, "mtu: 65516 is outside"),
        ({"ttl": 256}, "'sl-brooklyn' ttl: 256 is outside 0..255"),
        ({"ttl": -1}, "ttl: -1 is outside"),
        ({"description": 'say "hi"'}, "'sl-brooklyn' description: must not contain"),
        ({"description": "a # comment"}, "description: must not contain"),
        ({"description": "x" * 300}, "description: too long"),
    ],
)
def test_validation_errors(change, message):
    with pytest.raises(tu.TunnelError) as err:
        tu.validate_tunnels([dict(BROOKLYN, **change)])
    assert message in str(err.value)


def test_validation_cross_tunnel_errors_all_reported():
    twin = dict(QUEENS, name="sl-brooklyn", remote=BROOKLYN["remote"])
    third = dict(QUEENS, name="sl-bronx", remote="172.17.4.10", routes=["192.168.2.0/24"])
    with pytest.raises(tu.TunnelError) as err:
        tu.validate_tunnels([BROOKLYN, twin, third])
    msg = str(err.value)
    assert "tunnel 'sl-brooklyn' name: sl-brooklyn already used" in msg
    assert "tunnel 'sl-brooklyn' remote: 172.17.2.10 already used by tunnel 'sl-brooklyn'" in msg
    assert "tunnel 'sl-bronx' routes: 192.168.2.0/24 already routed via tunnel 'sl-brooklyn'" in msg


def test_validation_normalises_and_defaults():
    raw = {
        "name": "sl-x",
        "local": " 172.16.1.12",
        "remote": "172.17.9.1",
        "address": "192.168.1.126/32",
        "routes": ["10.2.0.0/16", "10.1.0.0/16"],
        "mtu": None,
        "ttl": None,
        "description": None,
    }
    assert tu.validate_tunnels([raw]) == [
        {
            "name": "sl-x",
            "local": "172.16.1.12",
            "remote": "172.17.9.1",
            "address": "192.168.1.126",
            "routes": ["10.1.0.0/16", "10.2.0.0/16"],
            "mtu": 1480,
            "ttl": 64,
            "description": "",
        }
    ]
    assert tu.alias_for("") == "sitelink-gateway"


# --------------------------------------------------------------------------
# persistence file

EXPECTED_FILE = """\
# Managed by sitelink.gateway: do not edit
# Applied at boot with: ip -batch /etc/sitelink/tunnels.batch

# sl-brooklyn -> 172.17.2.10
link add name sl-brooklyn type ipip local 172.16.1.12 remote 172.17.2.10 ttl 64
link set dev sl-brooklyn mtu 1480 alias "sitelink-gateway: peer brooklyn" up
address add 192.168.1.126/32 dev sl-brooklyn
route replace 192.168.2.0/24 dev sl-brooklyn src 192.168.1.126

# sl-queens -> 172.17.3.10
link add name sl-queens type ipip local 172.16.1.12 remote 172.17.3.10 ttl 64
link set dev sl-queens mtu 1480 alias "sitelink-gateway: peer queens" up
address add 192.168.1.126/32 dev sl-queens
route replace 10.30.0.0/16 dev sl-queens src 192.168.1.126
route replace 192.168.3.0/24 dev sl-queens src 192.168.1.126
"""


def test_render_persist_exact_and_order_independent():
    path = "/etc/sitelink/tunnels.batch"
    assert tu.render_persist(desired(BROOKLYN, QUEENS), path) == EXPECTED_FILE
    assert tu.render_persist(desired(QUEENS, BROOKLYN), path) == EXPECTED_FILE


def test_render_persist_empty_is_header_only():
    text = tu.render_persist([], "/x")
    assert text.splitlines()[0] == tu.PERSIST_HEADER
    assert all(line.startswith("#") for line in text.splitlines())


def test_render_persist_without_description_has_plain_marker():
    text = tu.render_persist(desired(dict(BROOKLYN, description="")), "/x")
    assert "alias sitelink-gateway up" in text


# --------------------------------------------------------------------------
# run_module with a fake AnsibleModule and runner


class FakeModule(fakes.FakeModule):
    def __init__(self, params, check_mode=False, diff=False):
        defaults = {"purge": True, "persist_path": None, "boot_unit": None}
        super().__init__(dict(defaults, **params), check_mode, diff)


class FakeRunner:
    """Answers the three reads from a Host; records and succeeds every change."""

    def __init__(self, host, fail_on=None):
        self.link_json, self.addr_json, self.route_json = host.json()
        self.calls = []
        self.batches = 0
        self.fail_on = fail_on

    def run(self, argv, data=None):
        if argv == ["-batch", "-"]:
            # As ip -batch does: line by line, stopping at the first failure.
            self.batches += 1
            for number, line in enumerate(data.splitlines(), 1):
                rc, out, err = self.run(shlex.split(line))
                if rc != 0:
                    return rc, out, f"{err}Command failed -:{number}\n"
            return 0, "", ""
        self.calls.append(list(argv))
        if argv[0] == "-j":
            doc = {"link": self.link_json, "address": self.addr_json, "route": self.route_json}
            return 0, doc[argv[1] if argv[1] != "-d" else argv[2]], ""
        if self.fail_on and " ".join(argv).startswith(self.fail_on):
            return 2, "", "RTNETLINK answers: File exists\n"
        return 0, "", ""

    def changes(self):
        return [c for c in self.calls if c[0] != "-j"]


def run(module, runner):
    with pytest.raises(Exit) as exc:
        tu.run_module(module, runner)
    return exc.value


def test_run_module_check_mode_runs_nothing(tmp_path):
    path = str(tmp_path / "etc" / "tunnels.batch")
    host = Host().add_tunnel(BROOKLYN, mtu=1400)
    runner = FakeRunner(host)
    module = FakeModule({"tunnels": [BROOKLYN, QUEENS], "persist_path": path}, check_mode=True)
    out = run(module, runner)
    assert not out.failed and out.result["changed"] is True
    assert runner.changes() == []
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    assert out.result["commands"][0] == "ip link set dev sl-brooklyn mtu 1480"
    assert out.result["persist_changed"] is True


def test_run_module_applies_writes_file_and_is_then_idempotent(tmp_path):
    path = str(tmp_path / "etc" / "sitelink" / "tunnels.batch")
    params = {"tunnels": [BROOKLYN, QUEENS], "persist_path": path}
    runner = FakeRunner(Host())
    out = run(FakeModule(params), runner)
    assert not out.failed and out.result["changed"] is True
    assert len(runner.changes()) == 9
    assert out.result["commands"][1] == (
        'ip link set dev sl-brooklyn mtu 1480 alias "sitelink-gateway: peer brooklyn" up'
    )
    assert [t["name"] for t in out.result["tunnels"]] == ["sl-brooklyn", "sl-queens"]
    with open(path) as fh:
        assert fh.read() == EXPECTED_FILE.replace("/etc/sitelink/tunnels.batch", path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o755
    assert os.listdir(os.path.dirname(path)) == ["tunnels.batch"]  # no temp file left

    # Second run against the state the first one produced.
    runner = FakeRunner(Host().add_tunnel(BROOKLYN).add_tunnel(QUEENS))
    out = run(FakeModule(params), runner)
    assert out.result["changed"] is False
    assert out.result["commands"] == [] and runner.changes() == []


def test_run_module_empty_set_purges_and_writes_header_only(tmp_path):
    path = str(tmp_path / "tunnels.batch")
    runner = FakeRunner(Host().add_tunnel(BROOKLYN))
    out = run(FakeModule({"tunnels": [], "persist_path": path}), runner)
    assert out.result["removed"] == ["sl-brooklyn"]
    assert out.result["commands"] == ["ip link del dev sl-brooklyn"]
    with open(path) as fh:
        assert fh.read() == tu.render_persist([], path)


def test_run_module_failure_reports_command_stderr_and_done(tmp_path):
    path = str(tmp_path / "tunnels.batch")
    runner = FakeRunner(Host(), fail_on="link add name sl-queens")
    out = run(FakeModule({"tunnels": [BROOKLYN, QUEENS], "persist_path": path}), runner)
    assert out.failed
    msg = out.result["msg"]
    assert "'ip link add name sl-queens type ipip local 172.16.1.12" in msg
    assert "RTNETLINK answers: File exists" in msg
    assert out.result["failed_command"].startswith("ip link add name sl-queens")
    assert len(out.result["commands"]) == 4  # sl-brooklyn was fully created first
    assert out.result["changed"] is True
    assert not os.path.exists(path)  # file only describes applied state


def test_every_change_goes_through_one_ip_process():
    """200 tunnels are about 1000 ip commands: one ip -batch, not 1000 processes."""
    runner = FakeRunner(Host())
    out = run(FakeModule({"tunnels": [BROOKLYN, QUEENS]}), runner)
    assert not out.failed and runner.batches == 1
    assert len(out.result["commands"]) == len(runner.changes()) == 9  # 4 + 5 (two routes)


def test_a_failure_ip_does_not_place_claims_nothing_ran():
    runner = FakeRunner(Host())
    runner.run = lambda argv, data=None, run=runner.run: (
        (1, "", "ip: something else went wrong\n") if argv[0] == "-batch" else run(argv)
    )
    out = run(FakeModule({"tunnels": [BROOKLYN]}), runner)
    assert out.failed and out.result["commands"] == []
    assert "something else went wrong" in out.result["msg"]


def test_run_module_refuses_before_changing_anything():
    host = Host(wan=None).add_tunnel(dict(QUEENS, local="10.0.0.1"), alias="")
    runner = FakeRunner(host)
    out = run(FakeModule({"tunnels": [BROOKLYN, QUEENS]}), runner)
    assert out.failed and runner.changes() == []
    assert "'sl-brooklyn' local: 172.16.1.12 is not configured" in out.result["msg"]
    assert (
        "'sl-queens': an ipip link with that name exists but is not managed" in (out.result["msg"])
    )


def test_run_module_validation_failure_reads_nothing():
    runner = FakeRunner(Host())
    out = run(FakeModule({"tunnels": [dict(BROOKLYN, mtu=10)]}), runner)
    assert out.failed and "'sl-brooklyn' mtu" in out.result["msg"]
    assert runner.calls == []


def test_run_module_diff_shows_tunnels_and_file(tmp_path):
    path = str(tmp_path / "tunnels.batch")
    host = Host().add_tunnel(BROOKLYN, mtu=1400).add_tunnel(QUEENS)
    module = FakeModule({"tunnels": [BROOKLYN], "persist_path": path}, check_mode=True, diff=True)
    out = run(module, FakeRunner(host))
    tunnels_diff, file_diff = out.result["diff"]
    assert "tunnel sl-queens\n" in tunnels_diff["before"]
    assert "tunnel sl-queens" not in tunnels_diff["after"]
    assert "  mtu: 1400\n" in tunnels_diff["before"]
    assert "  mtu: 1480\n" in tunnels_diff["after"]
    assert "  routes: 192.168.2.0/24\n" in tunnels_diff["after"]
    assert "  address: 192.168.1.126/32\n" in tunnels_diff["after"]
    assert file_diff["before"] == "" and file_diff["after"].startswith(tu.PERSIST_HEADER)
    assert out.result["removed"] == ["sl-queens"]


def test_run_module_diff_identical_when_nothing_changes(tmp_path):
    host = Host().add_tunnel(BROOKLYN).add_tunnel(QUEENS)
    module = FakeModule({"tunnels": [QUEENS, BROOKLYN]}, check_mode=True, diff=True)
    out = run(module, FakeRunner(host))
    (tunnels_diff,) = out.result["diff"]
    assert out.result["changed"] is False
    assert tunnels_diff["before"] == tunnels_diff["after"]
    assert "tunnel sl-brooklyn\n  local: 172.16.1.12\n" in tunnels_diff["before"]


def test_describe_route_shows_what_differs():
    host = Host().add_tunnel(QUEENS, routes=[("10.30.0.0/16", "192.168.1.1")])
    host.routes.append({"dst": "10.40.0.0/16", "gateway": "10.0.0.9", "dev": "sl-queens"})
    routes = host.live().describe("sl-queens")["routes"]
    assert routes == ["10.30.0.0/16 src 192.168.1.1", "10.40.0.0/16 via 10.0.0.9 src None"]


# --------------------------------------------------------------------------
# the thin module with the real AnsibleModule


# --------------------------------------------------------------------------
# the boot unit


class FakeSystemd:
    def __init__(self, enabled=False):
        self.enabled = enabled
        self.calls = []

    def run(self, *args, check=True):
        self.calls.append(args)
        if args[0] == "enable":
            self.enabled = True
        return 0, ""

    def is_enabled(self, unit):
        return self.enabled


def test_boot_unit_is_written_enabled_and_then_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(persist, "UNIT_DIR", str(tmp_path / "units"))
    path = str(tmp_path / "etc" / "tunnels.batch")
    params = {"tunnels": [BROOKLYN], "persist_path": path, "boot_unit": "sl-t.service"}
    systemd = FakeSystemd()
    host = Host().add_tunnel(BROOKLYN)
    out = run_with_unit(FakeModule(params), FakeRunner(host), systemd)
    assert out.result["boot_unit_changed"] is True and out.result["changed"] is True
    unit = (tmp_path / "units" / "sl-t.service").read_text()
    assert f"ExecStart=ip -batch {path}" in unit and "WantedBy=multi-user.target" in unit
    assert ("daemon-reload",) in systemd.calls and ("enable", "sl-t.service") in systemd.calls

    systemd.calls.clear()
    out = run_with_unit(FakeModule(params), FakeRunner(host), systemd)
    assert out.result["changed"] is False and systemd.calls == []


def test_boot_unit_check_mode_reports_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(persist, "UNIT_DIR", str(tmp_path / "units"))
    path = str(tmp_path / "tunnels.batch")
    params = {"tunnels": [], "persist_path": path, "boot_unit": "sl-t.service"}
    systemd = FakeSystemd()
    out = run_with_unit(FakeModule(params, check_mode=True), FakeRunner(Host()), systemd)
    assert out.result["boot_unit_changed"] is True
    assert not (tmp_path / "units").exists() and systemd.calls == []


def run_with_unit(module, runner, systemd):
    with pytest.raises(Exit) as exc:
        tu.run_module(module, runner, systemd)
    assert not exc.value.failed, exc.value.result
    return exc.value


# --------------------------------------------------------------------------
# state=absent: everything the module ever put on the host comes off


FOREIGN = dict(QUEENS, name="foreign0", remote="198.51.100.1", description="")


def retired_host():
    """What is left after a retire: the kernel's tunl0 and a tunnel someone else made."""
    return Host().add_tunl0().add_tunnel(FOREIGN, alias="")


def deployed(tmp_path, monkeypatch, extra_files=()):
    """A host as site.yml leaves it (two owned tunnels), plus the boot file and unit."""
    monkeypatch.setattr(persist, "UNIT_DIR", str(tmp_path / "units"))
    directory = tmp_path / "etc" / "sitelink"
    directory.mkdir(parents=True)
    path = directory / "tunnels.batch"
    path.write_text(tu.render_persist(desired(BROOKLYN, QUEENS), str(path)))
    for name in extra_files:
        (directory / name).write_text("{}\n")
    (tmp_path / "units").mkdir()
    (tmp_path / "units" / "sl-t.service").write_text(tu.render_boot_unit(str(path)))
    host = retired_host().add_tunnel(BROOKLYN).add_tunnel(QUEENS)
    params = {"state": "absent", "persist_path": str(path), "boot_unit": "sl-t.service"}
    return host, params, path


def test_absent_removes_owned_tunnels_file_unit_and_directory_only(tmp_path, monkeypatch):
    host, params, path = deployed(tmp_path, monkeypatch)
    host.add_tunnel(dict(FOREIGN, name="legacy0", remote="198.51.100.2"), alias="set by hand")
    runner, systemd = FakeRunner(host), FakeSystemd(enabled=True)
    out = run_with_unit(FakeModule(params), runner, systemd)
    assert out.result["changed"] is True
    assert out.result["removed"] == ["sl-brooklyn", "sl-queens"]
    # Routes and addresses go with their links: one delete per owned tunnel, nothing else.
    assert runner.changes() == [
        ["link", "del", "dev", "sl-brooklyn"],
        ["link", "del", "dev", "sl-queens"],
    ]
    assert out.result["commands"] == ["ip link del dev sl-brooklyn", "ip link del dev sl-queens"]
    unit = str(tmp_path / "units" / "sl-t.service")
    assert out.result["removed_paths"] == [str(path), unit, str(path.parent)]
    assert out.result["persist_changed"] is True and out.result["boot_unit_changed"] is True
    assert not path.parent.exists() and not os.path.exists(unit)
    assert systemd.calls == [
        ("disable", "--now", "sl-t.service"),
        ("reset-failed", "sl-t.service"),
        ("daemon-reload",),
    ]
    assert out.result["tunnels"] == [] and "warnings" not in out.result


def test_absent_second_call_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(persist, "UNIT_DIR", str(tmp_path / "units"))
    params = {
        "state": "absent",
        "persist_path": str(tmp_path / "etc" / "sitelink" / "tunnels.batch"),
        "boot_unit": "sl-t.service",
    }
    runner, systemd = FakeRunner(retired_host()), FakeSystemd()
    out = run_with_unit(FakeModule(params, diff=True), runner, systemd)
    assert out.result["changed"] is False
    assert out.result["commands"] == [] and out.result["removed"] == []
    assert out.result["removed_paths"] == [] and out.result["persist_changed"] is False
    assert out.result["boot_unit_changed"] is False
    assert runner.changes() == [] and systemd.calls == []
    assert out.result["diff"] == [
        {
            "before_header": "ipip tunnels (owned by sitelink.gateway)",
            "after_header": "ipip tunnels (owned by sitelink.gateway)",
            "before": "",
            "after": "",
        }
    ]


def test_absent_check_mode_reports_everything_and_changes_nothing(tmp_path, monkeypatch):
    host, params, path = deployed(tmp_path, monkeypatch)
    runner, systemd = FakeRunner(host), FakeSystemd(enabled=True)
    out = run_with_unit(FakeModule(params, check_mode=True, diff=True), runner, systemd)
    assert out.result["changed"] is True
    assert out.result["commands"] == ["ip link del dev sl-brooklyn", "ip link del dev sl-queens"]
    # The directory would be empty once the file is gone: predicted, as a real run does.
    unit = str(tmp_path / "units" / "sl-t.service")
    assert out.result["removed_paths"] == [str(path), unit, str(path.parent)]
    assert runner.changes() == [] and systemd.calls == []
    assert path.exists() and os.path.exists(unit)
    tunnels_diff, file_diff, unit_diff = out.result["diff"]
    assert "tunnel sl-brooklyn\n" in tunnels_diff["before"] and tunnels_diff["after"] == ""
    assert "foreign0" not in tunnels_diff["before"]
    assert file_diff["before"] == path.read_text() and file_diff["after"] == ""
    assert unit_diff["before_header"] == unit and unit_diff["after"] == ""


def test_absent_keeps_a_directory_that_holds_anything_else(tmp_path, monkeypatch):
    host, params, path = deployed(tmp_path, monkeypatch, extra_files=["relay.json"])
    for check_mode in (True, False):
        out = run_with_unit(FakeModule(params, check_mode), FakeRunner(host), FakeSystemd())
        assert str(path.parent) not in out.result["removed_paths"]
    assert not path.exists() and os.listdir(path.parent) == ["relay.json"]


def test_absent_keeps_a_boot_file_it_did_not_write(tmp_path, monkeypatch):
    host, params, path = deployed(tmp_path, monkeypatch)
    path.write_text("link add name mine type ipip remote 10.0.0.1\n")
    out = run_with_unit(FakeModule(params), FakeRunner(host), FakeSystemd())
    assert path.read_text() == "link add name mine type ipip remote 10.0.0.1\n"
    assert out.result["persist_changed"] is False
    assert str(path) not in out.result["removed_paths"]
    assert "did not write it" in out.result["warnings"][0]
    assert out.result["changed"] is True  # the tunnels and the unit still went


def test_absent_refuses_tunnels_before_reading_anything():
    runner = FakeRunner(Host().add_tunnel(BROOKLYN))
    out = run(FakeModule({"state": "absent", "tunnels": [BROOKLYN]}), runner)
    assert out.failed and "must be empty with state=absent" in out.result["msg"]
    assert runner.calls == []


def test_absent_failing_delete_keeps_the_boot_persistence(tmp_path, monkeypatch):
    host, params, path = deployed(tmp_path, monkeypatch)
    runner, systemd = FakeRunner(host, fail_on="link del dev sl-queens"), FakeSystemd()
    out = run(FakeModule(params), runner)
    assert out.failed and out.result["commands"] == ["ip link del dev sl-brooklyn"]
    assert out.result["failed_command"] == "ip link del dev sl-queens"
    assert out.result["changed"] is True
    assert path.exists() and (tmp_path / "units" / "sl-t.service").exists()
    assert systemd.calls == []


# --------------------------------------------------------------------------
# rollback: the inverse of a change, and arming it before the change


class SimIp:
    """Just enough of the kernel to run ip argv lists against a parsed live state.

    Links, addresses, and non-kernel routes keyed as the kernel keys them (prefix,
    metric); a deleted link takes its addresses and routes with it, and a route
    needs its device up.
    """

    def __init__(self, live):
        self.links = {n: dict(lk) for n, lk in live.links.items()}
        self.addrs = {n: set(a) for n, a in live.addrs.items()}
        self.routes = {}
        for dev, routes in live.routes.items():
            for r in routes:
                if r["protocol"] != "kernel":
                    self.routes[(r["dst"], r["metric"] or 0)] = dict(r, dev=dev)
        self.errors = []

    def state(self):
        return self.links, {n: a for n, a in self.addrs.items() if a}, self.routes

    def run(self, argvs, force=False):
        for argv in argvs:
            error = self._one(list(argv))
            if error:
                self.errors.append((argv, error))
                if not force:
                    return

    def _one(self, argv):
        obj, verb = argv[0], argv[1]
        opts = dict(zip(argv[2::2], argv[3::2]))
        if obj == "link" and verb == "add":
            name = opts["name"]
            if name in self.links:
                return "exists"
            for lk in self.links.values():
                if lk["kind"] == "ipip" and (lk["local"], lk["remote"]) == (
                    opts["local"],
                    opts["remote"],
                ):
                    return "endpoints in use by " + lk["name"]
            self.links[name] = {
                "name": name,
                "kind": "ipip",
                "local": opts["local"],
                "remote": opts["remote"],
                "ttl": int(opts.get("ttl", 0)),
                "mtu": 1480,
                "alias": "",
                "owned": False,
                "up": False,
            }
            self.addrs[name] = set()
            return None
        if obj == "link":
            name = argv[3]
            if name not in self.links:
                return "no such device"
            if verb == "del":
                del self.links[name]
                self.addrs.pop(name, None)
                self.routes = {k: r for k, r in self.routes.items() if r["dev"] != name}
                return None
            lk = self.links[name]
            rest = argv[4:]
            if "up" in rest:
                lk["up"] = True
                rest.remove("up")
            for key, value in zip(rest[::2], rest[1::2]):
                if key == "mtu":
                    lk["mtu"] = int(value)
                elif key == "alias":
                    lk["alias"] = value
                    lk["owned"] = value.startswith(tu.MARKER)
            return None
        if obj == "address":
            address, dev = argv[2], argv[4]
            if dev not in self.links:
                return "no such device"
            have = self.addrs.setdefault(dev, set())
            if verb == "add":
                if address in have:
                    return "address exists"
                have.add(address)
                return None
            if address not in have:
                return "no such address"
            have.discard(address)
            ip = address.split("/")[0]
            if not any(ip == a.split("/")[0] for lst in self.addrs.values() for a in lst):
                self.routes = {k: r for k, r in self.routes.items() if r["prefsrc"] != ip}
            return None
        if obj == "route":
            opts = dict(zip(argv[3::2], argv[4::2]))  # after the prefix
            key = (argv[2], int(opts.get("metric", 0)))
            dev = opts.get("dev")
            if verb == "del":
                if key not in self.routes or self.routes[key]["dev"] != dev:
                    return "no such route"
                del self.routes[key]
                return None
            if dev not in self.links or (
                self.links[dev]["kind"] == "ipip" and not self.links[dev]["up"]
            ):
                return "network is down"
            self.routes[key] = {
                "dst": argv[2],
                "prefsrc": opts.get("src"),
                "gateway": opts.get("via"),
                "metric": key[1],
                "protocol": opts.get("proto"),
                "dev": dev,
            }
            return None
        return "unknown command"


def round_trip(host, want, purge=True):
    """Apply plan(want) to host, then the rollback: return (sim, before, inverse)."""
    live = host.live()
    actions, _unused = tu.plan(desired(*want) if want else [], live, purge=purge)
    inverse = tu.rollback_argvs(actions, live)
    sim = SimIp(live)
    before = copy.deepcopy(sim.state())
    sim.run([a.argv for a in actions])
    assert sim.errors == [], sim.errors
    assert sim.state() != before or not actions
    sim.run(inverse, force=True)
    return sim, before, inverse


FOREIGN_TUNNEL = dict(QUEENS, name="legacy0", remote="198.51.100.7", routes=["10.77.0.0/16"])


def with_foreign(host):
    return host.add_tunl0().add_tunnel(FOREIGN_TUNNEL, alias="set by hand")


def odd_host():
    host = Host().add_tunnel(
        QUEENS,
        alias="sitelink-gateway: set a while ago",
        addrs=[(LAN, 32), ("10.0.0.1", 30)],
        routes=[("192.168.3.0/24", "192.168.1.1")],
    )
    host.routes.append(
        {"dst": "10.30.0.0/16", "dev": "sl-queens", "metric": 50, "prefsrc": LAN, "flags": []}
    )
    host.routes.append(
        {"dst": "10.40.0.0/16", "gateway": "10.0.0.2", "dev": "sl-queens", "flags": []}
    )
    return host.add_tunnel(dict(BROOKLYN, mtu=1400), up=False, routes=[])


def eth0_route_host():
    host = with_foreign(Host())
    host.routes.append({"dst": "10.30.0.0/16", "gateway": "172.16.1.1", "dev": "eth0"})
    return host


ROUND_TRIPS = {
    "create from nothing": (lambda: with_foreign(Host()), [BROOKLYN, QUEENS]),
    "mtu changed in place": (
        lambda: with_foreign(Host().add_tunnel(BROOKLYN, mtu=1400).add_tunnel(QUEENS)),
        [BROOKLYN, QUEENS],
    ),
    "remote changed: recreated": (
        lambda: with_foreign(Host().add_tunnel(BROOKLYN, remote="172.17.2.99")),
        [BROOKLYN],
    ),
    "renamed, same endpoints, and one purged": (
        lambda: with_foreign(Host().add_tunnel(BROOKLYN).add_tunnel(QUEENS)),
        [dict(BROOKLYN, name="sl-bk2")],
    ),
    "renamed to a name that sorts later": (
        lambda: Host().add_tunnel(BROOKLYN),
        [dict(BROOKLYN, name="sl-zz")],
    ),
    "route moved between tunnels": (
        lambda: Host().add_tunnel(BROOKLYN).add_tunnel(QUEENS),
        [
            dict(BROOKLYN, routes=["192.168.2.0/24", "192.168.3.0/24"]),
            dict(QUEENS, routes=["10.30.0.0/16"]),
        ],
    ),
    "odd old state: extra address, metric route, other src, down, own alias": (
        odd_host,
        [QUEENS],
    ),
    "a route of eth0 taken over by a tunnel": (
        eth0_route_host,
        [QUEENS],
    ),
    "everything purged": (
        lambda: with_foreign(Host().add_tunnel(BROOKLYN).add_tunnel(QUEENS)),
        [],
    ),
}


@pytest.mark.parametrize("case", sorted(ROUND_TRIPS))
def test_rollback_brings_the_live_state_back(case):
    make_host, want = ROUND_TRIPS[case]
    sim, before, inverse = round_trip(make_host(), want)
    assert sim.errors == [], sim.errors
    assert sim.state() == before
    # Never names a link without the marker.
    named = {w for argv in inverse for w in argv}
    assert not named & {"legacy0", "tunl0"}
    assert not any(argv[-1] == "eth1" for argv in inverse)


def test_two_changes_undone_newest_first_give_back_the_first_state():
    """The restore runs "tunnels #2" before "tunnels": the stack ends where it began."""
    host = with_foreign(Host().add_tunnel(BROOKLYN, mtu=1400))
    live0 = host.live()
    sim = SimIp(live0)
    before = copy.deepcopy(sim.state())
    first, _unused = tu.plan(desired(BROOKLYN, QUEENS), live0)
    inverse1 = tu.rollback_argvs(first, live0)
    sim.run([a.argv for a in first])
    live1 = Host().add_tunl0().add_tunnel(FOREIGN_TUNNEL, alias="set by hand")
    live1 = live1.add_tunnel(BROOKLYN).add_tunnel(QUEENS).live()
    assert SimIp(live1).state() == sim.state()  # the fixture agrees with the simulation
    second, _unused = tu.plan(desired(dict(QUEENS, name="sl-q2"), dict(BROOKLYN, mtu=1300)), live1)
    inverse2 = tu.rollback_argvs(second, live1)
    sim.run([a.argv for a in second])
    assert sim.errors == []
    sim.run(inverse2, force=True)
    sim.run(inverse1, force=True)
    assert sim.errors == [] and sim.state() == before


def test_rollback_of_nothing_is_nothing():
    host = with_foreign(Host().add_tunnel(BROOKLYN))
    actions, _unused = tu.plan(desired(BROOKLYN), host.live())
    assert actions == [] and tu.rollback_argvs(actions, host.live()) == []


def test_rollback_touches_only_the_tunnels_the_change_touches():
    host = Host().add_tunnel(BROOKLYN, mtu=1400).add_tunnel(QUEENS)
    live = host.live()
    actions, _unused = tu.plan(desired(BROOKLYN, QUEENS), live)
    inverse = tu.rollback_argvs(actions, live)
    assert [" ".join(a) for a in inverse] == [
        "link del dev sl-brooklyn",
        "link add name sl-brooklyn type ipip local 172.16.1.12 remote 172.17.2.10 ttl 64",
        "link set dev sl-brooklyn mtu 1400 alias sitelink-gateway: peer brooklyn up",
        "address add 192.168.1.126/32 dev sl-brooklyn",
        "route replace 192.168.2.0/24 dev sl-brooklyn src 192.168.1.126",
    ]


def test_rollback_deletes_a_created_tunnel_and_rebuilds_a_removed_one():
    host = Host().add_tunnel(QUEENS)
    live = host.live()
    actions, _unused = tu.plan(desired(BROOKLYN), live)
    inverse = [" ".join(a) for a in tu.rollback_argvs(actions, live)]
    assert inverse[0] == "link del dev sl-brooklyn"
    assert "link del dev sl-queens" not in inverse  # the change deletes it already
    assert inverse[1:] == [" ".join(a) for a in tu.create_argvs(desired(QUEENS)[0])]


def test_rollback_puts_back_a_route_of_another_device_the_change_replaces():
    live = eth0_route_host().live()
    actions, _unused = tu.plan(desired(QUEENS), live)
    inverse = tu.rollback_argvs(actions, live)
    assert inverse[-1] == ["route", "replace", "10.30.0.0/16", "via", "172.16.1.1", "dev", "eth0"]


@pytest.mark.parametrize("tunnel", [BROOKLYN, QUEENS, dict(BROOKLYN, ttl=0, description="")])
def test_snapshot_of_a_tunnel_shaped_as_desired_is_what_creates_it(tunnel):
    (spec,) = desired(tunnel)
    assert tu.snapshot_argvs(Host().add_tunnel(tunnel).live(), spec["name"]) == (
        tu.create_argvs(spec)
    )


def test_snapshot_keeps_an_alias_ip_batch_cannot_quote_as_the_bare_marker():
    host = Host().add_tunnel(BROOKLYN, alias='sitelink-gateway: "quoted" #1')
    argvs = tu.snapshot_argvs(host.live(), "sl-brooklyn")
    assert argvs[1][-2:] == ["sitelink-gateway", "up"]


def test_render_rollback_is_an_ip_batch_file():
    text = tu.render_rollback([["link", "set", "dev", "x", "alias", "sitelink-gateway: a b"]])
    assert text.splitlines()[-1] == 'link set dev x alias "sitelink-gateway: a b"'
    assert all(line.startswith("#") for line in text.splitlines()[:-1])


@pytest.fixture
def gw(tmp_path):
    yield fakes.CheckpointHost(tmp_path / "gw")
    fakes.release_checkpoint_locks()


class ArmCheckingRunner(FakeRunner):
    """Fails the test if a change reaches ip before the rollback is armed."""

    def __init__(self, host, gw, **kw):
        super().__init__(host, **kw)
        self.gw = gw

    def run(self, argv, data=None):
        if argv[0] == "-batch":
            assert os.path.exists(os.path.join(self.gw.directory, "manifest.json"))
        return super().run(argv, data)


def run_armed(module, runner, gw, systemd=None):
    with pytest.raises(Exit) as exc:
        tu.run_module(module, runner, systemd or FakeSystemd(), gw.checkpoint(module))
    return exc.value


def test_run_module_arms_the_rollback_before_changing_tunnels(tmp_path, gw, monkeypatch):
    monkeypatch.setattr(persist, "UNIT_DIR", str(tmp_path / "units"))
    path = str(tmp_path / "tunnels.batch")
    host = Host().add_tunnel(BROOKLYN, mtu=1400).add_tunnel(QUEENS)
    params = {
        "tunnels": [BROOKLYN],
        "persist_path": path,
        "boot_unit": "sl-t.service",
        "rollback_timeout": 120,
    }
    out = run_armed(FakeModule(params), ArmCheckingRunner(host, gw), gw)
    assert not out.failed and out.result["changed"]
    armed = out.result["rollback"]
    assert armed["resources"] == ["tunnels"] and armed["added"] is True
    assert out.result["ansible_facts"]["sitelink_rollback"]["deadline"] == armed["deadline"]
    (resource,) = gw.manifest()["resources"]
    assert [f["path"] for f in resource["files"]] == [
        path,
        failover.CONFIG_PATH,  # the failover hook's, with two hubs (absent here)
        str(tmp_path / "units" / "sl-t.service"),
        str(tmp_path / "units" / "multi-user.target.wants" / "sl-t.service"),
    ]
    assert all(f.get("absent") for f in resource["files"])  # saved before the change wrote them
    assert resource["commands"] == [
        ["ip", "-force", "-batch", resource["dir"] + "/tunnels.rollback"],
        ["systemctl", "daemon-reload"],
    ]
    with open(os.path.join(resource["dir"], "tunnels.rollback")) as fh:
        batch = fh.read()
    assert "link set dev sl-brooklyn mtu 1400" in batch
    assert "link add name sl-queens" in batch and "link del dev sl-queens" not in batch


def test_run_module_arms_only_when_changing_and_not_in_check_mode(tmp_path, gw):
    host = Host().add_tunnel(BROOKLYN)
    params = {"tunnels": [BROOKLYN, QUEENS], "rollback_timeout": 60}
    out = run_armed(FakeModule(params, check_mode=True), FakeRunner(host), gw)
    assert out.result["changed"] and "rollback" not in out.result
    out = run_armed(FakeModule(dict(params, rollback_timeout=0)), FakeRunner(host), gw)
    assert out.result["changed"] and "rollback" not in out.result
    out = run_armed(FakeModule(dict(params, tunnels=[BROOKLYN])), FakeRunner(host), gw)
    assert not out.result["changed"] and "ansible_facts" not in out.result
    assert gw.systemd_runs() == [] and not os.path.exists(gw.directory)


def test_a_change_to_the_boot_file_only_arms_too(tmp_path, gw):
    path = tmp_path / "tunnels.batch"
    path.write_text("# an older file\n")
    host = Host().add_tunnel(BROOKLYN)
    params = {"tunnels": [BROOKLYN], "persist_path": str(path), "rollback_timeout": 60}
    out = run_armed(FakeModule(params), FakeRunner(host), gw)
    assert out.result["commands"] == [] and out.result["rollback"]["added"]
    (resource,) = gw.manifest()["resources"]
    assert resource["commands"] == []  # no live change to undo, only the file


def test_a_second_change_before_the_confirm_stacks_its_own_inverse(tmp_path, gw):
    one = run_armed(
        FakeModule({"tunnels": [BROOKLYN], "rollback_timeout": 60}), FakeRunner(Host()), gw
    )
    two = run_armed(
        FakeModule({"tunnels": [BROOKLYN, QUEENS], "rollback_timeout": 600}),
        FakeRunner(Host().add_tunnel(BROOKLYN)),
        gw,
    )
    assert two.result["rollback"]["resources"] == ["tunnels", "tunnels #2"]
    assert two.result["rollback"]["deadline"] == one.result["rollback"]["deadline"]
    first, second = gw.manifest()["resources"]
    with open(os.path.join(second["dir"], "tunnels.rollback")) as fh:
        assert "link del dev sl-queens" in fh.read()
    with open(os.path.join(first["dir"], "tunnels.rollback")) as fh:
        assert "link del dev sl-brooklyn" in fh.read()
    assert len(gw.systemd_runs()) == 1


def test_arming_fails_before_any_change(gw):
    gw.runner.fail = (1, "Failed to connect to bus")
    runner = FakeRunner(Host())
    out = run_armed(FakeModule({"tunnels": [BROOKLYN], "rollback_timeout": 60}), runner, gw)
    assert out.failed and "arming the rollback: " in out.result["msg"]
    assert runner.changes() == []


def test_a_failing_apply_after_arming_says_the_gateway_rolls_back(gw):
    runner = FakeRunner(Host(), fail_on="link add name sl-queens")
    params = {"tunnels": [BROOKLYN, QUEENS], "rollback_timeout": 60}
    out = run_armed(FakeModule(params), runner, gw)
    assert out.failed and "restores its previous tunnels by itself at" in out.result["msg"]


def test_absent_arms_a_rollback_that_rebuilds_every_owned_tunnel(tmp_path, monkeypatch, gw):
    host, params, path = deployed(tmp_path, monkeypatch)
    params["rollback_timeout"] = 60
    out = run_armed(FakeModule(params), FakeRunner(host), gw, FakeSystemd(enabled=True))
    assert out.result["changed"] and out.result["rollback"]["added"]
    (resource,) = gw.manifest()["resources"]
    assert "saved" in resource["files"][0] and resource["files"][0]["path"] == str(path)
    with open(os.path.join(resource["dir"], "tunnels.rollback")) as fh:
        batch = fh.read()
    assert "link add name sl-brooklyn" in batch and "link add name sl-queens" in batch
    assert "foreign0" not in batch and "link del" not in batch


def test_absent_with_nothing_left_arms_nothing(tmp_path, monkeypatch, gw):
    monkeypatch.setattr(persist, "UNIT_DIR", str(tmp_path / "units"))
    params = {
        "state": "absent",
        "persist_path": str(tmp_path / "etc" / "tunnels.batch"),
        "boot_unit": "sl-t.service",
        "rollback_timeout": 60,
    }
    out = run_armed(FakeModule(params), FakeRunner(retired_host()), gw)
    assert out.result["changed"] is False and "rollback" not in out.result


def test_the_restore_program_runs_the_inverse_and_restores_the_boot_file(tmp_path, gw):
    """End to end: the module arms and changes; the restore runs with a stand-in ip."""
    log = tmp_path / "restore.log"
    path = tmp_path / "tunnels.batch"
    path.write_text(tu.render_persist(desired(BROOKLYN), str(path)))
    old_file = path.read_text()
    runner = FakeRunner(Host().add_tunnel(BROOKLYN, mtu=1400))
    runner.ip = fakes.fake_program(tmp_path / "ip", log)
    params = {"tunnels": [BROOKLYN, QUEENS], "persist_path": str(path), "rollback_timeout": 60}
    run_armed(FakeModule(params), runner, gw)
    assert path.read_text() != old_file

    proc = gw.restore()
    assert proc.returncode == 0, proc.stdout
    assert path.read_text() == old_file
    lines = log.read_text().splitlines()
    assert lines[0].startswith("ip -force -batch ") and lines[0].endswith("/tunnels.rollback")
    assert "link del dev sl-queens" in lines and "link del dev sl-brooklyn" in lines
    assert "link set dev sl-brooklyn mtu 1400 alias " + '"sitelink-gateway: peer brooklyn" up' in (
        lines
    )
    assert not os.path.exists(gw.directory)
    assert gw.rollback_record()["resources"] == [{"key": "tunnels", "ok": True, "errors": []}]


def test_routes_the_failover_hook_moved_to_the_backup_stay_there():
    """Two hubs: Queens' routes ride Brooklyn's tunnel (the hook moved them, its link
    being down); a run leaves them there, and takes them back without a backup."""
    queens = {**QUEENS, "backup": "sl-brooklyn"}
    moved = [(r, LAN) for r in BROOKLYN["routes"] + QUEENS["routes"]]
    live = Host().add_tunnel(BROOKLYN, routes=moved).add_tunnel(QUEENS, routes=[]).live()
    assert argvs(tu.plan(desired(BROOKLYN, queens), live)[0]) == []
    undone = argvs(tu.plan(desired(BROOKLYN, QUEENS), live)[0])
    assert "route replace 10.30.0.0/16 dev sl-queens src 192.168.1.126" in undone
    assert "route replace 192.168.3.0/24 dev sl-queens src 192.168.1.126" in undone
