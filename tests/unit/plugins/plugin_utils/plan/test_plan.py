"""Controller-side planning: the case study, every validation error, 1 to 1000 offices."""

from __future__ import annotations

import copy
import ipaddress
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import schema
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.tunnels import tunnel_name

ROOT = Path(__file__).resolve().parents[5]
TEST_SECRET = "unit-test-secret-0123456789"  # noqa: S105  (a test value)
PARTNER_PSK = "partner-own-key-0123456789"  # noqa: S105  (a test value)


def case_study() -> dict:
    """The office variables of examples/case-study/inventory.yml, group vars applied."""
    inventory = yaml.safe_load((ROOT / "examples/case-study/inventory.yml").read_text())
    group = inventory["offices"]
    offices = {}
    for host, host_vars in group["hosts"].items():
        merged = dict(group.get("vars", {}))
        merged.update(host_vars)
        offices[host] = merged
    return offices


def branch_offices(count: int) -> dict:
    """One hub plus count-1 branches, each with its own /24 and WAN /30."""
    offices = {}
    for index in range(count):
        lan = ipaddress.IPv4Network((0x0A000000 + (index << 8), 24))  # 10.x.y.0/24
        wan = ipaddress.IPv4Network((0x64400000 + (index << 2), 30))  # 100.64.x.y/30
        offices[f"office{index}-gw"] = {
            "office_name": f"office{index}",
            "office_role": "hub" if index == 0 else "branch",
            "office_lan_interface": "eth0",
            "office_lan_address": f"{lan.network_address + 1}/24",
            "office_wan_interface": "eth1",
            "office_wan_address": f"{wan.network_address + 1}/30",
            "office_wan_gateway": str(wan.network_address + 2),
            "office_masquerade": index == 0,
            "office_broadcast_relay": [{"port": 6799}] if index == 0 else [],
            "office_tunnel_secret": TEST_SECRET,
        }
    return offices


def collapsed(*lans: str) -> list[str]:
    """What a plan routes (or masquerades) for these LANs: them, collapsed."""
    return [str(n) for n in ipaddress.collapse_addresses(map(ipaddress.ip_network, lans))]


def addresses(prefixes: list[str]) -> int:
    return sum(ipaddress.ip_network(p).num_addresses for p in prefixes)


def with_topology(offices: dict, topology: str, **deployment) -> dict:
    """The same offices with deployment-wide variables set on every one (group vars)."""
    for office in offices.values():
        office["office_topology"] = topology
        office.update(deployment)
    return offices


def network(offices: dict):
    return plan_network(offices)


def gateways(offices: dict) -> dict:
    plan = plan_network(offices)
    return {host: office_plan(plan, host) for host in plan.gateways}


def problems(offices: dict, topology_name: str = "hub-and-spoke") -> list[str]:
    with_topology(offices, topology_name)
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    return info.value.errors


def test_case_study_plan_matches_the_article():
    plan = network(case_study())
    assert {n: o.host for n, o in plan.offices.items()} == {
        "manhattan": "manhattan-gw",
        "brooklyn": "brooklyn-gw",
    }
    manhattan = office_plan(plan, "manhattan-gw")
    brooklyn = office_plan(plan, "brooklyn-gw")

    assert manhattan["tunnels"] == [
        {
            "name": "sl-brooklyn",
            "local": "172.16.1.12",
            "remote": "172.17.2.10",
            "address": "192.168.1.126",
            "routes": ["192.168.2.0/24"],
            "mtu": 1440,
            "ttl": 64,
            "description": "peer brooklyn",
        }
    ]
    assert brooklyn["tunnels"] == [
        {
            "name": "sl-manhattan",
            "local": "172.17.2.10",
            "remote": "172.16.1.12",
            "address": "192.168.2.126",
            "routes": ["192.168.1.0/24"],
            "mtu": 1440,
            "ttl": 64,
            "description": "peer manhattan",
        }
    ]
    # SNAT of Brooklyn's LAN to the Manhattan gateway's LAN address, on eth0 only.
    assert manhattan["masquerade"] == {
        "interface": "eth0",
        "address": "192.168.1.126",
        "sources": ["192.168.2.0/24"],
    }
    assert brooklyn["masquerade"]["sources"] == []
    # 6799: Manhattan forwards to Brooklyn's gateway, Brooklyn accepts from Manhattan's.
    assert manhattan["relay"]["rules"] == [
        {"port": 6799, "forward_to": ["192.168.2.126"], "accept_from": []}
    ]
    assert brooklyn["relay"]["rules"] == [
        {"port": 6799, "forward_to": [], "accept_from": ["192.168.1.126"]}
    ]
    assert brooklyn["relay"]["lan"] == {"interface": "eth0", "address": "192.168.2.126/24"}
    assert brooklyn["lan"]["broadcast"] == "192.168.2.255"
    assert manhattan["links"] == [
        {
            "id": "brooklyn+manhattan",
            "offices": ["brooklyn", "manhattan"],
            "peer": "brooklyn",
            "peer_address": "192.168.2.126",
            "tunnel": "sl-brooklyn",
        }
    ]
    assert plan.warnings == []


