"""The case study's claims, and the gateways' safety, proven with real traffic.

Runs after converge and idempotence: the app server (Manhattan LAN), an observer
on the same LAN, a Brooklyn workstation and a stranger on Brooklyn's ISP segment
are network namespaces created by the lab; the gateways are QEMU VMs. The path
between the two WANs carries 1400 bytes at most and drops ICMP "fragmentation
needed", and so do the LAN hosts: bulk TCP works only because the tunnels fit the
path and the gateways clamp TCP's MSS. The last tests reboot both gateways and
prove every claim again.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "lab"))

from lanhost import BIN, Lab, playbook, recap  # noqa: E402

STATE = Path(os.environ.get("SITELINK_LAB_STATE", "/tmp/sitelink-lab/molecule-default"))
INVENTORY = os.environ.get("SITELINK_INVENTORY", str(Path(__file__).parents[1] / "inventory"))
LAB = Lab(STATE)

APP_SERVER = "192.168.1.10"
MANHATTAN_LAN_GW = "192.168.1.126"
BROOKLYN_LAN_GW = "192.168.2.126"
RELAY_PORT = 6799
BULK_BYTES = 8 * 1024 * 1024
WORKSTATION = "192.168.2.20"
MANHATTAN_WAN = "172.16.1.12"
BROOKLYN_WAN = "172.17.2.10"
STRANGER = "172.17.2.5"
WAN_PATH_MTU = 1400  # office_wan_mtu in inventory/20-lab.yml
LAN_HOSTS = ("appserver", "observer", "workstation")

testinfra_hosts = ["ansible://offices"]


@pytest.fixture(scope="module", autouse=True)
def small_mtu_path_that_drops_icmp():
    """The lab's Internet: 1400 bytes between the WANs, no "fragmentation needed"."""
    previous = {}
    for segment in ("manhattan-wan", "brooklyn-wan"):
        previous.update(LAB.set_router_mtu(segment, WAN_PATH_MTU))
    LAB.router_drop_frag_needed(True)
    for host in LAN_HOSTS:
        LAB.host_drop_frag_needed(host, True)
    yield
    for host in LAN_HOSTS:
        LAB.host_drop_frag_needed(host, False)
    LAB.router_drop_frag_needed(False)
    LAB.restore_router_mtu(previous)


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


def relay_peer(vm: str, peer: str) -> dict:
    """What a gateway's relay counts for one peer relay (a fresh status file: SIGUSR1)."""
    LAB.ssh(vm, "systemctl kill -s USR1 sitelink-relay && sleep 1")
    status = LAB.ssh_json(vm, "cat /run/sitelink-relay/status.json")
    return status["peers"][peer]


def check_broadcasts(count: int = 40, big: int = 60000) -> None:
    """Each broadcast reaches Brooklyn once, over the authenticated relay wire; nothing
    comes back to Manhattan's LAN."""
    before = relay_peer("brooklyn-gw", MANHATTAN_LAN_GW)
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
    # Brooklyn's relay took each one from Manhattan's relay once, authenticated with
    # the link's key, and dropped nothing (no forgery, replay or duplicate).
    after = relay_peer("brooklyn-gw", MANHATTAN_LAN_GW)
    assert after["wire"] == "sitelink1" and after["office"] == "manhattan", after
    assert after["accepted"] - before["accepted"] == len(sent), (before, after)
    assert after["dropped"] == before["dropped"], (before, after)


CLAIMS = [check_ping, check_masquerade_and_bulk_tcp, check_bulk_tcp_download, check_broadcasts]


# --- safety: what a stranger on the Internet cannot do ---------------------------------


def _token() -> str:
    return "sitelink-test-" + secrets.token_hex(8)


def _forged(port: int, forge: list[str]) -> tuple[dict, dict]:
    """Listen at the workstation, capture on Brooklyn's WAN, forge from the stranger."""
    token = _token()
    listener = LAB.background("workstation", "udp-listen", str(port), "6", "--token", token)
    capture = LAB.capture("brooklyn-wan", 30, markers=[token.encode()])
    try:
        LAB.traffic("stranger", *forge, "--token", token)
        wire = capture.finish(settle=1)
        heard = listener.result()
    finally:
        listener.stop()
        capture.stop()
    # Not a vacuous pass: the forged packets were on the wire to Brooklyn's gateway.
    assert wire["markers"][token.encode().hex()] >= 10, wire
    return heard.get("seen", {}).get(token, 0), wire


