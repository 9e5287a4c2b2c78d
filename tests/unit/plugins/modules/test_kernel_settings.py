"""The kernel_settings module: its documentation matches its argument spec.

The work is in module_utils (tests/unit/plugins/module_utils/test_kernel.py), whose fakes
stand in for the system here too.
"""

from __future__ import annotations

from ansible_collections.sitelink.gateway.tests.unit.plugins.modules.utils import (
    assert_docs_match_spec,
)


def test_module_documentation_matches_its_argument_spec(monkeypatch):
    assert_docs_match_spec("kernel_settings", monkeypatch)