def test_peers_come_from_the_inventory_not_the_play():
    # A plan is a function of every office: planning for a subset of hosts
    # (as --limit would) is not possible by construction, so check the hub side.
    hub = gateways(branch_offices(5))["office0-gw"]
    assert [t["name"] for t in hub["tunnels"]] == [f"sl-office{i}" for i in range(1, 5)]
    assert hub["masquerade"]["sources"] == ["10.0.1.0/24", "10.0.2.0/23", "10.0.4.0/24"]
    assert hub["masquerade"]["sources"] == collapsed(*(f"10.0.{i}.0/24" for i in range(1, 5)))


def test_relay_without_to_goes_to_every_office():
    plans = gateways(branch_offices(4))
    assert plans["office0-gw"]["relay"]["rules"] == [
        {
            "port": 6799,
            "forward_to": ["10.0.1.1", "10.0.2.1", "10.0.3.1"],
            "accept_from": [],
        }
    ]
    assert plans["office3-gw"]["relay"]["rules"][0]["accept_from"] == ["10.0.0.1"]


def test_tunnel_mtu_is_the_smaller_wan_mtu_minus_ipip_and_esp_overhead():
    offices = case_study()
    offices["brooklyn-gw"]["office_wan_mtu"] = 1492  # PPPoE
    plans = gateways(offices)
    # 20 bytes of IPIP, 40 of ESP (AES-GCM, transport mode, worst-case padding).
    assert plans["manhattan-gw"]["tunnels"][0]["mtu"] == 1432
    assert plans["brooklyn-gw"]["tunnels"][0]["mtu"] == 1432
    with_topology(offices, "hub-and-spoke", office_tunnel_protection="none")
    plans = gateways(offices)
    assert plans["manhattan-gw"]["tunnels"][0]["mtu"] == 1472


def test_values_are_read_as_ansible_reads_them():
    offices = case_study()
    offices["manhattan-gw"]["office_masquerade"] = "yes"
    offices["brooklyn-gw"]["office_wan_mtu"] = "1492"  # INI inventories give strings
    plans = gateways(offices)
    assert plans["manhattan-gw"]["masquerade"]["sources"] == ["192.168.2.0/24"]
    assert plans["brooklyn-gw"]["tunnels"][0]["mtu"] == 1432


def test_tunnel_names_fit_the_kernel_and_are_stable():
    assert tunnel_name("brooklyn") == "sl-brooklyn"
    long_name = "staten-island-ferry-terminal"
    name = tunnel_name(long_name)
    assert len(name) == 15 and name.startswith("sl-state-")
    assert name == tunnel_name(long_name)
    assert name != tunnel_name("staten-island-ferry-2")
    # These two collided with a 4-digit hash.
    assert tunnel_name("manhattan-downtown-215") != tunnel_name("manhattan-downtown-236")


def test_few_tunnel_names_collide_among_many_similar_offices():
    names = [f"manhattan-downtown-{i}" for i in range(3000)]
    assert len({tunnel_name(n) for n in names}) == len(names)


