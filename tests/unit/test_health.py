"""Unit tests for sitelink.gateway.gateway_health and the health report.

No root, network or gateway needed: each gateway's live state is the JSON its
tools print (iproute2 6.1, nftables 1.0.6, the relay's status file), served by
a fake runner built from the gateway's real plan (the case study), then broken
one way at a time.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import fakes
import pytest
import yaml
from ansible_collections.sitelink.gateway.plugins.module_utils import health as hc
from ansible_collections.sitelink.gateway.plugins.plugin_utils import health as report
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from fakes import Exit

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_700_000_000.0


def case_study_plans() -> dict:
    inventory = yaml.safe_load((ROOT / "examples/case-study/inventory.yml").read_text())
    group = inventory["offices"]
    offices = {host: {**group["vars"], **host_vars} for host, host_vars in group["hosts"].items()}
    plan = plan_network(offices)
    return {host: plan.gateway_dict(host) for host in plan.gateways}


PLANS = case_study_plans()
MANHATTAN = PLANS["manhattan-gw"]  # hub: masquerades, relays 6799 to Brooklyn
BROOKLYN = PLANS["brooklyn-gw"]  # branch: accepts 6799 from Manhattan, no masquerade


# --------------------------------------------------------------------------
# what the tools print


def ipip_link(name, local, remote, up=True):
    return {
        "ifindex": 4,
        "link": None,
        "ifname": name,
        "flags": ["POINTOPOINT", "NOARP"] + (["UP", "LOWER_UP"] if up else []),
        "mtu": 1480,
        "operstate": "UNKNOWN" if up else "DOWN",
        "link_type": "ipip",
        "address": local,
        "link_pointtopoint": True,
        "broadcast": remote,
        "linkinfo": {
            "info_kind": "ipip",
            "info_data": {"proto": "ipip", "remote": remote, "local": local, "ttl": 64},
        },
        "ifalias": "sitelink-gateway: peer",
    }


def eth_link(name):
    return {
        "ifindex": 2 if name == "eth0" else 3,
        "ifname": name,
        "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
        "mtu": 1500,
        "operstate": "UP",
        "link_type": "ether",
        "address": "52:54:00:12:34:56",
    }


def snat_table(interface, sources, address):
    right = (
        {"prefix": {"addr": sources[0].split("/")[0], "len": int(sources[0].split("/")[1])}}
        if len(sources) == 1  # nft lists a one-element set as the element itself
        else {
            "set": [
                {"prefix": {"addr": s.split("/")[0], "len": int(s.split("/")[1])}} for s in sources
            ]
        }
    )
    table, family = "sitelink_masquerade", "ip"
    return {
        "nftables": [
            {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"table": {"family": family, "name": table, "handle": 1}},
            {
                "chain": {
                    "family": family,
                    "table": table,
                    "name": "postrouting",
                    "handle": 1,
                    "type": "nat",
                    "hook": "postrouting",
                    "prio": 100,
                    "policy": "accept",
                }
            },
            {
                "rule": {
                    "family": family,
                    "table": table,
                    "chain": "postrouting",
                    "handle": 2,
                    "expr": [
                        {
                            "match": {
                                "op": "==",
                                "left": {"meta": {"key": "oifname"}},
                                "right": interface,
                            }
                        },
                        {
                            "match": {
                                "op": "==",
                                "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                                "right": right,
                            }
                        },
                        {"counter": {"packets": 0, "bytes": 0}},
                        {"snat": {"addr": address}},
                    ],
                }
            },
        ]
    }


def relay_status(ports, updated=NOW - 2):
    return {
        "relay_version": "0.1.0",
        "pid": 412,
        "mode": "service",
        "started": NOW - 600,
        "updated": updated,
        "interval": 5.0,
        "ports": {
            str(port): {
                "received": 12,
                "forwarded": 12,
                "rebroadcast": 0,
                "transited": 0,
                "dropped": {"own_echo": 3},
                "send_errors": {},
                "forward_to": [],
            }
            for port in ports
        },
        "config": "/etc/sitelink/relay.json",
        "wire": "raw",
    }


def ping_output(source, destination, received, count=3):
    lines = [
        f"PING {destination} ({destination}) from {source} : 56(84) bytes of data.",
        "",
        f"--- {destination} ping statistics ---",
        f"{count} packets transmitted, {received} received, "
        f"{100 - 100 * received // count}% packet loss, time 404ms",
    ]
    if received:
        lines.append("rtt min/avg/max/mdev = 0.512/0.610/0.700/0.077 ms")
    return "\n".join(lines) + "\n"


class Gateway:
    """A gateway as its tools see it; starts healthy for ``plan``, then tests break it."""

    def __init__(self, plan):
        self.plan = plan
        own = plan["lan"]["address"]
        self.own = own
        self.links = [eth_link(plan["lan"]["interface"]), eth_link(plan["wan"]["interface"])]
        self.links += [ipip_link(t["name"], t["local"], t["remote"]) for t in plan["tunnels"]]
        self.routes = [
            {
                "dst": str(ipaddress.IPv4Interface(plan["lan"]["cidr"]).network),
                "dev": plan["lan"]["interface"],
                "protocol": "kernel",
                "scope": "link",
                "prefsrc": own,
                "flags": [],
            },
            {
                "dst": "default",
                "gateway": plan["wan"]["gateway"],
                "dev": plan["wan"]["interface"],
                "flags": [],
            },
        ]
        for t in plan["tunnels"]:
            for prefix in t["routes"]:
                self.routes.append(
                    {"dst": prefix, "dev": t["name"], "scope": "link", "prefsrc": own, "flags": []}
                )
        self.paths = {link["peer_address"]: link["tunnel"] for link in plan["links"]}
        self.answers = {link["peer_address"]: 3 for link in plan["links"]}
        ports = [rule["port"] for rule in plan["relay"]["rules"]]
        self.relay_state = "active" if ports else "inactive"
        self.files = {hc.RELAY_STATUS_FILE: json.dumps(relay_status(ports))} if ports else {}
        masquerade = plan["masquerade"]
        self.nat = (
            snat_table(masquerade["interface"], masquerade["sources"], masquerade["address"])
            if masquerade["sources"]
            else None
        )
        self.calls = []

    # -- ways to break it
    def link(self, name):
        return next(link for link in self.links if link["ifname"] == name)

    def drop_link(self, name):
        self.links = [link for link in self.links if link["ifname"] != name]
        self.routes = [route for route in self.routes if route["dev"] != name]

    # -- the runner interface
    def run(self, argv):
        self.calls.append(list(argv))
        if argv[:5] == ["ip", "-j", "-d", "link", "show"]:
            return 0, json.dumps(self.links), ""
        if argv[:4] == ["ip", "-j", "route", "show"]:
            return 0, json.dumps(self.routes), ""
        if argv[:4] == ["ip", "-j", "route", "get"]:
            destination, source = argv[4], argv[6]
            dev = self.paths.get(destination)
            if dev is None:
                return 2, "", "RTNETLINK answers: Network is unreachable\n"
            return 0, json.dumps([{"dst": destination, "from": source, "dev": dev}]), ""
        if argv[0] == "ping":
            source, destination = argv[-2], argv[-1]
            received = self.answers.get(destination, 0)
            return (0 if received else 1), ping_output(source, destination, received), ""
        if argv[:2] == ["systemctl", "is-active"]:
            return (0 if self.relay_state == "active" else 3), self.relay_state + "\n", ""
        if argv[:3] == ["nft", "-j", "list"]:
            if self.nat is None:
                return (
                    1,
                    "",
                    "Error: No such file or directory\nlist table ip sitelink_masquerade\n",
                )
            return 0, json.dumps(self.nat), ""
        raise AssertionError(f"unexpected command {argv}")

    def read(self, path):
        return self.files.get(path)

    @staticmethod
    def now():
        return NOW


def check(gateway, plan=None):
    return hc.check_gateway(plan or gateway.plan, gateway)


# --------------------------------------------------------------------------
# healthy gateways


def test_a_healthy_hub_passes_every_check_with_few_read_only_commands():
    gw = Gateway(MANHATTAN)
    result = check(gw)
    assert result["problems"] == []
    assert result["healthy"] is True
    assert result["office"] == "manhattan"
    (tunnel,) = result["tunnels"]
    assert tunnel == {
        "name": "sl-brooklyn",
        "peer": "brooklyn",
        "peer_address": "192.168.2.126",
        "present": True,
        "up": True,
        "path": "sl-brooklyn",
        "ping": {"transmitted": 3, "received": 3, "rtt_avg_ms": 0.61},
        "ok": True,
        "problems": [],
    }
    assert result["routes"] == {"total": 1, "ok": 1, "failed": [], "problems": []}
    assert result["relay"]["state"] == "active"
    assert result["relay"]["stale"] is False
    assert result["relay"]["ports"] == {
        "6799": {
            "received": 12,
            "forwarded": 12,
            "rebroadcast": 0,
            "transited": 0,
            "dropped": 3,
            "send_errors": 0,
        }
    }
    assert result["masquerade"]["present"] is True
    assert result["masquerade"]["address"] == "192.168.1.126"
    assert result["masquerade"]["sources"] == ["192.168.2.0/24"]
    # Six commands for one tunnel, none of which changes anything.
    assert gw.calls == [
        ["ip", "-j", "-d", "link", "show"],
        ["ip", "-j", "route", "show", "table", "main"],
        ["ip", "-j", "route", "get", "192.168.2.126", "from", "192.168.1.126"],
        [
            "ping",
            "-n",
            "-q",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            "192.168.1.126",
            "192.168.2.126",
        ],
        ["systemctl", "is-active", "sitelink-relay.service"],
        ["nft", "-j", "list", "table", "ip", "sitelink_masquerade"],
    ]


def test_a_healthy_branch_without_masquerade_passes():
    result = check(Gateway(BROOKLYN))
    assert result["problems"] == []
    assert result["masquerade"]["expected"] is False
    assert result["masquerade"]["present"] is False
    assert result["relay"]["ports"]["6799"]["received"] == 12


def test_the_peer_address_comes_from_the_plan_links():
    # The planner names the peer's LAN address on each link, external peers included.
    assert [link["peer_address"] for link in BROOKLYN["links"]] == ["192.168.1.126"]
    assert hc.plan_view(BROOKLYN)["tunnels"][0]["peer_address"] == "192.168.1.126"


# --------------------------------------------------------------------------
# tunnels


def test_a_missing_tunnel_is_named_and_nothing_is_sent_through_it():
    gw = Gateway(BROOKLYN)
    gw.drop_link("sl-manhattan")
    result = check(gw)
    assert result["healthy"] is False
    assert result["problems"][:2] == [
        "tunnel sl-manhattan: missing",
        "route 192.168.1.0/24: missing (should go via sl-manhattan)",
    ]
    assert not [c for c in gw.calls if c[0] == "ping" or c[:4] == ["ip", "-j", "route", "get"]]
    assert result["tunnels"][0]["present"] is False


def test_a_tunnel_that_is_down_is_named():
    gw = Gateway(BROOKLYN)
    gw.link("sl-manhattan")["flags"] = ["POINTOPOINT", "NOARP"]
    result = check(gw)
    assert result["problems"] == ["tunnel sl-manhattan: down"]
    assert not [c for c in gw.calls if c[0] == "ping"]


def test_a_tunnel_with_the_wrong_mtu_is_named():
    gw = Gateway(BROOKLYN)
    gw.link("sl-manhattan")["mtu"] = 1500
    assert check(gw)["problems"] == ["tunnel sl-manhattan: MTU 1500, the plan says 1480"]


def test_a_tunnel_to_the_wrong_remote_is_named():
    gw = Gateway(BROOKLYN)
    gw.link("sl-manhattan")["linkinfo"]["info_data"]["remote"] = "172.16.1.13"
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: remote end 172.16.1.13, the plan says 172.16.1.12"
    ]


def test_a_link_of_another_kind_is_not_a_tunnel():
    gw = Gateway(BROOKLYN)
    gw.link("sl-manhattan")["linkinfo"] = {"info_kind": "veth"}
    assert check(gw)["problems"] == ["tunnel sl-manhattan: is a veth link, not an ipip tunnel"]


def test_no_answer_through_the_tunnel_names_the_peer_address():
    gw = Gateway(BROOKLYN)
    gw.answers["192.168.1.126"] = 0
    result = check(gw)
    assert result["problems"] == ["tunnel sl-manhattan: no answer from 192.168.1.126"]
    assert result["tunnels"][0]["ping"] == {"transmitted": 3, "received": 0, "rtt_avg_ms": None}


def test_one_answer_of_three_is_enough():
    gw = Gateway(BROOKLYN)
    gw.answers["192.168.1.126"] = 1
    assert check(gw)["healthy"] is True


def test_a_peer_routed_another_way_is_not_pinged():
    gw = Gateway(BROOKLYN)
    gw.paths["192.168.1.126"] = "eth1"
    result = check(gw)
    assert result["problems"] == [
        "tunnel sl-manhattan: 192.168.1.126 is routed via eth1, not the tunnel"
    ]
    assert not [c for c in gw.calls if c[0] == "ping"]


def test_no_route_at_all_to_the_peer_says_what_ip_answered():
    gw = Gateway(BROOKLYN)
    del gw.paths["192.168.1.126"]
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: no route from 192.168.2.126 to 192.168.1.126 "
        "(RTNETLINK answers: Network is unreachable)"
    ]


def test_ping_that_cannot_run_says_why():
    gw = Gateway(BROOKLYN)
    run = gw.run
    gw.run = lambda argv: (
        (2, "", "ping: bind: Cannot assign requested address\n") if argv[0] == "ping" else run(argv)
    )
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: no answer from 192.168.1.126 "
        "(ping: bind: Cannot assign requested address)"
    ]


# --------------------------------------------------------------------------
# routes


def test_a_missing_route_is_named_with_its_tunnel():
    gw = Gateway(MANHATTAN)
    gw.routes = [r for r in gw.routes if r["dst"] != "192.168.2.0/24"]
    result = check(gw)
    assert result["problems"] == ["route 192.168.2.0/24: missing (should go via sl-brooklyn)"]
    assert result["routes"] == {
        "total": 1,
        "ok": 0,
        "failed": [{"prefix": "192.168.2.0/24", "tunnel": "sl-brooklyn", "via": []}],
        "problems": ["route 192.168.2.0/24: missing (should go via sl-brooklyn)"],
    }


def test_a_route_via_the_wrong_device_is_named():
    gw = Gateway(MANHATTAN)
    for route in gw.routes:
        if route["dst"] == "192.168.2.0/24":
            route["dev"] = "eth1"
    assert check(gw)["problems"] == ["route 192.168.2.0/24: via eth1, not sl-brooklyn"]


def test_a_route_also_present_with_another_metric_still_counts():
    gw = Gateway(MANHATTAN)
    gw.routes.append({"dst": "192.168.2.0/24", "dev": "eth1", "metric": 500, "flags": []})
    assert check(gw)["routes"]["ok"] == 1


# --------------------------------------------------------------------------
# relay


def test_relay_inactive_where_the_plan_has_rules():
    gw = Gateway(MANHATTAN)
    gw.relay_state = "failed"
    result = check(gw)
    assert result["problems"] == [
        "relay: sitelink-relay.service is failed (the plan relays UDP 6799)"
    ]
    assert result["relay"]["ports"] == {}


def test_relay_status_that_is_stale():
    gw = Gateway(MANHATTAN)
    gw.files[hc.RELAY_STATUS_FILE] = json.dumps(relay_status([6799], updated=NOW - 30))
    result = check(gw)
    assert result["problems"] == ["relay: status is stale (updated 30 s ago, written every 5 s)"]
    assert result["relay"]["stale"] is True


@pytest.mark.parametrize(("age", "stale"), [(16.0, False), (16.5, True)])
def test_stale_means_three_missed_writes_and_a_second(age, stale):
    # The relay's own rule (format_status): older than 3 * interval + 1 s.
    relay = hc.check_relay([6799], "active", json.dumps(relay_status([6799], NOW - age)), NOW)
    assert relay["stale"] is stale


def test_relay_without_status_file_or_with_a_port_missing():
    gw = Gateway(MANHATTAN)
    gw.files.clear()
    assert check(gw)["problems"] == ["relay: no status file /run/sitelink-relay/status.json"]
    gw.files[hc.RELAY_STATUS_FILE] = json.dumps(relay_status([7000]))
    assert check(gw)["problems"] == ["relay: not listening on UDP 6799 (status lists 7000)"]
    gw.files[hc.RELAY_STATUS_FILE] = "{not json"
    (problem,) = check(gw)["problems"]
    assert problem.startswith("relay: unreadable status file /run/sitelink-relay/status.json:")


def test_relay_running_where_the_plan_has_no_rules():
    plan = copy.deepcopy(BROOKLYN)
    plan["relay"]["rules"] = []
    gw = Gateway(BROOKLYN)  # still running its old rules
    result = check(gw, plan)
    assert result["problems"] == [
        "relay: sitelink-relay.service is active but the plan has no relay rules"
    ]
    gw.relay_state = "inactive"
    assert check(gw, plan)["healthy"] is True


# --------------------------------------------------------------------------
# masquerade


def test_nat_table_missing_where_the_plan_masquerades():
    gw = Gateway(MANHATTAN)
    gw.nat = None
    result = check(gw)
    assert result["problems"] == [
        "NAT: table ip sitelink_masquerade missing (the plan masquerades 192.168.2.0/24)"
    ]
    assert result["masquerade"]["present"] is False


def test_nat_table_present_where_the_plan_masquerades_nothing():
    gw = Gateway(BROOKLYN)
    gw.nat = snat_table("eth0", ["192.168.1.0/24"], "192.168.2.126")
    assert check(gw)["problems"] == [
        "NAT: table ip sitelink_masquerade is present but the plan masquerades nothing"
    ]


def test_nat_table_with_the_wrong_address_interface_or_sources():
    plan = copy.deepcopy(MANHATTAN)
    plan["masquerade"]["sources"] = ["192.168.2.0/24", "10.77.0.0/24"]
    gw = Gateway(MANHATTAN)
    gw.nat = snat_table("eth1", ["192.168.2.0/24", "10.9.0.0/16"], "192.168.1.1")
    assert check(gw, plan)["problems"] == [
        "NAT: SNAT to 192.168.1.1, the plan says 192.168.1.126",
        "NAT: SNAT on eth1, the plan says eth0",
        "NAT: does not translate 10.77.0.0/24",
    ]


def test_nat_sources_read_from_a_set_of_several():
    plan = copy.deepcopy(MANHATTAN)
    plan["masquerade"]["sources"] = ["10.77.0.0/24", "192.168.2.0/24"]
    gw = Gateway(MANHATTAN)
    gw.nat = snat_table("eth0", ["10.77.0.0/24", "192.168.2.0/24"], "192.168.1.126")
    result = check(gw, plan)
    assert result["problems"] == []
    assert result["masquerade"]["sources"] == ["10.77.0.0/24", "192.168.2.0/24"]


def test_nat_sources_merged_by_nft_into_a_range():
    """Two adjacent /24s come back from the kernel as one range (seen on Debian 12)."""
    plan = copy.deepcopy(MANHATTAN)
    plan["masquerade"]["sources"] = ["192.168.3.0/24", "192.168.4.0/24"]
    gw = Gateway(MANHATTAN)
    gw.nat = snat_table("eth0", ["192.168.3.0/24", "192.168.4.0/24"], "192.168.1.126")
    rule = gw.nat["nftables"][-1]["rule"]
    rule["expr"][1]["match"]["right"] = {"set": [{"range": ["192.168.3.0", "192.168.4.255"]}]}
    assert check(gw, plan)["problems"] == []
    rule["expr"][1]["match"]["right"] = {"set": [{"range": ["192.168.3.0", "192.168.4.127"]}]}
    assert check(gw, plan)["problems"] == ["NAT: does not translate 192.168.4.0/24"]


def test_nft_that_fails_otherwise_is_a_problem_not_an_absent_table():
    gw = Gateway(BROOKLYN)
    gw.run = lambda argv, run=gw.run: (
        (127, "", "nft: command not found") if argv[0] == "nft" else run(argv)
    )
    assert check(gw)["problems"] == [
        "NAT: cannot list table ip sitelink_masquerade: nft: command not found"
    ]


# --------------------------------------------------------------------------
# the module


class FakeModule(fakes.FakeModule):
    def __init__(self, plan, check_mode=False, **params):
        super().__init__({"plan": plan, "ping_count": 3, **params}, check_mode=check_mode)


def run_module(module, gateway):
    with pytest.raises(Exit) as info:
        hc.run_module(module, runner=gateway)
    return info.value


@pytest.mark.parametrize("check_mode", [False, True])
def test_module_changes_nothing_and_does_not_fail_on_problems(check_mode):
    gw = Gateway(BROOKLYN)
    gw.answers["192.168.1.126"] = 0
    done = run_module(FakeModule(BROOKLYN, check_mode=check_mode), gw)
    assert done.failed is False
    assert done.result["changed"] is False
    assert done.result["healthy"] is False
    assert done.result["problems"] == ["tunnel sl-manhattan: no answer from 192.168.1.126"]


def test_module_fails_on_a_plan_that_is_not_one():
    done = run_module(FakeModule({"office": "x"}), Gateway(BROOKLYN))
    assert done.failed is True
    assert "not an office_plan (missing lan, tunnels" in done.result["msg"]


def test_module_fails_when_ip_cannot_read_the_links():
    gw = Gateway(BROOKLYN)
    gw.run = lambda argv: (1, "", "Cannot open netlink socket: Permission denied\n")
    done = run_module(FakeModule(BROOKLYN), gw)
    assert done.failed is True
    assert done.result["msg"] == (
        "cannot read the tunnels and routes: Cannot open netlink socket: Permission denied"
    )


def test_runner_reports_a_missing_tool_and_runs_the_others_by_path():
    class Module:
        def get_bin_path(self, tool, required=False):
            return None if tool == "nft" else f"/usr/sbin/{tool}"

        def run_command(self, argv, check_rc=False):
            return 0, " ".join(argv), ""

    runner = hc.Runner(Module())
    assert runner.run(["nft", "-j", "list", "ruleset"]) == (127, "", "nft: command not found")
    assert runner.run(["ip", "-j", "link"]) == (0, "/usr/sbin/ip -j link", "")


def test_parse_ping_reads_iputils_summaries():
    assert hc.parse_ping(ping_output("192.168.1.126", "192.168.2.126", 2)) == {
        "transmitted": 3,
        "received": 2,
        "rtt_avg_ms": 0.61,
    }
    assert hc.parse_ping("ping: bind: Cannot assign requested address") == {
        "transmitted": 0,
        "received": 0,
        "rtt_avg_ms": None,
    }


# --------------------------------------------------------------------------
# the report, on the controller

UNREACHABLE = {
    "unreachable": True,
    "changed": False,
    "msg": "Task failed: Failed to connect to the host via ssh: ssh: connect to host "
    "127.0.0.1 port 9: Connection refused",
}


def results():
    healthy = check(Gateway(MANHATTAN))
    gw = Gateway(BROOKLYN)
    gw.answers["192.168.1.126"] = 0
    return {"manhattan-gw": healthy, "brooklyn-gw": check(gw)}


def test_report_table_has_one_row_per_office():
    built = report.build_report(
        ["manhattan-gw", "brooklyn-gw"],
        results(),
        {"manhattan-gw": "manhattan", "brooklyn-gw": "brooklyn"},
        "2024-05-01T12:00:00+00:00",
    )
    assert report.render_table(built).splitlines() == [
        "office     host          tunnels  routes  relay               NAT            verdict",
        "---------  ------------  -------  ------  ------------------  -------------  ---------",
        "brooklyn   brooklyn-gw   0/1      1/1     active 12/12/0/0/3  off            UNHEALTHY",
        "manhattan  manhattan-gw  1/1      1/1     active 12/12/0/0/3  ok (1 source)  ok",
        "1 of 2 offices healthy",
        report.COUNTER_LEGEND,
    ]


def test_report_problems_name_the_office():
    built = report.build_report(["manhattan-gw", "brooklyn-gw"], results(), {}, "now")
    assert built["healthy"] is False
    assert built["problems"] == ["brooklyn: tunnel sl-manhattan: no answer from 192.168.1.126"]
    assert built["counts"] == {"offices": 2, "healthy": 1, "unhealthy": 1}


def test_an_unreachable_gateway_is_an_unhealthy_office_not_a_skipped_one():
    built = report.build_report(
        ["manhattan-gw", "brooklyn-gw"],
        {"manhattan-gw": check(Gateway(MANHATTAN)), "brooklyn-gw": UNREACHABLE},
        {"brooklyn-gw": "brooklyn"},
        "now",
    )
    assert built["healthy"] is False
    assert built["problems"] == [
        "brooklyn: unreachable (Failed to connect to the host via ssh: ssh: connect to host "
        "127.0.0.1 port 9: Connection refused)"
    ]
    brooklyn = built["offices"][0]
    assert (brooklyn["office"], brooklyn["verdict"], brooklyn["tunnels"]) == (
        "brooklyn",
        "unreachable",
        None,
    )
    row = report.render_table(built).splitlines()[2].split()
    assert row == ["brooklyn", "brooklyn-gw", "-", "-", "-", "-", "UNREACHABLE"]


def test_a_host_without_result_or_whose_check_failed_is_unhealthy():
    built = report.build_report(
        ["a-gw", "b-gw", "c-gw"],
        {"b-gw": {"failed": True, "msg": "plan: not an office_plan"}, "c-gw": {"skipped": True}},
        {"a-gw": "a"},
        "now",
    )
    assert built["problems"] == [
        "a: no result: the check did not run on this gateway",
        "b-gw: check failed: plan: not an office_plan",
        "c-gw: no result: the check was skipped on this gateway",
    ]
    assert [e["verdict"] for e in built["offices"]] == ["no result", "failed", "no result"]


def test_all_healthy_and_nothing_checked():
    built = report.build_report(
        ["manhattan-gw"], {"manhattan-gw": check(Gateway(MANHATTAN))}, {}, "t"
    )
    assert (built["healthy"], built["problems"]) == (True, [])
    empty = report.build_report([], {}, {}, "t")
    assert (empty["healthy"], empty["problems"]) == (False, ["no office was checked"])


def test_report_json_shape():
    built = report.build_report(
        ["manhattan-gw", "brooklyn-gw"], results(), {}, "2024-05-01T12:00:00+00:00"
    )
    data = json.loads(json.dumps(built))  # plain JSON all the way down
    assert list(data) == ["version", "generated", "healthy", "counts", "problems", "offices"]
    assert data["version"] == 1
    assert [o["office"] for o in data["offices"]] == ["brooklyn", "manhattan"]
    assert list(data["offices"][0]) == [
        "office",
        "host",
        "verdict",
        "healthy",
        "problems",
        "tunnels",
        "routes",
        "relay",
        "masquerade",
    ]
    assert data["offices"][1]["relay"]["ports"]["6799"]["forwarded"] == 12


@pytest.mark.parametrize(
    ("relay", "cell"),
    [
        ({"expected": False, "state": "inactive"}, "off"),
        ({"expected": False, "state": "active"}, "ACTIVE (no rules)"),
        ({"expected": True, "state": "inactive"}, "INACTIVE"),
        ({"expected": True, "state": "active", "ports": {}, "problems": ["x"]}, "NO STATUS"),
        (
            {"expected": True, "state": "active", "age": 1.0, "ports": {}, "problems": ["x"]},
            "WRONG 0/0/0/0/0",
        ),
        (
            {"expected": True, "state": "active", "stale": True, "ports": {"1": {"received": 4}}},
            "STALE 4/0/0/0/0",
        ),
    ],
)
def test_relay_cell_capitalises_what_is_wrong(relay, cell):
    assert report._relay_cell(relay) == cell


def test_relay_state_unknown_says_what_systemctl_said():
    gw = Gateway(MANHATTAN)
    gw.run = lambda argv, run=gw.run: (
        (1, "", "System has not been booted with systemd as init system (PID 1).\n")
        if argv[0] == "systemctl"
        else run(argv)
    )
    assert check(gw)["problems"] == [
        "relay: sitelink-relay.service is unknown (the plan relays UDP 6799; systemctl: "
        "System has not been booted with systemd as init system (PID 1).)"
    ]


def test_summary_names_every_problem_on_a_line():
    built = report.build_report(["manhattan-gw", "brooklyn-gw"], results(), {}, "t")
    assert report.summary_text(built) == (
        "1 of 2 offices unhealthy:\n  - brooklyn: tunnel sl-manhattan: no answer from 192.168.1.126"
    )
    healthy = report.build_report(
        ["manhattan-gw"], {"manhattan-gw": check(Gateway(MANHATTAN))}, {}, "t"
    )
    assert report.summary_text(healthy) == "1 of 1 office healthy"
