"""The relay_service module: its documentation matches its argument spec, the keys and the
program are never logged, and forget_senders takes a word or a list as Ansible gives it.

The work is in module_utils (tests/unit/plugins/module_utils/test_relay_service.py), whose
fakes stand in for the system here too.
"""

from __future__ import annotations

import json

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import relay_service
from ansible_collections.sitelink.gateway.plugins.modules import relay_service as module
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import (
    FakeSystemd,
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.modules.utils import (
    assert_docs_match_spec,
    run_main,
)


def test_module_documentation_matches_its_argument_spec(monkeypatch):
    spec = assert_docs_match_spec("relay_service", monkeypatch)
    assert spec["keys"]["no_log"] is True
    assert spec["program"]["no_log"] is True


def relay_args(tmp_path, **kw):
    """A gateway without relay rules (nothing to check, nothing to start) under ``tmp_path``,
    its state directory there (the relay ran before)."""
    (tmp_path / "state").mkdir()
    return {
        "unit": "[Service]\n",
        "unit_path": str(tmp_path / "sitelink-relay.service"),
        "program_path": str(tmp_path / "sitelink-relay"),
        "config_path": str(tmp_path / "relay.json"),
        "keys_path": str(tmp_path / "relay-keys.json"),
        "state_dir": str(tmp_path / "state"),
        **kw,
    }


@pytest.mark.parametrize(
    ("given", "written"),
    [
        ("all", "all"),  # -e relay_forget_senders=all
        ("192.168.3.126,192.168.1.126", ["192.168.1.126", "192.168.3.126"]),
        (["192.168.1.126"], ["192.168.1.126"]),
    ],
)
def test_forget_senders_as_a_word_a_comma_list_or_a_list(
    monkeypatch, capsys, tmp_path, given, written
):
    monkeypatch.setattr(relay_service, "Systemd", lambda module: FakeSystemd())
    args = relay_args(tmp_path, forget_senders=given, _ansible_diff=True)
    code, out = run_main(module.main, args, capsys)
    result = json.loads(out)
    assert code == 0 and result["changed"] is True
    assert json.loads((tmp_path / "state/forget").read_text()) == {"senders": written}
    assert result["diff"][-1]["after_header"] == str(tmp_path / "state/forget")


def test_forget_senders_refused_names_the_option(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(relay_service, "Systemd", lambda module: FakeSystemd())
    args = relay_args(tmp_path, forget_senders=["192.168.1.126", "manhattan"])
    code, out = run_main(module.main, args, capsys)
    result = json.loads(out)
    assert code == 1 and result["msg"].startswith(
        "forget_senders: 'manhattan' is not an IPv4 address"
    )
    assert not (tmp_path / "state/forget").exists()


def test_no_forget_senders_is_no_request(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(relay_service, "Systemd", lambda module: FakeSystemd())
    code, out = run_main(module.main, relay_args(tmp_path), capsys)
    assert code == 0
    assert list((tmp_path / "state").iterdir()) == []
