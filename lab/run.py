#!/usr/bin/env python3
"""The case-study lab for people: `make demo` and `make bench`.

  run.py demo    boot the lab, run site.yml, show ping / masquerade / relay, tear down
  run.py bench   boot the lab, time the first and the second site.yml run, tear down

Both use the Molecule scenario's inventory (the case study plus lab connection
details), so don't run them while `molecule test` runs. The lab is always torn
down, also after a failure or Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INVENTORY = ROOT / "molecule/default/inventory"
STATE = Path("/var/tmp/sitelink-lab/molecule-default")
TRAFFIC = ROOT / "lab/traffic.py"
BIN = Path(sys.executable).parent


def env() -> dict:
    out = dict(os.environ)
    out["SITELINK_LAB_STATE"] = str(STATE)
    out["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / ".cache/collections")
    out["ANSIBLE_HOST_KEY_CHECKING"] = "False"
    out["PATH"] = f"{BIN}:{out['PATH']}"
    out["ANSIBLE_NOCOLOR"] = "1"  # the recap is parsed
    return out


def playbook(name: str, *extra: str, quiet: bool = False) -> tuple[float, str]:
    """Run a playbook from the repo root; return (seconds, output)."""
    start = time.monotonic()
    done = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(INVENTORY), name, *extra],
        cwd=ROOT,
        env=env(),
        capture_output=quiet,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"{name} failed (exit {done.returncode})\n{done.stdout or ''}{done.stderr or ''}")
    return time.monotonic() - start, done.stdout or ""


def in_lan(host: str, *args: str, background: bool = False):
    state = json.loads((STATE / "state.json").read_text())
    argv = ["ip", "netns", "exec", state["hosts"][host]["netns"], *args]
    if background:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def traffic(host: str, *args: str, background: bool = False):
    return in_lan(host, "python3", str(TRAFFIC), *args, background=background)


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def show() -> None:
    print("\n== 1. The Brooklyn workstation pings the Manhattan app server")
    ping = in_lan("workstation", "ping", "-c", "3", "192.168.1.10")
    print(ping.stdout.strip())

    print("\n== 2. The app server sees the workstation as ... (expect 192.168.1.126)")
    server = traffic("appserver", "tcp-server", "5001", "sink", background=True)
    server.stdout.readline()
    traffic("workstation", "tcp-client", "192.168.1.10", "5001", "source:1048576")
    seen = last_json(server.communicate(timeout=60)[0])
    print(f"   connection from {seen['peer']}, {seen['bytes']} bytes, sha256 {seen['sha256'][:16]}")

    print("\n== 3. The app server broadcasts 3 datagrams to 192.168.1.255:6799")
    listener = traffic("workstation", "udp-listen", "6799", "5", background=True)
    listener.stdout.readline()
    traffic("appserver", "udp-send", "192.168.1.255", "6799", "3", "64")
    for datagram in last_json(listener.communicate(timeout=60)[0])["datagrams"]:
        print(f"   Brooklyn workstation got {datagram['size']} bytes from {datagram['source']}")

    print("\n== 4. Relay counters on the gateways")
    for gateway in ("manhattan-gw", "brooklyn-gw"):
        done = subprocess.run(
            [
                str(BIN / "ansible"),
                gateway,
                "-i",
                str(INVENTORY),
                "-m",
                "ansible.builtin.command",
                "-a",
                "/usr/local/sbin/sitelink-relay --status",
            ],
            cwd=ROOT,
            env=env(),
            capture_output=True,
            text=True,
            check=False,
        )
        print(done.stdout.strip())


def tasks_per_host(output: str) -> dict:
    return {
        m.group(1): int(m.group(2)) + int(m.group(3))
        for m in re.finditer(r"^(\S+)\s+: ok=(\d+)\s+changed=\d+.*?skipped=(\d+)", output, re.M)
    }


def main() -> int:
    action = sys.argv[1] if len(sys.argv) > 1 else "demo"
    if action not in ("demo", "bench"):
        sys.exit(__doc__)
    if os.geteuid() != 0:
        sys.exit("the lab needs root (network namespaces, taps)")
    try:
        boot, _ = playbook("lab/up.yml", quiet=action == "bench")
        first, out1 = playbook("site.yml", quiet=action == "bench")
        if action == "demo":
            show()
            return 0
        second, out2 = playbook("site.yml", quiet=True)
        changed = re.findall(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)", out2, re.M)
        print(f"lab boot (image cached or built, two VMs to SSH): {boot:6.1f} s")
        print(f"site.yml first run:                               {first:6.1f} s")
        print(f"site.yml second run:                              {second:6.1f} s")
        print(f"second run changed: {dict(changed)}")
        print(f"tasks per gateway (ok+skipped), second run: {tasks_per_host(out2)}")
        return 0
    finally:
        subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(INVENTORY), "lab/down.yml"],
            cwd=ROOT,
            env=env(),
            capture_output=True,
            check=False,
        )


if __name__ == "__main__":
    sys.exit(main())
