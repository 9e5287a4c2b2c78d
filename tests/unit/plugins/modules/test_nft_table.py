"""The nft_table module's entry point: its real argument spec and result.

The work is in module_utils (tests/unit/plugins/module_utils/test_nftables.py), whose fakes
stand in for the system here too.
"""

from __future__ import annotations

import json

from ansible_collections.sitelink.gateway.plugins.module_utils import nftables
from ansible_collections.sitelink.gateway.plugins.modules import nft_table
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.test_nftables import (
    FakeNft,
    FakeSystemd,
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.modules.utils import run_main


def test_module_main_with_real_argument_spec_has_rollback_timeout(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(nftables, "Nft", lambda module: FakeNft())
    monkeypatch.setattr(nftables, "Systemd", lambda module: FakeSystemd())
    args = {
        "name": "t",
        "path": str(tmp_path / "t.nft"),
        "rollback_timeout": "30",
        "_ansible_check_mode": True,
    }
    code, out = run_main(nft_table.main, args, capsys)
    assert code == 0
    result = json.loads(out)
    assert result["changed"] is True and "rollback" not in result
