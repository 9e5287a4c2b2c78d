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
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Optional, Union

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
        out, _unused = self.proc.communicate(timeout=timeout)
        if self.proc.returncode != 0:
            raise AssertionError(f"{self.what} failed: {out}")
        return last_json(out)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def finish(self, settle: float = 0.3, timeout: float = 30) -> dict[str, Any]:
        """Stop a capture early: after `settle` seconds (frames in flight), SIGTERM;
        the result it then prints. For traffic.py capture (others die on SIGTERM)."""
        time.sleep(settle)
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.result(timeout=timeout)


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

    # ----------------------------------------------------------------- the router

    def lab_ns(self) -> str:
        """The lab (router, "ISP") namespace: a bridge per segment, forwarding between."""
        return self.state["lab_ns"]

    def segment_bridge(self, segment: str) -> str:
        """The bridge of a segment, in the lab namespace."""
        return self.state["segments"][segment]["bridge"]

    def namespace(self, host: str) -> str:
        """A LAN host's namespace, or the lab namespace for "lab" (as labctl.py ns)."""
        return self.lab_ns() if host == "lab" else self.netns(host)

    def in_router(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.lab_ns(), *argv]

    def router_run(
        self, *argv: str, input: Optional[str] = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess:
        """A command in the lab namespace."""
        return _run(self.in_router(*argv), input=input, check=check, timeout=timeout)

    def router_traffic(self, *args: str, timeout: float = 180) -> dict[str, Any]:
        """traffic.py in the lab namespace; its JSON result."""
        done = _run(self.in_router(sys.executable, str(TRAFFIC), *args), timeout=timeout)
        return last_json(done.stdout)

    def router_background(self, *args: str) -> Background:
        """A traffic.py server (e.g. capture) in the lab namespace, once "ready"."""
        return Background(self.in_router(sys.executable, str(TRAFFIC), *args), f"lab {args[0]}")

    def capture(
        self,
        segment: str,
        seconds: float,
        hosts: Iterable[str] = (),
        markers: Iterable[Union[bytes, str]] = (),
    ) -> Background:
        """traffic.py capture on a segment's bridge; .result() is its summary.

        markers: bytes are searched as they are, a str is taken as hex.
        hosts: one address counts packets from or to it; several, packets between them.
        """
        args = ["capture", self.segment_bridge(segment), str(seconds)]
        for host in hosts:
            args += ["--host", host]
        for marker in markers:
            args += ["--marker", marker.hex() if isinstance(marker, bytes) else marker]
        return self.router_background(*args)

    def router_ports(self, segment: str) -> list[str]:
        """The devices attached to a segment's bridge (host veths, VM taps)."""
        out = self.router_run("ip", "-j", "link", "show", "master", self.segment_bridge(segment))
        return [link["ifname"] for link in json.loads(out.stdout or "[]")]

    def router_mtu(self, dev: str) -> int:
        out = self.router_run("ip", "-j", "link", "show", "dev", dev)
        return int(json.loads(out.stdout)[0]["mtu"])

    def set_router_mtu(self, segment: str, mtu: int, ports: bool = False) -> dict[str, int]:
        """Lower (or raise) the MTU of the router's path into a segment.

        Sets the MTU of the segment's bridge, which the router forwards out of:
        larger packets it routes INTO the segment are fragmented or, with DF,
        dropped with an ICMP "fragmentation needed" (see router_drop_frag_needed).
        Packets routed out of the segment are not limited (ingress has no MTU
        check): for a small MTU both ways between two WANs, set both segments.

        Linux lets a bridge's MTU differ from its ports' (and, once set, the bridge
        no longer follows them), so the ports are left alone unless ports=True.
        With ports=True they get the MTU too; then a veth port silently drops any
        larger frame its LAN host sends (checked; a tap was not) and frames bridged
        within the segment are limited: a black hole, not a path MTU.

        Returns the previous MTUs, {device: mtu}, for restore_router_mtu().
        """
        devices = (self.router_ports(segment) if ports else []) + [self.segment_bridge(segment)]
        previous = {dev: self.router_mtu(dev) for dev in devices}
        for dev in devices:  # ports first, bridge last: the bridge is what routing sees
            self.router_run("ip", "link", "set", "dev", dev, "mtu", str(mtu))
        return previous

    def restore_router_mtu(self, previous: dict[str, int]) -> None:
        """Undo set_router_mtu(): each device back to its recorded MTU."""
        for dev, mtu in previous.items():
            self.router_run("ip", "link", "set", "dev", dev, "mtu", str(mtu))

    def router_drop_frag_needed(self, on: bool = True) -> None:
        """Drop ICMP "fragmentation needed" the router generates or forwards (or stop).

        An nft table (inet ROUTER_ICMP_TABLE) in the lab namespace, hooks output and
        forward: the router becomes a path-MTU black hole for routed traffic. Frames
        bridged within one segment pass no hook and are not affected.
        """
        if on:
            self.ns_nft("lab", frag_needed_ruleset(ROUTER_ICMP_TABLE, ("output", "forward")))
        else:
            self.ns_nft_delete("lab", ROUTER_ICMP_TABLE)

    def router_frag_needed_drops(self) -> int:
        """How many "fragmentation needed" the router's table dropped (0 without it)."""
        return self.nft_dropped("lab", ROUTER_ICMP_TABLE)

    # ----------------------------------------------------------------- nftables

    def ns_nft(self, host: str, ruleset: str) -> None:
        """Load an nftables ruleset (nft -f syntax) in a LAN host's namespace, or "lab".

        The namespace has its own nftables: nothing outside it is affected.
        """
        _run(["ip", "netns", "exec", self.namespace(host), "nft", "-f", "-"], input=ruleset)

    def ns_nft_delete(self, host: str, table: str, family: str = "inet") -> None:
        """Remove a table loaded with ns_nft(); no error if it is not there."""
        self.ns_nft(host, f"add table {family} {table}\ndelete table {family} {table}\n")

    def nft_dropped(self, host: str, table: str, family: str = "inet") -> int:
        """Packets counted by the counters of a table's rules (0 if there is no table)."""
        done = _run(
            ["ip", "netns", "exec", self.namespace(host), "nft", "-j", "list", "table"]
            + [family, table],
            check=False,
        )
        if done.returncode != 0:
            return 0
        total = 0
        for item in json.loads(done.stdout).get("nftables", []):
            for expr in item.get("rule", {}).get("expr", []):
                if "counter" in expr:
                    total += int(expr["counter"]["packets"])
        return total

    def host_drop_frag_needed(self, host: str, on: bool = True) -> None:
        """A LAN host that drops incoming ICMP "fragmentation needed" (a filtering network)."""
        if on:
            self.ns_nft(host, frag_needed_ruleset(HOST_ICMP_TABLE, ("input",)))
        else:
            self.ns_nft_delete(host, HOST_ICMP_TABLE)

    def host_frag_needed_drops(self, host: str) -> int:
        return self.nft_dropped(host, HOST_ICMP_TABLE)


ROUTER_ICMP_TABLE = "lab_icmp"
HOST_ICMP_TABLE = "lab_host_icmp"


def frag_needed_ruleset(table: str, hooks: Iterable[str]) -> str:
    """nft -f text: (re)create inet TABLE, dropping and counting ICMP type 3 code 4.

    Atomic and idempotent: "add" then "delete" then the table, in one transaction.
    """
    chains = "".join(
        f"  chain {hook} {{\n"
        f"    type filter hook {hook} priority 0; policy accept;\n"
        f"    icmp type destination-unreachable icmp code frag-needed counter drop\n"
        f"  }}\n"
        for hook in hooks
    )
    return f"add table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n{chains}}}\n"


def _run(
    argv: list[str], input: Optional[str] = None, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
    return done


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
