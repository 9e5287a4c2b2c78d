"""Unit tests for sitelink.gateway.gateway_health and the health report.

No root, network or gateway needed: each gateway's live state is what its
tools print (iproute2 6.1 JSON, and text for ip xfrm, which has no JSON;
nftables 1.0.6; the relay's status file), served by a fake runner built from
the gateway's real plan (the case study), then broken one way at a time.
"""

from __future__ import annotations

import copy
import ipaddress
import json
from pathlib import Path

import pytest
import yaml
from ansible_collections.sitelink.gateway.plugins.module_utils import health as hc
from ansible_collections.sitelink.gateway.plugins.module_utils import ipsec
from ansible_collections.sitelink.gateway.plugins.plugin_utils import health as report
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils import fakes
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import Exit

ROOT = Path(__file__).resolve().parents[4]
NOW = 1_700_000_000.0


def case_study_plans(**deployment) -> dict:
    inventory = yaml.safe_load((ROOT / "examples/case-study/inventory.yml").read_text())
    group = inventory["offices"]
    offices = {
        host: {**group["vars"], **deployment, **host_vars}
        for host, host_vars in group["hosts"].items()
    }
    plan = plan_network(offices)
    return {host: office_plan(plan, host) for host in plan.gateways}


PLANS = case_study_plans()
MANHATTAN = PLANS["manhattan-gw"]  # hub: masquerades, relays 6799 to Brooklyn
BROOKLYN = PLANS["brooklyn-gw"]  # branch: accepts 6799 from Manhattan, no masquerade
# The same offices with office_tunnel_protection: none (plain IPIP).
PLAIN = case_study_plans(office_tunnel_protection="none")

# What `ip xfrm state` prints of an SA's key: it must never reach a result.
KEY = "0x4f1c2a9be07d53a1c6e8f0b2d4a69c8e1f3b5d7a"


# --------------------------------------------------------------------------
# what the tools print


