"""The gateway_confirm module's entry point: its real argument spec and result.

The work is in module_utils (tests/unit/plugins/module_utils/test_checkpoint.py), whose fakes
stand in for the system here too.
"""

from __future__ import annotations

import json

from ansible_collections.sitelink.gateway.plugins.module_utils import checkpoint as cp
from ansible_collections.sitelink.gateway.plugins.modules import gateway_confirm
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.test_checkpoint import (
    FakeCheckpoint,
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.modules.utils import run_main


def test_module_main_with_real_argument_spec(monkeypatch, capsys):
    checkpoint = FakeCheckpoint({"confirmed": False, "unit": cp.TIMER, "resources": []})
    monkeypatch.setattr(cp, "Checkpoint", lambda module: checkpoint)
    code, out = run_main(gateway_confirm.main, {"armed_at": "1000.5"}, capsys)
    assert code == 0 and checkpoint.calls == [1000.5]
    assert json.loads(out)["changed"] is False
