"""plan.yml shows what site.yml would configure, and never connects to a gateway.

The gateways point at a closed port on loopback: a connection attempt would
show as UNREACHABLE.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess

import pytest
import yaml
from playbook import CASE_STUDY, ROOT, UNREACHABLE, run_playbook, unreachable


def run_plan(tmp_path, *extra: str):
    # ./plan is relative to the directory ansible-playbook runs in.
    return run_playbook(ROOT / "plan.yml", tmp_path, *extra, cwd=tmp_path)


def run_plan_as_installed(
    tmp_path, inventory, *extra: str, connection: str = UNREACHABLE
) -> subprocess.CompletedProcess:
    """sitelink.gateway.plan as a user runs the installed collection from a directory of
    their own: no ansible.cfg anywhere (the checkout's sets callback_result_format: yaml),
    Ansible's default callback and result format."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        HOME=str(tmp_path),  # no ~/.ansible.cfg either
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".cache/collections"),
        ANSIBLE_STDOUT_CALLBACK="default",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
    )
    assert not (tmp_path / "ansible.cfg").exists()
    return run_playbook(
        "sitelink.gateway.plan",
        tmp_path,
        *extra,
        connection=connection,
        cwd=tmp_path,
        inventory=inventory,
        env=env,
    )


def printed_lines(stdout: str) -> list[str]:
    """What the "Print the plan" task showed, as the lines a reader sees (each JSON-decoded)."""
    section = stdout.split("TASK [Print the plan]", 1)[1].split("PLAY RECAP", 1)[0]
    lines = []
    for line in section.splitlines():
        text = line.strip().rstrip(",")
        if text.startswith('"') and not text.startswith('"msg"'):
            lines.append(json.loads(text))
    return lines


def offices_inventory(count: int) -> dict:
    """One hub and count-1 branches, each with its own /24 and WAN /30."""
    hosts = {}
    for index in range(count):
        lan = ipaddress.IPv4Network((0x0A000000 + (index << 8), 24))
        wan = ipaddress.IPv4Network((0x64400000 + (index << 2), 30))
        hosts[f"office{index}-gw"] = {
            "office_name": f"office{index}",
            "office_role": "hub" if index == 0 else "branch",
            "office_lan_address": f"{lan.network_address + 1}/24",
            "office_wan_address": f"{wan.network_address + 1}/30",
        }
    group_vars = {
        "office_lan_interface": "eth0",
        "office_wan_interface": "eth1",
        "office_tunnel_secret": "integration-test-only-0000",  # a test value
    }
    return {"offices": {"vars": group_vars, "hosts": hosts}}