@pytest.mark.parametrize(
    ("host", "field", "value", "expected"),
    [
        ("brooklyn-gw", "office_wan_interface", "", "office_wan_interface: is required"),
        ("brooklyn-gw", "office_lan_interface", "eth0 with space", "not a valid interface name"),
        ("brooklyn-gw", "office_lan_interface", "x" * 16, "not a valid interface name"),
        ("brooklyn-gw", "office_lan_interface", "eth1", "must differ from office_lan_interface"),
        ("brooklyn-gw", "office_lan_address", "192.168.2.300/24", "Octet 300"),
        ("brooklyn-gw", "office_lan_address", "192.168.2.126", "with its prefix length"),
        ("brooklyn-gw", "office_lan_address", "192.168.2.0/24", "network or broadcast"),
        ("brooklyn-gw", "office_lan_address", "192.168.2.255/24", "network or broadcast"),
        ("brooklyn-gw", "office_lan_address", "192.168.2.1/31", "leaves no room"),
        ("brooklyn-gw", "office_lan_address", "172.17.2.1/28", "overlaps its own WAN"),
        ("brooklyn-gw", "office_wan_address", "not-an-ip/28", "office_wan_address"),
        ("brooklyn-gw", "office_wan_gateway", "10.9.9.9", "not another address inside"),
        ("brooklyn-gw", "office_wan_gateway", "172.17.2.10", "not another address inside"),
        ("brooklyn-gw", "office_wan_gateway", "gateway", "is not an IPv4 address"),
        ("brooklyn-gw", "office_wan_mtu", 100, "not an MTU"),
        ("brooklyn-gw", "office_wan_mtu", "abc", "'abc' is not an integer"),
        ("brooklyn-gw", "office_wan_mtu", [1500], "is not an integer"),
        ("brooklyn-gw", "office_wan_interface", 7, "7 is not a string"),
        ("brooklyn-gw", "office_lan_adress", "192.168.2.126/24", "did you mean office_lan_address"),
        ("brooklyn-gw", "office_lan_address", None, "office_lan_address: is required"),
        ("brooklyn-gw", "office_role", "spoke", "must be one of: hub, branch"),
        ("brooklyn-gw", "office_masquerade", "maybe", "is not true or false"),
        ("brooklyn-gw", "office_name", "Brooklyn Heights", "office_name: 'Brooklyn Heights'"),
        ("manhattan-gw", "office_broadcast_relay", {"port": 6799}, "is not a list"),
        ("manhattan-gw", "office_broadcast_relay", [6799], "must be a mapping"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": "abc"}], "[0].port: 'abc' is not"),
        ("manhattan-gw", "office_broadcast_relay", [{"to": ["brooklyn"]}], "[0].port: is required"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 0}], "[0].port: 0 is not"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": True}], "True is not an integer"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 1, "dest": "x"}], "unknown key"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 1, "to": []}], "[0].to: is empty"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 1}, {"port": 1}], "listed twice"),
        (
            "manhattan-gw",
            "office_broadcast_relay",
            [{"port": 1, "to": "brooklyn"}],
            "[0].to: 'brooklyn' is not a list",
        ),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 1, "to": ["queens"]}], "'queens'"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 1, "to": ["manhattan"]}], "itself"),
    ],
)
def test_each_bad_value_is_named_with_its_office_and_field(host, field, value, expected):
    offices = case_study()
    offices[host][field] = value
    errors = problems(offices)
    office = offices[host].get("office_name", host)
    assert any(
        expected in e and e.startswith(f"office {office!r} (host {host}): ") and field in e
        for e in errors
    ), errors


def test_every_problem_is_reported_at_once():
    offices = case_study()
    offices["brooklyn-gw"]["office_lan_address"] = "bad"
    offices["manhattan-gw"]["office_wan_mtu"] = 1
    offices["manhattan-gw"]["office_role"] = "spoke"
    offices["brooklyn-gw"]["office_lan_adress"] = "192.168.2.126/24"
    assert len(problems(offices)) == 4


def test_type_errors_and_network_errors_come_together():
    """Overlaps are reported in the same run as wrong types elsewhere."""
    offices = branch_offices(4)
    offices["office1-gw"]["office_lan_address"] = "10.0.2.1/24"  # overlaps office2
    offices["office3-gw"]["office_role"] = "spoke"
    errors = problems(offices)
    assert any("office_role: 'spoke'" in e for e in errors)
    assert any("overlaps the LAN 10.0.2.0/24" in e for e in errors)


