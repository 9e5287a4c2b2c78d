"""The plan's safety sections: IPsec connections, the firewall, the relay's tunnels;
and every section as the contract (``module_utils.contract``) declares it."""

from __future__ import annotations

import ast
import copy
import re

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import contract
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import (
    firewall,
    ipsec,
    masquerade,
    relay,
    tunnels,
)
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    branch_offices,
    case_study,
    with_topology,
)


def gateway(offices: dict, host: str) -> dict:
    """One gateway's office_plan, which matches the contract."""
    mine = office_plan(plan_network(offices), host)
    assert contract.problems(mine) == []
    return mine


def errors(offices: dict) -> list[str]:
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    return info.value.errors


def test_every_link_is_one_ipsec_connection_by_default():
    manhattan = gateway(case_study(), "manhattan-gw")
    assert manhattan["protection"] == "ipsec"
    assert manhattan["ipsec"] == {
        "protection": "ipsec",
        "connections": [
            {
                "name": "sl-brooklyn",
                "link": "brooklyn+manhattan",
                "peer": "brooklyn",
                "local": "172.16.1.12",
                "remote": "172.17.2.10",
            }
        ],
        "unprotected": [],
        "external": {},
    }
    # The key is not in the plan: only office_secrets carries it.
    assert "secret" not in repr(manhattan).lower().replace("office_secrets", "")


def test_without_protection_no_connection_and_a_warning():
    offices = with_topology(
        case_study(), "hub-and-spoke", office_tunnel_protection="none", office_relay_wire="raw"
    )
    for office in offices.values():
        del office["office_tunnel_secret"]  # not needed then
    plan = plan_network(offices)
    assert office_plan(plan, "brooklyn-gw")["ipsec"]["connections"] == []
    assert office_plan(plan, "brooklyn-gw")["tunnels"][0]["mtu"] == 1480
    assert any("office_tunnel_protection: none" in w and "forge" in w for w in plan.warnings)
    # The raw relay wire warns too, and says that without IPsec anyone can forge it.
    assert any(
        w.startswith("deployment (every office): office_relay_wire: raw: ")
        and "anyone on the Internet can forge them" in w
        for w in plan.warnings
    ), plan.warnings


def test_a_missing_secret_is_one_clear_error():
    offices = case_study()
    for office in offices.values():
        del office["office_tunnel_secret"]
    (problem,) = errors(offices)
    assert problem.startswith("deployment (every office): office_tunnel_secret: is not set")
    assert "ansible-vault" in problem and "office_tunnel_protection: none" in problem


def test_a_short_secret_is_refused_without_showing_it():
    offices = with_topology(case_study(), "hub-and-spoke", office_tunnel_secret="hunter2")  # noqa: S106
    (problem,) = errors(offices)
    assert "shorter than 16" in problem and "hunter2" not in problem


def test_a_secret_that_differs_between_offices_is_not_shown():
    offices = case_study()
    offices["brooklyn-gw"]["office_tunnel_secret"] = "another-secret-of-length"  # noqa: S105
    text = "\n".join(errors(offices))
    assert "office_tunnel_secret" in text and "another-secret" not in text


def test_firewall_section_comes_from_the_links():
    offices = branch_offices(3)
    hub = gateway(offices, "office0-gw")["firewall"]
    assert hub["link_peers"] == ["100.64.0.5", "100.64.0.9"]
    assert hub["office_lans"] == ["10.0.0.0/23", "10.0.2.0/24"]  # collapsed
    assert hub["tunnels"] == [
        {"name": "sl-office1", "sources": ["10.0.1.0/24"], "relay_peer": "10.0.1.1", "mtu": 1440},
        {"name": "sl-office2", "sources": ["10.0.2.0/24"], "relay_peer": "10.0.2.1", "mtu": 1440},
    ]
    assert hub["relay_ports"] == [6799]
    assert (hub["input_policy"], hub["forward_policy"], hub["management_sources"]) == (
        "accept",
        "accept",
        [],
    )
    # A branch: the hub's LAN and, through it (transit), the other branch's.
    branch = gateway(offices, "office1-gw")["firewall"]
    assert branch["tunnels"][0]["sources"] == ["10.0.0.0/24", "10.0.2.0/24"]
    assert branch["link_peers"] == ["100.64.0.1"]


