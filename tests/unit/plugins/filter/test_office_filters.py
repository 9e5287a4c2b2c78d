"""The office role's filters: the network planned once per run, a bad inventory one
failure, and each role's section and keys through the contract."""

from __future__ import annotations

import copy

import jinja2
import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.sitelink.gateway.plugins.filter import contract as contract_filters
from ansible_collections.sitelink.gateway.plugins.filter import office as office_filters
from ansible_collections.sitelink.gateway.plugins.module_utils import contract
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import inventory
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    branch_offices,
)

SECRET = "filter-test-secret-0123456789"  # noqa: S105  (a test key)


def hostvars_of(offices: dict) -> dict:
    """``offices`` as Ansible's hostvars show them: each host sees the groups."""
    groups = {"all": sorted(offices), "offices": sorted(offices)}
    return {host: {**values, "groups": groups} for host, values in offices.items()}


@pytest.fixture
def run(monkeypatch):
    """A fresh run: its own plan cache, and the warnings the filters say."""
    monkeypatch.setattr(inventory, "RUN", inventory.RunPlans())
    monkeypatch.setattr(office_filters, "RUN", inventory.RUN)
    said = []
    monkeypatch.setattr(office_filters.display, "warning", said.append)
    return said


def hand_out(hostvars, hosts):
    """What the office role's task does: the loop, then one item per gateway."""
    items = office_filters.office_gateways(hosts, hostvars, "offices", None)
    return {
        item: office_filters.office_gateway(item, hostvars, "offices", SECRET) for item in items
    }


def test_the_network_is_planned_once_for_the_loop_and_all_its_items(run):
    offices = branch_offices(5)
    hostvars = hostvars_of(offices)
    handed = hand_out(hostvars, sorted(offices))
    assert sorted(handed) == sorted(offices)
    assert inventory.RUN.plans_made == 1
    for host, mine in handed.items():
        assert mine["plan"]["office"] == offices[host]["office_name"]
        assert set(mine["secrets"]["links"]) == {link["id"] for link in mine["plan"]["links"]}
    # Another hostvars object (a later task, another play) is planned again.
    hand_out(hostvars_of(offices), sorted(offices))
    assert inventory.RUN.plans_made == 2


class CountingHostvars(dict):
    """hostvars that count lookups: through Ansible's, each templates a host's variables."""

    lookups = 0

    def __getitem__(self, host):
        self.lookups += 1
        return super().__getitem__(host)


def test_an_item_costs_one_hand_out_and_no_lookup(run):
    """The office role's item asks for its gateway's part twice (office_plan, then
    office_secrets): one part is made, and neither call looks anything up in hostvars
    again; the plan was made by the loop."""
    offices = branch_offices(4)
    hostvars = CountingHostvars(hostvars_of(offices))
    hosts = sorted(offices)
    assert office_filters.office_gateways(hosts, hostvars, "offices") == hosts
    planned = hostvars.lookups
    assert planned > 0 and inventory.RUN.handouts_made == 0
    for host in hosts:
        plan = office_filters.office_gateway(host, hostvars, "offices", SECRET)["plan"]
        secrets = office_filters.office_gateway(host, hostvars, "offices", SECRET)["secrets"]
        assert plan["office"] == offices[host]["office_name"]
        assert set(secrets["links"]) == {link["id"] for link in plan["links"]}
    assert inventory.RUN.handouts_made == len(hosts)
    assert inventory.RUN.plans_made == 1
    assert hostvars.lookups == planned


def test_a_hand_out_is_remade_for_other_keys_or_another_plan(run):
    offices = branch_offices(2)
    hostvars = hostvars_of(offices)
    first = office_filters.office_gateway("office1-gw", hostvars, "offices", SECRET)
    rotated = office_filters.office_gateway("office1-gw", hostvars, "offices", SECRET, "old")
    assert rotated is not first and "relay_accepted" in next(
        iter(rotated["secrets"]["links"].values())
    )
    assert office_filters.office_gateway("office1-gw", hostvars, "offices", SECRET) is not first
    assert inventory.RUN.handouts_made == 3
    # Another run's hostvars: a new plan, and nothing handed out from the last one.
    again = office_filters.office_gateway("office1-gw", hostvars_of(offices), "offices", SECRET)
    assert inventory.RUN.plans_made == 2 and inventory.RUN.handouts_made == 4
    assert again == first


def test_the_plans_warnings_are_said_once(run):
    offices = branch_offices(1)  # alone: nothing to masquerade, nobody to relay to
    hostvars = hostvars_of(offices)
    hand_out(hostvars, sorted(offices))
    hand_out(hostvars, sorted(offices))
    assert run and len(run) == len(set(run))


def test_a_bad_inventory_is_one_item_that_carries_every_problem(run):
    offices = copy.deepcopy(branch_offices(3))
    for values in offices.values():
        values["office_role"] = "spoke"
    hostvars = hostvars_of(offices)
    assert office_filters.office_gateways(sorted(offices), hostvars, "offices") == [None]
    handed = office_filters.office_gateway(None, hostvars, "offices", SECRET)
    assert handed["plan"] is None and handed["secrets"] is None
    assert handed["problems"].startswith(
        "invalid office inventory (1 problem, 3 counted office by office)"
    )
    assert SECRET not in handed["problems"]
    assert inventory.RUN.plans_made == 1
    # Called for a gateway of that inventory, the filter fails with the same problems.
    with pytest.raises(AnsibleFilterError, match="invalid office inventory"):
        office_filters.office_gateway("office1-gw", hostvars, "offices", SECRET)


