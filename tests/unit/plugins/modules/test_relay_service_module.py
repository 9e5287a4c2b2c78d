"""The relay_service module: its documentation matches its argument spec, and the keys
and the program are never logged.

The work is in module_utils (tests/unit/plugins/module_utils/test_relay_service.py).
"""

from __future__ import annotations

from ansible_collections.sitelink.gateway.tests.unit.plugins.modules.utils import (
    assert_docs_match_spec,
)


def test_module_documentation_matches_its_argument_spec(monkeypatch):
    spec = assert_docs_match_spec("relay_service", monkeypatch)
    assert spec["keys"]["no_log"] is True
    assert spec["program"]["no_log"] is True
