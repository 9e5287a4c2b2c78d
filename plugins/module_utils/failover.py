# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hub failover: which tunnel carries each link's routes, and the hook that moves them.

With two hubs a branch routes every other office through one hub's tunnel, its
primary, and names the other hub's tunnel as that tunnel's backup (the planner
does, ``plan/tunnels.py``); a hub names the other hub as the backup of each of its
branch tunnels. An IPIP device has no carrier, so nothing in the kernel notices a
dead hub: strongSwan does (DPD, or the peer deleting its SAs), and runs this file
as its updown hook (``updown =`` in each protected link's child) as a link's SAs
come up or go down.

A link is up while the kernel holds an established ESP SA each way with its peer
(``ip xfrm state``, read for addresses and SPIs only). That is the truth whatever
strongSwan did before (a rekeying, a duplicate IKE_SA, an event this hook missed),
so the hook counts nothing: on each event it reads the kernel and reconciles. A
tunnel's routes ride on the tunnel while its link is up or its backup's is not,
else on the backup (``carrier``), moved with ``ip route replace`` in one
``ip -batch``: one replace of the same key (prefix, metric 0) per route, so no
packet finds no route.

charon runs the hook for a going SA before it deletes it from the kernel: a down
event takes the peer's link as down at once, and reconciles again a second later
(``SETTLE``, a transient systemd timer), when the kernel says. An up
event moves routes off dead tunnels at once, but leaves routes on a live backup for
``HOLD`` seconds (failback, by a second timer): the hub's links to the other
branches come back meanwhile. ``ipip_tunnel`` writes the configuration
(``CONFIG_PATH``) and reconciles (``sync``) when it changed something, and leaves
a route it finds on its tunnel's backup where this hook put it. ``ipsec_links``,
which names the hook in each link, writes this file as the hook (``HOOK_PATH``).

Standard library only, Python 3.9+: it runs on gateways, as a module_utils of
``ipip_tunnel``, ``ipsec_links`` and ``gateway_health``, and as the hook itself.
"""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import re
import subprocess
import sys
import time

CONFIG_PATH = "/etc/sitelink/failover.json"
HOOK_PATH = "/usr/local/libexec/sitelink-failover"
LOCK_PATH = "/run/sitelink-failover.lock"
# Seconds after a down event (charon deletes the SA once the hook returns), and after
# an up event before routes leave a live backup (failback): within one of charon's
# retry rounds (about 11 s with ipsec_links' settings) the hub's other links are back.
SETTLE = 1
HOLD = 20
FAILOVER_VERSION = 1
_SA_HEAD = re.compile(r"^src (\S+) dst (\S+)\s*$")
_SA_ID = re.compile(r"^\s+proto (\S+) (?:spi (0x[0-9a-fA-F]+)\S* )?reqid \S+ mode (\S+)")


def parse_xfrm_states(text):
    """``ip xfrm state list`` -> each SA's addresses, protocol and mode; nothing else.

    Only a block's first two lines are read. The key lines (``aead``, ``enc``,
    ``auth``...) are skipped unread, and the SPI is reduced to whether there is
    one: an SA being negotiated (an ACQUIRE) lists as SPI 0 and carries no traffic.
    """
    states = []
    head = None
    for line in (text or "").splitlines():
        if line[:1] not in (" ", "\t"):
            match = _SA_HEAD.match(line)
            head = match.groups() if match else None
            continue
        if head is not None:
            match = _SA_ID.match(line)
            if match:
                proto, spi, mode = match.groups()
                states.append(
                    {
                        "src": head[0],
                        "dst": head[1],
                        "proto": proto,
                        "mode": mode,
                        "established": bool(spi) and int(spi, 16) != 0,
                    }
                )
        head = None  # the SA's identity is the line right after its head
    return states


def links_up(conf, states):
    """``{tunnel: True/False}``: an established ESP SA each way with its peer."""
    pairs = {(s["src"], s["dst"]) for s in states if s["proto"] == "esp" and s["established"]}
    return {
        name: (e["local"], e["remote"]) in pairs and (e["remote"], e["local"]) in pairs
        for name, e in conf["tunnels"].items()
    }


def config(tunnels):
    """The hook's configuration from ``ipip_tunnel``'s tunnels: every tunnel's ends
    (whose SAs say whether its link is up) and, for those with a backup, their routes.
    None when no tunnel has a backup: then no file."""
    if not any(t.get("backup") for t in tunnels):
        return None
    return {
        "version": FAILOVER_VERSION,
        "tunnels": {
            t["name"]: {
                "local": t["local"],
                "remote": t["remote"],
                "backup": t.get("backup"),
                "routes": list(t["routes"]) if t.get("backup") else [],
                "src": t["address"],
            }
            for t in sorted(tunnels, key=lambda t: t["name"])
        },
    }


def carrier(name, tunnels, up):
    """The device that carries tunnel ``name``'s routes: the tunnel itself while its
    link is up, or while its backup's is not either (both down: nothing to win)."""
    backup = tunnels[name].get("backup")
    if not backup or up.get(name) or not up.get(backup):
        return name
    return backup


