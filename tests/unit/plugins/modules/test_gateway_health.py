"""The gateway_health module: its documentation matches its argument spec.

The work is in module_utils (tests/unit/plugins/module_utils/test_health.py), whose fake
gateway stands in for the system there.
"""

from __future__ import annotations

from ansible_collections.sitelink.gateway.tests.unit.plugins.modules.utils import (
    assert_docs_match_spec,
)


def test_module_documentation_matches_its_argument_spec(monkeypatch):
    spec = assert_docs_match_spec("gateway_health", monkeypatch)
    assert "host" in spec  # named in the --limit of the remedies verify.yml prints