def ipip_link(name, local, remote, up=True, mtu=1440):
    return {
        "ifindex": 4,
        "link": None,
        "ifname": name,
        "flags": ["POINTOPOINT", "NOARP"] + (["UP", "LOWER_UP"] if up else []),
        "mtu": mtu,
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


def relay_status(ports, updated=NOW - 2, peers=None):
    """The relay's status file: counters per port and per peer relay."""
    return {
        "relay_version": "0.2.0",
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
        "peers": {
            address: {
                "office": office,
                "received": 12,
                "accepted": 12,
                "sent": 12,
                "dropped": {},
            }
            for address, office in (peers or {}).items()
        },
        "config": "/etc/sitelink/relay.json",
        "wire": "sitelink1",
    }


def xfrm_state_output(sas):
    """``ip xfrm state list`` (iproute2 6.1, no -s): every SA with its key, as the kernel has it."""
    blocks = []
    for i, sa in enumerate(sas):
        blocks += [
            f"src {sa['src']} dst {sa['dst']}",
            f"\tproto esp spi 0x{sa['spi']:08x} reqid 1 mode {sa['mode']}",
            "\treplay-window 0 flag af-unspec",
            f"\taead rfc4106(gcm(aes)) {KEY}{i:02x} 128",
            "\tanti-replay context: seq 0x0, oseq 0x3, bitmap 0x00000000",
            f"\tsel src {sa['src']}/32 dst {sa['dst']}/32 proto ipencap ",
        ]
    return "\n".join(blocks) + "\n" if blocks else ""


def xfrm_policy_output(policies):
    """``ip xfrm policy list``: strongSwan's trap policies, then its IKE socket bypasses."""
    lines = []
    for pol in policies:
        lines += [
            f"src {pol['src']}/32 dst {pol['dst']}/32 proto {pol.get('proto', 'ipencap')} ",
            f"\tdir {pol['dir']} {pol.get('action', '')}priority 366719 ptype main ",
        ]
        if pol.get("esp", True):
            lines += ["\ttmpl src 0.0.0.0 dst 0.0.0.0", "\t\tproto esp reqid 1 mode transport"]
    for direction in ("in", "out", "in", "out"):
        lines += [
            "src 0.0.0.0/0 dst 0.0.0.0/0 ",
            f"\tsocket {direction} priority 0 ptype main ",
        ]
    return "\n".join(lines) + "\n"


def firewall_listing(table="sitelink_firewall", comment="sitelink-gateway 3f2a9c0d1e4b5a67"):
    """``nft -t list table inet TABLE``: its comment, sets without elements, chains."""
    lines = [f"table inet {table} {{"]
    if comment:
        lines.append(f'\tcomment "{comment}"')
    lines += [
        "\tset link_peers {",
        "\t\ttype ipv4_addr",
        "\t}",
        "",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        '\t\tiifname "eth1" ip protocol 4 meta ipsec missing counter packets 0 bytes 0 drop',
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


class Gateway:
    """A gateway as its tools see it; starts healthy for ``plan``, then tests break it."""

    def __init__(self, plan):
        self.plan = plan
        own = plan["lan"]["address"]
        self.own = own
        self.links = [eth_link(plan["lan"]["interface"]), eth_link(plan["wan"]["interface"])]
        self.links += [
            ipip_link(t["name"], t["local"], t["remote"], mtu=t["mtu"]) for t in plan["tunnels"]
        ]
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
        self.unprobed: set[str] = set()  # not probed before the deadline
        self.probe_errors: dict[str, str] = {}
        ports = [rule["port"] for rule in plan["relay"]["rules"]]
        self.relay_state = "active" if ports else "inactive"
        peers = {a: p["office"] for a, p in plan["relay"]["peers"].items()}
        status = relay_status(ports, peers=peers)
        self.files = {hc.RELAY_STATUS_FILE: json.dumps(status)} if ports else {}
        masquerade = plan["masquerade"]
        self.nat = (
            snat_table(masquerade["interface"], masquerade["sources"], masquerade["address"])
            if masquerade["sources"]
            else None
        )
        self.firewall = firewall_listing()
        # IPsec as strongSwan leaves it after the pings: an ESP SA each way, and the
        # trap policies out and in, for every connection of the plan.
        self.sas, self.policies = [], []
        for spi, conn in enumerate(plan["ipsec"]["connections"], start=0xC918ADDE):
            local, remote = conn["local"], conn["remote"]
            self.sas += [
                {"src": local, "dst": remote, "spi": spi, "mode": "transport"},
                {"src": remote, "dst": local, "spi": spi + 0x100, "mode": "transport"},
            ]
            self.policies += [
                {"dir": "out", "src": local, "dst": remote},
                {"dir": "in", "src": remote, "dst": local},
            ]
        self.calls = []

    # -- ways to break it
    def link(self, name):
        return next(link for link in self.links if link["ifname"] == name)

    def drop_sa(self, src, dst):
        self.sas = [sa for sa in self.sas if (sa["src"], sa["dst"]) != (src, dst)]

    def drop_policy(self, direction):
        self.policies = [p for p in self.policies if p["dir"] != direction]

    def drop_link(self, name):
        self.links = [link for link in self.links if link["ifname"] != name]
        self.routes = [route for route in self.routes if route["dev"] != name]

    # -- the runner interface
    def run(self, argv, data=None):
        self.calls.append(list(argv))
        if argv == hc.route_get_argv():
            return self.route_gets(data)
        if argv[:5] == ["ip", "-j", "-d", "link", "show"]:
            return 0, json.dumps(self.links), ""
        if argv[:4] == ["ip", "-j", "route", "show"]:
            return 0, json.dumps(self.routes), ""
        if argv[:2] == ["systemctl", "is-active"]:
            return (0 if self.relay_state == "active" else 3), self.relay_state + "\n", ""
        if argv[:3] == ["ip", "xfrm", "state"]:
            return 0, xfrm_state_output(self.sas), ""
        if argv[:3] == ["ip", "xfrm", "policy"]:
            return 0, xfrm_policy_output(self.policies), ""
        if argv[:3] == ["nft", "-t", "list"]:
            if self.firewall is None:
                return (
                    1,
                    "",
                    f"Error: No such file or directory\nlist table inet {argv[-1]}\n",
                )
            return 0, self.firewall, ""
        if argv[:3] == ["nft", "-j", "list"]:
            if self.nat is None:
                return (
                    1,
                    "",
                    "Error: No such file or directory\nlist table ip sitelink_masquerade\n",
                )
            return 0, json.dumps(self.nat), ""
        raise AssertionError(f"unexpected command {argv}")

    def route_gets(self, script):
        """``ip -j -force -batch -`` as iproute2 6.1 answers: a JSON line per route found,
        an error and ``Command failed -:N`` per line that failed."""
        out, err, rc = [], [], 0
        for number, line in enumerate(script.splitlines(), start=1):
            words = line.split()
            assert words[:2] == ["route", "get"] and words[3] == "from", line
            self.calls.append(["route", "get", words[2], "from", words[4]])
            dev = self.paths.get(words[2])
            if dev is None:
                err += ["RTNETLINK answers: Network is unreachable", f"Command failed -:{number}"]
                rc = 1
            else:
                out.append(json.dumps([{"dst": words[2], "from": words[4], "dev": dev}]))
        return rc, "".join(line + "\n" for line in out), "".join(line + "\n" for line in err)

    def probe(self, source, targets, count, deadline, concurrency):
        self.calls.append(["probe", source, *[address for _unused, address in targets]])
        self.probe_options = {"count": count, "deadline": deadline, "concurrency": concurrency}
        return {
            name: {
                "probed": address not in self.unprobed,
                "transmitted": count,
                "received": self.answers.get(address, 0),
                "rtt_avg_ms": 0.61 if self.answers.get(address, 0) else None,
                "error": self.probe_errors.get(address),
            }
            for name, address in targets
        }

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
    assert result["routes"] == {"total": 1, "ok": 1, "failed": [], "problems": [], "carriers": []}
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
            "dropped_by_reason": {"own_echo": 3},
            "send_errors_by_reason": {},
        }
    }
    assert result["relay"]["peers"] == {
        "192.168.2.126": {
            "office": "brooklyn",
            "received": 12,
            "accepted": 12,
            "sent": 12,
            "dropped": 0,
            "dropped_by_reason": {},
        }
    }
    assert result["relay"]["wire"] == "sitelink1"
    assert result["masquerade"]["present"] is True
    assert result["masquerade"]["address"] == "192.168.1.126"
    assert result["masquerade"]["sources"] == ["192.168.2.0/24"]
    assert result["ipsec"] == {
        "protection": "ipsec",
        "plain_ipip": False,
        "unprotected": [],
        "connections": [
            {
                "name": "sl-brooklyn",
                "peer": "brooklyn",
                "local": "172.16.1.12",
                "remote": "172.17.2.10",
                "sa": {"out": True, "in": True},
                "policy": {"out": True, "in": True},
                "keys": None,  # the fake has no swanctl file
                "ok": True,
                "problems": [],
            }
        ],
        "ok": True,
        "problems": [],
    }
    assert result["firewall"] == {
        "table": "inet sitelink_firewall",
        "present": True,
        "ours": True,
        "digest": "3f2a9c0d1e4b5a67",
        "ok": True,
        "problems": [],
    }
    # Nine steps whatever the number of tunnels, none of which changes anything; IPsec
    # is read once, after the probes that keyed it.
    assert gw.calls == [
        ["ip", "-j", "-d", "link", "show"],
        ["ip", "-j", "route", "show", "table", "main"],
        ["ip", "-j", "-force", "-batch", "-"],
        ["route", "get", "192.168.2.126", "from", "192.168.1.126"],
        ["probe", "192.168.1.126", "192.168.2.126"],
        ["ip", "xfrm", "state", "list"],
        ["ip", "xfrm", "policy", "list"],
        ["systemctl", "is-active", "sitelink-relay.service"],
        ["nft", "-j", "list", "table", "ip", "sitelink_masquerade"],
        ["nft", "-t", "list", "table", "inet", "sitelink_firewall"],
    ]
    assert gw.probe_options == {"count": 3, "deadline": 60.0, "concurrency": 64}


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
    assert not [c for c in gw.calls if c[0] in ("probe", "route") or c == hc.route_get_argv()]
    assert result["tunnels"][0]["present"] is False


def test_a_tunnel_that_is_down_is_named():
    gw = Gateway(BROOKLYN)
    gw.link("sl-manhattan")["flags"] = ["POINTOPOINT", "NOARP"]
    result = check(gw)
    assert result["problems"] == ["tunnel sl-manhattan: down"]
    assert not [c for c in gw.calls if c[0] == "probe"]


def test_a_tunnel_with_the_wrong_mtu_is_named():
    gw = Gateway(BROOKLYN)
    gw.link("sl-manhattan")["mtu"] = 1500
    assert check(gw)["problems"] == ["tunnel sl-manhattan: MTU 1500, the plan says 1440"]


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
    assert not [c for c in gw.calls if c[0] == "probe"]


def test_no_route_at_all_to_the_peer_says_what_ip_answered():
    gw = Gateway(BROOKLYN)
    del gw.paths["192.168.1.126"]
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: no route from 192.168.2.126 to 192.168.1.126 "
        "(RTNETLINK answers: Network is unreachable)"
    ]


def test_a_probe_that_cannot_be_sent_says_why():
    gw = Gateway(BROOKLYN)
    gw.answers["192.168.1.126"] = 0
    gw.probe_errors["192.168.1.126"] = "Operation not permitted"
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: no answer from 192.168.1.126 (Operation not permitted)"
    ]