def test_a_value_a_filter_gets_undefined_is_a_problem_of_its_office(run):
    """From a filter, Ansible hands a variable that cannot be templated over as Jinja's
    Undefined, not as an error: it is named like any other problem."""
    offices = copy.deepcopy(branch_offices(2))
    offices["office1-gw"]["office_wan_mtu"] = jinja2.Undefined(name="no_such_var")
    offices["office0-gw"]["office_broadcast_relay"] = [{"port": jinja2.Undefined(name="p")}]
    hostvars = hostvars_of(offices)
    assert office_filters.office_gateways(sorted(offices), hostvars, "offices") == [None]
    problems = office_filters.office_gateway(None, hostvars, "offices")["problems"]
    assert "office 'office1' (host office1-gw): office_wan_mtu: cannot be templated: " in problems
    assert "'no_such_var' is undefined" in problems
    assert "(host office0-gw): office_broadcast_relay: cannot be templated: 'p' is undefined" in (
        problems
    )


def test_an_empty_group_is_named(run):
    hostvars = hostvars_of(branch_offices(2))
    with pytest.raises(AnsibleFilterError, match="group 'gateways' has no hosts"):
        office_filters.office_gateways(sorted(hostvars), hostvars, "gateways")


# ----------------------------------------------------------------------------- the contract


@pytest.fixture(scope="module")
def hub():
    offices = branch_offices(3)
    hostvars = hostvars_of(offices)
    inventory.RUN = inventory.RunPlans()
    office_filters.RUN = inventory.RUN
    handed = hand_out(hostvars, sorted(offices))
    return handed["office0-gw"]


def test_a_role_gets_its_section_checked(hub):
    assert contract_filters.plan_section(hub["plan"], "firewall") == hub["plan"]["firewall"]
    broken = copy.deepcopy(hub["plan"])
    del broken["firewall"]["relay_ports"]
    with pytest.raises(AnsibleFilterError, match=r"office_plan\.firewall: missing relay_ports"):
        contract_filters.plan_section(broken, "firewall")
    assert contract_filters.plan_section(None, "tunnels") == []


def test_link_keys_by_link_for_ipsec_and_by_peer_relay_for_the_relay(hub):
    plan, secrets = hub["plan"], hub["secrets"]
    tunnel = contract_filters.link_keys(plan, secrets, "tunnel")
    assert tunnel == {lid: [keys["tunnel"]] for lid, keys in secrets["links"].items()}
    relay = contract_filters.link_keys(plan, secrets, "relay")
    assert relay == {
        link["peer_address"]: {"relay": secrets["links"][link["id"]]["relay"]}
        for link in plan["links"]
    }
    assert contract_filters.link_keys(None, secrets, "relay") == {}
    assert contract_filters.link_keys(plan, None, "tunnel") == {}


def test_the_keys_file_is_the_contracts_and_a_keyless_peer_is_named(hub):
    config = hub["plan"]["relay"]
    keys = contract_filters.link_keys(hub["plan"], hub["secrets"], "relay")
    document = contract_filters.relay_keys_file(keys, config)
    assert document == contract.relay_keys_document(contract.relay_keyed_peers(config), keys)
    peer = next(iter(contract.relay_keyed_peers(config)))
    with pytest.raises(AnsibleFilterError, match=f"{peer}.*is office_tunnel_secret set") as err:
        contract_filters.relay_keys_file({}, config)
    assert all(k["relay"] not in str(err.value) for k in keys.values())
    raw = {**config, "wire": contract.WIRE_RAW, "peers": {}}
    assert contract_filters.relay_keys_file(keys, raw) is None


def test_relay_paths_come_from_the_config_or_the_contract():
    assert contract_filters.relay_path({}, "state_dir") == contract.RELAY_STATE_DIR
    assert contract_filters.relay_path({"keys_file": "/k"}, "keys_file") == "/k"
    with pytest.raises(AnsibleFilterError, match="one of"):
        contract_filters.relay_path({}, "config")


def test_a_relay_authenticates_on_its_own_wire_or_a_peers(hub):
    config = copy.deepcopy(hub["plan"]["relay"])
    config["peers"] = {"10.0.1.1": {"office": "office1", "interface": "sl-office1"}}
    assert contract_filters.relay_authenticates(config) is True
    config["wire"] = contract.WIRE_RAW
    config["peers"]["10.0.1.1"]["wire"] = contract.WIRE_SITELINK1
    assert contract_filters.relay_authenticates(config) is True  # its peers still sitelink1
    for peer in config["peers"].values():
        peer["wire"] = contract.WIRE_RAW
    assert contract_filters.relay_authenticates(config) is False
    assert contract_filters.relay_authenticates(None) is False
