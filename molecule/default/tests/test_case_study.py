"""The case study's claims, proven with real traffic between lab namespaces.

Runs after converge and idempotence: the app server (Manhattan LAN), an observer
on the same LAN and a Brooklyn workstation are network namespaces created by the
lab; the gateways are QEMU VMs. The last test reboots both gateways and proves
every claim again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "lab"))

from lanhost import BIN, Lab, playbook, recap  # noqa: E402

STATE = Path(os.environ.get("SITELINK_LAB_STATE", "/var/tmp/sitelink-lab/molecule-default"))
INVENTORY = os.environ.get("SITELINK_INVENTORY", str(Path(__file__).parents[1] / "inventory"))
LAB = Lab(STATE)

APP_SERVER = "192.168.1.10"
MANHATTAN_LAN_GW = "192.168.1.126"
BROOKLYN_LAN_GW = "192.168.2.126"
RELAY_PORT = 6799
BULK_BYTES = 8 * 1024 * 1024

testinfra_hosts = ["ansible://offices"]


# --- the claims -----------------------------------------------------------------


def check_ping() -> None:
    done = LAB.ping("workstation", APP_SERVER)
    assert done.returncode == 0, f"workstation cannot ping the app server:\n{done.stdout}"


def check_masquerade_and_bulk_tcp() -> None:
    """Upload to the app server: it sees the gateway, and every byte arrives."""
    server = LAB.background("appserver", "tcp-server", "5001", "sink")
    try:
        sent = LAB.traffic("workstation", "tcp-client", APP_SERVER, "5001", f"source:{BULK_BYTES}")
        received = server.result()
    finally:
        server.stop()
    assert received["peer"] == MANHATTAN_LAN_GW, (
        f"app server saw {received['peer']}, not the Manhattan gateway's LAN address"
    )
    assert (received["bytes"], received["sha256"]) == (BULK_BYTES, sent["sha256"])


def check_bulk_tcp_download() -> None:
    """The other direction: full-size segments from the app server into the tunnel."""
    server = LAB.background("appserver", "tcp-server", "5002", f"source:{BULK_BYTES}")
    try:
        received = LAB.traffic("workstation", "tcp-client", APP_SERVER, "5002", "sink")
        sent = server.result()
    finally:
        server.stop()
    assert sent["peer"] == MANHATTAN_LAN_GW
    assert (received["bytes"], received["sha256"]) == (BULK_BYTES, sent["sha256"])


def check_broadcasts(count: int = 40, big: int = 60000) -> None:
    """Each broadcast reaches Brooklyn once; nothing comes back to Manhattan's LAN."""
    listeners = {
        host: LAB.background(host, "udp-listen", str(RELAY_PORT), "12")
        for host in ("workstation", "observer")
    }
    try:
        sent = LAB.traffic(
            "appserver", "udp-send", "192.168.1.255", str(RELAY_PORT), str(count), "200", str(big)
        )["sent"]
        got = {host: bg.result()["datagrams"] for host, bg in listeners.items()}
    finally:
        for bg in listeners.values():
            bg.stop()

    sent_hashes = sorted(d["sha256"] for d in sent)
    brooklyn = got["workstation"]
    assert sorted(d["sha256"] for d in brooklyn) == sent_hashes, (
        f"Brooklyn got {len(brooklyn)} datagrams for {len(sent)} broadcasts "
        "(each must arrive exactly once, intact)"
    )
    assert {d["source"] for d in brooklyn} == {BROOKLYN_LAN_GW}
    assert max(d["size"] for d in brooklyn) == big
    # The observer hears the app server's own broadcasts once each, and nothing
    # re-broadcast by a gateway: an echo would show up as a second copy.
    manhattan = got["observer"]
    assert sorted(d["sha256"] for d in manhattan) == sent_hashes, "echo on the Manhattan LAN"
    assert {d["source"] for d in manhattan} == {APP_SERVER}


CLAIMS = [check_ping, check_masquerade_and_bulk_tcp, check_bulk_tcp_download, check_broadcasts]


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: c.__name__[len("check_") :])
def test_claim(claim):
    claim()


# --- what the gateways report (verify.yml, the same check people run) ----------------


def check_verify(tmp_path: Path) -> None:
    report_file = tmp_path / "verify-report.json"
    done = playbook("verify.yml", INVENTORY, "-e", f"sitelink_verify_report={report_file}")
    assert done.returncode == 0, done.stdout[-4000:]
    report = json.loads(report_file.read_text())
    assert sorted((o["office"], o["healthy"]) for o in report["offices"]) == [
        ("brooklyn", True),
        ("manhattan", True),
    ], report
    manhattan = next(o for o in report["offices"] if o["office"] == "manhattan")
    assert manhattan["masquerade"]["present"] and manhattan["relay"]["state"] == "active"


def test_verify_reports_both_offices_healthy(tmp_path):
    check_verify(tmp_path)


# --- after a reboot ------------------------------------------------------------------


def test_everything_holds_after_reboot(tmp_path):
    services = "sitelink-tunnels.service sitelink-masquerade.service sitelink-relay.service"
    done = subprocess.run(
        [
            str(BIN / "ansible"),
            "offices",
            "-i",
            INVENTORY,
            "-m",
            "ansible.builtin.reboot",
            "-a",
            f"reboot_timeout=600 test_command='systemctl is-active {services}'",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"reboot failed:\n{done.stdout}\n{done.stderr}"
    for claim in CLAIMS:
        claim()
    check_verify(tmp_path)


def test_a_run_after_reboot_changes_nothing():
    """What came back at boot is exactly what site.yml wants."""
    done = playbook("site.yml", INVENTORY)
    assert done.returncode == 0, done.stdout[-3000:]
    changed = {host: r["changed"] for host, r in recap(done.stdout).items()}
    assert changed == {"brooklyn-gw": 0, "manhattan-gw": 0}, done.stdout[-3000:]
