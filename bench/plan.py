"""Planning at scale: `make bench-plan` (part of `make bench`; no root, no VMs).

For generated inventories (hub-and-spoke with 1, 100 and 1000 offices, a mesh of
300) it times `plan.yml` and records its peak memory, next to a no-op play over
the same inventory (one controller-side task per office, what any per-host step
costs) and site.yml's planning play (the office role). It also counts the tasks
site.yml runs per gateway at 2 and at 100 peers.
Figures only: nothing here asserts a time.

Each line starts with the 1-minute load average, and gives the CPU seconds (user +
system, every process of the run) after each wall time: on a machine others load,
wall time swings (the no-op play, a thousand short processes, most of all) where CPU
time barely moves, so compare ratios of runs made under the same load.
"""

from __future__ import annotations

import ipaddress
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

NOOP = """
- name: No-op over every office
  hosts: offices
  gather_facts: false
  tasks:
    - name: Nothing
      ansible.builtin.debug:
        msg: noop
        verbosity: 1
"""


def inventory(count: int, topology: str) -> dict:
    hosts = {}
    for index in range(count):
        lan = ipaddress.IPv4Network((0x0A000000 + (index << 8), 24))
        wan = ipaddress.IPv4Network((0x64400000 + (index << 2), 30))
        hosts[f"office{index}-gw"] = {
            "office_name": f"office{index}",
            "office_role": "hub" if index == 0 and topology == "hub-and-spoke" else "branch",
            "office_lan_address": f"{lan.network_address + 1}/24",
            "office_wan_address": f"{wan.network_address + 1}/30",
            "office_masquerade": index == 0,
            "office_broadcast_relay": [{"port": 6799}] if index in (0, 1) else [],
        }
    return {
        "offices": {
            "vars": {
                "office_topology": topology,
                # Public, for the benchmark only; a real site vaults its own.
                "office_tunnel_secret": "bench-only-not-a-secret-0000",
                "office_lan_interface": "eth0",
                "office_wan_interface": "eth1",
                "ansible_host": "127.0.0.1",
                "ansible_port": 9,
            },
            "hosts": hosts,
        }
    }


def env() -> dict:
    out = dict(os.environ, ANSIBLE_NOCOLOR="1")
    out["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / ".cache/collections")
    return out


def run(args: list[str]) -> tuple[float, float, str]:
    """Seconds, peak RSS in MB of the largest process, output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        sys.exit(
            f"ansible-playbook {' '.join(args)} failed:\n{(done.stdout + done.stderr)[-3000:]}"
        )
    # ru_maxrss of children is the largest one so far: only meaningful when it grew.
    return seconds, max(peak, before) / 1024, done.stdout


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="sitelink-bench-") as tmp:
        noop = Path(tmp, "noop.yml")
        noop.write_text(NOOP)
        for count, topology in (
            (1, "hub-and-spoke"),
            (100, "hub-and-spoke"),
            (1000, "hub-and-spoke"),
            (300, "mesh"),
        ):
            inv = Path(tmp, f"{topology}-{count}.yml")
            inv.write_text(yaml.safe_dump(inventory(count, topology)))
            load = os.getloadavg()[0]
            # Each measured in its own interpreter so the peak is its own.
            plan_s, plan_cpu, plan_mb = measure(
                [
                    "-i",
                    str(inv),
                    "plan.yml",
                    "-e",
                    f"sitelink_plan_dir={tmp}/plan-{count}",
                    "-e",
                    "sitelink_plan_console=summary",
                ]
            )
            noop_s, noop_cpu, _unused = measure(["-i", str(inv), str(noop)])
            office_s, office_cpu, office_mb = measure(
                ["-i", str(inv), str(ROOT / "bench/office.yml")]
            )
            print(
                f"load {load:4.1f} {topology:>13} {count:>5} offices:"
                f" plan.yml {plan_s:6.1f} s (cpu {plan_cpu:5.1f} s), peak {plan_mb:5.0f} MB;"
                f" no-op play {noop_s:6.1f} s (cpu {noop_cpu:5.1f} s);"
                f" site.yml's planning play {office_s:6.1f} s (cpu {office_cpu:5.1f} s),"
                f" peak {office_mb:5.0f} MB, {office_s / noop_s:.2f}x the no-op play"
                f" ({office_cpu / noop_cpu:.2f}x its cpu)",
                flush=True,
            )
        for peers in (2, 100):
            inv = Path(tmp, f"tasks-{peers}.yml")
            inv.write_text(yaml.safe_dump(inventory(peers + 1, "hub-and-spoke")))
            listing = ["--list-tasks", "--list-hosts", "--limit", "office0-gw"]
            _unused, _unused, out = run(["-i", str(inv), "site.yml", *listing])
            # Only the plays that run on the gateway (site.yml has one for hubs, one for
            # branches): each play lists its hosts, then its tasks.
            tasks = sum(
                len(re.findall(r"^\s{6}\S.*TAGS:", play, re.M))
                for play in re.split(r"^\s{2}play #", out, flags=re.M)
                if re.search(r"^\s{6}office0-gw$", play, re.M)
            )
            print(
                f"site.yml tasks for a gateway with {peers:>3} peers: {tasks}"
                " (no task loops over peers, tunnels, routes or relay rules)"
            )
    return 0


def measure(args: list[str]) -> tuple[float, float, float]:
    """Seconds, CPU seconds and peak RSS in MB (of the largest process) of one run, in a
    fresh child interpreter so RUSAGE_CHILDREN is this run's alone."""
    code = (
        "import resource,subprocess,sys,time,os;"
        "t=time.monotonic();"
        f"r=subprocess.run({[str(BIN / 'ansible-playbook'), *args]!r},"
        "capture_output=True,text=True);"
        "s=time.monotonic()-t;"
        "sys.stderr.write(r.stdout[-2000:]+r.stderr[-2000:]) if r.returncode else None;"
        "u=resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print(s, u.ru_utime+u.ru_stime, u.ru_maxrss/1024);"
        "sys.exit(r.returncode)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"ansible-playbook {' '.join(args)} failed:\n{done.stderr}")
    seconds, cpu, peak = done.stdout.split()
    return float(seconds), float(cpu), float(peak)


if __name__ == "__main__":
    sys.exit(main())