def moves(conf, up, routes, hold=False):
    """``ip route replace`` argv lists that put every failover route on its carrier,
    and whether some were held back.

    ``routes``: ``{prefix: device}`` of the main table's metric-0 routes now. With
    ``hold``, a route on a live backup stays there even if its own tunnel is up again:
    failback waits (``HOLD``) for the hub's other links to come back too, or its first
    packets would find the hub with no SA yet to the far branch. Routes on a dead
    tunnel always move.
    """
    tunnels = conf["tunnels"]
    argvs, held = [], False
    for name in sorted(tunnels):
        entry = tunnels[name]
        if not entry.get("backup"):
            continue
        device = carrier(name, tunnels, up)
        for prefix in entry["routes"]:
            now = routes.get(prefix)
            if now == device:
                continue
            if hold and device == name and now == entry["backup"] and up.get(now):
                held = True
                continue
            argvs.append(["route", "replace", prefix, "dev", device, "src", entry["src"]])
    return argvs, held


def main_routes(text):
    """``{prefix: device}`` of metric-0 routes in ``ip -j route show table main``."""
    found = {}
    for route in json.loads(text or "[]"):
        if route.get("metric") or "dev" not in route:
            continue
        dst = route.get("dst", "")
        if dst != "default" and "/" not in dst:
            dst += "/32"
        found[dst] = route["dev"]
    return found


# ----------------------------------------------------------------------------- the hook


def _run(argv, data=None):
    # The hook is a program of its own, run by charon: there is no AnsibleModule, so
    # no run_command (ansible-core 2.21's pylint asks for it).
    return subprocess.run(  # pylint: disable=ansible-bad-function
        argv, input=data, capture_output=True, text=True, check=False
    )


def _ip(argv, data=None):
    return _run(["ip", *argv], data)


def _later(seconds, unit):
    """Run the hook again (a sync) in ``seconds``: a transient timer. systemd refuses a
    second one under a name that waits: one failback for several up events."""
    _run(
        [
            "systemd-run",
            f"--unit={unit}",
            f"--on-active={seconds}",
            "--timer-property=AccuracySec=100ms",
            "--property=CollectMode=inactive-or-failed",
            "--setenv=PLUTO_VERB=sync",
            HOOK_PATH,
        ]
    )


def _event(env, conf_path):
    """One event (``PLUTO_VERB``: ``up-host``, ``down-host``, or ``sync``): reconcile
    from the kernel's SAs, now or a little later. Returns a line for charon's log."""
    verb, peer = env.get("PLUTO_VERB") or "sync", env.get("PLUTO_PEER") or "-"
    try:
        with open(conf_path, encoding="utf-8") as fh:
            conf = json.load(fh)
    except FileNotFoundError:
        return f"sitelink failover: {verb} {peer}: no configuration yet"
    down = verb.startswith("down")
    with open(LOCK_PATH, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # charon runs hooks from several threads
        up = links_up(conf, parse_xfrm_states(_ip(["xfrm", "state", "list"]).stdout))
        if down:
            # Its SAs are still in the kernel: taken as gone now, and checked again once
            # they are (a duplicate IKE_SA going while another stays: back at once).
            up.update({n: False for n, e in conf["tunnels"].items() if e["remote"] == peer})
            _later(SETTLE, f"sitelink-failover-settle-{time.monotonic_ns()}")
        routes = main_routes(_ip(["-j", "route", "show", "table", "main"]).stdout)
        argvs, held = moves(conf, up, routes, hold=verb.startswith("up"))
        if argvs:
            applied = _ip(["-batch", "-"], data="".join(" ".join(a) + "\n" for a in argvs))
            if applied.returncode != 0:
                return f"sitelink failover: {verb} {peer}: ip failed: {applied.stderr.strip()}"
    said = f"sitelink failover: {verb} {peer}: {len(argvs)} routes moved"
    if argvs:
        said += f" to {', '.join(sorted({a[4] for a in argvs}))}"
    if held:
        _later(HOLD, "sitelink-failback")
        said += f"; failback in {HOLD} s"
    return said


def sync(conf_path=CONFIG_PATH):
    """Reconcile now: what ``ipip_tunnel`` runs once it changed something."""
    return _event({"PLUTO_VERB": "sync"}, conf_path)


def hook_text():
    """The hook's file: this module itself, made a program (``ipsec_links`` writes it).
    Through the module's loader: from a file, or from the zip Ansible sends."""
    return "#!/usr/bin/python3\n" + inspect.getsource(sys.modules[__name__])


def main():
    """The updown hook: strongSwan passes no arguments, only the environment. Run by
    hand (``PLUTO_VERB`` unset) or by the failback timer, it reconciles. What it says
    goes to charon's log."""
    try:
        said, status = _event(os.environ, CONFIG_PATH), 0
    except (OSError, ValueError, KeyError) as exc:
        said, status = f"sitelink failover: {exc}", 1
    sys.stdout.write(said + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