def test_plan_renders_every_gateway_without_connecting(tmp_path):
    done = run_plan(tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "UNREACHABLE" not in output
    assert "manhattan-gw" not in output.split("PLAY RECAP")[1]  # only localhost ran
    # The console shows what each gateway gets.
    for expected in (
        "sl-brooklyn to brooklyn: 172.16.1.12 -> 172.17.2.10, MTU 1440",
        "get source 192.168.1.126",
        "UDP port 6799",
    ):
        assert expected in output, expected
    plan = tmp_path / "plan"
    assert sorted(p.name for p in (plan / "gateways").iterdir()) == [
        "brooklyn-gw.txt",
        "manhattan-gw.txt",
    ]
    assert "192.168.2.0/24" in (plan / "gateways/manhattan-gw.txt").read_text()
    assert "brooklyn - manhattan" in (plan / "network.txt").read_text()
    if shutil.which("dot"):
        assert "<svg" in (plan / "network.svg").read_text()


def test_plan_dir_is_a_variable_and_stale_gateways_go(tmp_path):
    target = tmp_path / "elsewhere"
    (target / "gateways").mkdir(parents=True)
    (target / "gateways/retired-gw.txt").write_text("an office that left the inventory")
    done = run_plan(tmp_path, "-e", f"sitelink_plan_dir={target}")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert sorted(p.name for p in (target / "gateways").iterdir()) == [
        "brooklyn-gw.txt",
        "manhattan-gw.txt",
    ]


@pytest.mark.parametrize(
    "override", ["offices:\n  hosts:\n    brooklyn-gw:\n      office_role: spoke\n"]
)
def test_plan_refuses_bad_input_like_site(tmp_path, override):
    (tmp_path / "override.yml").write_text(override)
    done = run_plan(tmp_path, "-i", str(tmp_path / "override.yml"))
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "office 'brooklyn' (host brooklyn-gw): office_role: 'spoke' must be one of" in output
    assert not (tmp_path / "plan").exists()


def test_plan_prints_lines_with_the_default_callback(tmp_path):
    """Not one JSON string full of "\\n": the plan's own lines, one per output line."""
    done = run_plan_as_installed(tmp_path, CASE_STUDY)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    section = done.stdout.split("TASK [Print the plan]", 1)[1].split("PLAY RECAP", 1)[0]
    assert "\\n" not in section, section[:2000]
    lines = printed_lines(done.stdout)
    plan = tmp_path / "plan"
    network = (plan / "network.txt").read_text().splitlines()
    assert lines[: len(network)] == network
    assert network[0].startswith("Network: hub-and-spoke")
    for host in ("manhattan-gw", "brooklyn-gw"):
        gateway = (plan / "gateways" / f"{host}.txt").read_text().splitlines()
        start = lines.index(gateway[0])
        assert lines[start : start + len(gateway)] == gateway, host
    assert "  sl-brooklyn to brooklyn: 172.16.1.12 -> 172.17.2.10, MTU 1440, TTL 64" in lines
    # Where it all went, in absolute paths.
    assert lines[-2].startswith(f"Written: {plan}/network.txt, {plan}/network.dot")
    assert lines[-1] == (
        f"Per-gateway plans of the 2 gateways: {plan}/gateways/<host>.txt (printed above)"
    )


def test_past_20_gateways_plan_says_where_the_gateway_plans_are(tmp_path):
    (tmp_path / "offices.yml").write_text(yaml.safe_dump(offices_inventory(25)))
    none = unreachable({})  # no office but those of offices.yml
    done = run_plan_as_installed(tmp_path, tmp_path / "offices.yml", connection=none)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    lines = printed_lines(done.stdout)
    plan = tmp_path / "plan"
    assert lines[-1] == (
        f"Per-gateway plans of the 25 gateways: {plan}/gateways/<host>.txt (not printed past 20 "
        "gateways; -e sitelink_plan_console=full prints them)"
    )
    assert not any(line.startswith("Gateway of office") for line in lines)
    assert len(list((plan / "gateways").iterdir())) == 25
    # As the line says: full prints them.
    full = run_plan_as_installed(
        tmp_path, tmp_path / "offices.yml", "-e", "sitelink_plan_console=full", connection=none
    )
    full = printed_lines(full.stdout)
    assert sum(line.startswith("Gateway of office") for line in full) == 25
    assert full[-1].endswith("(printed above)")


def test_plan_shows_the_plans_warnings(tmp_path):
    """A masquerading office that no other office reaches: a warning on the console, as in
    site.yml's validation (it once went missing when the files were written)."""
    (tmp_path / "override.yml").write_text(
        "offices:\n  vars:\n    office_topology: links\n"
        "  hosts:\n    manhattan-gw:\n      office_broadcast_relay: []\n"
    )
    done = run_plan(tmp_path, "-i", str(tmp_path / "override.yml"))
    output = " ".join((done.stdout + done.stderr).split())  # warnings are wrapped
    assert done.returncode == 0, output[-3000:]
    assert (
        "[WARNING]: office 'manhattan' (host manhattan-gw): office_masquerade: no other office "
        "reaches this office, so there is nothing to masquerade"
    ) in output, output[-3000:]


def test_plan_warns_about_a_misspelled_office_variable(tmp_path):
    (tmp_path / "override.yml").write_text(
        "offices:\n  hosts:\n    brooklyn-gw:\n      ofice_role: hub\n"
    )
    done = run_plan(tmp_path, "-i", str(tmp_path / "override.yml"))
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, output[-3000:]
    assert (
        "[WARNING]: office 'brooklyn' (host brooklyn-gw): ofice_role: ignored, not an office "
        "variable (did you mean office_role?)"
    ) in output, output[-3000:]
    # The connection layer's variables are nothing like an office variable.
    for name in ("ansible_host", "ansible_port", "ansible_connection"):
        assert f"{name}: ignored" not in output
