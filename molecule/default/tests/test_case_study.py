"""The case study's claims, proven with real traffic between lab namespaces.

Runs after converge and idempotence: the app server (Manhattan LAN), an observer
on the same LAN and a Brooklyn workstation are network namespaces created by the
lab; the gateways are QEMU VMs. The last test reboots both gateways and proves
every claim again.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

STATE = Path(os.environ.get("SITELINK_LAB_STATE", "/var/tmp/sitelink-lab/molecule-default"))
INVENTORY = os.environ.get("SITELINK_INVENTORY", str(Path(__file__).parents[1] / "inventory"))
ROOT = Path(__file__).resolve().parents[3]
TRAFFIC = ROOT / "lab" / "traffic.py"
BIN = Path(sys.executable).parent

APP_SERVER = "192.168.1.10"
MANHATTAN_LAN_GW = "192.168.1.126"
BROOKLYN_LAN_GW = "192.168.2.126"
RELAY_PORT = 6799
BULK_BYTES = 8 * 1024 * 1024

testinfra_hosts = ["ansible://offices"]


def namespace(host: str) -> str:
    state = json.loads((STATE / "state.json").read_text())
    return state["hosts"][host]["netns"]


def in_lan(host: str, *args: str) -> list[str]:
    """argv running traffic.py inside a lab LAN host."""
    return ["ip", "netns", "exec", namespace(host), "python3", str(TRAFFIC), *args]


class Background:
    """A traffic.py server in a namespace: waits for "ready", then for its result."""

    def __init__(self, host: str, *args: str):
        self.proc = subprocess.Popen(in_lan(host, *args), stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert json.loads(line or "{}").get("ready"), f"{host} {args[0]} did not start"

    def result(self, timeout: float = 180) -> dict:
        out, _ = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"traffic server failed: {out}"
        return json.loads(out.strip().splitlines()[-1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def run_in_lan(host: str, *args: str, timeout: float = 180) -> dict:
    done = subprocess.run(
        in_lan(host, *args), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{host} {args}: {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the claims -----------------------------------------------------------------


def check_ping() -> None:
    ns = namespace("workstation")
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", "3", "-W", "2", "-i", "0.3", APP_SERVER],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"workstation cannot ping the app server:\n{done.stdout}"


def check_masquerade_and_bulk_tcp() -> None:
    """Upload to the app server: it sees the gateway, and every byte arrives."""
    server = Background("appserver", "tcp-server", "5001", "sink")
    try:
        sent = run_in_lan("workstation", "tcp-client", APP_SERVER, "5001", f"source:{BULK_BYTES}")
        received = server.result()
    finally:
        server.stop()
    assert received["peer"] == MANHATTAN_LAN_GW, (
        f"app server saw {received['peer']}, not the Manhattan gateway's LAN address"
    )
    assert (received["bytes"], received["sha256"]) == (BULK_BYTES, sent["sha256"])


def check_bulk_tcp_download() -> None:
    """The other direction: full-size segments from the app server into the tunnel."""
    server = Background("appserver", "tcp-server", "5002", f"source:{BULK_BYTES}")
    try:
        received = run_in_lan("workstation", "tcp-client", APP_SERVER, "5002", "sink")
        sent = server.result()
    finally:
        server.stop()
    assert sent["peer"] == MANHATTAN_LAN_GW
    assert (received["bytes"], received["sha256"]) == (BULK_BYTES, sent["sha256"])


def check_broadcasts(count: int = 40, big: int = 60000) -> None:
    """Each broadcast reaches Brooklyn once; nothing comes back to Manhattan's LAN."""
    listeners = {
        host: Background(host, "udp-listen", str(RELAY_PORT), "12")
        for host in ("workstation", "observer")
    }
    try:
        sent = run_in_lan(
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


# --- what the gateways hold -------------------------------------------------------


def test_gateway_state(host):
    name = host.backend.get_hostname()
    peer = {"manhattan-gw": "brooklyn", "brooklyn-gw": "manhattan"}[name]
    links = json.loads(host.check_output("ip -j -d link show dev sl-%s", peer))
    info = links[0]["linkinfo"]
    assert info["info_kind"] == "ipip"
    assert links[0]["mtu"] == 1480
    assert links[0]["ifalias"].startswith("sitelink-gateway")
    assert host.service("sitelink-relay").is_running
    assert host.service("sitelink-relay").is_enabled
    assert host.service("sitelink-tunnels").is_enabled
    assert host.sysctl("net.ipv4.ip_forward") == 1
    tables = host.check_output("nft list tables")
    if name == "manhattan-gw":
        assert "table ip sitelink_masquerade" in tables
    else:
        assert "sitelink_masquerade" not in tables


# --- after a reboot ------------------------------------------------------------------


def test_everything_holds_after_reboot():
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


def test_a_run_after_reboot_changes_nothing():
    """What came back at boot is exactly what site.yml wants."""
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", INVENTORY, str(ROOT / "site.yml")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=ROOT,
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:]
    recap = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", done.stdout, re.M)
    assert sorted(recap) == [("brooklyn-gw", "0"), ("manhattan-gw", "0")], done.stdout[-3000:]
