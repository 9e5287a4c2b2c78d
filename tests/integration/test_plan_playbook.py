"""plan.yml shows what site.yml would configure, and never connects to a gateway.

The gateways point at a closed port on loopback: a connection attempt would
show as UNREACHABLE.
"""

from __future__ import annotations

import shutil

import pytest
from playbook import ROOT, run_playbook


def run_plan(tmp_path, *extra: str):
    # ./plan is relative to the directory ansible-playbook runs in.
    return run_playbook(ROOT / "plan.yml", tmp_path, *extra, cwd=tmp_path)


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
