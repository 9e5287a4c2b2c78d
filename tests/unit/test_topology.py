"""Controller-side planning: the case study, every validation error, 1 to 1000 offices."""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "sitelink_topology", ROOT / "plugins/plugin_utils/topology.py"
)
topology = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(topology)


def case_study() -> dict:
    """The office variables of examples/case-study/inventory.yml, group vars applied."""
    inventory = yaml.safe_load((ROOT / "examples/case-study/inventory.yml").read_text())
    group = inventory["offices"]
    offices = {}
    for host, host_vars in group["hosts"].items():
        merged = dict(group.get("vars", {}))
        merged.update(host_vars)
        offices[host] = {k: v for k, v in merged.items() if k in topology.OFFICE_VARIABLES}
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
        }
    return offices


def problems(offices: dict, topology_name: str = "hub-and-spoke") -> list[str]:
    with pytest.raises(topology.TopologyError) as info:
        topology.network_plan(offices, topology_name)
    return info.value.errors


def test_case_study_plan_matches_the_article():
    plan = topology.network_plan(case_study())
    assert plan["offices"] == {"manhattan": "manhattan-gw", "brooklyn": "brooklyn-gw"}
    manhattan = plan["gateways"]["manhattan-gw"]
    brooklyn = plan["gateways"]["brooklyn-gw"]

    assert manhattan["tunnels"] == [
        {
            "name": "sl-brooklyn",
            "local": "172.16.1.12",
            "remote": "172.17.2.10",
            "address": "192.168.1.126",
            "routes": ["192.168.2.0/24"],
            "mtu": 1480,
            "ttl": 64,
            "description": "peer brooklyn",
        }
    ]
    assert brooklyn["tunnels"][0] | {"description": None} == {
        "name": "sl-manhattan",
        "local": "172.17.2.10",
        "remote": "172.16.1.12",
        "address": "192.168.2.126",
        "routes": ["192.168.1.0/24"],
        "mtu": 1480,
        "ttl": 64,
        "description": None,
    }
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


def test_role_defaults_mirror_the_planner_defaults():
    defaults = yaml.safe_load((ROOT / "roles/office/defaults/main.yml").read_text())
    for name, value in topology.OFFICE_DEFAULTS.items():
        assert defaults[name] == value, name


def test_peers_come_from_the_inventory_not_the_play():
    # A plan is a function of every office: planning for a subset of hosts
    # (as --limit would) is not possible by construction, so check the hub side.
    plan = topology.network_plan(branch_offices(5))
    hub = plan["gateways"]["office0-gw"]
    assert [t["name"] for t in hub["tunnels"]] == [f"sl-office{i}" for i in range(1, 5)]
    assert hub["masquerade"]["sources"] == [f"10.0.{i}.0/24" for i in range(1, 5)]


def test_relay_without_to_goes_to_every_peer():
    plan = topology.network_plan(branch_offices(4))
    rules = plan["gateways"]["office0-gw"]["relay"]["rules"]
    assert rules == [
        {
            "port": 6799,
            "forward_to": ["10.0.1.1", "10.0.2.1", "10.0.3.1"],
            "accept_from": [],
        }
    ]
    assert plan["gateways"]["office3-gw"]["relay"]["rules"][0]["accept_from"] == ["10.0.0.1"]


def test_tunnel_mtu_is_the_smaller_wan_mtu_minus_ipip_overhead():
    offices = case_study()
    offices["brooklyn-gw"]["office_wan_mtu"] = 1492  # PPPoE
    plan = topology.network_plan(offices)
    assert plan["gateways"]["manhattan-gw"]["tunnels"][0]["mtu"] == 1472
    assert plan["gateways"]["brooklyn-gw"]["tunnels"][0]["mtu"] == 1472


def test_booleans_are_read_as_ansible_reads_them():
    offices = case_study()
    offices["manhattan-gw"]["office_masquerade"] = "yes"
    plan = topology.network_plan(offices)
    assert plan["gateways"]["manhattan-gw"]["masquerade"]["sources"] == ["192.168.2.0/24"]


def test_tunnel_names_fit_the_kernel_and_are_stable():
    assert topology.tunnel_name("brooklyn") == "sl-brooklyn"
    long_name = "staten-island-ferry-terminal"
    name = topology.tunnel_name(long_name)
    assert len(name) == 15 and name.startswith("sl-staten-")
    assert name == topology.tunnel_name(long_name)
    assert name != topology.tunnel_name("staten-island-ferry-2")


