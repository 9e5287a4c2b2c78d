"""retire.yml refuses to run on every office, and needs nothing but a connection.

Runs the real playbook with the case-study inventory. The gateways point at a
closed port on loopback, so a run that gets past the guard fails to connect
(UNREACHABLE) rather than change anything: that is the proof it got there
without a plan.
"""

from __future__ import annotations

import pytest
from playbook import ROOT, UNREACHABLE, run_playbook, unreachable

REFUSED = "leave at least one office out: one run never retires every office"
# The first task that would touch a gateway.
RELAY_TASK = "sitelink.gateway.relay : Stop the broadcast relay"


def retire(tmp_path, *extra, connection=UNREACHABLE):
    return run_playbook(ROOT / "retire.yml", tmp_path, *extra, connection=connection)


@pytest.mark.parametrize(
    "limit",
    [(), ("--limit", "offices"), ("--limit", "manhattan-gw,brooklyn-gw"), ("--limit", "all")],
    ids=["no-limit", "group", "every-office", "all"],
)
def test_refused_before_any_gateway_is_contacted(tmp_path, limit):
    done = retire(tmp_path, *limit)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Name them with --limit" in output and REFUSED in output, output[-3000:]
    assert "UNREACHABLE" not in output
    assert RELAY_TASK not in output and "included:" not in output


def test_one_gateway_gets_to_the_connection(tmp_path):
    done = retire(tmp_path, "--limit", "brooklyn-gw", "--check", "--diff")
    output = done.stdout + done.stderr
    assert "ok: [brooklyn-gw -> localhost]" in output, output[-3000:]
    assert f"TASK [{RELAY_TASK}" in output
    assert "fatal: [brooklyn-gw]: UNREACHABLE!" in output
    assert "manhattan-gw" not in output
    assert "undefined" not in output.lower()


BROKEN_OFFICES = unreachable(
    {
        "manhattan-gw": {},
        "brooklyn-gw": {"office_role": "spoke", "office_lan_address": "not-an-address"},
        "queens-gw": {},
    }
)


@pytest.mark.parametrize("host", ["brooklyn-gw", "queens-gw"])
def test_needs_no_plan(tmp_path, host):
    """An invalid office, or a gateway with no office variables at all, is still retired."""
    done = retire(tmp_path, "--limit", host, connection=BROKEN_OFFICES)
    output = done.stdout + done.stderr
    assert f"fatal: [{host}]: UNREACHABLE!" in output, output[-3000:]
    assert "invalid office inventory" not in output


SOLO = """
solo:
  hosts:
    lone-gw: {ansible_host: 127.0.0.1, ansible_port: 9, ansible_connection: ssh}
"""


def test_the_only_office_of_a_group_needs_limit_too(tmp_path):
    solo = ("-e", "office_group=solo")
    done = retire(tmp_path, *solo, connection=SOLO)
    output = done.stdout + done.stderr
    assert done.returncode != 0 and "Name them with --limit" in output, output[-3000:]
    assert "UNREACHABLE" not in output

    done = retire(tmp_path, *solo, "--limit", "lone-gw", connection=SOLO)
    output = done.stdout + done.stderr
    assert "fatal: [lone-gw]: UNREACHABLE!" in output, output[-3000:]
    assert "Name them with --limit" not in output
