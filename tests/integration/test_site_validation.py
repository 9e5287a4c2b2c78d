"""site.yml refuses bad office input before it touches any gateway.

Runs the real playbook with the case-study inventory plus a broken override.
The gateways point at a closed port on loopback, so if validation ever let a
run through, it would fail to connect rather than change anything.
"""

from __future__ import annotations

import sys

import pytest
import yaml
from playbook import ROOT, run_playbook, unreachable
from test_plan_playbook import offices_inventory

sys.path.insert(0, str(ROOT / "tests/unit"))
# Makes the collection importable.
import conftest  # noqa: E402,F401  # pylint: disable=unused-import
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (  # noqa: E402
    link_key,
)


def run_site(tmp_path, override: str, *extra: str):
    (tmp_path / "override.yml").write_text(override)
    return run_playbook(ROOT / "site.yml", tmp_path, "-i", str(tmp_path / "override.yml"), *extra)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "offices:\n  hosts:\n    brooklyn-gw:\n      office_lan_address: 192.168.1.200/24\n",
            "office_lan_address: LAN 192.168.1.0/24 overlaps the LAN 192.168.1.0/24 of office",
        ),
        (
            "offices:\n  hosts:\n    manhattan-gw:\n      office_wan_address: 172.16.1.12\n",
            "office 'manhattan' (host manhattan-gw): office_wan_address: '172.16.1.12': "
            "needs an IPv4 address with its prefix length",
        ),
        (
            "offices:\n  hosts:\n    brooklyn-gw:\n      office_wan_interface: ''\n",
            "office 'brooklyn' (host brooklyn-gw): office_wan_interface: is required",
        ),
        (
            "offices:\n  hosts:\n    brooklyn-gw:\n      office_role: spoke\n",
            "office 'brooklyn' (host brooklyn-gw): office_role: 'spoke' must be one of: hub, "
            "branch",
        ),
        (
            "offices:\n  hosts:\n    manhattan-gw:\n      office_broadcast_relay: [{port: abc}]\n",
            "office 'manhattan' (host manhattan-gw): office_broadcast_relay[0].port: 'abc' is not "
            "an integer",
        ),
        (
            "offices:\n  hosts:\n    brooklyn-gw:\n      office_lan_adress: 192.168.2.1/24\n",
            "office 'brooklyn' (host brooklyn-gw): office_lan_adress: unknown office variable "
            "(did you mean office_lan_address?)",
        ),
        (
            "offices:\n  hosts:\n    brooklyn-gw:\n      office_wan_mtu: '{{ no_such_var }}'\n",
            "office 'brooklyn' (host brooklyn-gw): office_wan_mtu: cannot be templated",
        ),
        (
            "offices:\n  hosts:\n    manhattan-gw:\n"
            "      office_broadcast_relay: [{port: 1900, groups: [192.168.1.255]}]\n",
            "office 'manhattan' (host manhattan-gw): office_broadcast_relay[0].groups[0]: "
            "'192.168.1.255' is not an IPv4 multicast group",
        ),
        (
            "offices:\n  vars:\n    office_tunnel_protection: none\n    office_tunnel_secret: ''\n",
            "deployment (every office): office_tunnel_secret: is not set, and "
            "office_relay_wire is authenticated (the default)",
        ),
    ],
    ids=[
        "overlapping-lan",
        "malformed-wan",
        "missing-interface",
        "role",
        "port",
        "typo",
        "undefined",
        "multicast-group",
        "relay-secret",
    ],
)
def test_bad_office_fails_before_any_gateway_is_contacted(tmp_path, override, expected):
    done = run_site(tmp_path, override)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert expected in output, output[-3000:]
    # Nothing past planning ran: no gateway was contacted.
    assert "PLAY [Configure the" not in output
    assert "UNREACHABLE" not in output
    # One message from the planner, not Ansible's per-host argument-spec dump.
    assert "argument_spec" not in output and "Validating arguments" not in output