def test_a_tunnel_not_probed_before_the_deadline_is_named_as_such_not_as_dead():
    gw = Gateway(BROOKLYN)
    gw.unprobed.add("192.168.1.126")
    result = hc.check_gateway(BROOKLYN, gw, probe_deadline=30)
    assert result["problems"] == [
        "tunnel sl-manhattan: not probed: the 30 s deadline for all tunnels passed first "
        "(probe_deadline)"
    ]
    assert result["tunnels"][0]["ping"] is None
    # and IPsec does not blame a missing SA on a probe that never ran
    gw.sas = []
    assert len(hc.check_gateway(BROOKLYN, gw, probe_deadline=30)["problems"]) == 1


def test_many_tunnels_take_one_route_lookup_and_one_probe_and_each_answer_is_its_own():
    plan = copy.deepcopy(MANHATTAN)
    template_tunnel, template_link = plan["tunnels"][0], plan["links"][0]
    for index in range(3, 203):
        name, address = f"sl-branch{index}", f"10.{index // 250}.{index % 250}.126"
        plan["tunnels"].append({**template_tunnel, "name": name, "routes": []})
        plan["links"].append(
            {**template_link, "peer": f"branch{index}", "peer_address": address, "tunnel": name}
        )
    gw = Gateway(plan)
    for link in plan["links"]:
        gw.paths[link["peer_address"]] = link["tunnel"]
    del gw.paths["10.0.9.126"]  # branch9: ip finds no route (its line fails in the batch)
    gw.paths["10.0.77.126"] = "eth1"  # branch77: routed around its tunnel
    gw.answers["10.0.150.126"] = 0  # branch150: dead
    result = hc.check_gateway(plan, gw)
    assert [t["name"] for t in result["tunnels"] if not t["ok"]] == [
        "sl-branch9",
        "sl-branch77",
        "sl-branch150",
    ]
    assert [p for p in result["problems"] if p.startswith("tunnel ")] == [
        "tunnel sl-branch9: no route from 192.168.1.126 to 10.0.9.126 "
        "(RTNETLINK answers: Network is unreachable)",
        "tunnel sl-branch77: 10.0.77.126 is routed via eth1, not the tunnel",
        "tunnel sl-branch150: no answer from 10.0.150.126",
    ]
    assert [c[0] for c in gw.calls].count("probe") == 1
    assert gw.calls.count(hc.route_get_argv()) == 1
    (probe,) = [c for c in gw.calls if c[0] == "probe"]
    assert len(probe) == 2 + 201 - 2  # every tunnel but the two whose path is wrong


@pytest.mark.parametrize(
    ("rc", "stdout", "stderr", "expected"),
    [
        (
            0,
            '[{"dst":"10.0.0.1","dev":"sl-a","flags":[]}]\n[{"dst":"10.0.0.2","dev":"sl-b"}]\n',
            "",
            [("sl-a", None), ("sl-b", None)],
        ),
        # one line failed: its error is the message just before "Command failed -:N"
        (
            1,
            '[{"dst":"10.0.0.2","dev":"sl-b"}]',
            'Error: any valid prefix is expected rather than "x".\nCommand failed -:1\n',
            [(None, 'Error: any valid prefix is expected rather than "x".'), ("sl-b", None)],
        ),
        # ip could not run at all
        (127, "", "ip: command not found", [(None, "ip: command not found")] * 2),
    ],
)
def test_parse_route_gets(rc, stdout, stderr, expected):
    paths = [("10.0.0.1", "192.168.1.126"), ("10.0.0.2", "192.168.1.126")]
    assert hc.parse_route_gets(paths, rc, stdout, stderr) == expected
    assert hc.route_get_script(paths) == (
        "route get 10.0.0.1 from 192.168.1.126\nroute get 10.0.0.2 from 192.168.1.126\n"
    )


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
        "carriers": [],
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
    gw.run = lambda argv, data=None, run=gw.run: (
        (127, "", "nft: command not found") if argv[0] == "nft" else run(argv, data)
    )
    result = check(gw)
    assert result["problems"] == [
        "firewall: cannot list table inet sitelink_firewall: nft: command not found",
        "NAT: cannot list table ip sitelink_masquerade: nft: command not found",
    ]
    assert result["firewall"]["present"] is None  # unknown, not absent


# --------------------------------------------------------------------------
# IPsec: ESP transport-mode SAs both ways, and the policies, after the pings

BROOKLYN_WAN, MANHATTAN_WAN = "172.17.2.10", "172.16.1.12"


def test_esp_sas_both_ways_and_both_policies_pass():
    result = check(Gateway(BROOKLYN))
    assert result["healthy"] is True
    (conn,) = result["ipsec"]["connections"]
    assert (conn["name"], conn["local"], conn["remote"]) == (
        "sl-manhattan",
        BROOKLYN_WAN,
        MANHATTAN_WAN,
    )
    assert conn["sa"] == {"out": True, "in": True}
    assert conn["policy"] == {"out": True, "in": True}


def test_the_sas_are_read_once_per_gateway_after_every_ping():
    plan = copy.deepcopy(MANHATTAN)
    # A second tunnel and its connection, so that "once" means once, not per tunnel.
    plan["tunnels"].append({**plan["tunnels"][0], "name": "sl-queens", "remote": "172.18.3.10"})
    plan["links"].append(
        {
            **plan["links"][0],
            "peer": "queens",
            "peer_address": "192.168.3.126",
            "tunnel": "sl-queens",
        }
    )
    plan["ipsec"]["connections"].append(
        {**plan["ipsec"]["connections"][0], "name": "sl-queens", "remote": "172.18.3.10"}
    )
    gw = Gateway(plan)
    gw.paths["192.168.3.126"] = "sl-queens"
    result = check(gw)
    assert result["problems"] == []
    commands = [c[:3] if c[0] == "ip" else c[:1] for c in gw.calls]
    assert commands.count(["ip", "xfrm", "state"]) == 1
    assert commands.count(["ip", "xfrm", "policy"]) == 1
    assert commands.count(["probe"]) == 1
    assert commands.count(hc.route_get_argv()[:3]) == 1
    assert commands.index(["ip", "xfrm", "state"]) > commands.index(["probe"])


def test_an_sa_missing_one_way_is_named_with_its_direction():
    gw = Gateway(BROOKLYN)
    gw.drop_sa(MANHATTAN_WAN, BROOKLYN_WAN)  # nothing keyed from Manhattan to Brooklyn
    result = check(gw)
    assert result["problems"] == [
        "tunnel sl-manhattan: no ESP SA from 172.16.1.12 (IPsec not established)"
    ]
    assert result["ipsec"]["connections"][0]["sa"] == {"out": True, "in": False}
    gw = Gateway(BROOKLYN)
    gw.drop_sa(BROOKLYN_WAN, MANHATTAN_WAN)
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: no ESP SA to 172.16.1.12 (IPsec not established)"
    ]


