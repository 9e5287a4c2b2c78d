"""site.yml's rolling apply: who goes first, in what batches, and bad settings refused."""

from __future__ import annotations

import pytest
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.rollout import rollout
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    branch_offices,
    case_study,
)


def order(offices: dict):
    return rollout(list(offices), lambda host, name: offices[host].get(name))


def test_hubs_first_then_branches_in_inventory_order():
    offices = branch_offices(5)
    offices["office3-gw"]["office_role"] = "hub"
    plan = order(offices)
    assert plan.hubs == ["office0-gw", "office3-gw"]
    assert plan.branches == ["office1-gw", "office2-gw", "office4-gw"]


def test_defaults_one_canary_then_ten_at_a_time_and_a_fifth_may_fail():
    plan = order(case_study())
    assert (plan.hubs, plan.branches) == (["manhattan-gw"], ["brooklyn-gw"])
    assert plan.batch == [1, 10]
    assert plan.max_fail_percentage == 20


@pytest.mark.parametrize(
    ("batch", "expected"),
    [(5, [5]), ("5", [5]), ("25%", ["25%"]), ([1, "50%", 20], [1, "50%", 20])],
)
def test_batch_settings_are_read_as_ansible_reads_them(batch, expected):
    offices = case_study()
    for office in offices.values():
        office["office_rollout_batch"] = batch
        office["office_rollout_max_fail_percentage"] = "0"
    plan_network(offices)  # valid
    plan = order(offices)
    assert plan.batch == expected
    assert plan.max_fail_percentage == 0


def test_a_mesh_has_no_hubs():
    offices = case_study()
    for office in offices.values():
        office["office_topology"] = "mesh"
        office["office_role"] = "branch"
    assert order(offices).hubs == []


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("office_rollout_batch", 0, "0 must be a positive number, a percentage"),
        ("office_rollout_batch", "0%", "'0%' must be a positive number"),
        ("office_rollout_batch", "150%", "'150%' must be a positive number"),
        ("office_rollout_batch", [], "[] must be a positive number"),
        ("office_rollout_batch", [1, "all"], "[1, 'all'] must be a positive number"),
        ("office_rollout_max_fail_percentage", 101, "101 must be a whole number from 0 to 100"),
        ("office_rollout_max_fail_percentage", "half", "'half' is not an integer"),
    ],
)
def test_bad_batch_settings_are_named(name, value, message):
    offices = case_study()
    for office in offices.values():
        office[name] = value
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    assert any(
        e.startswith(f"deployment (every office): {name}: {message}") for e in info.value.errors
    ), info.value.errors


def test_batch_settings_must_agree_across_offices():
    offices = case_study()
    offices["brooklyn-gw"]["office_rollout_batch"] = 2
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    assert "office 'brooklyn' (host brooklyn-gw): office_rollout_batch: 2 differs" in str(
        info.value
    )