def test_every_problem_in_one_message(tmp_path):
    """Wrong type, unknown value, missing value, typo and overlap: all in one failure."""
    done = run_site(
        tmp_path,
        "offices:\n  hosts:\n"
        "    brooklyn-gw:\n      office_role: spoke\n      office_lan_adress: x\n"
        "      office_wan_address: ''\n"
        "    manhattan-gw:\n      office_wan_mtu: abc\n      office_lan_address: 192.168.2.1/24\n",
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "invalid office inventory (5 problems)" in output, output[-3000:]
    for expected in (
        "office 'brooklyn' (host brooklyn-gw): office_role: 'spoke'",
        "office 'brooklyn' (host brooklyn-gw): office_lan_adress: unknown office variable",
        "office 'brooklyn' (host brooklyn-gw): office_wan_address: is required",
        "office 'manhattan' (host manhattan-gw): office_wan_mtu: 'abc' is not an integer",
        "office_lan_address: LAN 192.168.2.0/24 overlaps the LAN 192.168.2.0/24",
    ):
        assert expected in output, expected
    # Ansible prints a failed task's message twice (error line and result), no more.
    assert output.count("invalid office inventory") <= 2
    assert "UNREACHABLE" not in output


def test_a_problem_of_a_group_variable_is_reported_once(tmp_path):
    """Set for every office, it is one problem naming the variable, the group and the offices."""
    done = run_site(tmp_path, "offices:\n  vars:\n    office_wan_mtu: '{{ no_such_var }}'\n")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert (
        "invalid office inventory (1 problem, 2 counted office by office):\n"
        "  - office_wan_mtu: cannot be templated: 'no_such_var' is undefined; the same at 2 "
        "offices, every office of group 'offices', likely one group variable: 'brooklyn' (host "
        "brooklyn-gw), 'manhattan' (host manhattan-gw)"
    ) in output, output[-3000:]
    assert "office 'brooklyn' (host brooklyn-gw): office_wan_mtu" not in output
    assert "PLAY [Configure the" not in output
    assert "UNREACHABLE" not in output


def test_a_group_variable_typo_at_100_offices_is_one_line(tmp_path):
    inventory = offices_inventory(100)
    inventory["offices"]["vars"]["office_wan_mtu"] = "15OO"  # letter O, not zero
    (tmp_path / "offices.yml").write_text(yaml.safe_dump(inventory))
    done = run_playbook(
        ROOT / "site.yml",
        tmp_path,
        connection=unreachable({}),
        inventory=tmp_path / "offices.yml",
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert (
        "invalid office inventory (1 problem, 100 counted office by office):\n"
        "  - office_wan_mtu: '15OO' is not an integer; the same at 100 offices, every office of "
        "group 'offices', likely one group variable: 'office0' (host office0-gw), 'office1' "
        "(host office1-gw), 'office10' (host office10-gw) and 97 more"
    ) in output, output[-3000:]
    # Ansible prints a failed task's message twice (error line and result), no more.
    assert output.count("is not an integer") == 2
    assert "PLAY [Configure the" not in output
    assert "UNREACHABLE" not in output


def test_a_misspelled_office_variable_warns(tmp_path):
    """ofice_role is not an office_* variable: not an error, but not ignored in silence."""
    done = run_site(tmp_path, "offices:\n  hosts:\n    brooklyn-gw:\n      ofice_role: hub\n")
    output = " ".join((done.stdout + done.stderr).split())  # warnings are wrapped
    assert (
        "[WARNING]: office 'brooklyn' (host brooklyn-gw): ofice_role: ignored, not an office "
        "variable (did you mean office_role?)"
    ) in output, output[-3000:]
    assert "PLAY [Configure the hub gateways, one at a time]" in output


def test_masquerade_without_peers_warns(tmp_path):
    done = run_site(
        tmp_path,
        "offices:\n  vars:\n    office_topology: links\n"
        "  hosts:\n    manhattan-gw:\n      office_broadcast_relay: []\n",
    )
    output = done.stdout + done.stderr
    assert "office_masquerade: no other office reaches this office" in output, output[-3000:]


def test_raw_relay_wire_warns(tmp_path):
    """As plain IPIP does: a warning from planning, and the run goes on."""
    done = run_site(tmp_path, "offices:\n  vars:\n    office_relay_wire: raw\n  hosts: {}\n")
    output = " ".join((done.stdout + done.stderr).split())  # warnings are wrapped
    assert "office_relay_wire: raw: relay datagrams go as they are" in output, output[-3000:]
    assert "PLAY [Configure the hub gateways, one at a time]" in output


def test_good_inventory_passes_planning(tmp_path):
    """The control case: the same run with good input gets as far as the gateways."""
    done = run_site(tmp_path, "offices:\n  hosts: {}\n")
    output = done.stdout + done.stderr
    assert "PLAY [Configure the hub gateways, one at a time]" in output
    assert "UNREACHABLE" in output  # port 9 on loopback: nothing listens there


def test_the_network_is_planned_once_per_run_and_no_key_is_shown(tmp_path):
    """The office role plans in its loop and hands out in the items: one plan per run.
    Its -v line says each time it plans; the keys it hands out stay hidden at -vvv."""
    secret = "planned-once-test-secret-0123"  # noqa: S105  (a test key)
    done = run_site(
        tmp_path, f"offices:\n  vars:\n    office_tunnel_secret: {secret}\n  hosts: {{}}\n", "-vvv"
    )
    output = done.stdout + done.stderr
    assert output.count("sitelink.gateway: planned 2 offices, 2 gateways, 1 links") == 1, output[
        -3000:
    ]
    assert "PLAY [Configure the hub gateways, one at a time]" in output
    for purpose in ("tunnel", "relay"):
        assert link_key(secret, "brooklyn", "manhattan", purpose) not in output
    assert secret not in output