def test_overlapping_lans_name_both_offices():
    offices = case_study()
    offices["brooklyn-gw"]["office_lan_address"] = "192.168.0.1/16"
    (error,) = problems(offices)
    assert "office_lan_address" in error
    assert "manhattan" in error and "brooklyn" in error


def test_overlap_is_found_behind_a_wide_lan():
    offices = branch_offices(5)
    offices["office1-gw"]["office_lan_address"] = "10.0.0.1/21"  # covers office0..office7
    errors = problems(offices)
    assert {e.split("'")[1] for e in errors} >= {"office2", "office3", "office4"}


def test_duplicate_wan_address_and_office_name():
    offices = case_study()
    offices["brooklyn-gw"]["office_wan_address"] = "172.16.1.12/27"
    offices["brooklyn-gw"]["office_wan_gateway"] = "172.16.1.30"
    offices["brooklyn-gw"]["office_name"] = "manhattan"
    errors = problems(offices)
    assert any("office_wan_address: 172.16.1.12 is also the WAN address" in e for e in errors)
    assert any("office_name: 'manhattan' is also used by office" in e for e in errors)


def test_lan_that_contains_a_peer_public_address():
    offices = case_study()
    offices["brooklyn-gw"]["office_lan_address"] = "172.16.0.1/16"
    errors = problems(offices)
    assert any("contains the WAN address 172.16.1.12" in e for e in errors), errors


def test_tunnel_name_collision_is_detected():
    long_name = "abcdefghijklmnop"
    clash = tunnel_name(long_name)[len("sl-") :]
    offices = branch_offices(3)
    offices["office1-gw"]["office_name"] = long_name
    offices["office2-gw"]["office_name"] = clash
    errors = problems(offices)
    assert any("collides" in e and "office_name" in e for e in errors), errors


def test_relay_to_an_unreachable_office():
    offices = branch_offices(3)
    offices["office1-gw"]["office_broadcast_relay"] = [{"port": 5000, "to": ["office2"]}]
    with_topology(offices, "hub-and-spoke", office_transit=False)
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    (error,) = info.value.errors
    assert error.startswith("office 'office1' (host office1-gw): office_broadcast_relay[0].to: ")
    assert "not reachable" in error and "office_transit is off" in error


def test_hub_and_spoke_needs_a_hub_and_topology_must_be_known():
    offices = case_study()
    offices["manhattan-gw"]["office_role"] = "branch"
    (error,) = problems(offices)
    assert "office_topology: hub-and-spoke needs at least one office" in error
    assert "sitelink_topology" not in error
    assert gateways(with_topology(offices, "mesh"))["brooklyn-gw"]["peers"] == ["manhattan"]
    assert "must be one of" in problems(case_study(), "star")[0]
    with pytest.raises(PlanError) as info:
        plan_network({})
    assert info.value.errors == ["no offices: the offices group has no hosts"]


def test_deployment_variables_must_agree_across_offices():
    offices = branch_offices(4)
    with_topology(offices, "hub-and-spoke", office_tunnel_secret="s3cret-value")  # noqa: S106
    offices["office2-gw"]["office_topology"] = "mesh"
    offices["office3-gw"]["office_tunnel_secret"] = "other-s3cret"  # noqa: S105
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    errors = info.value.errors
    assert any(
        e.startswith("office 'office2' (host office2-gw): office_topology: 'mesh' differs")
        for e in errors
    )
    assert any(
        e.startswith("office 'office3' (host office3-gw): office_tunnel_secret:") for e in errors
    )
    assert not any("s3cret" in e for e in errors), "a secret was echoed in a message"


def test_masquerade_without_peers_is_a_warning():
    offices = branch_offices(1)
    plan = plan_network(offices)
    assert (
        "office 'office0' (host office0-gw): office_masquerade: no other office reaches this "
        "office, so there is nothing to masquerade"
    ) in plan.warnings
    offices["office0-gw"]["office_masquerade"] = False
    assert not any("office_masquerade" in w for w in plan_network(offices).warnings)