def check_forged_ipip_from_a_stranger() -> None:
    """IPIP from the stranger's own address never reaches the Brooklyn LAN."""
    seen, _unused = _forged(
        7000, ["forge-ipip", STRANGER, BROOKLYN_WAN, APP_SERVER, WORKSTATION, "7000", "10"]
    )
    assert seen == 0, f"{seen} forged IPIP packets from {STRANGER} reached the workstation"


def check_forged_ipip_as_the_peer_gateway() -> None:
    """IPIP whose outer source is forged as Manhattan's public address: dropped too."""
    seen, _unused = _forged(
        7000, ["forge-ipip", MANHATTAN_WAN, BROOKLYN_WAN, APP_SERVER, WORKSTATION, "7000", "10"]
    )
    assert seen == 0, (
        f"{seen} IPIP packets forged as {MANHATTAN_WAN} were decapsulated and delivered"
    )


def check_forged_relay_datagrams() -> None:
    """The relay port, from the stranger's address and forged as Manhattan's relay."""
    for source in (STRANGER, MANHATTAN_LAN_GW):
        seen, _unused = _forged(
            RELAY_PORT, ["forge-udp", source, BROOKLYN_WAN, str(RELAY_PORT), "10"]
        )
        assert seen == 0, f"{seen} datagrams from {source} re-broadcast on the Brooklyn LAN"


def check_only_esp_between_the_gateways() -> None:
    """On the router, between the two gateways: ESP and IKE, nothing in clear."""
    token = _token()
    capture = LAB.capture(
        "manhattan-wan", 120, hosts=[MANHATTAN_WAN, BROOKLYN_WAN], markers=[token.encode()]
    )
    try:
        # Office traffic carrying a marker, both ways, and the relay's.
        LAB.traffic(
            "workstation", "forge-udp", WORKSTATION, APP_SERVER, "7001", "10", "--token", token
        )
        LAB.traffic(
            "appserver",
            "forge-udp",
            APP_SERVER,
            "192.168.1.255",
            str(RELAY_PORT),
            "10",
            "--token",
            token,
        )
        check_masquerade_and_bulk_tcp()
        wire = capture.finish(settle=1)
    finally:
        capture.stop()
    assert wire["kernel_drops"] == 0, wire  # else a clean capture would prove nothing
    protocols = wire["protocols"]
    assert protocols.get("50", 0) > 100, f"no ESP between the gateways: {wire}"
    assert set(protocols) <= {"50", "17"}, f"something besides ESP and IKE: {protocols}"
    assert set(wire["udp_ports"]) <= {"500", "4500"}, f"UDP besides IKE: {wire['udp_ports']}"
    assert wire["tcp_payload_bytes"] == 0 and not wire["marker_seen"], wire


SAFETY = [
    check_forged_ipip_from_a_stranger,
    check_forged_ipip_as_the_peer_gateway,
    check_forged_relay_datagrams,
    check_only_esp_between_the_gateways,
]


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
    # The relay's counters, as verify.yml shows them (what people look at).
    counters = manhattan["relay"]["ports"]["6799"]
    assert {"received", "forwarded", "rebroadcast", "dropped"} <= set(counters), counters
    assert "relay counters" in done.stdout, done.stdout[-3000:]


def test_verify_reports_both_offices_healthy(tmp_path):
    """First: its pings through the tunnels also have IKE key both links."""
    check_verify(tmp_path)


# --- the claims, and safety ----------------------------------------------------------


@pytest.mark.parametrize("claim", CLAIMS + SAFETY, ids=lambda c: c.__name__[len("check_") :])
def test_claim(claim):
    claim()


# --- once: the clamp matters, and a push that cuts SSH undoes itself -----------------


def test_without_the_mss_clamp_bulk_tcp_stalls():
    """Break it once: the clamp chain deleted on both gateways, TCP through the small path
    stalls (full-size segments, and the ICMP that would say so is dropped)."""
    for vm in ("manhattan-gw", "brooklyn-gw"):
        LAB.ssh(vm, "nft delete chain inet sitelink_firewall clamp")
    black_hole_before = LAB.router_frag_needed_drops()
    server = LAB.background("appserver", "tcp-server", "5003", "sink")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            LAB.traffic(
                "workstation",
                "tcp-client",
                APP_SERVER,
                "5003",
                f"source:{BULK_BYTES}",
                timeout=30,
            )
    finally:
        server.stop()
        for vm in ("manhattan-gw", "brooklyn-gw"):
            LAB.ssh(vm, "systemctl reload sitelink-firewall.service")
    # Packets too big for the path, and the router's "fragmentation needed" lost.
    assert LAB.router_frag_needed_drops() > black_hole_before
    check_masquerade_and_bulk_tcp()  # clamp back: it flows again


