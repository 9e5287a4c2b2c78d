# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hub failover: which tunnel carries each link's routes, and the hook that moves them.

With two hubs a branch routes every other office through one hub's tunnel, its
primary, and names the other hub's tunnel as that tunnel's backup (the planner
does, ``plan/tunnels.py``); a hub names the other hub as the backup of each of its
branch tunnels. An IPIP device has no carrier, so nothing in the kernel notices a
dead hub: strongSwan does (DPD, or the peer deleting its SAs), and runs this file
as its updown hook (``updown =`` in each protected link's child) with
``PLUTO_VERB`` (``up-host`` / ``down-host``) and ``PLUTO_PEER`` (the peer's public
address) in the environment.

A tunnel's routes ride on the tunnel while its link is up or its backup's is not,
else on the backup (``carrier``). The hook counts up and down events per tunnel
(a peer rebooting may bring a new IKE_SA up before the old one is torn down), then
reconciles the routes of every tunnel that has a backup with ``ip route replace``,
in one ``ip -batch``: moving a route is one replace of the same key (prefix, metric
0), so no packet finds no route. Reconciling from the live routes each time makes
every event heal what an earlier one missed.

The counts live in ``STATE_PATH`` (``/run``: gone at boot, when every tunnel comes
up as the boot file left it, on its own device) with the identity of the charon
that made them: a restarted charon starts from zero. ``ipip_tunnel`` writes the
configuration (``CONFIG_PATH``, from its tunnels) and reconciles (``sync``) once it
changed something: events may come before it (they are counted, keyed by peer);
a route it finds on its tunnel's backup is where this hook put it. ``ipsec_links``,
which names the hook in each link, writes this file as the hook (``HOOK_PATH``).

Standard library only, Python 3.9+: it runs on gateways, as a module_utils of
``ipip_tunnel`` and as the hook itself (``main``).
"""

from __future__ import annotations

import fcntl
import inspect
import json
import os
import subprocess
import sys

CONFIG_PATH = "/etc/sitelink/failover.json"
HOOK_PATH = "/usr/local/libexec/sitelink-failover"
STATE_PATH = "/run/sitelink-failover.json"
# Seconds a link is up before its routes come back to it (failback), and the
# transient timer that brings them: the hub's links to the other branches come back
# within one of charon's retry rounds (about 14 s).
HOLD = 20
HOLD_UNIT = "sitelink-failback"
FAILOVER_VERSION = 1
# charon's process names: charon-systemd (Debian's strongswan.service), or charon.
_CHARON = ("charon-systemd", "charon")


def config(tunnels):
    """The hook's configuration from ``ipip_tunnel``'s tunnels: every tunnel's peer
    (to know which tunnel an event is about) and, for those with a backup, their
    routes. None when no tunnel has a backup: then no hook and no file."""
    if not any(t.get("backup") for t in tunnels):
        return None
    return {
        "version": FAILOVER_VERSION,
        "tunnels": {
            t["name"]: {
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
    if not backup or up.get(name, 0) > 0 or up.get(backup, 0) <= 0:
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
            if hold and device == name and now == entry["backup"] and up.get(now, 0) > 0:
                held = True
                continue
            argvs.append(["route", "replace", prefix, "dev", device, "src", entry["src"]])
    return argvs, held


def count(up, peer, verb):
    """``up`` (CHILD_SAs up, by peer address) after one event: ``up-host`` adds one,
    ``down-host`` takes one (never below zero); other verbs (``sync``) change nothing."""
    counts = dict(up)
    if verb.startswith("up"):
        counts[peer] = counts.get(peer, 0) + 1
    elif verb.startswith("down"):
        counts[peer] = max(0, counts.get(peer, 0) - 1)
    return counts


def by_tunnel(conf, up):
    """The counts by tunnel name, from the counts by peer address."""
    return {name: up.get(entry["remote"], 0) for name, entry in conf["tunnels"].items()}


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


def _stat(pid):
    """(name, parent pid, start time) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return stat[stat.index("(") + 1 : stat.rindex(")")], int(fields[1]), fields[19]


def _charon(hook=True):
    """``pid:start time`` of charon, or None: the one running this hook (through a
    shell), or, for a sync, the one running on the host."""
    if hook:
        pid = os.getppid()
        for _unused in range(4):
            found = _stat(pid)
            if found is None:
                return None
            if found[0] in _CHARON:
                return f"{pid}:{found[2]}"
            pid = found[1]
        return None
    for entry in os.listdir("/proc"):
        found = _stat(entry) if entry.isdigit() else None
        if found and found[0] in _CHARON:
            return f"{entry}:{found[2]}"
    return None


def _run(argv, data=None):
    return subprocess.run(argv, input=data, capture_output=True, text=True, check=False)


def _ip(argv, data=None):
    return _run(["ip", *argv], data)


def _event(env, conf_path, state_path):
    """One updown event: count it, then reconcile (with a configuration: before
    ``ipip_tunnel`` wrote one, events are only counted). Returns a line for the log."""
    verb, peer = env.get("PLUTO_VERB", ""), env.get("PLUTO_PEER", "")
    try:
        with open(conf_path, encoding="utf-8") as fh:
            conf = json.load(fh)
    except FileNotFoundError:
        conf = None
    with open(state_path + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # charon runs hooks from several threads
        try:
            with open(state_path, encoding="utf-8") as fh:
                state = json.load(fh)
        except (OSError, ValueError):
            state = {}
        charon = _charon(hook=verb.startswith(("up", "down")))
        up = state.get("up", {}) if state.get("charon") == charon else {}
        if peer:
            up = count(up, peer, verb)
        tmp = state_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"charon": charon, "up": up}, fh, sort_keys=True)
        os.replace(tmp, state_path)
        if conf is None:
            return f"sitelink failover: {verb} {peer}: counted (no configuration yet)"
        done = _ip(["-j", "route", "show", "table", "main"])
        argvs, held = moves(
            conf, by_tunnel(conf, up), main_routes(done.stdout), hold=verb.startswith("up")
        )
        if argvs:
            text = "".join(" ".join(a) + "\n" for a in argvs)
            applied = _ip(["-batch", "-"], data=text)
            if applied.returncode != 0:
                return f"sitelink failover: {verb} {peer}: ip failed: {applied.stderr.strip()}"
    said = f"sitelink failover: {verb} {peer or '-'}: {len(argvs)} routes moved"
    if argvs:
        said += f" to {', '.join(sorted({a[4] for a in argvs}))}"
    if held:
        # A transient timer runs the hook again with no event; a second one while
        # the first waits is refused by systemd (same unit name): one failback.
        _run(
            [
                "systemd-run",
                f"--unit={HOLD_UNIT}",
                f"--on-active={HOLD}",
                "--setenv=PLUTO_VERB=sync",
                HOOK_PATH,
            ]
        )
        said += f"; failback in {HOLD} s"
    return said


def sync(conf_path=CONFIG_PATH, state_path=STATE_PATH):
    """Reconcile with no event: what ``ipip_tunnel`` runs once it wrote a new
    configuration (the events before it were counted, not acted on)."""
    return _event({"PLUTO_VERB": "sync"}, conf_path, state_path)


def hook_text():
    """The hook's file: this module itself, made a program (``ipsec_links`` writes it).
    Through the module's loader: from a file, or from the zip Ansible sends."""
    return "#!/usr/bin/python3\n" + inspect.getsource(sys.modules[__name__])


def main():
    """The updown hook: strongSwan passes no arguments, only the environment. Run by
    hand (``PLUTO_VERB`` unset) or by the failback timer, it reconciles. What it says
    goes to charon's log."""
    try:
        said, status = _event(os.environ, CONFIG_PATH, STATE_PATH), 0
    except (OSError, ValueError, KeyError) as exc:
        said, status = f"sitelink failover: {exc}", 1
    sys.stdout.write(said + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