def test_no_sa_at_all_is_one_problem_next_to_the_ping_it_explains():
    gw = Gateway(BROOKLYN)
    gw.sas = []
    gw.answers["192.168.1.126"] = 0  # IKE failed: the ping had no answer
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: no answer from 192.168.1.126",
        "tunnel sl-manhattan: no ESP SA to or from 172.16.1.12 (IPsec not established)",
    ]


def test_an_sa_still_being_negotiated_is_not_established():
    # The kernel lists an ACQUIRE (IKE under way) as an SA with SPI 0.
    gw = Gateway(BROOKLYN)
    for sa in gw.sas:
        if sa["src"] == BROOKLYN_WAN:
            sa["spi"] = 0
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: no ESP SA to 172.16.1.12 (IPsec not established)"
    ]


def test_an_sa_in_tunnel_mode_is_not_the_planned_transport_mode():
    gw = Gateway(BROOKLYN)
    gw.sas[0]["mode"] = "tunnel"
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: ESP SA to 172.16.1.12 is in tunnel mode, not transport"
    ]


def test_a_missing_sa_is_no_problem_where_no_ping_ran_to_key_it():
    # The tunnel is down: no packet triggered IKE, and the tunnel is already named.
    gw = Gateway(BROOKLYN)
    gw.link("sl-manhattan")["flags"] = ["POINTOPOINT", "NOARP"]
    gw.sas = []
    result = check(gw)
    assert result["problems"] == ["tunnel sl-manhattan: down"]
    assert result["ipsec"]["connections"][0]["sa"] == {"out": False, "in": False}


def test_a_missing_outbound_policy_means_ipip_in_clear_text():
    gw = Gateway(BROOKLYN)
    gw.drop_policy("out")
    result = check(gw)
    assert result["problems"] == [
        "tunnel sl-manhattan: no IPsec policy: IPIP to 172.16.1.12 would leave in clear text"
    ]
    assert result["ipsec"]["connections"][0]["policy"] == {"out": False, "in": True}
    assert result["ipsec"]["ok"] is False


def test_a_missing_inbound_policy_is_named():
    gw = Gateway(BROOKLYN)
    gw.drop_policy("in")
    assert check(gw)["problems"] == [
        "tunnel sl-manhattan: no inbound IPsec policy: IPIP from 172.16.1.12 would be "
        "accepted without ESP"
    ]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"esp": False}, "no IPsec policy: IPIP to 172.16.1.12 would leave in clear text"),
        ({"proto": "tcp"}, "no IPsec policy: IPIP to 172.16.1.12 would leave in clear text"),
        ({"dst": "172.16.1.13"}, "no IPsec policy: IPIP to 172.16.1.12 would leave in clear text"),
        ({"action": "action block "}, "an IPsec policy blocks IPIP to 172.16.1.12"),
    ],
)
def test_an_outbound_policy_that_does_not_protect_ipip(change, problem):
    gw = Gateway(BROOKLYN)
    next(p for p in gw.policies if p["dir"] == "out").update(change)
    assert check(gw)["problems"] == [f"tunnel sl-manhattan: {problem}"]


def test_protocol_4_by_number_without_netbase():
    # Without /etc/protocols, iproute2 prints the selector's protocol as a number.
    gw = Gateway(BROOKLYN)
    for pol in gw.policies:
        pol["proto"] = "4"
    assert check(gw)["problems"] == []


def _everything_returned(result) -> str:
    return json.dumps(result, sort_keys=True)


def test_keys_never_reach_the_result():
    # Healthy, broken and unreadable alike: the key lines of ip xfrm state are never kept.
    gw = Gateway(BROOKLYN)
    assert KEY in xfrm_state_output(gw.sas)  # the fake does print keys
    healthy = check(gw)
    gw.sas[0]["mode"] = "tunnel"
    gw.drop_sa(MANHATTAN_WAN, BROOKLYN_WAN)
    gw.drop_policy("in")
    broken = check(gw)
    assert broken["healthy"] is False
    # ip failing, with the listing on stdout and nothing on stderr: no tail of it is quoted.
    gw = Gateway(BROOKLYN)
    gw.run = lambda argv, data=None, run=gw.run: (
        (1, xfrm_state_output(gw.sas), "")
        if argv[:3] == ["ip", "xfrm", "state"]
        else run(argv, data)
    )
    unreadable = check(gw)
    assert unreadable["problems"] == ["IPsec: cannot read the kernel's SAs: exit status 1"]
    done = run_module(FakeModule(BROOKLYN), Gateway(BROOKLYN))
    for result in (healthy, broken, unreadable, done.result):
        text = _everything_returned(result)
        assert KEY not in text
        assert KEY[2:10] not in text  # nor a piece of one
        assert "aead" not in text and "spi" not in text and "0xc918" not in text


def test_xfrm_that_cannot_be_read_says_what_ip_said_and_claims_nothing_missing():
    gw = Gateway(BROOKLYN)
    gw.run = lambda argv, data=None, run=gw.run: (
        (2, "", "RTNETLINK answers: Operation not permitted\n")
        if argv[:2] == ["ip", "xfrm"]
        else run(argv, data)
    )
    result = check(gw)
    assert result["problems"] == [
        "IPsec: cannot read the kernel's SAs: RTNETLINK answers: Operation not permitted",
        "IPsec: cannot read the kernel's policies: RTNETLINK answers: Operation not permitted",
    ]
    conn = result["ipsec"]["connections"][0]
    assert (conn["sa"], conn["policy"], conn["ok"]) == (
        {"out": None, "in": None},
        {"out": None, "in": None},
        False,
    )


def test_parse_xfrm_keeps_only_what_names_an_sa():
    text = xfrm_state_output(
        [{"src": "10.0.0.1", "dst": "10.0.0.2", "spi": 0xC918ADDE, "mode": "transport"}]
    )
    assert hc.parse_xfrm_states(text) == [
        {
            "src": "10.0.0.1",
            "dst": "10.0.0.2",
            "proto": "esp",
            "mode": "transport",
            "established": True,
        }
    ]
    policies = hc.parse_xfrm_policies(
        xfrm_policy_output([{"dir": "out", "src": "10.0.0.1", "dst": "10.0.0.2"}])
    )
    assert policies[0] == {
        "src": "10.0.0.1/32",
        "dst": "10.0.0.2/32",
        "proto": "ipencap",
        "dir": "out",
        "socket": False,
        "action": "allow",
        "templates": [{"proto": "esp", "mode": "transport"}],
    }
    assert [(p["dir"], p["socket"]) for p in policies[1:]] == [
        ("in", True),
        ("out", True),
        ("in", True),
        ("out", True),
    ]