@pytest.mark.parametrize("count", [1, 2, 50, 1000])
def test_hub_and_spoke_scales_with_transit(count):
    offices = branch_offices(count)
    plan = plan_network(offices)
    assert len(plan.gateways) == count
    hub = office_plan(plan, "office0-gw")
    assert len(hub["tunnels"]) == count - 1
    assert len({t["name"] for t in hub["tunnels"]}) == count - 1
    every_lan = [f"10.{i >> 8}.{i & 255}.0/24" for i in range(count)]
    for index in range(1, count):
        branch = office_plan(plan, f"office{index}-gw")
        assert [t["name"] for t in branch["tunnels"]] == ["sl-office0"]
        # Transit: every other office's LAN goes through the hub (collapsed).
        others = (n for i, n in enumerate(every_lan) if i != index)
        assert branch["tunnels"][0]["routes"] == collapsed(*others)
    assert_tunnels_pair_up(plan)


@pytest.mark.parametrize("count", [1, 2, 50])
def test_mesh_links_every_pair(count):
    plan = plan_network(with_topology(branch_offices(count), "mesh"))
    for host in plan.gateways:
        tunnels = office_plan(plan, host)["tunnels"]
        assert len(tunnels) == count - 1
        assert all(len(t["routes"]) == 1 for t in tunnels)  # no transit needed
    assert_tunnels_pair_up(plan)


def test_mesh_of_300_offices():
    plan = plan_network(with_topology(branch_offices(300), "mesh"))
    assert len(plan.links) == 300 * 299 // 2
    assert_tunnels_pair_up(plan)


def assert_tunnels_pair_up(plan):
    """Every tunnel has its mirror on the peer, with the endpoints swapped."""
    by_office = {g.office.name: host for host, g in plan.gateways.items()}
    remotes = {
        host: Counter((t["local"], t["remote"]) for t in office_plan(plan, host)["tunnels"])
        for host in plan.gateways
    }
    for host, pairs in remotes.items():
        office = plan.gateways[host].office.name
        for link in plan.gateways[host].links:
            peer = link.other(office).office
            if peer not in by_office:
                continue  # an external peer
            local, remote = str(plan.offices[office].wan.ip), str(plan.offices[peer].wan.ip)
            assert pairs[(local, remote)] == 1
            assert remotes[by_office[peer]][(remote, local)] == 1


def test_explicit_links_and_their_mtu():
    offices = with_topology(
        branch_offices(4),
        "links",
        office_links=[
            {"between": ["office0", "office1"]},
            {"between": ["office1", "office2"], "mtu": 1400},
            {"between": ["office2", "office3"]},
        ],
    )
    plan = plan_network(offices)
    chain = {host: office_plan(plan, host) for host in plan.gateways}
    assert [t["name"] for t in chain["office1-gw"]["tunnels"]] == ["sl-office0", "sl-office2"]
    assert chain["office1-gw"]["tunnels"][1]["mtu"] == 1400
    # office0 reaches office3 over two transit hops.
    assert chain["office0-gw"]["tunnels"][0]["routes"] == ["10.0.1.0/24", "10.0.2.0/23"]
    assert chain["office1-gw"]["tunnels"][1]["routes"] == ["10.0.2.0/23"]


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        ([{"between": ["office0"]}], "must name two different offices"),
        ([{"between": ["office0", "office0"]}], "must name two different offices"),
        ([{"between": ["office0", "nowhere"]}], "unknown office 'nowhere'"),
        ([{"between": ["office0", "office1"], "mtu": 10}], "not an MTU"),
        ([{"between": ["office0", "office1"], "speed": 10}], "unknown key(s) speed"),
        ([{"between": ["office0", "office1"]}, {"between": ["office1", "office0"]}], "twice"),
        ({"between": ["office0", "office1"]}, "is not a list"),
    ],
)
def test_bad_links_are_named(links, expected):
    offices = with_topology(branch_offices(3), "links", office_links=links)
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    assert any("office_links" in e and expected in e for e in info.value.errors), info.value.errors


def external_partner(**extra) -> dict:
    return {
        "name": "partner",
        "wan_address": "198.51.100.7",
        "lan_address": "10.200.0.1/24",
        "psk": PARTNER_PSK,
        **extra,
    }


