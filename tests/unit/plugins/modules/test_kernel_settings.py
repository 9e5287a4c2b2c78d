"""The kernel_settings module: its documentation matches its argument spec.

The work is in module_utils (tests/unit/plugins/module_utils/test_kernel.py), whose fakes
stand in for the system here too.
"""

from __future__ import annotations

import importlib

import yaml


def test_module_documentation_matches_its_argument_spec(monkeypatch):
    mod = importlib.import_module(
        "ansible_collections.sitelink.gateway.plugins.modules.kernel_settings"
    )
    seen = {}
    monkeypatch.setattr(mod, "AnsibleModule", lambda **kw: seen.update(kw))
    mod.build_module()
    documented = yaml.safe_load(mod.DOCUMENTATION)["options"]
    assert set(documented) == set(seen["argument_spec"])
    for name, spec in seen["argument_spec"].items():
        assert documented[name]["type"] == spec["type"], name
        assert documented[name].get("default") == spec.get("default"), name
        assert documented[name].get("choices") == spec.get("choices"), name