# --------------------------------------------------------------------------
# plain IPIP (office_tunnel_protection: none): not a problem, but said


def test_plain_ipip_reads_no_xfrm_and_raises_the_flag():
    plan = PLAIN["brooklyn-gw"]
    assert plan["protection"] == "none" and plan["ipsec"]["connections"] == []
    gw = Gateway(plan)
    result = check(gw)
    assert result["healthy"] is True
    assert result["problems"] == []
    assert result["ipsec"] == {
        "protection": "none",
        "plain_ipip": True,
        "unprotected": [],
        "connections": [],
        "ok": True,
        "problems": [],
    }
    assert not [c for c in gw.calls if c[:2] == ["ip", "xfrm"]]


def test_a_plan_without_protection_is_not_a_gateway_plan():
    plan = copy.deepcopy(BROOKLYN)
    del plan["protection"]
    with pytest.raises(hc.HealthError, match="missing protection"):
        hc.plan_view(plan)
    plan["protection"] = "wireguard"
    with pytest.raises(hc.HealthError, match="protection: 'wireguard' is not one of ipsec, none"):
        hc.plan_view(plan)


def test_report_shows_plain_ipip_in_the_table_and_warns_once():
    results_ = {host: check(Gateway(plan)) for host, plan in PLAIN.items()}
    built = report.build_report(sorted(PLAIN), results_, {}, "t")
    assert built["healthy"] is True
    assert built["problems"] == []
    assert built["warnings"] == [
        "office_tunnel_protection: none: the links of every office are plain IPIP, readable "
        "by anyone on the path and forgeable by anyone on the Internet (RFC 2003 has no "
        "authentication)"
    ]
    rows = report.render_table(built).splitlines()
    assert rows[0].split()[4] == "protection"
    assert [row.split("  ")[0] for row in rows[2:4]] == ["brooklyn", "manhattan"]
    assert all("NONE (plain IPIP)" in row for row in rows[2:4])


@pytest.mark.parametrize(
    ("ipsec", "cell"),
    [
        (None, "-"),
        ({"protection": "none", "plain_ipip": True}, "NONE (plain IPIP)"),
        ({"protection": "ipsec", "connections": [{}], "problems": []}, "ipsec ok"),
        ({"protection": "ipsec", "connections": [{}], "problems": ["x"]}, "ipsec: 1 problem"),
        ({"protection": "ipsec", "connections": [{}], "problems": ["x", "y"]}, "ipsec: 2 problems"),
        ({"protection": "ipsec", "connections": [], "problems": []}, "ipsec (no links)"),
    ],
)
def test_protection_cell(ipsec, cell):
    assert report._protection_cell(ipsec) == cell


def test_the_warning_names_a_few_offices_or_counts_many():
    def entry(office, plain):
        return {"office": office, "ipsec": {"plain_ipip": plain}}

    few = [entry("a", True), entry("b", True), entry("c", False)]
    assert report.warning_lines(few)[0].startswith(
        "office_tunnel_protection: none: the links of a, b are plain IPIP"
    )
    many = [entry(f"o{i}", True) for i in range(7)] + [entry("x", False)]
    assert "the links of 7 offices are plain IPIP" in report.warning_lines(many)[0]
    assert report.warning_lines([entry("solo", True)])[0].startswith(
        "office_tunnel_protection: none: the links of solo are"
    )
    assert report.warning_lines([entry("a", False), {"office": "b", "ipsec": None}]) == []


# --------------------------------------------------------------------------
# firewall: the collection's table, present and marked


def test_firewall_table_missing_is_named():
    gw = Gateway(BROOKLYN)
    gw.firewall = None
    result = check(gw)
    assert result["problems"] == ["firewall: table inet sitelink_firewall missing"]
    assert (result["firewall"]["present"], result["firewall"]["ours"]) == (False, False)


def test_firewall_table_present_and_ours():
    result = check(Gateway(BROOKLYN))
    assert result["firewall"]["ok"] is True
    assert result["firewall"]["digest"] == "3f2a9c0d1e4b5a67"


def test_firewall_table_without_the_collections_comment_is_not_ours():
    gw = Gateway(BROOKLYN)
    gw.firewall = firewall_listing(comment="someone else's")
    result = check(gw)
    assert result["problems"] == [
        'firewall: table inet sitelink_firewall is not the collection\'s (no "sitelink-gateway" '
        "comment)"
    ]
    assert (result["firewall"]["present"], result["firewall"]["ours"]) == (True, False)


def test_firewall_table_name_is_a_module_option():
    gw = Gateway(BROOKLYN)
    done = run_module(FakeModule(BROOKLYN, firewall_table="office_fw"), gw)
    assert ["nft", "-t", "list", "table", "inet", "office_fw"] in gw.calls
    assert done.result["firewall"]["table"] == "inet office_fw"


@pytest.mark.parametrize(
    ("firewall", "cell"),
    [
        (None, "-"),
        ({"present": True, "ours": True, "ok": True}, "ok"),
        ({"present": False, "ours": False, "ok": False}, "MISSING"),
        ({"present": True, "ours": False, "ok": False}, "NOT OURS"),
        ({"present": None, "ours": False, "ok": False}, "UNKNOWN"),
    ],
)
def test_firewall_cell(firewall, cell):
    assert report._firewall_cell(firewall) == cell


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
    assert (
        "not an office_plan of this collection (office_plan: missing contract, role"
        in (done.result["msg"])
    )


def test_module_fails_when_ip_cannot_read_the_links():
    gw = Gateway(BROOKLYN)
    gw.run = lambda argv, data=None: (1, "", "Cannot open netlink socket: Permission denied\n")
    done = run_module(FakeModule(BROOKLYN), gw)
    assert done.failed is True
    assert done.result["msg"] == (
        "cannot read the tunnels and routes: Cannot open netlink socket: Permission denied"
    )


def test_runner_reports_a_missing_tool_and_runs_the_others_by_path():
    class Module:
        def get_bin_path(self, tool, required=False):
            return None if tool == "nft" else f"/usr/sbin/{tool}"

        def run_command(self, argv, check_rc=False, data=None, binary_data=False):
            assert binary_data  # the batch is given as it is, no newline added
            return 0, " ".join(argv), data

    runner = hc.Runner(Module())
    assert runner.run(["nft", "-j", "list", "ruleset"]) == (127, "", "nft: command not found")
    assert runner.run(["ip", "-j", "link"]) == (0, "/usr/sbin/ip -j link", None)
    assert runner.run(hc.route_get_argv(), data="route get 10.0.0.1\n") == (
        0,
        "/usr/sbin/ip -j -force -batch -",
        "route get 10.0.0.1\n",
    )


