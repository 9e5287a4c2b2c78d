# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hub failover: where a link's routes ride, and the hook that moves them."""

from __future__ import annotations

import json

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


def xfrm(*peers, local="172.19.4.10"):
    """``ip xfrm state list`` with an established ESP SA each way per peer (keys cut)."""
    lines = []
    for peer in peers:
        for src, dst in ((local, peer), (peer, local)):
            lines += [
                f"src {src} dst {dst}",
                "\tproto esp spi 0x0000abcd reqid 1 mode transport",
                "\treplay-window 0 flag af-unspec",
                "\taead rfc4106(gcm(aes)) 0x00 128",
            ]
    return "\n".join(lines) + "\n"


def test_a_link_is_up_with_an_esp_sa_each_way():
    states = failover.parse_xfrm_states(xfrm("172.20.5.10"))
    assert failover.links_up(CONF, states) == {"sl-bronx": True, "sl-manhattan": False}
    # One way only (an SA being installed, or going), or an ACQUIRE (SPI 0): not up.
    one_way = [s for s in states if s["src"] == "172.19.4.10"]
    assert failover.links_up(CONF, one_way)["sl-bronx"] is False
    larval = failover.parse_xfrm_states(xfrm("172.20.5.10").replace("0x0000abcd", "0x00000000"))
    assert failover.links_up(CONF, larval)["sl-bronx"] is False


class FakeIp:
    """ip and systemd-run as the hook runs them: routes kept, SAs as the test sets them."""

    def __init__(self, routes):
        self.routes = dict(routes)
        self.peers = ()
        self.timers = []

    def __call__(self, argv, data=None):
        class Done:
            returncode, stderr, stdout = 0, "", ""

        done = Done()
        if argv[0] == "systemd-run":
            self.timers.append(argv[1].split("=")[1])
        elif argv[1:3] == ["xfrm", "state"]:
            done.stdout = xfrm(*self.peers)
        elif argv[1:3] == ["-batch", "-"]:
            for line in data.splitlines():
                words = line.split()
                self.routes[words[2]] = words[4]
        else:
            done.stdout = json.dumps(
                [{"dst": p, "dev": d, "protocol": "boot"} for p, d in self.routes.items()]
            )
        return done


def test_the_hook_reconciles_from_the_kernel(tmp_path, monkeypatch):
    conf = tmp_path / "failover.json"
    monkeypatch.setattr(failover, "LOCK_PATH", str(tmp_path / "lock"))
    ip = FakeIp(HOME)
    monkeypatch.setattr(failover, "_run", ip)

    def event(verb, peer="172.20.5.10"):
        return failover._event({"PLUTO_VERB": verb, "PLUTO_PEER": peer}, str(conf))

    # Before ipip_tunnel wrote the configuration: nothing to do (its sync comes after).
    assert "no configuration yet" in event("up-host")
    conf.write_text(json.dumps(CONF))
    ip.peers = ("172.16.1.12",)  # manhattan's link up, bronx's not yet
    failover.sync(str(conf))
    assert ip.routes["192.168.3.0/24"] == "sl-manhattan"
    ip.peers = ("172.16.1.12", "172.20.5.10")
    said = event("up-host")  # bronx up: its routes come back after HOLD s
    assert ip.routes["192.168.3.0/24"] == "sl-manhattan" and "failback in 20 s" in said
    assert ip.timers == ["sitelink-failback"]
    failover.sync(str(conf))  # the timer's run
    assert ip.routes == HOME
    # DPD: bronx is dead. charon runs the hook before it deletes the SAs (still in the
    # kernel here): bronx taken as down at once, and a check a second later.
    said = event("down-host")
    assert ip.routes["192.168.3.0/24"] == ip.routes["192.168.5.0/24"] == "sl-manhattan"
    assert "2 routes moved to sl-manhattan" in said
    assert ip.timers[-1].startswith("sitelink-failover-settle-")
    ip.peers = ("172.16.1.12",)
    assert "0 routes moved" in failover.sync(str(conf))  # the check: still down
    # A duplicate IKE_SA going while another stays up: away at once, back at the check.
    ip.peers = ("172.16.1.12", "172.20.5.10")
    failover.sync(str(conf))
    assert ip.routes == HOME
    event("down-host")
    assert ip.routes["192.168.3.0/24"] == "sl-manhattan"
    failover.sync(str(conf))
    assert ip.routes == HOME


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
