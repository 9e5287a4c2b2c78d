"""The ipip_tunnel module's entry point: its real argument spec and result.

The work is in module_utils (tests/unit/plugins/module_utils/test_tunnel.py), whose fakes
stand in for the system here too.
"""

from __future__ import annotations

import json

from ansible_collections.sitelink.gateway.plugins.module_utils import tunnel as tu
from ansible_collections.sitelink.gateway.plugins.modules import ipip_tunnel
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.test_tunnel import (
    BROOKLYN,
    FakeRunner,
    Host,
    retired_host,
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.modules.utils import run_main


def test_module_main_with_real_argument_spec(monkeypatch, capsys):
    runner = FakeRunner(Host())
    monkeypatch.setattr(tu, "IpRunner", lambda module: runner)
    raw = {k: v for k, v in BROOKLYN.items() if k not in ("mtu", "ttl")}
    args = {"tunnels": [raw], "persist_path": None, "_ansible_check_mode": True}
    # (boot_unit is ignored without persist_path: no systemctl needed here)
    code, out = run_main(ipip_tunnel.main, args, capsys)
    assert code == 0
    result = json.loads(out)
    assert result["changed"] is True
    assert result["persist_path"] is None
    assert result["tunnels"][0]["mtu"] == 1480 and result["tunnels"][0]["ttl"] == 64
    assert len(result["commands"]) == 4
    assert runner.changes() == []


def test_module_main_state_absent_with_real_argument_spec(monkeypatch, capsys):
    runner = FakeRunner(retired_host().add_tunnel(BROOKLYN))
    monkeypatch.setattr(tu, "IpRunner", lambda module: runner)
    args = {"state": "absent", "persist_path": "", "_ansible_check_mode": True}
    code, out = run_main(ipip_tunnel.main, args, capsys)
    assert code == 0
    result = json.loads(out)
    assert result["changed"] is True and result["removed"] == ["sl-brooklyn"]
    assert result["commands"] == ["ip link del dev sl-brooklyn"] and runner.changes() == []

    code, out = run_main(ipip_tunnel.main, {"state": "gone"}, capsys)
    assert code == 1
    assert "value of state must be one of: present, absent" in out


def test_module_main_with_real_argument_spec_has_rollback_timeout(monkeypatch, capsys):
    runner = FakeRunner(Host())
    monkeypatch.setattr(tu, "IpRunner", lambda module: runner)
    args = {
        "tunnels": [BROOKLYN],
        "persist_path": None,
        "rollback_timeout": 60,
        "_ansible_check_mode": True,
    }
    code, out = run_main(ipip_tunnel.main, args, capsys)
    assert code == 0
    result = json.loads(out)
    assert result["changed"] is True and "rollback" not in result
