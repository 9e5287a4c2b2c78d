"""The gateway_confirm module's entry point: its real argument spec and result.

The work is in module_utils (tests/unit/plugins/module_utils/test_checkpoint.py), whose fakes
stand in for the system here too.
"""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.sitelink.gateway.plugins.module_utils import checkpoint as cp
from ansible_collections.sitelink.gateway.plugins.modules import gateway_confirm
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.test_checkpoint import (
    FakeCheckpoint,
)


def test_module_main_with_real_argument_spec(monkeypatch, capsys):
    checkpoint = FakeCheckpoint({"confirmed": False, "unit": cp.TIMER, "resources": []})
    monkeypatch.setattr(cp, "Checkpoint", lambda module: checkpoint)
    with patch_module_args({"armed_at": "1000.5"}), pytest.raises(SystemExit) as exc:
        gateway_confirm.main()
    assert exc.value.code == 0 and checkpoint.calls == [1000.5]
    assert json.loads(capsys.readouterr().out)["changed"] is False