def test_runner_probe_without_a_socket_says_why_for_every_tunnel(monkeypatch):
    def refused(source):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(hc.probe, "IcmpTransport", refused)
    answers = hc.Runner.probe("192.168.1.126", [("sl-a", "10.0.0.1"), ("sl-b", "10.0.0.2")])
    assert answers == {
        name: {
            "probed": True,
            "transmitted": 0,
            "received": 0,
            "rtt_avg_ms": None,
            "error": "cannot send from 192.168.1.126: Operation not permitted",
        }
        for name in ("sl-a", "sl-b")
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
        "office     host          tunnels  routes  protection  firewall  relay               "
        "NAT            verdict",
        "---------  ------------  -------  ------  ----------  --------  ------------------  "
        "-------------  ---------",
        "brooklyn   brooklyn-gw   0/1      1/1     ipsec ok    ok        active 12/12/0/0/3  "
        "off            UNHEALTHY",
        "manhattan  manhattan-gw  1/1      1/1     ipsec ok    ok        active 12/12/0/0/3  "
        "ok (1 source)  ok",
        "1 of 2 offices healthy",
        report.COUNTER_LEGEND,
        "",
        "office     port  received  relayed  rebroadcast  dropped  auth  replay  rate-limited",
        "---------  ----  --------  -------  -----------  -------  ----  ------  ------------",
        "brooklyn   6799  12        12       0            3        0     0       0",
        "manhattan  6799  12        12       0            3        0     0       0",
        *report.RELAY_COUNTER_LEGEND,
    ]
    assert built["warnings"] == []


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
    assert row == ["brooklyn", "brooklyn-gw", "-", "-", "-", "-", "-", "-", "UNREACHABLE"]


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
    assert list(data) == [
        "version",
        "generated",
        "healthy",
        "counts",
        "problems",
        "warnings",
        "rotation",
        "failover",
        "offices",
    ]
    assert data["version"] == 1
    assert [o["office"] for o in data["offices"]] == ["brooklyn", "manhattan"]
    assert list(data["offices"][0]) == [
        "office",
        "host",
        "verdict",
        "healthy",
        "problems",
        "tunnels",
        "probes",
        "routes",
        "ipsec",
        "firewall",
        "relay",
        "masquerade",
    ]
    assert data["offices"][1]["relay"]["ports"]["6799"]["forwarded"] == 12
    assert data["offices"][1]["ipsec"]["connections"][0]["sa"] == {"out": True, "in": True}


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
        (
            {
                "expected": True,
                "state": "active",
                "age": 1.0,
                "ports": {"1": {"received": 4}},
                "stuck": [{"sender": "192.168.1.126"}],
                "problems": ["x"],
            },
            "STUCK 4/0/0/0/0",
        ),
    ],
)
def test_relay_cell_capitalises_what_is_wrong(relay, cell):
    assert report._relay_cell(relay) == cell


def under_attack(plan):
    """A gateway whose relay dropped forged, replayed and flooding datagrams."""
    gw = Gateway(plan)
    status = json.loads(gw.files[hc.RELAY_STATUS_FILE])
    status["ports"]["6799"].update(
        received=140,
        dropped={
            "own_echo": 3,
            "auth": 90,
            "replay": 7,
            "stale": 2,
            "rate_limited": 20,
            "cut_off": 5,
            "storm": 1,
        },
        send_errors={"ENOBUFS": 2},
    )
    (address,) = status["peers"]
    status["peers"][address]["dropped"] = {"auth": 90, "replay": 7}
    gw.files[hc.RELAY_STATUS_FILE] = json.dumps(status)
    return gw, address


def test_relay_drops_are_counted_by_reason_and_are_no_problem():
    gw, address = under_attack(BROOKLYN)
    result = check(gw)
    # Authentication failures are not unhealthy: anyone who reaches the port makes them.
    assert (result["healthy"], result["problems"]) == (True, [])
    port = result["relay"]["ports"]["6799"]
    assert (port["dropped"], port["send_errors"]) == (128, 2)
    assert port["dropped_by_reason"]["auth"] == 90
    assert port["send_errors_by_reason"] == {"ENOBUFS": 2}
    peer = result["relay"]["peers"][address]
    assert (peer["office"], peer["dropped"], peer["dropped_by_reason"]) == (
        "manhattan",
        97,
        {"auth": 90, "replay": 7},
    )


def test_report_shows_auth_replay_and_storm_drops_per_office_and_port():
    gw, _unused = under_attack(BROOKLYN)
    built = report.build_report(
        ["manhattan-gw", "brooklyn-gw"],
        {"manhattan-gw": check(Gateway(MANHATTAN)), "brooklyn-gw": check(gw)},
        {},
        "t",
    )
    assert built["healthy"] is True
    lines = report.render_table(built).splitlines()
    head = lines.index(
        "office     port  received  relayed  rebroadcast  dropped  auth  replay  rate-limited"
    )
    assert lines[head + 2].split() == ["brooklyn", "6799", "140", "12", "0", "128", "90", "9", "26"]
    assert lines[head + 3].split() == ["manhattan", "6799", "12", "12", "0", "3", "0", "0", "0"]
    assert "never make an office unhealthy" in lines[-2]
    assert "auth failures included: anyone who reaches a relay port" in lines[-1]
    # The JSON report carries every reason and every peer.
    data = json.loads(json.dumps(built))
    relay = data["offices"][0]["relay"]
    assert relay["ports"]["6799"]["dropped_by_reason"]["cut_off"] == 5
    assert relay["peers"]["192.168.1.126"]["dropped_by_reason"] == {"auth": 90, "replay": 7}


def test_relay_counters_table_only_lists_relays_that_reported():
    plan = copy.deepcopy(BROOKLYN)
    plan["relay"]["rules"] = []
    gw = Gateway(plan)
    built = report.build_report(
        ["brooklyn-gw", "queens-gw"], {"brooklyn-gw": check(gw), "queens-gw": UNREACHABLE}, {}, "t"
    )
    text = report.render_table(built)
    assert "rate-limited" not in text and report.RELAY_COUNTER_LEGEND[0] not in text


def test_odd_status_content_counts_as_zero():
    status = relay_status([6799])
    status["ports"]["6799"].update(received="12", forwarded=True, dropped={"auth": "x", "a": 2})
    status["peers"] = {"10.0.0.1": {"office": 7, "sent": 3.5, "dropped": [1]}, "10.0.0.2": "?"}
    relay = hc.check_relay([6799], "active", json.dumps(status), NOW)
    assert relay["ports"]["6799"]["received"] == 0
    assert relay["ports"]["6799"]["forwarded"] == 0
    assert relay["ports"]["6799"]["dropped_by_reason"] == {"a": 2, "auth": 0}
    assert relay["peers"] == {
        "10.0.0.1": {"office": None, "received": 0, "accepted": 0, "sent": 0, "dropped": 0}
    }
    assert relay["ok"] is True


