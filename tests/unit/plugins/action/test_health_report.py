"""health_report's action plugin: one report from every gateway's result, on the controller."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ansible_collections.sitelink.gateway.plugins.action import health_report as action
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.test_health import (
    PLAIN,
    PLANS,
    Gateway,
    check,
)


def run_report_action(hostvars, tmp_path=None):
    args = {"hosts": sorted(hostvars)}
    if tmp_path is not None:
        args["output"] = str(tmp_path / "report.json")
    task = SimpleNamespace(
        args=args, async_val=0, check_mode=False, action="sitelink.gateway.health_report"
    )
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/nowhere"))  # never used
    plugin = action.ActionModule(task, connection, SimpleNamespace(), None, None, None)
    return plugin.run(task_vars={"hostvars": hostvars})


def test_the_action_warns_once_on_plain_ipip_and_writes_the_warning(tmp_path):
    hostvars = {
        host: {"sitelink_health": check(Gateway(plan)), "office_plan": plan}
        for host, plan in PLAIN.items()
    }
    result = run_report_action(hostvars, tmp_path)
    assert result["healthy"] is True and not result.get("failed")
    (warning,) = result["warnings"]  # Ansible shows it as [WARNING] on the controller
    assert "plain IPIP, readable by anyone on the path and forgeable" in warning
    assert "NONE (plain IPIP)" in result["table"]
    assert json.loads((tmp_path / "report.json").read_text())["warnings"] == [warning]


def test_the_action_does_not_warn_with_ipsec():
    hostvars = {
        host: {"sitelink_health": check(Gateway(plan)), "office_plan": plan}
        for host, plan in PLANS.items()
    }
    result = run_report_action(hostvars)
    assert result["healthy"] is True
    assert not result.get("warnings")
