"""Running a module's main() the way Ansible does, for the tests in this directory."""

from __future__ import annotations

import importlib

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args


def run_main(main, args: dict, capsys) -> tuple[int, str]:
    """Call ``main()`` with ``args`` as the module's arguments: its exit code and output."""
    with patch_module_args(args), pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().out


def argument_spec_and_docs(name: str, monkeypatch) -> tuple[dict, dict]:
    """Module ``name``'s argument spec, as ``build_module()`` gives it, and its documented
    options."""
    mod = importlib.import_module(f"ansible_collections.sitelink.gateway.plugins.modules.{name}")
    seen = {}
    monkeypatch.setattr(mod, "AnsibleModule", lambda **kw: seen.update(kw))
    mod.build_module()
    return seen["argument_spec"], yaml.safe_load(mod.DOCUMENTATION)["options"]


def assert_docs_match_spec(name: str, monkeypatch) -> dict:
    """Every option documented as the spec has it (type, default, choices, required).
    Returns the spec."""
    spec, documented = argument_spec_and_docs(name, monkeypatch)
    assert set(documented) == set(spec)
    for option, entry in spec.items():
        doc = documented[option]
        assert doc["type"] == entry["type"], option
        assert doc.get("default") == entry.get("default"), option
        assert doc.get("choices") == entry.get("choices"), option
        assert bool(doc.get("required")) == bool(entry.get("required")), option
    return spec