def test_external_peer_gets_tunnels_routes_and_relay_on_our_side_only():
    offices = with_topology(
        branch_offices(3),
        "hub-and-spoke",
        office_external_peers=[
            external_partner(broadcast_relay=[{"port": 7000, "to": ["office2"]}])
        ],
    )
    offices["office1-gw"]["office_broadcast_relay"] = [{"port": 7001, "to": ["partner"]}]
    plan = plan_network(offices)
    assert sorted(plan.gateways) == ["office0-gw", "office1-gw", "office2-gw"]  # no partner plan
    hub = office_plan(plan, "office0-gw")
    to_partner = [t for t in hub["tunnels"] if t["description"] == "peer partner"]
    assert to_partner == [
        {
            "name": "sl-partner",
            "local": "100.64.0.1",
            "remote": "198.51.100.7",
            "address": "10.0.0.1",
            "routes": ["10.200.0.0/24"],
            "mtu": 1440,
            "ttl": 64,
            "description": "peer partner",
        }
    ]
    # verify.yml pings the partner's gateway, by its LAN address, through that tunnel.
    assert [lk["peer_address"] for lk in hub["links"] if lk["peer"] == "partner"] == ["10.200.0.1"]
    # A branch reaches the partner through the hub; the partner never carries transit.
    branch = office_plan(plan, "office1-gw")
    assert "10.200.0.0/24" in branch["tunnels"][0]["routes"]
    # The partner's broadcasts on 7000 go office2-wards through the hub.
    (rule7000,) = [r for r in hub["relay"]["rules"] if r["port"] == 7000]
    assert rule7000["transit"] == {"10.200.0.1": ["10.0.2.1"]}
    # office1's 7001 goes to the partner through the hub.
    (rule7001,) = [r for r in hub["relay"]["rules"] if r["port"] == 7001]
    assert rule7001["transit"] == {"10.0.1.1": ["10.200.0.1"]}


def test_external_peer_errors_name_the_entry():
    offices = with_topology(
        branch_offices(2),
        "hub-and-spoke",
        office_external_peers=[
            external_partner(lan_address="10.0.1.1/24"),  # overlaps office1
            {"name": "Bad Name", "wan_address": "x", "lan_address": "10.9.0.1/24", "colour": 1},
        ],
    )
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    errors = info.value.errors
    assert any("office_external_peers[1]: unknown key(s) colour" in e for e in errors), errors
    offices = with_topology(
        branch_offices(2),
        "hub-and-spoke",
        office_external_peers=[external_partner(lan_address="10.0.1.1/24")],
    )
    with pytest.raises(PlanError) as info2:
        plan_network(offices)
    assert any(
        "office 'partner' (external peer): office_external_peers[0].lan_address" in e
        or "overlaps the LAN 10.0.1.0/24 of office 'partner'" in e
        for e in info2.value.errors
    ), info2.value.errors


def test_branch_broadcast_fans_out_through_the_hub_once():
    offices = branch_offices(4)
    offices["office1-gw"]["office_broadcast_relay"] = [{"port": 6799}]
    plans = gateways(offices)
    hub_rule = plans["office0-gw"]["relay"]["rules"][0]
    assert hub_rule["accept_from"] == ["10.0.1.1"]
    assert hub_rule["transit"] == {"10.0.1.1": ["10.0.2.1", "10.0.3.1"]}
    assert plans["office1-gw"]["relay"]["rules"][0]["forward_to"] == ["10.0.0.1"]


def test_plan_does_not_change_its_input():
    offices = case_study()
    before = copy.deepcopy(offices)
    plan_network(offices)
    assert offices == before


# ----------------------------------------------------------------------------- one schema