def test_raw_relay_wire_is_a_warning_not_a_problem():
    raw = case_study_plans(office_relay_wire="raw")
    results_ = {host: check(Gateway(plan)) for host, plan in raw.items()}
    built = report.build_report(sorted(raw), results_, {}, "t")
    assert (built["healthy"], built["problems"]) == (True, [])
    assert built["warnings"] == [report.RAW_WIRE_WARNING.format("every office")]
    assert "office_relay_wire: raw: the relays of every office" in built["warnings"][0]
    # Only offices whose relay runs: no rules, no warning.
    entries = [
        {"office": "a", "relay": {"expected": True, "wire": "raw"}},
        {"office": "b", "relay": {"expected": False, "wire": "raw"}},
        {"office": "c", "relay": {"expected": True, "wire": "sitelink1"}},
    ]
    assert report.warning_lines(entries) == [report.RAW_WIRE_WARNING.format("a")]


def test_relay_state_unknown_says_what_systemctl_said():
    gw = Gateway(MANHATTAN)
    gw.run = lambda argv, data=None, run=gw.run: (
        (1, "", "System has not been booted with systemd as init system (PID 1).\n")
        if argv[0] == "systemctl"
        else run(argv, data)
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


# --------------------------------------------------------------------------
# the relay's replay state: a peer relay stuck, replay windows not saved

STUCK_LINE = (
    "relay: peer relay 192.168.1.126 (manhattan) is stuck: its last 12 datagrams were all "
    "refused as stale, its epoch 1795990000 is older than the 1796000000 held here (its state "
    "or clock was reset); reset it: ansible-playbook -i <inventory> site.yml --limit "
    """brooklyn-gw -e '{"relay_forget_senders": ["192.168.1.126"]}'"""
)


def with_replay(plan, **replay):
    """A gateway whose relay reports its replay state (a relay that knows ``replay``)."""
    gw = Gateway(plan)
    status = json.loads(gw.files[hc.RELAY_STATUS_FILE])
    status["replay"] = {
        "state_dir": "/var/lib/sitelink-relay",
        "senders": 1,
        "save_failures": 0,
        "save_error": None,
        "forgotten_total": 0,
        "stuck": {},
        **replay,
    }
    for peer in status["peers"].values():
        peer["stale_streak"] = 12 if replay.get("stuck") else 0
    gw.files[hc.RELAY_STATUS_FILE] = json.dumps(status)
    return gw


STALE = {"streak": 12, "reason": "stale", "epoch": 1796000000, "offered": 1795990000}


def test_a_stuck_peer_relay_is_a_problem_naming_it_and_its_remedy():
    gw = with_replay(BROOKLYN, stuck={"192.168.1.126": STALE})
    result = hc.check_gateway(BROOKLYN, gw, host="brooklyn-gw")
    assert result["healthy"] is False
    assert result["problems"] == [STUCK_LINE]
    assert result["relay"]["stuck"] == [{"sender": "192.168.1.126", "office": "manhattan", **STALE}]
    assert result["relay"]["peers"]["192.168.1.126"]["stale_streak"] == 12
    # The remedy's extra vars are the JSON the relay role takes.
    extra = STUCK_LINE.split("-e '", 1)[1].rstrip("'")
    assert json.loads(extra) == {"relay_forget_senders": ["192.168.1.126"]}


def test_a_stuck_peer_relay_shows_in_the_table_and_the_summary():
    gw = with_replay(BROOKLYN, stuck={"192.168.1.126": STALE})
    built = report.build_report(
        ["manhattan-gw", "brooklyn-gw"],
        {
            "manhattan-gw": check(Gateway(MANHATTAN)),
            "brooklyn-gw": hc.check_gateway(BROOKLYN, gw, host="brooklyn-gw"),
        },
        {},
        "t",
    )
    rows = {row[0]: row for row in report.table_rows(built)}
    assert rows["brooklyn"][6].startswith("STUCK ") and rows["brooklyn"][8] == "UNHEALTHY"
    assert rows["manhattan"][6].startswith("active ")
    assert report.summary_text(built) == f"1 of 2 offices unhealthy:\n  - brooklyn: {STUCK_LINE}"


def test_a_peer_relay_ahead_of_the_clock_says_to_set_its_clock():
    """A future epoch is never kept here: nothing to forget, the sender's clock is wrong."""
    future = {"streak": 3, "reason": "future", "epoch": 1796000000, "offered": 1897000000}
    gw = with_replay(BROOKLYN, stuck={"192.168.1.126": future, "192.168.9.1": STALE})
    problems = check(gw)["problems"]
    assert problems == [
        "relay: peer relay 192.168.1.126 (manhattan) is stuck: its last 3 datagrams were all "
        "refused as future, its epoch 1897000000 is more than a day ahead of this gateway's "
        "clock (held: 1796000000); set that gateway's clock right and restart its relay (an "
        "epoch that far ahead is not kept)",
        # A sender that is not a peer (an origin relay through a hub): no office to name.
        "relay: peer relay 192.168.9.1 is stuck: its last 12 datagrams were all refused as "
        "stale, its epoch 1795990000 is older than the 1796000000 held here (its state or "
        "clock was reset); reset it: ansible-playbook -i <inventory> site.yml --limit "
        """<this gateway> -e '{"relay_forget_senders": ["192.168.9.1"]}'""",
    ]


def test_the_module_names_its_host_in_the_remedy():
    gw = with_replay(BROOKLYN, stuck={"192.168.1.126": STALE})
    done = run_module(FakeModule(BROOKLYN, host="brooklyn-gw"), gw)
    assert done.result["problems"] == [STUCK_LINE]


def test_replay_windows_that_cannot_be_saved_are_a_problem():
    gw = with_replay(BROOKLYN, save_failures=4, save_error="[Errno 28] No space left on device")
    result = check(gw)
    assert result["problems"] == [
        "relay: replay protection is not being saved in /var/lib/sitelink-relay (4 failed "
        "writes, the last: [Errno 28] No space left on device); after a restart the relay "
        "would not know which datagrams it has seen"
    ]
    assert result["relay"]["replay"]["save_failures"] == 4
    once = check(with_replay(BROOKLYN, save_failures=1, save_error="disk full"))
    assert "(1 failed write, the last: disk full)" in once["problems"][0]
    # Failures in the past, saving again: counted, no problem.
    healthy = check(with_replay(BROOKLYN, save_failures=4))
    assert (healthy["healthy"], healthy["relay"]["replay"]["save_error"]) == (True, None)


def test_a_relay_without_replay_state_or_nothing_stuck_is_healthy():
    old = check(Gateway(BROOKLYN))  # a relay too old to report "replay"
    assert (old["healthy"], old["relay"]["replay"], old["relay"]["stuck"]) == (True, None, [])
    assert "stale_streak" not in old["relay"]["peers"]["192.168.1.126"]
    new = check(with_replay(BROOKLYN))
    assert (new["healthy"], new["relay"]["stuck"]) == (True, [])
    assert new["relay"]["replay"] == {
        "state_dir": "/var/lib/sitelink-relay",
        "senders": 1,
        "save_failures": 0,
        "save_error": None,
        "forgotten_total": 0,
    }
    assert new["relay"]["peers"]["192.168.1.126"]["stale_streak"] == 0


def test_odd_replay_content_names_no_command_it_cannot_trust():
    status = relay_status([6799])
    status["replay"] = {
        "senders": "3",
        "stuck": {"192.168.1.126'; rm -rf /": STALE, "10.0.0.1": "?", "10.0.0.2": {"epoch": True}},
    }
    relay = hc.check_relay([6799], "active", json.dumps(status), NOW)
    assert [s["sender"] for s in relay["stuck"]] == ["10.0.0.1", "10.0.0.2"]
    assert relay["stuck"][1] == {
        "sender": "10.0.0.2",
        "office": None,
        "reason": "refused",
        "streak": 0,
        "epoch": None,
        "offered": None,
    }
    assert "rm -rf" not in " ".join(relay["problems"])
    assert relay["replay"]["senders"] == 0
    status["replay"] = ["not", "a", "dict"]
    relay = hc.check_relay([6799], "active", json.dumps(status), NOW)
    assert (relay["ok"], relay["replay"]) == (True, None)


# --------------------------------------------------------------------------- key rotation


def test_verify_shows_the_links_that_still_accept_a_second_key():
    """A rotation under way: the hub's IPsec link to Brooklyn and its relay from Brooklyn
    accept two keys; the report names them (not a problem), and nothing once done."""
    gateway = Gateway(MANHATTAN)
    conns = MANHATTAN["ipsec"]["connections"]
    rotating = {c["link"]: ["ab" * 32, "cd" * 32] for c in conns}
    gateway.files[hc.IPSEC_CONFIG] = ipsec.render(conns, rotating, "aes", "esp", 30)
    status = json.loads(gateway.files[hc.RELAY_STATUS_FILE])
    for peer in status["peers"].values():
        peer["keys"] = ["1a2b3c4d", "5e6f7a8b"]
    gateway.files[hc.RELAY_STATUS_FILE] = json.dumps(status)
    result = check(gateway)
    assert result["healthy"], result["problems"]
    assert [c["keys"] for c in result["ipsec"]["connections"]] == [2]
    assert [p["keys"] for p in result["relay"]["peers"].values()] == [2]
    hosts = {"manhattan-gw": "manhattan"}
    built = report.build_report(["manhattan-gw"], {"manhattan-gw": result}, hosts, "now")
    assert built["rotation"] == [
        {"office": "manhattan", "ipsec": ["sl-brooklyn"], "relay": ["brooklyn"]}
    ]
    table = report.render_table(built).splitlines()
    assert table[
        table.index("key rotation not finished here: links that still accept a second key") + 1
    ] == ("  manhattan: IPsec sl-brooklyn; relay from brooklyn")
    assert built["healthy"]
    # Done: one key each, and the report says nothing of a rotation.
    gateway.files[hc.IPSEC_CONFIG] = ipsec.render(
        conns, {c["link"]: "ab" * 32 for c in conns}, "a", "e", 30
    )
    for peer in status["peers"].values():
        peer["keys"] = ["1a2b3c4d"]
    gateway.files[hc.RELAY_STATUS_FILE] = json.dumps(status)
    done = report.build_report(["manhattan-gw"], {"manhattan-gw": check(gateway)}, hosts, "now")
    assert done["rotation"] == [] and "key rotation" not in report.render_table(done)
    # No file to read: unknown, not a rotation.
    del gateway.files[hc.IPSEC_CONFIG]
    assert [c["keys"] for c in check(gateway)["ipsec"]["connections"]] == [None]


def test_verify_shows_the_hub_each_office_uses_and_the_links_failed_over():
    """Two hubs: Queens' routes through bronx moved to manhattan's tunnel (the hook did,
    bronx's link being down): not a route problem, but the report says it."""
    tunnels = [
        {
            "name": "sl-bronx",
            "routes": ["192.168.4.0/23"],
            "backup": "sl-manhattan",
            "peer": "bronx",
        },
        {
            "name": "sl-manhattan",
            "routes": ["192.168.1.0/24"],
            "backup": "sl-bronx",
            "peer": "manhattan",
        },
    ]
    routes = json.dumps(
        [
            {"dst": p, "dev": "sl-manhattan", "prefsrc": "192.168.3.126", "flags": []}
            for p in ("192.168.4.0/23", "192.168.1.0/24")
        ]
    )
    result = hc.check_routes(tunnels, routes)
    assert result["problems"] == [] and result["ok"] == 2
    entry = {"office": "queens", "host": "queens-gw", "healthy": True, "routes": result}
    (state,) = report.failover_state([entry])
    assert state == {"office": "queens", "uses": "manhattan", "failed_over": ["bronx"]}
    lines = report.failover_lines({"failover": [state]})
    assert lines[-1] == "  queens: through manhattan; failed over: the link to bronx is down"
    # Both links up: its routes on their own tunnels, the hub with most of them.
    home = json.dumps(
        [
            {"dst": "192.168.4.0/23", "dev": "sl-bronx", "prefsrc": "192.168.3.126", "flags": []},
            {
                "dst": "192.168.1.0/24",
                "dev": "sl-manhattan",
                "prefsrc": "192.168.3.126",
                "flags": [],
            },
        ]
    )
    entry["routes"] = hc.check_routes(tunnels, home)
    assert report.failover_state([entry]) == [
        {"office": "queens", "uses": "bronx", "failed_over": []}
    ]
    # A hub: its branch tunnels backed by the other hub, whose own tunnel is not.
    hub = [
        {"name": "sl-queens", "routes": ["192.168.3.0/24"], "backup": "sl-bronx", "peer": "queens"},
        {"name": "sl-bronx", "routes": ["192.168.5.0/24"], "peer": "bronx"},
    ]
    moved = json.dumps(
        [{"dst": "192.168.3.0/24", "dev": "sl-bronx", "prefsrc": "192.168.1.126", "flags": []}]
    )
    entry = {"office": "manhattan", "routes": hc.check_routes(hub, moved)}
    (state,) = report.failover_state([entry])
    assert state == {"office": "manhattan", "uses": None, "failed_over": ["queens"]}
    assert report.failover_lines({"failover": [state]})[-1] == (
        "  manhattan: failed over: the link to queens is down"
    )
    # One hub: nothing said.
    assert report.failover_lines({"failover": []}) == []