def test_hardened_input_needs_management_sources():
    offices = case_study()
    offices["brooklyn-gw"]["office_firewall_input_policy"] = "drop"
    (problem,) = errors(offices)
    assert problem.startswith("office 'brooklyn' (host brooklyn-gw): office_management_sources:")
    offices["brooklyn-gw"]["office_management_sources"] = ["198.51.100.7", "2001:db8::/48"]
    fw = gateway(offices, "brooklyn-gw")["firewall"]
    assert fw["management_sources"] == ["198.51.100.7/32", "2001:db8::/48"]
    assert fw["input_policy"] == "drop"


def test_bad_management_source_and_policy_are_named():
    offices = case_study()
    offices["manhattan-gw"]["office_management_sources"] = ["10.0.0.300"]
    offices["manhattan-gw"]["office_firewall_forward_policy"] = "reject"
    text = "\n".join(errors(offices))
    assert "office 'manhattan' (host manhattan-gw): office_management_sources[0]:" in text
    assert "office_firewall_forward_policy: 'reject' must be one of: accept, drop" in text


@pytest.mark.parametrize("value", [0, 30, 3600])
def test_rollback_timeout_in_range(value):
    offices = with_topology(case_study(), "hub-and-spoke", office_rollback_timeout=value)
    assert gateway(offices, "brooklyn-gw")["rollback_timeout"] == value


@pytest.mark.parametrize("value", [5, 29, 3601])
def test_rollback_timeout_out_of_range(value):
    offices = with_topology(case_study(), "hub-and-spoke", office_rollback_timeout=value)
    (problem,) = errors(offices)
    assert problem.startswith("deployment (every office): office_rollback_timeout:")


def test_relay_knows_each_peer_relay_its_office_and_tunnel():
    offices = branch_offices(3)
    assert gateway(offices, "office0-gw")["relay"]["peers"] == {
        "10.0.1.1": {"office": "office1", "interface": "sl-office1"},
        "10.0.2.1": {"office": "office2", "interface": "sl-office2"},
    }
    assert gateway(offices, "office2-gw")["relay"]["peers"] == {
        "10.0.0.1": {"office": "office0", "interface": "sl-office0"}
    }
    # No relay rule uses office2 at office1's side? It still hears the hub.
    assert gateway(offices, "office1-gw")["relay"]["peers"] == {
        "10.0.0.1": {"office": "office0", "interface": "sl-office0"}
    }


def test_one_thousand_offices_plan_every_section():
    offices = branch_offices(1000)
    plan = plan_network(offices)
    hub = office_plan(plan, "office0-gw")
    assert len(hub["ipsec"]["connections"]) == 999
    assert len(hub["firewall"]["tunnels"]) == 999
    # Every office LAN, collapsed: 1000 consecutive /24s are a handful of prefixes.
    assert len(office_plan(plan, "office500-gw")["firewall"]["office_lans"]) <= 10
    # Collapsed once for the plan, not once per gateway (that was 7 ms a gateway).
    lans = {id(gw.office_lans) for gw in plan.gateways.values()}
    assert len(lans) == 1


def test_the_office_lans_are_every_lan_collapsed():
    offices = branch_offices(3)
    offices["office2-gw"]["office_lan_address"] = "192.168.7.1/24"
    plan = plan_network(offices)
    expected = ["10.0.0.0/23", "192.168.7.0/24"]
    assert [str(n) for n in plan.gateways["office2-gw"].office_lans] == expected
    assert firewall.section(plan.gateways["office1-gw"])["office_lans"] == expected


# --------------------------------------------------------------------------- the contract


def rich() -> dict:
    """A network whose hub's plan has something in every list and map the contract
    declares: branches relaying through the hub (transit) with a multicast group, an
    external peer protected with its own key, another plain and on the raw wire."""
    offices = with_topology(
        branch_offices(3),
        "hub-and-spoke",
        office_external_peers=[
            {
                "name": "partner",
                "wan_address": "198.51.100.7",
                "lan_address": "10.200.0.1/24",
                "psk": "partner-own-key-0123456789",
                "broadcast_relay": [{"port": 7000}],
            },
            {
                "name": "vendor",
                "wan_address": "198.51.100.9",
                "lan_address": "10.201.0.1/24",
                "protection": "none",
                "relay_wire": "raw",
                "broadcast_relay": [{"port": 7000}],
            },
        ],
    )
    offices["office1-gw"]["office_broadcast_relay"] = [
        {"port": 1900, "to": ["office2"], "groups": ["239.255.255.250"]}
    ]
    offices["office1-gw"]["office_firewall_input_policy"] = "drop"
    offices["office1-gw"]["office_management_sources"] = ["198.51.100.0/24"]
    return offices