def _planner_link_key():
    """The planner's own HKDF (plan/secrets.py is stdlib only), loaded by path."""
    path = ROOT / "plugins/plugin_utils/plan/secrets.py"
    spec = importlib.util.spec_from_file_location("sitelink_plan_secrets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.link_key


def test_check_diff_shows_a_key_rotation_without_a_key_and_changes_nothing(tmp_path):
    """A new deployment secret, with --check --diff: Brooklyn's IPsec file would change,
    its keys show as <hidden> (with a fingerprint), and nothing on the gateway changes."""
    link_key = _planner_link_key()

    config = "/etc/swanctl/conf.d/sitelink-gateway.conf"
    before = LAB.file_digest("brooklyn-gw", config)
    rotated = "rotated-" + secrets.token_hex(16)
    new_key = link_key(rotated, "brooklyn", "manhattan", "tunnel")
    done = playbook(
        "site.yml",
        INVENTORY,
        "--check",
        "--diff",
        "--limit",
        "brooklyn-gw",
        "-e",
        f"office_tunnel_secret={rotated}",
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert recap(done.stdout)["brooklyn-gw"]["changed"] > 0
    # The rotation shows as a new key fingerprint in the diff; no key does.
    assert "+    secret = <hidden> (sha256 " in output, output[-3000:]
    assert rotated not in output and new_key not in output and new_key[:16] not in output
    assert LAB.file_digest("brooklyn-gw", config) == before


def _firewall_digest(vm: str) -> str:
    out = LAB.ssh(vm, "nft list table inet sitelink_firewall | grep -m1 comment")
    return out.split()[-1].strip('"')


# make bench (SITELINK_BENCH=1), for its 2.5 minutes: make test keeps under 45 minutes
# with the ansible-core matrix. The rollback's parts have unit tests (test_checkpoint,
# test_rollback_restore, test_gateway_confirm_action); this is the whole of it on a VM.
@pytest.mark.skipif(not os.environ.get("SITELINK_BENCH"), reason="make bench (SITELINK_BENCH=1)")
def test_a_push_that_cuts_ssh_is_rolled_back_by_the_gateway():
    """Management sources that exclude the controller: the hub applies them, cannot be
    reached over a new connection, and restores its previous rules by itself."""
    before = _firewall_digest("manhattan-gw")
    lockout = {
        "office_firewall_input_policy": "drop",
        "office_management_sources": ["192.0.2.1"],  # not the controller
        # The rest of the hub's play (about 8 tasks, up to a minute under TCG) runs before the
        # confirm step tries: the timer must not fire before that, or it would undo the
        # change without the lockout being what stopped the confirmation.
        "office_rollback_timeout": 120,
    }
    started = time.monotonic()
    done = playbook("site.yml", INVENTORY, "-e", json.dumps(lockout))
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "manhattan-gw: no new connection" in output and "sitelink-rollback" in output, output[
        -3000:
    ]
    # The hub failed, so no branch was touched.
    assert recap(done.stdout).get("brooklyn-gw", {}).get("changed", 0) == 0, output[-3000:]
    # The gateway comes back by itself, with the rules it had.
    while True:
        probe = subprocess.run(
            [
                sys.executable,
                str(ROOT / "lab/labctl.py"),
                "ssh",
                str(STATE),
                "manhattan-gw",
                "--",
                "true",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        if probe.returncode == 0:
            break
        assert time.monotonic() - started < 300, "manhattan-gw did not come back"
        time.sleep(2)
    back_after = time.monotonic() - started
    assert _firewall_digest("manhattan-gw") == before
    record = LAB.ssh_json("manhattan-gw", "cat /run/sitelink/rollback.json")
    rollback = record["rolled_back_at"] - record["armed_at"]
    print(
        f"rollback: {rollback:.1f} s after the change; reachable again {back_after:.0f} s "
        "after the run started"
    )
    assert 115 <= rollback <= 135, record


# --- after a reboot ------------------------------------------------------------------

SERVICES = (
    "sitelink-tunnels.service sitelink-masquerade.service sitelink-relay.service "
    "sitelink-firewall.service strongswan.service"
)
# The link's name on each gateway (its IKE_SA and CHILD_SA): sl-<the other office>.
LINK_NAME = {"manhattan-gw": "sl-brooklyn", "brooklyn-gw": "sl-manhattan"}
# Correctness bound, not a performance target: a rebooted gateway's link carries the
# workstation's pings again at most this long after the reboot module returns (the
# gateway answers SSH and its services are active), with nobody's help. Measured under
# TCG (2026-12): answered again 2 to 4 s before the module returned (outages of 27 and
# 32 s): the rebooted gateway's charon initiates at boot, and the other end replaces its
# stale IKE_SA (unique = replace). A link left to the other end's dead peer detection
# instead (30 s idle, then about 165 s of retransmissions) would miss this bound.
HEAL_BOUND = 120


def reboot(hosts: str) -> float:
    """ansible.builtin.reboot on ``hosts`` (an inventory pattern); time.time() when it
    returns: the gateways answer SSH and the collection's services are active."""
    done = subprocess.run(
        [
            str(BIN / "ansible"),
            hosts,
            "-i",
            INVENTORY,
            "-m",
            "ansible.builtin.reboot",
            "-a",
            f"reboot_timeout=600 test_command='systemctl is-active {SERVICES}'",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"reboot of {hosts} failed:\n{done.stdout}\n{done.stderr}"
    return time.time()


def link_sas(vm: str) -> tuple[dict[str, str], list[str]]:
    """A gateway's SAs of the link: its IKE_SAs, {uniqueid: state}, and the states of
    their CHILD_SAs (swanctl --raw: an IKE_SA's name, then its uniqueid and state)."""
    text = LAB.ssh(vm, f"swanctl --list-sas --ike {LINK_NAME[vm]} --raw 2>/dev/null || true")
    ike = dict(re.findall(r"\{\S+ \{uniqueid=(\d+) version=\d+ state=(\w+)", text))
    return ike, re.findall(r"reqid=\d+ state=(\w+)", text)


def first_answer(deadline: float) -> bool:
    """Whether the workstation's pings are answered again before ``deadline``."""
    while time.time() < deadline:
        if LAB.ping("workstation", APP_SERVER, count=1).returncode == 0:
            return True
    return False


# make bench (SITELINK_BENCH=1): make test keeps under 45 minutes with the ansible-core
# matrix, and still reboots both gateways (test_everything_holds_after_reboot).
@pytest.mark.skipif(not os.environ.get("SITELINK_BENCH"), reason="make bench (SITELINK_BENCH=1)")
def test_a_rebooted_gateway_heals_its_link_by_itself(capsys):
    """Only Brooklyn's gateway rebooted, then only Manhattan's, under a ping stream from
    the workstation to the app server: no playbook, no help. The pings are answered again
    within HEAL_BOUND of the gateway being back, and the other end, which kept its old
    SAs, has a new IKE_SA with the rebooted one, its CHILD_SA installed."""
    check_ping()
    for rebooted, other in (("brooklyn-gw", "manhattan-gw"), ("manhattan-gw", "brooklyn-gw")):
        old, _unused = link_sas(other)
        stream = LAB.background("workstation", "ping", APP_SERVER, "0.2")
        try:
            started = time.time()
            back = reboot(rebooted)
            healed = first_answer(back + HEAL_BOUND)
            seen = stream.finish(settle=1.0)
        finally:
            stream.stop()
        assert healed, (
            f"{rebooted}: pings not answered again within {HEAL_BOUND} s of the reboot "
            f"returning ({seen}); the link's SAs at {other}: {link_sas(other)}"
        )
        gaps = [g for g in seen["gaps"] if g["resumed_at"] > started]
        # Not a vacuous pass: the reboot did cut the link.
        assert gaps, f"no outage while {rebooted} rebooted: {seen}"
        outage = max(gaps, key=lambda g: g["resumed_at"] - g["last_answer_at"])
        down = outage["resumed_at"] - outage["last_answer_at"]
        heal = outage["resumed_at"] - back
        with capsys.disabled():  # the figures, in the CI log too (the verifier captures)
            print(
                f"\n{rebooted} rebooted: outage {down:.1f} s (pings {outage['after_seq']} to "
                f"{outage['resumed_seq']}), reboot module took {back - started:.1f} s, "
                f"answered again {heal:+.1f} s after it returned"
            )
        assert heal <= HEAL_BOUND, (rebooted, outage)
        # Healed by IKE, as it must: the other end keyed the link anew with the rebooted one.
        new, children = link_sas(other)
        established = {i for i, state in new.items() if state == "ESTABLISHED"}
        assert established - set(old) and "INSTALLED" in children, (rebooted, old, new, children)


def test_everything_holds_after_reboot(tmp_path):
    reboot("offices")
    check_verify(tmp_path)  # first: IKE keys both links again
    for claim in CLAIMS + SAFETY:
        claim()


def test_a_run_after_reboot_changes_nothing():
    """What came back at boot is exactly what site.yml wants."""
    done = playbook("site.yml", INVENTORY)
    assert done.returncode == 0, done.stdout[-3000:]
    changed = {host: r["changed"] for host, r in recap(done.stdout).items()}
    assert changed == {"brooklyn-gw": 0, "manhattan-gw": 0}, done.stdout[-3000:]
