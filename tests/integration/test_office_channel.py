"""Each gateway holds only its own plan, and its link keys never show in output.

Runs the office role for real (it never connects to a gateway) on the case
study with a deployment secret, in the middle of its rotation (the previous
secret set too), with --diff and -vvv, and inspects what each gateway's
variables hold afterwards.
"""

from __future__ import annotations

import json
import sys

import pytest
from playbook import ROOT, run_playbook

SECRET = "correct-horse-battery-staple-7d1f"  # noqa: S105 - a test value, asserted absent
PREVIOUS = "the-secret-before-the-rotation-42"  # noqa: S105 - a test value, asserted absent

sys.path.insert(0, str(ROOT / "tests/unit"))
# Makes ansible_collections.sitelink.gateway importable.
import conftest  # noqa: E402,F401  # pylint: disable=unused-import
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (  # noqa: E402
    link_key,
)

CONNECTION = """
offices:
  vars:
    ansible_host: 127.0.0.1
    ansible_port: 9
    office_tunnel_secret: {secret}
    office_tunnel_secret_previous: {previous}
  hosts:
    manhattan-gw: {{}}
    brooklyn-gw: {{}}
    queens-gw:
      office_name: queens
      office_lan_address: 192.168.3.126/24
      office_wan_address: 172.18.3.10/28
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("channel")
    done = run_playbook(
        ROOT / "tests/integration/playbooks/office_channel.yml",
        tmp,
        "-e",
        f"channel_out={tmp}",
        "--diff",
        "-vvv",
        connection=CONNECTION.format(secret=SECRET, previous=PREVIOUS),
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return tmp, done.stdout + done.stderr


def _values(node):
    """Every value nested in a JSON document."""
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _values(value)
    elif isinstance(node, list):
        for value in node:
            yield from _values(value)


HOSTS = ("manhattan-gw", "brooklyn-gw", "queens-gw")


def test_each_gateway_holds_its_own_plan_and_no_other(run):
    tmp, _unused = run
    held = {h: json.loads((tmp / f"{h}.vars.json").read_text()) for h in HOSTS}
    plans = {h: held[h]["office_plan"] for h in HOSTS}
    assert plans["manhattan-gw"]["office"] == "manhattan"
    assert [t["name"] for t in plans["manhattan-gw"]["tunnels"]] == ["sl-brooklyn", "sl-queens"]
    # Transit: Brooklyn reaches Queens through the Manhattan hub.
    assert plans["brooklyn-gw"]["tunnels"][0]["routes"] == ["192.168.1.0/24", "192.168.3.0/24"]
    held["localhost"] = json.loads((tmp / "localhost.vars.json").read_text())
    assert "office_plan" not in held["localhost"]
    for host in (*HOSTS, "localhost"):
        assert not any(k.startswith("__office") for k in held[host])
        others = [plans[o] for o in HOSTS if o != host]
        foreign = list(others) + [p["tunnels"] for p in others] + [p["relay"] for p in others]
        for value in _values(held[host]):
            assert not any(value == f for f in foreign), f"{host} holds another gateway's plan"


def test_link_keys_reach_their_gateways_and_never_the_output(run):
    tmp, output = run
    secrets = {h: json.loads((tmp / f"{h}.secrets.json").read_text()) for h in HOSTS}
    expected = {p: link_key(SECRET, "brooklyn", "manhattan", p) for p in ("tunnel", "relay")}
    # During the rotation (its step 2), the previous secret's keys are accepted too.
    for purpose in ("tunnel", "relay"):
        expected[f"{purpose}_accepted"] = [link_key(PREVIOUS, "brooklyn", "manhattan", purpose)]
    assert secrets["manhattan-gw"]["links"]["brooklyn+manhattan"] == expected
    assert secrets["brooklyn-gw"]["links"]["brooklyn+manhattan"] == expected
    # Each gateway gets the keys of its own links only.
    assert sorted(secrets["brooklyn-gw"]["links"]) == ["brooklyn+manhattan"]
    assert sorted(secrets["manhattan-gw"]["links"]) == ["brooklyn+manhattan", "manhattan+queens"]
    keys = [
        k
        for s in secrets.values()
        for link in s["links"].values()
        for v in link.values()
        for k in ([v] if isinstance(v, str) else v)
    ]
    assert keys and all(len(k) == 64 for k in keys)
    assert "PLAY RECAP" in output
    for value in [SECRET, PREVIOUS, *keys]:
        assert value not in output, "a secret appears in the -vvv --diff output"
