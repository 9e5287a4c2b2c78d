"""The crowd lab: one hub with N-1 branches (`make scale N=200`; root).

  scale.py N [--keep]     boot, configure, measure, tear down; a table row and
                          /tmp/sitelink-lab/scale/scale-N.json
  scale.py --summary      the table of every scale-*.json so far, with per-link costs

One inventory of N offices: the hub (hq) and two branches (north, south) are real
gateway VMs configured by site.yml; the other N-3 branches are simulated by one
"crowd" VM (lab/crowd/crowd.py), configured from the planner's own output
(plan_network, office_plan, gateway_secrets, the ipsec module's swanctl rendering)
and the lab's secret: from its own public address each, IKEv2 with its link's key,
ESP in transport mode for IPIP, an IPIP tunnel, a LAN address that answers the
hub's probes, and a receiver that checks each relay datagram's envelope with its
link's key and counts it once per branch.

Measured: site.yml's first and no-change runs (the hub's play, and the whole run
with the two real branches); from the end of the hub's play until all N-1 links have
ESP SAs both ways, and the same after a hub reboot (from when SSH answers again);
one broadcast from the HQ LAN reaching every branch once, then 10/s for 60 s (loss,
duplicates); verify.yml on the hub, healthy and with a quarter of the crowd offline;
half the offices removed from the inventory (run time, and nothing left of them on
the hub); the hub's memory (strongSwan, relay, kernel) and the controller's CPU time
and largest process. Everything runs in the lab's namespaces and VMs (labctl.py),
torn down by PID in any case; VMs are reached through 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any, Optional

LAB_DIR = Path(__file__).resolve().parent
ROOT = LAB_DIR.parent
# No lab/crowd/__pycache__ (the collection tarball would carry it).
sys.dont_write_bytecode = True
sys.path.insert(0, str(LAB_DIR))
sys.path.insert(0, str(LAB_DIR / "crowd"))
sys.path.insert(0, str(ROOT / ".cache/collections"))

import crowd  # noqa: E402
from labctl import SSH_OPTS  # noqa: E402
from lanhost import BIN, LABCTL, Background, recap  # noqa: E402

STATE = Path(os.environ.get("SITELINK_SCALE_STATE", "/tmp/sitelink-lab/scale"))
# Lab only, public (as molecule's inventories): every link's keys derive from it.
SECRET = "lab-only-not-a-secret-scale"  # noqa: S105
SSH_PORT = 22261  # 22261-22264: clear of molecule's 22221-22240
RELAY_PORT = 6799
HUB, HUB_OFFICE, HUB_WAN = "hq-gw", "hq", "172.16.1.12"
REAL_BRANCHES = {"north-gw": "north", "south-gw": "south"}
REAL = [HUB, *REAL_BRANCHES]
CROWD_VM = "crowd"
CROWD_WAN_PREFIX = 16
CROWD_ROUTER = "172.20.255.254"
CROWD_OWN = "172.20.255.1"
HQ_HOST, HQ_HOST_ADDR = "hq-host", "192.168.1.10"
LAN_LISTENERS = {"north-gw": "north-ws", "south-gw": "south-ws"}
RATE, RATE_SECONDS = 10, 60
SA_TIMEOUT = float(os.environ.get("SITELINK_SCALE_SA_TIMEOUT", "900"))
MEMORY = {"hub": 1536, "branch": 768, "crowd": 1536}  # MB per VM

GROUP_VARS = {
    "office_tunnel_secret": SECRET,
    "office_topology": "hub-and-spoke",
    "office_transit": True,
    "office_lan_interface": "eth0",
    "office_wan_interface": "eth1",
    "office_rollout_batch": 2,
    "office_rollout_max_fail_percentage": 50,
}
REAL_OFFICES = {
    HUB: {
        "office_name": HUB_OFFICE,
        "office_role": "hub",
        "office_lan_address": "192.168.1.126/24",
        "office_wan_address": f"{HUB_WAN}/27",
        "office_wan_gateway": "172.16.1.30",
        "office_broadcast_relay": [{"port": RELAY_PORT}],
    },
    "north-gw": {
        "office_name": "north",
        "office_lan_address": "192.168.3.126/24",
        "office_wan_address": "172.18.3.10/28",
        "office_wan_gateway": "172.18.3.14",
    },
    "south-gw": {
        "office_name": "south",
        "office_lan_address": "192.168.4.126/24",
        "office_wan_address": "172.19.4.10/28",
        "office_wan_gateway": "172.19.4.14",
    },
}


def crowd_office(i: int) -> tuple[str, dict[str, Any]]:
    """Simulated branch i (0-based): LAN 10.64.0.0/10 by /24, WAN in 172.20.0.0/16."""
    name = f"c{i + 1:04d}"
    return f"{name}-gw", {
        "office_name": name,
        "office_lan_address": f"10.{64 + i // 256}.{i % 256}.1/24",
        "office_wan_address": f"172.20.{i // 250}.{i % 250 + 1}/{CROWD_WAN_PREFIX}",
        "office_wan_gateway": CROWD_ROUTER,
    }


def offices(n: int, drop: int = 0) -> dict[str, dict[str, Any]]:
    """The N offices' own variables by host; ``drop``: the first crowd offices left out."""
    found = {h: dict(v) for h, v in REAL_OFFICES.items()}
    for i in range(drop, n - len(REAL)):
        host, values = crowd_office(i)
        found[host] = values
    return found