@pytest.mark.parametrize(
    ("host", "field", "value", "expected"),
    [
        ("brooklyn-gw", "office_lan_address", None, "office_lan_address: is required"),
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
        ("brooklyn-gw", "office_wan_mtu", "1500", "not an MTU"),
        ("brooklyn-gw", "office_role", "spoke", "must be one of: hub, branch"),
        ("brooklyn-gw", "office_masquerade", "maybe", "must be true or false"),
        ("brooklyn-gw", "office_name", "Brooklyn Heights", "office_name: 'Brooklyn Heights'"),
        ("manhattan-gw", "office_broadcast_relay", {"port": 6799}, "must be a list"),
        ("manhattan-gw", "office_broadcast_relay", [6799], "must be a mapping"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 0}], "[0].port: 0 is not"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": True}], "is not a UDP port"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 1, "dest": "x"}], "unknown key"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 1}, {"port": 1}], "listed twice"),
        ("manhattan-gw", "office_broadcast_relay", [{"port": 1, "to": "brooklyn"}], "[0].to"),
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
    assert len(problems(offices)) == 2


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
    assert any("office_name: 'manhattan' is also used by host" in e for e in errors)


def test_lan_that_contains_a_peer_public_address():
    offices = case_study()
    offices["brooklyn-gw"]["office_lan_address"] = "172.16.0.1/16"
    errors = problems(offices)
    assert any("contains the WAN address 172.16.1.12" in e for e in errors), errors


def test_tunnel_name_collision_is_detected():
    long_name = "abcdefghijklmnop"
    clash = topology.tunnel_name(long_name)[len("sl-") :]
    offices = branch_offices(3)
    offices["office1-gw"]["office_name"] = long_name
    offices["office2-gw"]["office_name"] = clash
    errors = problems(offices)
    assert any("collides" in e and "office_name" in e for e in errors), errors


def test_relay_to_an_office_without_a_tunnel():
    offices = branch_offices(3)
    offices["office1-gw"]["office_broadcast_relay"] = [{"port": 5000, "to": ["office2"]}]
    (error,) = problems(offices)
    assert "office 'office1'" in error and "has no tunnel" in error


def test_hub_and_spoke_needs_a_hub_and_topology_must_be_known():
    offices = case_study()
    offices["manhattan-gw"]["office_role"] = "branch"
    (error,) = problems(offices)
    assert error.startswith("sitelink_topology: hub-and-spoke needs at least one office")
    assert topology.network_plan(offices, "mesh")["gateways"]["brooklyn-gw"]["peers"] == [
        "manhattan"
    ]
    assert "must be one of" in problems(case_study(), "star")[0]
    assert problems({}) == ["no offices: the offices group has no hosts"]


@pytest.mark.parametrize("count", [1, 2, 50, 1000])
def test_hub_and_spoke_scales(count):
    offices = branch_offices(count)
    plan = topology.network_plan(offices)
    gateways = plan["gateways"]
    assert len(gateways) == count
    hub = gateways["office0-gw"]
    assert len(hub["tunnels"]) == count - 1
    assert len({t["name"] for t in hub["tunnels"]}) == count - 1
    for index in range(1, count):
        branch = gateways[f"office{index}-gw"]
        assert [t["name"] for t in branch["tunnels"]] == ["sl-office0"]
        assert branch["tunnels"][0]["routes"] == ["10.0.0.0/24"]
    # Tunnel endpoints pair up: every tunnel has its mirror on the peer.
    for gateway in gateways.values():
        for tunnel in gateway["tunnels"]:
            peer = gateways[plan["offices"][tunnel["name"][3:]]]
            assert any(t["remote"] == tunnel["local"] for t in peer["tunnels"])


@pytest.mark.parametrize("count", [1, 2, 50])
def test_mesh_links_every_pair(count):
    offices = branch_offices(count)
    plan = topology.network_plan(offices, "mesh")
    for gateway in plan["gateways"].values():
        assert len(gateway["tunnels"]) == count - 1


def test_plan_does_not_change_its_input():
    offices = case_study()
    before = copy.deepcopy(offices)
    topology.network_plan(offices)
    assert offices == before
