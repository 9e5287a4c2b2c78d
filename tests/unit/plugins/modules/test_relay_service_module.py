"""The relay_service module: its documentation matches its argument spec, and the keys
argument is never logged.

The work is in module_utils (tests/unit/plugins/module_utils/test_relay_service.py).
"""

from __future__ import annotations

import importlib

import yaml


def test_module_documentation_matches_its_argument_spec(monkeypatch):
    mod = importlib.import_module(
        "ansible_collections.sitelink.gateway.plugins.modules.relay_service"
    )
    seen = {}
    monkeypatch.setattr(mod, "AnsibleModule", lambda **kw: seen.update(kw))
    mod.build_module()
    documented = yaml.safe_load(mod.DOCUMENTATION)["options"]
    assert set(documented) == set(seen["argument_spec"])
    for name, spec in seen["argument_spec"].items():
        assert documented[name]["type"] == spec["type"], name
        assert documented[name].get("default") == spec.get("default"), name
        assert bool(documented[name].get("required")) == bool(spec.get("required")), name
    assert seen["argument_spec"]["keys"]["no_log"] is True
    assert seen["argument_spec"]["program"]["no_log"] is True
