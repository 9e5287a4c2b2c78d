# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hub failover: where a link's routes ride, and the hook that moves them."""

from __future__ import annotations

import json
from pathlib import Path

from ansible_collections.sitelink.gateway.plugins.module_utils import failover, tunnel

# A branch: every other office through the hub "bronx", the other hub as backup.
TUNNELS = [
    {
        "name": "sl-bronx",
        "backup": "sl-manhattan",
        "local": "172.19.4.10",
        "remote": "172.20.5.10",
        "address": "192.168.4.126",
        "routes": ["192.168.3.0/24", "192.168.5.0/24"],
    },
    {
        "name": "sl-manhattan",
        "backup": "sl-bronx",
        "local": "172.19.4.10",
        "remote": "172.16.1.12",
        "address": "192.168.4.126",
        "routes": ["192.168.1.0/24"],
    },
]
CONF = failover.config(TUNNELS)
HOME = {
    "192.168.3.0/24": "sl-bronx",
    "192.168.5.0/24": "sl-bronx",
    "192.168.1.0/24": "sl-manhattan",
}


def test_no_backup_no_hook():
    assert failover.config([{**t, "backup": None} for t in TUNNELS]) is None


def test_routes_move_only_when_the_link_is_down_and_the_backup_up():
    both = {"sl-bronx": 1, "sl-manhattan": 1}
    assert failover.moves(CONF, both, HOME) == ([], False)
    # bronx dead: its routes go over manhattan's tunnel, in one replace each
    assert failover.moves(CONF, {"sl-manhattan": 1}, HOME) == (
        [
            ["route", "replace", p, "dev", "sl-manhattan", "src", "192.168.4.126"]
            for p in ("192.168.3.0/24", "192.168.5.0/24")
        ],
        False,
    )
    # both dead: nothing to win, nothing moves (the boot file's places)
    assert failover.moves(CONF, {}, HOME) == ([], False)
    # bronx back: its routes come home, at once on a sync, held back on its up event
    moved = {**HOME, "192.168.3.0/24": "sl-manhattan", "192.168.5.0/24": "sl-manhattan"}
    argvs, held = failover.moves(CONF, both, moved)
    assert [a[2] for a in argvs] == ["192.168.3.0/24", "192.168.5.0/24"] and not held
    assert failover.moves(CONF, both, moved, hold=True) == ([], True)
    # held back only from a live backup: off a dead tunnel, at once
    argvs, held = failover.moves(CONF, {"sl-bronx": 1}, moved, hold=True)
    assert [a[2] for a in argvs] == ["192.168.3.0/24", "192.168.5.0/24", "192.168.1.0/24"]
    assert {a[4] for a in argvs} == {"sl-bronx"} and not held


def test_a_new_sa_before_the_old_ones_down_keeps_the_link_up():
    up = failover.count({}, "sl-bronx", "up-host")
    up = failover.count(up, "sl-bronx", "up-host")  # the peer rebooted: a new IKE_SA
    up = failover.count(up, "sl-bronx", "down-host")  # the old one goes
    assert up == {"sl-bronx": 1}
    assert failover.count(failover.count(up, "sl-bronx", "down-host"), "sl-bronx", "down-host") == {
        "sl-bronx": 0
    }


class FakeIp:
    def __init__(self, routes):
        self.routes = dict(routes)
        self.batches = []
        self.timers = []

    def __call__(self, argv, data=None):
        class Done:
            returncode, stderr = 0, ""

        done = Done()
        if argv[0] == "systemd-run":
            self.timers.append(argv)
            done.stdout = ""
            return done
        argv = argv[1:]  # ip
        if argv[:2] == ["-batch", "-"]:
            self.batches.append(data)
            for line in data.splitlines():
                words = line.split()
                self.routes[words[2]] = words[4]
            done.stdout = ""
        else:
            done.stdout = json.dumps(
                [{"dst": p, "dev": d, "protocol": "boot"} for p, d in self.routes.items()]
            )
        return done


def test_the_hook_counts_per_charon_and_reconciles(tmp_path, monkeypatch):
    conf = tmp_path / "failover.json"
    conf.write_text(json.dumps(CONF))
    state = str(tmp_path / "state.json")
    ip = FakeIp(HOME)
    monkeypatch.setattr(failover, "_run", ip)
    monkeypatch.setattr(failover, "_charon", lambda hook=True: "100:5")

    def event(verb, peer):
        return failover._event({"PLUTO_VERB": verb, "PLUTO_PEER": peer}, str(conf), state)

    # Events before ipip_tunnel wrote the configuration: counted, acted on at its sync.
    conf.unlink()
    assert "counted (no configuration yet)" in event("up-host", "172.16.1.12")
    conf.write_text(json.dumps(CONF))
    monkeypatch.setattr(failover, "_charon", lambda hook=True: "100:5")
    failover.sync(str(conf), state)
    assert ip.routes["192.168.3.0/24"] == "sl-manhattan"  # bronx not up yet

    said = event("up-host", "172.20.5.10")  # bronx up: its routes come after HOLD s
    assert ip.routes["192.168.3.0/24"] == "sl-manhattan" and "failback in 20 s" in said
    failover.sync(str(conf), state)  # the timer's run
    assert ip.routes == HOME
    said = event("down-host", "172.20.5.10")  # DPD: bronx is dead
    assert ip.routes["192.168.3.0/24"] == ip.routes["192.168.5.0/24"] == "sl-manhattan"
    assert "2 routes moved to sl-manhattan" in said
    said = event("up-host", "172.20.5.10")  # bronx back: failback after HOLD s
    assert ip.routes["192.168.3.0/24"] == "sl-manhattan" and "failback in 20 s" in said
    assert ip.timers[-1] == [
        "systemd-run",
        "--unit=sitelink-failback",
        "--on-active=20",
        "--setenv=PLUTO_VERB=sync",
        failover.HOOK_PATH,
    ]
    failover.sync(str(conf), state)  # the timer's run
    assert ip.routes == HOME
    # A restarted charon: the counts of the one before are void.
    monkeypatch.setattr(failover, "_charon", lambda hook=True: "200:9")
    event("up-host", "172.16.1.12")
    assert json.loads(Path(state).read_text()) == {"charon": "200:9", "up": {"172.16.1.12": 1}}
    assert ip.routes["192.168.3.0/24"] == "sl-manhattan"  # bronx not up again yet


def test_a_backup_must_be_another_listed_tunnel():
    import pytest

    with pytest.raises(tunnel.TunnelError, match="backup: 'sl-queens' is not one of the tunnels"):
        tunnel.validate_tunnels([{**TUNNELS[0], "backup": "sl-queens"}])
    with pytest.raises(tunnel.TunnelError, match="backup: must name another tunnel"):
        tunnel.validate_tunnels([{**TUNNELS[0], "backup": "sl-bronx"}])


def test_the_hook_is_this_module_made_a_program():
    text = failover.hook_text()
    assert text.startswith("#!/usr/bin/python3\n")
    assert "def main(" in text and 'if __name__ == "__main__":' in text