def write_inventory(path: Path, office_vars: dict[str, dict[str, Any]]) -> None:
    """JSON is YAML: the inventory Ansible reads, the office layer and the lab's."""
    path.mkdir(parents=True, exist_ok=True)
    layer = {"offices": {"vars": GROUP_VARS, "hosts": office_vars}}
    (path / "10-offices.yml").write_text(json.dumps(layer, indent=1) + "\n")
    lab = {
        "offices": {
            "vars": {
                "ansible_host": "127.0.0.1",
                "ansible_user": "root",
                "ansible_python_interpreter": "/usr/bin/python3",
                "ansible_ssh_private_key_file": str(STATE / "id_ed25519"),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no "
                "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            },
            "hosts": {h: {"ansible_port": SSH_PORT + i} for i, h in enumerate(REAL)},
        }
    }
    (path / "20-lab.yml").write_text(json.dumps(lab, indent=1) + "\n")


def plan(office_vars: dict[str, dict[str, Any]]):
    """The network as site.yml plans it (the same function, the same variables)."""
    from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import (
        plan_network,
    )

    return plan_network({h: {**GROUP_VARS, **v} for h, v in office_vars.items()})


def crowd_config(office_vars: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The crowd VM's one configuration: each simulated branch's addresses, tunnel and
    keys from its own office_plan and office_secrets, and one swanctl file rendered by
    the ipsec module (its connections, as the branch's own gateway would have them)."""
    from ansible_collections.sitelink.gateway.plugins.module_utils import contract, ipsec
    from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import (
        office_plan,
    )
    from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (
        gateway_secrets,
    )

    network = plan(office_vars)
    branches, connections, tunnel_keys = [], [], {}
    for host in office_vars:
        if host in REAL:
            continue
        gp = office_plan(network, host)
        (link,) = gp["links"]
        (conn,) = gp["ipsec"]["connections"]
        (tunnel,) = gp["tunnels"]
        keys = gateway_secrets(gp["links"], SECRET)["links"][link["id"]]
        branches.append(
            {
                "name": gp["office"],
                "wan": gp["wan"]["address"],
                "lan": gp["lan"]["address"],
                "tunnel": f"t{len(branches)}",
                "relay_key": keys["relay"],
            }
        )
        connections.append({**conn, "name": gp["office"]})
        tunnel_keys[link["id"]] = keys["tunnel"]
        hub_wan, mtu = tunnel["remote"], tunnel["mtu"]
    # The hub initiates (trap|start at load and at boot): the crowd only answers, and
    # keys a link again on traffic (trap), as a branch configured before its hub.
    swanctl = ipsec.render(
        connections,
        tunnel_keys,
        ipsec.IKE_PROPOSALS,
        ipsec.ESP_PROPOSALS,
        ipsec.DPD_DELAY,
        start=False,
    )
    return {
        "wan_interface": "eth0",
        "wan_prefix": CROWD_WAN_PREFIX,
        "hub_wan": hub_wan,
        "tunnel_mtu": mtu,
        "hub_office_id": contract.office_id(HUB_OFFICE).hex(),
        "relay_ports": [RELAY_PORT],
        "branches": branches,
        "swanctl": swanctl,
    }


def lab_spec() -> dict[str, Any]:
    segments, gateways = {}, {}
    for i, host in enumerate(REAL):
        v = REAL_OFFICES[host]
        office = v["office_name"]
        segments[f"{office}-lan"] = {}
        segments[f"{office}-wan"] = {
            "router": f"{v['office_wan_gateway']}/{v['office_wan_address'].split('/')[1]}"
        }
        gateways[host] = {
            "ssh_port": SSH_PORT + i,
            "memory": MEMORY["hub" if host == HUB else "branch"],
            "nics": [
                {"segment": f"{office}-lan", "address": v["office_lan_address"]},
                {"segment": f"{office}-wan", "address": v["office_wan_address"]},
            ],
            "gateway": v["office_wan_gateway"],
        }
    segments["crowd-wan"] = {"router": f"{CROWD_ROUTER}/{CROWD_WAN_PREFIX}"}
    gateways[CROWD_VM] = {
        "ssh_port": SSH_PORT + len(REAL),
        "memory": MEMORY["crowd"],
        "nics": [{"segment": "crowd-wan", "address": f"{CROWD_OWN}/{CROWD_WAN_PREFIX}"}],
        "gateway": CROWD_ROUTER,
    }
    hosts = {HQ_HOST: {"segment": "hq-lan", "address": f"{HQ_HOST_ADDR}/24", "routes": []}}
    for gw, host in LAN_LISTENERS.items():
        lan = REAL_OFFICES[gw]["office_lan_address"].rsplit(".", 1)[0]
        hosts[host] = {
            "segment": f"{REAL_OFFICES[gw]['office_name']}-lan",
            "address": f"{lan}.20/24",
            "routes": [],
        }
    return {"segments": segments, "gateways": gateways, "hosts": hosts}


# ----------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ssh(vm: str, command: str, input: Optional[bytes] = None, timeout: float = 300) -> str:
    """A command on a lab VM over its forwarded port (one master connection per VM)."""
    state = json.loads((STATE / "state.json").read_text())
    argv = [
        "ssh",
        *SSH_OPTS,
        "-o",
        "ConnectTimeout=5",
        "-o",
        "ControlMaster=auto",
        "-o",
        f"ControlPath={STATE}/cm-%p",
        "-o",
        "ControlPersist=120",
        "-i",
        state["ssh_key"],
        "-p",
        str(state["vms"][vm]["ssh_port"]),
        "root@127.0.0.1",
        command,
    ]
    done = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{vm}: {command[:60]!r}: exit {done.returncode}: {done.stderr[-800:]}")
    return done.stdout.decode()


def netns(host: str) -> str:
    return json.loads((STATE / "state.json").read_text())["hosts"][host]["netns"]


class Run:
    """One ansible-playbook run: its wall time, when each play started (from its
    output), its recap, and the controller's CPU seconds and largest process."""

    def __init__(self, name: str, inventory: Path, *extra: str, on_play=None):
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
        env["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / ".cache/collections")
        env["ANSIBLE_HOST_KEY_CHECKING"] = "False"
        # Each task's time in the log (logs/NN-*.log): where a run spends it at size.
        env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
        env.setdefault("ANSIBLE_HOME", str(ROOT / ".cache/ansible"))
        env.setdefault("ANSIBLE_SSH_CONTROL_PATH_DIR", str(ROOT / ".cache/ansible/cp"))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.start = time.monotonic()
        self.plays: dict[str, float] = {}
        lines = []
        proc = subprocess.Popen(
            [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / name), *extra],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        (STATE / "logs").mkdir(exist_ok=True)
        stamp = f"{len(list((STATE / 'logs').iterdir())):02d}"
        live = open(STATE / "logs" / f"{stamp}-{Path(name).stem}.log", "w")  # noqa: SIM115
        for line in proc.stdout:
            lines.append(line)
            live.write(line)
            live.flush()
            if line.startswith("PLAY ["):
                title = line[6 : line.index("]")]
                self.plays[title] = time.monotonic() - self.start
                if on_play:
                    on_play(title)
        self.rc = proc.wait()
        self.seconds = time.monotonic() - self.start
        self.plays["end"] = self.seconds
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        self.maxrss_mb = after.ru_maxrss / 1024  # the largest child so far
        self.output = "".join(lines)
        self.recap = recap(self.output)
        live.close()

    def play(self, prefix: str) -> Optional[float]:
        """Seconds from the start of the play whose title starts with ``prefix`` to the
        start of the next one (or the end)."""
        marks = sorted(self.plays.items(), key=lambda kv: kv[1])
        for (title, at), (_next, until) in zip(marks, marks[1:]):
            if title.startswith(prefix):
                return until - at
        return None

    def check(self, what: str) -> None:
        if self.rc != 0:
            tail = self.output[-5000:]
            raise RuntimeError(f"{what} failed (exit {self.rc}):\n{tail}")


# The hub's view of its SAs: a link counts when ESP SAs exist both ways between the
# hub's WAN address and the peer's. Printed: all such links, and those to the crowd.
SA_COUNT = r"""
import re, subprocess
text = subprocess.run(["ip", "xfrm", "state"], capture_output=True, text=True).stdout
pairs = set(re.findall(r"^src (\S+) dst (\S+)\n\s+proto esp", text, re.M))
hub = "{hub}"
both = {{d for s, d in pairs if s == hub}} & {{s for s, d in pairs if d == hub}}
print(len(both), len([p for p in both if p.startswith("{crowd}")]))
"""

MEMORY_PROBE = r"""
import json, subprocess
def rss(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except OSError:
        return 0
    return 0
def main_pid(unit):
    out = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", unit],
                         capture_output=True, text=True).stdout.strip()
    return int(out or 0)
info = {l.split(":")[0]: int(l.split()[1]) // 1024 for l in open("/proc/meminfo")}
print(json.dumps({
    "charon_mb": rss(main_pid("strongswan.service")),
    "relay_mb": rss(main_pid("sitelink-relay.service")),
    "slab_mb": info["Slab"],
    "used_mb": info["MemTotal"] - info["MemAvailable"],
    "total_mb": info["MemTotal"],
}))
"""

# Where datagrams are lost: the kernel's drop counters (UDP receive buffers, xfrm,
# the backlog, each interface), and on a gateway the relay's own counters, read
# before and after a broadcast test; the report gives what grew.
COUNTERS = r"""
import json, re
out = {}
with open("/proc/net/snmp") as fh:
    rows = [line.split() for line in fh if line.startswith("Udp:")]
for name, value in zip(rows[0][1:], rows[1][1:]):
    if name in ("InErrors", "RcvbufErrors", "SndbufErrors"):
        out["udp_" + name] = int(value)
try:
    with open("/proc/net/xfrm_stat") as fh:
        for line in fh:
            name, value = line.split()
            out["xfrm_" + name] = int(value)
except OSError:
    pass
with open("/proc/net/softnet_stat") as fh:
    out["backlog_dropped"] = sum(int(line.split()[1], 16) for line in fh)
with open("/proc/net/dev") as fh:
    for line in list(fh)[2:]:
        dev, fields = line.split(":", 1)
        f = fields.split()
        if dev.strip() != "lo":
            out["rx_dropped_" + dev.strip()] = int(f[3])
            out["tx_dropped_" + dev.strip()] = int(f[11])
try:
    with open("/run/sitelink-relay/metrics.prom") as fh:
        for line in fh:
            if line.startswith("#") or not line.strip():
                continue
            name, value = line.rsplit(" ", 1)
            if not re.search(r"(sent|forwarded|dropped|errors)_total", name):
                continue
            # Summed over ports and peers, kept apart by reason (or error).
            key = "relay_" + name.split("{")[0].replace("sitelink_relay_", "")
            why = re.search(r'(?:reason|error)="([^"]*)"', name)
            key += "_" + why.group(1) if why else ""
            out[key] = out.get(key, 0) + int(float(value))
except OSError:
    pass
print(json.dumps(out))
"""


def counters(vm: str) -> dict[str, int]:
    return json.loads(ssh(vm, "python3 -c " + shlex.quote(COUNTERS)))


def grown(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The counters that grew, by how much."""
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v > before.get(k, 0)}


LEFTOVERS = r"""
import ipaddress, json, os, re, subprocess, sys
removed = json.load(sys.stdin)
def out(*argv):
    return subprocess.run(argv, capture_output=True, text=True).stdout
texts = {
    "tunnels": out("ip", "-o", "link", "show", "type", "ipip"),
    "ipsec_conns": out("swanctl", "--list-conns"),
    "ipsec_sas": out("swanctl", "--list-sas"),
    "xfrm": out("ip", "xfrm", "policy") + out("ip", "xfrm", "state"),
    "routes": out("ip", "route", "show", "table", "all"),
    "nftables": out("nft", "list", "ruleset"),
}
relay = ""
for root, _dirs, files in os.walk("/etc/sitelink"):
    for f in files:
        try:
            relay += open(os.path.join(root, f), errors="replace").read()
        except OSError:
            pass
texts["relay_files"] = relay
networks = [ipaddress.ip_network(office["network"]) for office in removed]
found = {}
for where, text in texts.items():
    hits = 0
    # Routes and the nftables sets hold collapsed prefixes: one that still covers a
    # removed LAN counts as well as its name does ("everything", 0.0.0.0/0, is no
    # office's: xfrm's socket policies have it).
    prefixes = []
    if where in ("routes", "nftables"):
        for p in re.findall(r"(?<![\d.])\d+\.\d+\.\d+\.\d+/\d+", text):
            prefix = ipaddress.ip_network(p, strict=False)
            if prefix.prefixlen > 0:
                prefixes.append(prefix)
    for office, network in zip(removed, networks):
        words = [office["tunnel"], office["wan"], office["lan"], office["network"]]
        named = any(re.search(r"(?<![\w.-])" + re.escape(w) + r"(?![\w-]|\.\d)", text)
                    for w in words)
        if named or any(network.subnet_of(p) for p in prefixes):
            hits += 1
    found[where] = hits
print(json.dumps(found))
"""


def hub_memory() -> dict[str, int]:
    return json.loads(ssh(HUB, "python3 -c " + shlex.quote(MEMORY_PROBE)))


def sa_links() -> tuple[int, int]:
    """(links with ESP SAs both ways, those of them to the crowd), on the hub."""
    script = SA_COUNT.format(hub=HUB_WAN, crowd=CROWD_ROUTER.split(".255.", maxsplit=1)[0] + ".")
    both, crowd_links = ssh(HUB, "python3 -c " + shlex.quote(script)).split()
    return int(both), int(crowd_links)


class SaWatch(threading.Thread):
    """Polls the hub from ``since`` until every link has SAs both ways: the seconds
    until the crowd's links were all up, and until all N-1 were."""

    def __init__(self, n: int, since: float, timeout: float = SA_TIMEOUT):
        super().__init__(daemon=True)
        self.want, self.want_crowd = n - 1, n - len(REAL)
        self.since, self.timeout = since, timeout
        self.result: dict[str, Any] = {"want": self.want, "seconds": None, "crowd_s": None}
        self.start()

    def run(self) -> None:
        last = time.monotonic()
        while time.monotonic() - self.since < self.timeout:
            try:
                both, to_crowd = sa_links()
            except (RuntimeError, subprocess.TimeoutExpired, ValueError):
                both, to_crowd = -1, -1
            now = round(time.monotonic() - self.since, 1)
            self.result.update(links=both, crowd_links=to_crowd)
            if to_crowd >= self.want_crowd and self.result["crowd_s"] is None:
                self.result["crowd_s"] = now
            if both >= self.want:
                self.result["seconds"] = now
                return
            if time.monotonic() - last > 30:
                log(f"  {both}/{self.want} links with ESP SAs both ways")
                last = time.monotonic()
            time.sleep(2)
        self.result["timeout"] = self.timeout


def wait_sas(n: int, since: float) -> dict[str, Any]:
    watch = SaWatch(n, since)
    watch.join()
    return watch.result


def broadcast(test: str, count: int, rate: float, n_crowd: int) -> dict[str, Any]:
    """COUNT datagrams from the HQ LAN host to its LAN's broadcast address: what each
    real branch's LAN host and each crowd branch received (once, twice, not at all)."""
    listen_for = count / rate + 30
    listeners = {
        gw: Background(
            ["ip", "netns", "exec", netns(host), sys.executable, crowd.__file__]
            + ["listen", str(RELAY_PORT), str(listen_for)],
            f"{host} listen",
        )
        for gw, host in LAN_LISTENERS.items()
    }
    before = {vm: counters(vm) for vm in (HUB, CROWD_VM)}
    try:
        sent = subprocess.run(
            ["ip", "netns", "exec", netns(HQ_HOST), sys.executable, crowd.__file__, "send"]
            + ["192.168.1.255", str(RELAY_PORT), test, str(count), str(rate)],
            capture_output=True,
            text=True,
            check=True,
            timeout=count / rate + 60,
        )
        log(f"  sent: {sent.stdout.strip()}")
        time.sleep(8)  # in flight through the hub, then the crowd writes its tally file
        real = {gw: bg.finish(settle=0) for gw, bg in listeners.items()}
    finally:
        for bg in listeners.values():
            bg.stop()
    # The relay's counters are written every 5 s: the 8 s above covered that too.
    drops = {vm: grown(before[vm], counters(vm)) for vm in before}
    config = json.loads((STATE / "crowd-config.json").read_text())
    tally = crowd.Tally.load(
        json.loads(ssh(CROWD_VM, "python3 /root/crowd/crowd.py tally")), config["branches"]
    )
    report = tally.report(test, expected=count)
    crowd_rows = report["branches"].values()
    result = {
        "sent": count,
        "real": {
            gw: {
                "received": r.get(test, {}).get("received", 0),
                "duplicates": r.get(test, {}).get("duplicates", 0),
            }
            for gw, r in real.items()
        },
        "crowd_branches": n_crowd,
        "crowd_received": sum(b["received"] for b in crowd_rows),
        "crowd_duplicates": sum(b["duplicates"] for b in crowd_rows),
        "crowd_missing": sum(b["missing"] for b in crowd_rows),
        "crowd_silent": report["silent"],
        "crowd_failures": report["failures"],
        "crowd_unknown": report["unknown"],
        "counters_grown": drops,
    }
    branches = len(REAL_BRANCHES) + n_crowd
    received = result["crowd_received"] + sum(r["received"] for r in result["real"].values())
    dups = result["crowd_duplicates"] + sum(r["duplicates"] for r in result["real"].values())
    result["expected"] = branches * count
    result["loss"] = 1 - received / (branches * count)
    result["duplicates"] = dups
    return result


def report_health(path: Path) -> dict[str, Any]:
    """What verify.yml's JSON report says: healthy or not, and which links' tunnels
    are not ok (by peer office)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"report": None}
    tunnels = [t for o in data.get("offices", []) for t in o.get("tunnels", [])]
    bad = sorted(t.get("peer") for t in tunnels if not t.get("ok"))
    return {"healthy": data.get("healthy"), "tunnels": len(tunnels), "not_ok": bad}


def hub_reboot(n: int) -> dict[str, Any]:
    with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
        ssh(HUB, "systemctl reboot", timeout=30)  # the connection may drop at once
    start = time.monotonic()
    # Down first (SSH refused or silent), then up again.
    while time.monotonic() - start < 120:
        try:
            ssh(HUB, "true", timeout=10)
        except (RuntimeError, subprocess.TimeoutExpired):
            break
        time.sleep(1)
    while True:
        try:
            ssh(HUB, "true", timeout=10)
            break
        except (RuntimeError, subprocess.TimeoutExpired):
            if time.monotonic() - start > 600:
                raise RuntimeError("the hub did not come back in 600 s") from None
            time.sleep(2)
    back = time.monotonic()
    log(f"  SSH answers again after {back - start:.0f} s")
    return {"ssh_back_s": round(back - start, 1), **wait_sas(n, back)}


# ----------------------------------------------------------------------------- the run


def measure(n: int, out: dict[str, Any]) -> dict[str, Any]:
    """Fills ``out`` as it goes: a failure keeps what was measured before it."""
    n_crowd = n - len(REAL)
    if n_crowd < 1:
        sys.exit("N must be at least 4 (a hub, two real branches, a crowd of one or more)")
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(STATE.parent, 0o700)
    out.update(n=n, crowd=n_crowd, started=time.strftime("%F %T"))
    office_vars = offices(n)
    inventory = STATE / f"inventory-{n}"
    write_inventory(inventory, office_vars)
    t0 = time.monotonic()
    config = crowd_config(office_vars)
    out["plan_crowd_s"] = round(time.monotonic() - t0, 2)
    (STATE / "crowd-config.json").write_text(json.dumps(config))
    os.chmod(STATE / "crowd-config.json", 0o600)
    (STATE / "spec.json").write_text(json.dumps(lab_spec(), indent=1))

    log(f"N={n}: booting the hub, two branches and the crowd ({n_crowd} branches)")
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, str(LABCTL), "up", str(STATE / "spec.json"), str(STATE)], check=False
    )
    state = json.loads((STATE / "state.json").read_text())
    if state.get("status") != "up":
        raise RuntimeError(f"the lab did not come up: {state.get('error')}")
    out["boot_s"] = round(time.monotonic() - t0, 1)

    log("configuring the crowd (one script, one JSON file, one ssh)")
    bundle = BytesIO()
    with tarfile.open(fileobj=bundle, mode="w") as tar:
        tar.add(crowd.__file__, arcname="crowd.py")
        tar.add(STATE / "crowd-config.json", arcname="config.json")
    t0 = time.monotonic()
    done = ssh(
        CROWD_VM,
        "mkdir -p -m 0700 /root/crowd && tar -C /root/crowd -xf - && "
        "python3 /root/crowd/crowd.py setup /root/crowd/config.json",
        input=bundle.getvalue(),
        timeout=900,
    )
    out["crowd_setup_s"] = round(time.monotonic() - t0, 1)
    out["crowd_setup"] = json.loads(done.strip().splitlines()[-1])
    log(f"  {out['crowd_setup']} in {out['crowd_setup_s']} s")

    limit = ("--limit", ",".join(REAL))
    log("site.yml, first run (hub, then the two real branches)")
    watch: list[SaWatch] = []

    def on_play(title: str) -> None:
        if title.startswith("Configure the branch") and not watch:
            watch.append(SaWatch(n, time.monotonic()))

    first = Run("site.yml", inventory, *limit, on_play=on_play)
    first.check("site.yml (first run)")
    out["site_first"] = {
        "whole_s": round(first.seconds, 1),
        "hub_play_s": round(first.play("Configure the hub") or 0, 1),
        "plan_play_s": round(first.play("Plan the office") or 0, 1),
        "controller_cpu_s": round(first.cpu, 1),
        "controller_maxrss_mb": round(first.maxrss_mb),
        "recap": first.recap,
    }
    log(f"  {out['site_first']}")
    log("waiting for ESP SAs both ways on all links (from the end of the hub's play)")
    if not watch:
        raise RuntimeError("site.yml's output named no branches' play")
    watch[0].join()
    out["sas_after_site"] = watch[0].result
    log(f"  {out['sas_after_site']}")

    log("site.yml, no-change run")
    again = Run("site.yml", inventory, *limit)
    again.check("site.yml (no-change run)")
    out["site_again"] = {
        "whole_s": round(again.seconds, 1),
        "hub_play_s": round(again.play("Configure the hub") or 0, 1),
        "plan_play_s": round(again.play("Plan the office") or 0, 1),
        "controller_cpu_s": round(again.cpu, 1),
        "changed": {h: r["changed"] for h, r in again.recap.items()},
    }
    log(f"  {out['site_again']}")
    out["hub_memory"] = hub_memory()
    log(f"  hub memory: {out['hub_memory']}")

    log("one broadcast from the HQ LAN")
    out["broadcast_one"] = broadcast(f"one{n}", 1, 1, n_crowd)
    log(f"  {summary_of(out['broadcast_one'])}")
    log(f"{RATE} broadcasts/s for {RATE_SECONDS} s")
    out["broadcast_rate"] = broadcast(f"rate{n}", RATE * RATE_SECONDS, RATE, n_crowd)
    log(f"  {summary_of(out['broadcast_rate'])}")
    out["hub_memory_after_traffic"] = json.loads(
        ssh(HUB, "python3 -c " + shlex.quote(MEMORY_PROBE))
    )
    out["uptime_load"] = os.getloadavg()

    log("verify.yml on the hub, healthy")
    report = STATE / f"verify-{n}-healthy.json"
    check = Run("verify.yml", inventory, "--limit", HUB, "-e", f"sitelink_verify_report={report}")
    out["verify_healthy"] = {"seconds": round(check.seconds, 1), "rc": check.rc}
    health = report_health(report)
    out["verify_healthy"].update(healthy=health.get("healthy"), not_ok=health.get("not_ok"))
    log(f"  {out['verify_healthy']}")

    log("hub reboot: SSH back, then every link's SAs")
    out["reboot"] = hub_reboot(n)
    log(f"  {out['reboot']}")

    quarter = [b["name"] for b in config["branches"][: max(1, n_crowd // 4)]]
    log(f"{len(quarter)} crowd branches go offline; verify.yml on the hub")
    ssh(
        CROWD_VM,
        "python3 /root/crowd/crowd.py offline /root/crowd/config.json " + " ".join(quarter),
    )
    report = STATE / f"verify-{n}-quarter-down.json"
    check = Run("verify.yml", inventory, "--limit", HUB, "-e", f"sitelink_verify_report={report}")
    health = report_health(report)
    named = set(health.get("not_ok") or [])
    out["verify_quarter_down"] = {
        "seconds": round(check.seconds, 1),
        "rc": check.rc,
        "healthy": health.get("healthy"),
        "offline": len(quarter),
        "not_ok": len(named),
        "exactly_the_offline_ones": named == set(quarter),
    }
    log(f"  {out['verify_quarter_down']}")

    drop = n // 2
    log(f"removing {drop} offices from the inventory (the first {drop} of the crowd)")
    smaller = STATE / f"inventory-{n}-half"
    kept = offices(n, drop=drop)
    write_inventory(smaller, kept)
    removed = []
    for i in range(drop):
        _host, v = crowd_office(i)
        lan = v["office_lan_address"].split("/", maxsplit=1)[0]
        removed.append(
            {
                "tunnel": tunnel_name(v["office_name"]),
                "wan": v["office_wan_address"].split("/", maxsplit=1)[0],
                "lan": lan,
                "network": lan.rsplit(".", 1)[0] + ".0/24",
            }
        )
    cut = Run("site.yml", smaller, "--limit", HUB)
    out["remove_half"] = {
        "removed": drop,
        "seconds": round(cut.seconds, 1),
        "hub_play_s": round(cut.play("Configure the hub") or 0, 1),
        "rc": cut.rc,
        "leftovers": json.loads(
            ssh(HUB, "python3 -c " + shlex.quote(LEFTOVERS), input=json.dumps(removed).encode())
        ),
    }
    log(f"  {out['remove_half']}")
    out["hub_memory_after_removal"] = json.loads(
        ssh(HUB, "python3 -c " + shlex.quote(MEMORY_PROBE))
    )
    out["uptime_load_end"] = os.getloadavg()
    return out


def tunnel_name(office: str) -> str:
    from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.tunnels import (
        tunnel_name as planned,
    )

    return planned(office)


def summary_of(b: dict[str, Any]) -> str:
    return (
        f"sent {b['sent']} to {b['crowd_branches'] + len(REAL_BRANCHES)} branches: "
        f"loss {b['loss']:.2%}, duplicates {b['duplicates']}, "
        f"silent crowd branches {len(b['crowd_silent'])}, envelope failures {b['crowd_failures']}"
    )


# ----------------------------------------------------------------------------- the table

COLUMNS = [
    ("N", lambda r: r["n"]),
    ("hub 1st s", lambda r: r["site_first"]["hub_play_s"]),
    ("hub again s", lambda r: r["site_again"]["hub_play_s"]),
    ("whole 1st s", lambda r: r["site_first"]["whole_s"]),
    ("whole again s", lambda r: r["site_again"]["whole_s"]),
    ("crowd SAs s", lambda r: r["sas_after_site"]["crowd_s"]),
    ("all SAs s", lambda r: r["sas_after_site"]["seconds"]),
    ("reboot SAs s", lambda r: r["reboot"]["seconds"]),
    ("1 bcast lost/dup", lambda r: _lost_dup(r["broadcast_one"])),
    ("10/s 60s loss/dup", lambda r: _lost_dup(r["broadcast_rate"], ratio=True)),
    ("verify s", lambda r: r["verify_healthy"]["seconds"]),
    ("verify 1/4 down s", lambda r: r["verify_quarter_down"]["seconds"]),
    ("remove half s", lambda r: r["remove_half"]["seconds"]),
    ("left", lambda r: sum(r["remove_half"]["leftovers"].values())),
    ("charon MB", lambda r: r["hub_memory"]["charon_mb"]),
    ("relay MB", lambda r: r["hub_memory"]["relay_mb"]),
    ("slab MB", lambda r: r["hub_memory"]["slab_mb"]),
    ("ctl cpu s", lambda r: r["site_first"]["controller_cpu_s"]),
    ("ctl MB", lambda r: r["site_first"]["controller_maxrss_mb"]),
    ("load", lambda r: f"{r['uptime_load'][0]:.1f}"),
]


def _lost_dup(b: dict[str, Any], ratio: bool = False) -> str:
    lost = b["expected"] - round((1 - b["loss"]) * b["expected"])
    return f"{b['loss']:.2%}/{b['duplicates']}" if ratio else f"{lost}/{b['duplicates']}"


def value(fn, row) -> Any:
    """A column's value in a row, None where the row has no such measurement."""
    try:
        return fn(row)
    except (KeyError, TypeError):
        return None


def cell(fn, row) -> str:
    found = value(fn, row)
    return "-" if found is None else str(found)


# Per 100 links: (what, the column it is read from, how many links it is about).
PER_LINK = [
    ("hub's first run", "hub 1st s", lambda r: r["n"] - 1),
    ("hub's no-change run", "hub again s", lambda r: r["n"] - 1),
    ("crowd's SAs after the hub's play", "crowd SAs s", lambda r: r["n"] - 1),
    ("all SAs after the hub's play", "all SAs s", lambda r: r["n"] - 1),
    ("all SAs after a hub reboot", "reboot SAs s", lambda r: r["n"] - 1),
    ("verify.yml on the hub", "verify s", lambda r: r["n"] - 1),
    ("removing half (per link removed)", "remove half s", lambda r: r["remove_half"]["removed"]),
    ("charon MB", "charon MB", lambda r: r["n"] - 1),
]


def table(rows: list[dict[str, Any]]) -> str:
    rows = sorted(rows, key=lambda r: r["n"])
    cells = [[name for name, _fn in COLUMNS]] + [[cell(fn, r) for _n, fn in COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    lines += ["", "Per 100 links (seconds; the slope between sizes where there are two or more):"]
    columns = dict(COLUMNS)
    for name, column, links in PER_LINK:
        points = [
            (links(r), found) for r in rows if (found := value(columns[column], r)) is not None
        ]
        if not points:
            continue
        ratios = ", ".join(f"{v / x * 100:.1f} at {x}" for x, v in points)
        slope = ""
        if len(points) >= 2:
            (x0, v0), (x1, v1) = points[0], points[-1]
            slope = f"; slope {(v1 - v0) / (x1 - x0) * 100:.1f}"
        lines.append(f"  {name}: {ratios}{slope}")
    return "\n".join(lines)


def rows_on_disk() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(STATE.glob("scale-*.json"))]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    if argv[0] == "--summary":
        print(table(rows_on_disk()))
        return 0
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network namespaces, taps)")
    n, keep = int(argv[0]), "--keep" in argv
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))
    result: dict[str, Any] = {}
    try:
        measure(n, result)
        result["finished"] = time.strftime("%F %T")
        print(table([result]))
        return 0
    except Exception as exc:
        result["error"] = str(exc)[-3000:]
        raise
    finally:
        if result:
            (STATE / f"scale-{n}.json").write_text(json.dumps(result, indent=1) + "\n")
            print(f"\n{STATE / f'scale-{n}.json'}; every size so far: lab/scale.py --summary")
        if keep:
            log(f"kept the lab up: python3 lab/labctl.py down {STATE}")
        else:
            subprocess.run([sys.executable, str(LABCTL), "down", str(STATE)], check=False)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