def test_generated_files_match_the_schema():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(ROOT / "tools/office_schema.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_role_defaults_and_specs_are_the_schema():
    specs = yaml.safe_load((ROOT / "roles/office/meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["inventory"]["options"]
    assert "main" not in specs["argument_specs"]  # the planner validates, not Ansible per host
    defaults = yaml.safe_load((ROOT / "roles/office/defaults/main.yml").read_text())
    assert set(options) == {f.name for f in schema.FIELDS}
    for field in schema.FIELDS:
        assert options[field.name]["type"] == field.type
        assert options[field.name].get("required", False) == field.required
        assert defaults.get(field.name) == field.default, field.name
        assert options[field.name].get("default") == field.default, field.name


def plan_reads(value: str, role: str) -> str:
    """``value`` with each read of a plan section spelled as its office_plan path: a role
    takes its section through plan_section (``(... plan_section('ipsec')).connections``
    is office_plan.ipsec.connections), some bound to ``__ROLE_plan`` in vars/main.yml."""
    bound = ROOT / f"roles/{role}/vars/main.yml"
    for name, section in re.findall(
        r"^(__\w+_plan):.*plan_section\('(\w+)'\)",
        bound.read_text() if bound.exists() else "",
        re.M,
    ):
        value = value.replace(name, f"office_plan.{section}")
    value = re.sub(r"\(office_plan .*?plan_section\('(\w+)'\)\)", r"office_plan.\1", value)
    return re.sub(r"office_plan .*?plan_section\('(\w+)'\)", r"office_plan.\1", value)


@pytest.mark.parametrize("role", ["kernel", "firewall", "ipsec", "tunnel", "masquerade", "relay"])
def test_every_role_documents_its_defaults(role):
    specs = yaml.safe_load((ROOT / f"roles/{role}/meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((ROOT / f"roles/{role}/defaults/main.yml").read_text())
    for name, value in defaults.items():
        assert name.startswith(f"{role}_"), name
        spec = options[name]
        templated = isinstance(value, str) and "{{" in value
        if templated and spec["type"] not in ("str", "path"):
            # antsibull-docs takes no template as the default of a list, dict or int: the
            # description names the variable the default comes from instead.
            assert "default" not in spec, name
            named = re.findall(r"C\(([\w.]+)\)", " ".join(spec["description"]))
            assert any(source in plan_reads(value, role) for source in named), name
        else:
            assert spec.get("default") == value, name


@pytest.mark.parametrize("count", [1, 2, 50, 1000])
def test_explicit_links_scale_as_a_ring(count):
    """A ring of explicit links: every office reaches every other over the shorter side."""
    names = [f"office{i}" for i in range(count)]
    links = [{"between": [names[i], names[(i + 1) % count]]} for i in range(count) if count > 2]
    if count == 2:
        links = [{"between": names}]
    plan = plan_network(with_topology(branch_offices(count), "links", office_links=links))
    assert len(plan.links) == len(links)
    if count > 1:
        config = office_plan(plan, "office0-gw")
        routed = [r for t in config["tunnels"] for r in t["routes"]]
        # Every other office, exactly once: as many addresses as their LANs.
        assert addresses(routed) == 256 * (count - 1)
        assert collapsed(*routed) == collapsed(
            *(f"10.{i >> 8}.{i & 255}.0/24" for i in range(1, count))
        )
        if count == 50:
            by_tunnel = {t["name"]: addresses(t["routes"]) // 256 for t in config["tunnels"]}
            # office25 is 25 hops either way: the tie goes to the lower-named next hop.
            assert by_tunnel == {"sl-office1": 25, "sl-office49": 24}


@pytest.mark.parametrize("count", [1, 2, 50, 1000])
def test_external_peers_at_scale(count):
    externals = [
        {
            "name": f"partner{i}",
            "wan_address": f"198.51.{100 + i // 250}.{i % 250 + 1}",
            "lan_address": f"10.{200 + i // 250}.{i % 250}.1/24",
            "psk": f"partner{i}-own-key-0123456789",
        }
        for i in range(min(count, 20))
    ]
    offices = with_topology(branch_offices(count), "hub-and-spoke", office_external_peers=externals)
    plan = plan_network(offices)
    assert len(plan.gateways) == count  # external peers get no plan
    hub = office_plan(plan, "office0-gw")
    assert len(hub["tunnels"]) == count - 1 + len(externals)
    if count > 1:
        branch = office_plan(plan, "office1-gw")
        # Every other office's LAN and every external peer's (each a /24).
        routes = branch["tunnels"][0]["routes"]
        assert addresses(routes) == 256 * (count - 2 + 1 + len(externals))
    assert_tunnels_pair_up(plan)
