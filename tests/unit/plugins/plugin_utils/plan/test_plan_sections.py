"""The plan's safety sections: IPsec connections, the firewall, the relay's tunnels."""

from __future__ import annotations

import pytest
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    branch_offices,
    case_study,
    with_topology,
)


def gateway(offices: dict, host: str) -> dict:
    return plan_network(offices).gateway_dict(host)


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
    assert plan.gateway_dict("brooklyn-gw")["ipsec"]["connections"] == []
    assert plan.gateway_dict("brooklyn-gw")["tunnels"][0]["mtu"] == 1480
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
    hub = plan.gateway_dict("office0-gw")
    assert len(hub["ipsec"]["connections"]) == 999
    assert len(hub["firewall"]["tunnels"]) == 999
    # Every office LAN, collapsed: 1000 consecutive /24s are a handful of prefixes.
    assert len(plan.gateway_dict("office500-gw")["firewall"]["office_lans"]) <= 10
