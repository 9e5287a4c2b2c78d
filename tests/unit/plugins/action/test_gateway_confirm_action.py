"""gateway_confirm's action plugin: a new connection, retried until the deadline.

The connection and the clock are fakes; the module it runs is the real one's result.
"""

from __future__ import annotations

from types import SimpleNamespace

from ansible.errors import AnsibleConnectionFailure
from ansible_collections.sitelink.gateway.plugins.action import gateway_confirm as action
from ansible_collections.sitelink.gateway.plugins.module_utils import checkpoint as cp

# --------------------------------------------------------------------------
# the action plugin: a new connection, retried until the deadline


class FakeConnection:
    def __init__(self, log):
        self.log = log
        self._shell = SimpleNamespace(tmpdir=None)

    def reset(self):
        self.log.append("reset")


class Clock:
    def __init__(self, now):
        self.now = now

    def time(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def make_action(results, log, clock, args=None, check_mode=False):
    task = SimpleNamespace(
        args=dict(args or {}),
        async_val=0,
        check_mode=check_mode,
        action="sitelink.gateway.gateway_confirm",
    )
    plugin = action.ActionModule(
        task, FakeConnection(log), SimpleNamespace(remote_addr="10.0.0.1"), None, None, None
    )
    outcomes = iter(results)

    def execute_module(module_name=None, module_args=None, task_vars=None):
        log.append(("module", module_name, module_args))
        outcome = next(outcomes)
        clock.now += 1
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    plugin._execute_module = execute_module
    plugin._remove_tmp_path = lambda tmpdir: None
    plugin._now = clock.time
    plugin._sleep = clock.sleep
    return plugin


FACT = {"unit": cp.TIMER, "deadline": 1100, "armed_at": 1000.5, "resources": ["tunnels"]}


def task_vars(fact=None):
    fact = FACT if fact is None else fact
    return {"inventory_hostname": "manhattan-gw", "ansible_facts": {"sitelink_rollback": fact}}


def test_action_without_a_pending_rollback_does_not_connect():
    log = []
    for facts in ({"ansible_facts": {}}, task_vars({})):
        result = make_action([], log, Clock(1000)).run(task_vars=facts)
        assert result["skipped"] is True and result["changed"] is False
    assert log == []


def test_action_in_check_mode_does_nothing():
    log = []
    result = make_action([], log, Clock(1000), check_mode=True).run(task_vars=task_vars())
    assert result["skipped"] is True and log == []


def test_action_resets_the_connection_then_confirms_and_clears_the_fact():
    log = []
    confirmed = {"changed": True, "confirmed": {"confirmed": True}, "rolled_back": False}
    result = make_action([confirmed], log, Clock(1010)).run(task_vars=task_vars())
    assert log == [
        "reset",
        ("module", "sitelink.gateway.gateway_confirm", {"armed_at": 1000.5}),
    ]
    assert result["changed"] is True and not result.get("failed")
    assert result["ansible_facts"] == {"sitelink_rollback": {}}
    assert result["attempts"] == 1


def test_action_retries_new_connections_until_one_works():
    log, clock = [], Clock(1010)
    lost = AnsibleConnectionFailure("ssh: connect to host 10.0.0.1 port 22: Connection timed out")
    results = [lost, lost, {"changed": True, "rolled_back": False}]
    result = make_action(results, log, clock).run(task_vars=task_vars())
    assert result["changed"] is True and result["attempts"] == 3
    assert log.count("reset") == 3 and log[0] == "reset"


def test_action_gives_up_before_the_deadline_naming_host_and_rollback():
    log, clock = [], Clock(1010)
    lost = AnsibleConnectionFailure("Connection timed out")
    result = make_action([lost] * 100, log, clock).run(task_vars=task_vars())
    assert result["failed"] is True and "ansible_facts" not in result
    # Default: until 10 s before the deadline (1100).
    assert clock.now <= 1090 + action.ActionModule.SLEEP
    msg = result["msg"]
    assert msg.startswith("manhattan-gw: no new connection within ")
    assert "restores its previous state (tunnels) by itself at " in msg
    assert action.clock_text(1100) in msg and "(sitelink-rollback.timer)" in msg
    assert "Connection timed out" in msg


def test_action_timeout_option_and_one_attempt_when_the_deadline_is_near():
    log = []
    lost = AnsibleConnectionFailure("refused")
    result = make_action([lost] * 10, log, Clock(1095)).run(task_vars=task_vars())
    assert result["failed"] and result["attempts"] == 1
    log.clear()
    clock = Clock(1000)
    result = make_action([lost] * 100, log, clock, args={"timeout": 30}).run(task_vars=task_vars())
    assert result["failed"] and 1028 <= clock.now <= 1032


def test_action_reports_a_rollback_that_already_happened():
    log = []
    rolled = {
        "failed": True,
        "exception": "the module's error summary",
        "rolled_back": True,
        "msg": "the gateway rolled back at ...",
        "rollback": {"rolled_back_at": 1100.2, "armed_at": 1000.5, "resources": []},
    }
    result = make_action([rolled], log, Clock(1200)).run(task_vars=task_vars())
    assert result["failed"] is True
    assert result["msg"].startswith("manhattan-gw: the change was not confirmed in time")
    assert action.clock_text(1100.2) in result["msg"]
    assert "exception" not in result  # else Ansible shows the module's message instead


def test_action_armed_at_option_wins_over_the_fact():
    log = []
    plugin = make_action([{"changed": False}], log, Clock(1010), args={"armed_at": 5.5})
    plugin.run(task_vars=task_vars())
    assert log[1][2] == {"armed_at": 5.5}
