"""The lab from Python, for the Molecule tests and lab/run.py.

A lab booted by labctl.py records its namespaces and VMs in STATE/state.json.
``Lab`` runs lab/traffic.py inside a LAN host's namespace (and parses the one
JSON line it prints), pings from there, and runs commands on a gateway VM over
the lab's SSH key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

LAB_DIR = Path(__file__).resolve().parent
TRAFFIC = LAB_DIR / "traffic.py"
LABCTL = LAB_DIR / "labctl.py"


def last_json(text: str) -> dict[str, Any]:
    return json.loads(text.strip().splitlines()[-1])


class Background:
    """A traffic.py server in a namespace: waits for "ready", then for its result."""

    def __init__(self, argv: list[str], what: str):
        self.what = what
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not json.loads(line or "{}").get("ready"):
            self.stop()
            raise AssertionError(f"{what} did not start")

    def result(self, timeout: float = 180) -> dict[str, Any]:
        out, _ = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise AssertionError(f"{self.what} failed: {out}")
        return last_json(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Lab:
    def __init__(self, state_dir: os.PathLike | str):
        self.state_dir = Path(state_dir)

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    def netns(self, host: str) -> str:
        return self.state["hosts"][host]["netns"]

    def in_lan(self, host: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns(host), *argv]

    def traffic(self, host: str, *args: str, timeout: float = 180) -> dict[str, Any]:
        """traffic.py in a LAN host; its JSON result."""
        done = subprocess.run(
            self.in_lan(host, sys.executable, str(TRAFFIC), *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"{host} {args}: {done.stderr}")
        return last_json(done.stdout)

    def background(self, host: str, *args: str) -> Background:
        return Background(
            self.in_lan(host, sys.executable, str(TRAFFIC), *args), f"{host} {args[0]}"
        )

    def ping(self, host: str, dest: str, count: int = 3) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.in_lan(host, "ping", "-c", str(count), "-W", "2", "-i", "0.2", dest),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def ssh(self, vm: str, command: str, check: bool = True, timeout: float = 120) -> str:
        """A shell command on a gateway VM, as root; its stdout."""
        done = subprocess.run(
            [sys.executable, str(LABCTL), "ssh", str(self.state_dir), vm, "--", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{vm}: {command!r} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def ssh_json(self, vm: str, command: str) -> Any:
        return json.loads(self.ssh(vm, command) or "null")

    def file_digest(self, vm: str, path: str) -> Optional[str]:
        out = self.ssh(vm, f"sha256sum {path} 2>/dev/null || true")
        return out.split()[0] if out.strip() else None


# --------------------------------------------------------------------------- playbooks

ROOT = LAB_DIR.parent
BIN = Path(sys.executable).parent


def playbook(
    name: str, inventory: os.PathLike | str, *extra: str, timeout: float = 1800
) -> subprocess.CompletedProcess:
    """ansible-playbook from the repository root, colour off (the recap is parsed).

    With the collection's own ansible.cfg, as a person runs it: not Molecule's,
    which sends failures to stderr.
    """
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / ".cache/collections")
    env["ANSIBLE_HOST_KEY_CHECKING"] = "False"
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(ROOT / name), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def recap(output: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP, per host: ok, changed, unreachable, failed, skipped."""
    found = {}
    for m in re.finditer(
        r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)",
        output,
        re.M,
    ):
        found[m.group(1)] = dict(
            zip(("ok", "changed", "unreachable", "failed", "skipped"), map(int, m.groups()[1:]))
        )
    return found