@pytest.mark.parametrize(
    "offices",
    [
        case_study,
        rich,
        lambda: branch_offices(1),
        lambda: with_topology(branch_offices(4), "mesh", office_transit=False),
        lambda: with_topology(branch_offices(3), "hub-and-spoke", office_tunnel_protection="none"),
        lambda: with_topology(branch_offices(3), "hub-and-spoke", office_relay_wire="raw"),
    ],
    ids=["case-study", "rich", "alone", "mesh", "plain", "raw-wire"],
)
def test_every_gateway_plan_matches_the_contract(offices):
    plan = plan_network(offices())
    for host in plan.gateways:
        assert contract.problems(office_plan(plan, host)) == [], host


def _required(shape: contract.Shape, value, path: str):
    """(path, field) of every required field ``value`` holds, where ``shape`` declares
    it: the first item of each list, the first entry of each map."""
    if isinstance(shape, contract.Record):
        for name, inner in shape.fields.items():
            if name in value:
                yield path, name
                yield from _required(inner, value[name], f"{path}.{name}")
        for name, inner in shape.optional.items():
            if name in value:
                yield from _required(inner, value[name], f"{path}.{name}")
    elif isinstance(shape, contract.ListOf) and value:
        yield from _required(shape.item, value[0], f"{path}[0]")
    elif isinstance(shape, contract.MapOf) and value:
        key = list(value)[0]
        yield from _required(shape.value, value[key], f"{path}[{key!r}]")


def _declared_required(shape: contract.Shape, path: str) -> set[str]:
    """Every required field's path the contract declares below ``path`` (``[]`` an item)."""
    if isinstance(shape, contract.Record):
        found = set()
        for name, inner in shape.fields.items():
            found |= {f"{path}.{name}"} | _declared_required(inner, f"{path}.{name}")
        for name, inner in shape.optional.items():
            found |= _declared_required(inner, f"{path}.{name}")
        return found
    if isinstance(shape, contract.ListOf):
        return _declared_required(shape.item, path + "[]")
    if isinstance(shape, contract.MapOf):
        return _declared_required(shape.value, path + "[]")
    return set()


def _generic(path: str) -> str:
    """``office_plan.tunnels[0]`` and ``office_plan.relay.peers['10.0.1.1']`` as
    ``office_plan.tunnels[]`` and ``office_plan.relay.peers[]``."""
    return re.sub(r"\[[^\]]*\]", "[]", path)


def test_a_field_missing_from_any_section_is_named():
    plan = plan_network(rich())
    hub = office_plan(plan, "office0-gw")
    fields = list(_required(contract.OFFICE_PLAN, hub, "office_plan"))
    # The sample holds every required field the contract declares, so each is tried.
    declared = _declared_required(contract.OFFICE_PLAN, "office_plan")
    assert {_generic(f"{path}.{name}") for path, name in fields} == declared
    for path, name in fields:
        broken = copy.deepcopy(hub)
        where = broken
        for step in _steps(path):
            where = where[step]
        del where[name]
        assert f"{path}: missing {name}" in contract.problems(broken), (path, name)


def _steps(path: str) -> list:
    """The keys and indexes of ``path`` below office_plan, as _required writes them."""
    steps = []
    for name, index in re.findall(r"\.(\w+)|\[([^\]]+)\]", path[len("office_plan") :]):
        steps.append(name if name else ast.literal_eval(index))
    return steps


@pytest.mark.parametrize(
    ("module", "section", "field"),
    [
        (tunnels, "tunnels", "mtu"),
        (ipsec, "ipsec", "external"),
        (firewall, "firewall", "relay_ports"),
        (masquerade, "masquerade", "sources"),
        (relay, "relay", "keys_file"),
    ],
)
def test_a_section_that_drops_a_field_breaks_the_contract(monkeypatch, module, section, field):
    """A feature module whose section loses a field consumers read: contract.problems
    names it, and the section tests above fail."""
    real = module.section

    def without(gw):
        value = real(gw)
        for entry in value if isinstance(value, list) else [value]:
            entry.pop(field)
        return value

    monkeypatch.setattr(module, "section", without)
    plan = plan_network(rich())
    problems = contract.problems(office_plan(plan, "office0-gw"))
    where = f"office_plan.{section}[0]" if section == "tunnels" else f"office_plan.{section}"
    assert f"{where}: missing {field}" in problems
    assert all(p.endswith(f": missing {field}") for p in problems), problems
