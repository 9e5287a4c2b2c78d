"""ipsec_links: links are up when the call returns (issue 19, item 7).

charon is faked over a fake clock: each link's peer answers after a delay, refuses
(not configured yet, or another key) or stays silent (not there yet); every swanctl
call costs time, as it does under emulation.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import ipsec
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import (
    Exit,
    FakeModule,
    FakeSystemd,
)

KEY = "ab" * 32
SWANCTL_COST = 0.2  # seconds a swanctl call takes on an emulated gateway

# What swanctl --list-sas --pretty printed in the lab (strongSwan 5.9.8): one link up
# (we were the responder: no "initiator" key), one still waiting for its peer.
LISTED = """\
list-sa event {
  sl-manhattan {
    uniqueid = 2
    version = 2
    state = ESTABLISHED
    local-host = 172.17.2.10
    remote-host = 172.16.1.12
    initiator-spi = 491568f36a7e59b4
    responder-spi = 9c0dad890748bc3c
    established = 211
    child-sas {
      sl-manhattan-3 {
        name = sl-manhattan
        uniqueid = 3
        reqid = 1
        state = INSTALLED
        mode = TRANSPORT
        local-ts = [
          172.17.2.10/32[ipencap]
        ]
        remote-ts = [
          172.16.1.12/32[ipencap]
        ]
      }
    }
  }
}
list-sa event {
  sl-queens {
    uniqueid = 11
    version = 2
    state = CONNECTING
    local-host = 172.16.1.12
    remote-host = 172.17.2.10
    initiator = yes
    initiator-spi = 69371dca877edbe5
    responder-spi = 0000000000000000
    tasks-active = [
      IKE_VENDOR
      IKE_INIT
      CHILD_CREATE
    ]
    child-sas {
    }
  }
}
list-sas reply {
}
"""


def link(name, remote):
    return {"name": name, "link": name + "+hub", "local": "172.16.1.12", "remote": remote}


class Clock:
    def __init__(self):
        self.now = 100.0
        self.sleeps = 0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        assert seconds >= 0
        self.sleeps += 1
        self.now += seconds


class Ike:
    def __init__(self, name, uniqueid, started, initiator=True, spi=None):
        self.name, self.uniqueid, self.started = name, uniqueid, started
        self.initiator = initiator
        self.spi = spi or f"{uniqueid:016x}"
        self.closing_at = None
        self.established = False  # else as its peer behaves


class Listed(list):
    """swanctl's list of SAs, counting how many times it is read through."""

    reads = 0

    def __iter__(self):
        Listed.reads += 1
        return super().__iter__()


class FakeCharon:
    """The IKE_SAs charon holds, as the module's swanctl sees them. ``peers``: link ->
    "silent", "refuses", or the seconds after which the peer has set the link up."""

    swanctl = "/usr/sbin/swanctl"

    def __init__(self, clock, peers, strongswan=(5, 9, 8)):
        self.clock, self.peers = clock, dict(peers)
        self.strongswan = strongswan
        self.versions = 0
        self.ikes = []
        self.calls = []
        self.listed = 0
        self.next_id = 1

    def version(self):
        self.clock.now += SWANCTL_COST
        self.versions += 1
        return self.strongswan

    def start(self, name, initiator=True, spi=None, at=None):
        ike = Ike(name, self.next_id, self.clock.now if at is None else at, initiator, spi)
        self.next_id += 1
        self.ikes.append(ike)
        return ike

    def up(self, name, spi=None, initiator=True):
        """A link that has been up for a while."""
        ike = self.start(name, initiator, spi, at=self.clock.now - 3600)
        ike.established = True
        return ike

    def _view(self, ike):
        age = self.clock.now - ike.started
        peer = self.peers.get(ike.name, 0.0)
        if ike.closing_at is not None and self.clock.now >= ike.closing_at:
            return None
        if peer == "refuses" and age >= 0.05:
            return None  # NO_PROPOSAL_CHOSEN or AUTHENTICATION_FAILED: the IKE_SA is gone
        answered = ike.initiator is False or (peer != "silent" and age >= 0.05)
        established = ike.established or (isinstance(peer, float) and age >= peer)
        sa = {
            "name": ike.name,
            "uniqueid": str(ike.uniqueid),
            "state": "ESTABLISHED" if established else "CONNECTING",
            "initiator-spi": ike.spi,
            "responder-spi": "7" * 16 if answered else "0" * 16,
            "children": [],
        }
        if ike.initiator:
            sa["initiator"] = "yes"
        if established:
            sa["children"] = [{"name": ike.name, "uniqueid": "9", "state": "INSTALLED"}]
        return sa

    def sas(self):
        self.clock.now += SWANCTL_COST
        self.listed += 1
        views = [(ike, self._view(ike)) for ike in self.ikes]
        self.ikes = [ike for ike, view in views if view is not None]
        return Listed(view for _ike, view in views if view is not None)

    def initiate(self, name):
        self.clock.now += SWANCTL_COST
        self.calls.append("initiate " + name)
        # charon keys the link in an IKE_SA of it that is opening or up, if there is one.
        if not any(ike.name == name for ike in self.ikes):
            self.start(name)
        return None

    def terminate_ike_id(self, uniqueid):
        self.calls.append(f"terminate #{uniqueid}")
        for ike in self.ikes:
            if str(ike.uniqueid) == str(uniqueid):
                ike.closing_at = self.clock.now


def bring_up(charon, clock, connections, loaded=(), **kw):
    since = clock()
    for name in loaded:
        charon.start(name)  # start_action: charon initiates what it loads
    return ipsec.bring_up(
        charon, connections, since, loaded=loaded, clock=clock, sleep=clock.sleep, **kw
    )


# --- what charon says ------------------------------------------------------------------


def test_list_sas_is_read_link_by_link():
    sas = ipsec.parse_sas(LISTED)
    assert [(s["name"], s["state"]) for s in sas] == [
        ("sl-manhattan", "ESTABLISHED"),
        ("sl-queens", "CONNECTING"),
    ]
    assert sas[0]["children"][0]["state"] == "INSTALLED" and "initiator" not in sas[0]
    assert sas[1]["tasks-active"] == ["IKE_VENDOR", "IKE_INIT", "CHILD_CREATE"]
    assert ipsec.link_state(sas, "sl-manhattan")["up"]
    queens = ipsec.link_state(sas, "sl-queens")
    assert not queens["up"] and queens["opening"] and not queens["answered"]
    assert ipsec.parse_sas("list-sas reply {\n}\n") == []


def test_the_file_initiates_at_load_and_keeps_the_trap():
    text = ipsec.render([link("sl-a", "172.17.2.10")], {"sl-a+hub": KEY}, "aes", "aes", 30)
    lines = [line.strip() for line in text.splitlines()]
    assert "start_action = trap|start" in lines and "unique = replace" in lines
    assert "dpd_action = trap" in lines and "close_action = trap" in lines
    # No MOBIKE: with it, each tunnel interface a hub added sent every peer an
    # address update (the crowd lab's hub of 200: 2,167 of them in its first run).
    assert "mobike = no" in lines
    # A changed connection (one charon replaces, closing its SAs) is told apart.
    other = ipsec.render([link("sl-a", "172.17.2.11")], {"sl-a+hub": KEY}, "aes", "aes", 30)
    assert ipsec.connection_blocks(text)["sl-a"] != ipsec.connection_blocks(other)["sl-a"]
    rotated = ipsec.render([link("sl-a", "172.17.2.10")], {"sl-a+hub": "cd" * 32}, "aes", "aes", 30)
    assert ipsec.connection_blocks(text) == ipsec.connection_blocks(rotated)


# --- waiting for the links --------------------------------------------------------------


def test_a_loaded_link_is_up_when_the_call_returns():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 1.5})
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")], loaded=["sl-a"])
    assert links["up"] == ["sl-a"] and links["down"] == {}
    # charon initiated it when it loaded it; the module only watched.
    assert links["initiated"] == ["sl-a"] and charon.calls == []
    assert 1.5 <= links["waited"] <= 2.5


def test_a_down_link_of_an_unchanged_file_is_initiated_once():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 1.0, "sl-b": 1.0})
    charon.up("sl-b")
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10"), link("sl-b", "172.18.3.10")])
    assert links["up"] == ["sl-a", "sl-b"]
    assert charon.calls == ["initiate sl-a"] and links["initiated"] == ["sl-a"]


def test_rolling_apply_peers_not_ready_cost_the_answer_timeout_once():
    """The hub comes first: one branch's charon refuses (no connection for us yet), one
    does not answer at all (no strongSwan yet), one is configured and answers."""
    clock = Clock()
    peers = {"sl-refuses": "refuses", "sl-silent": "silent", "sl-ready": 1.0}
    charon = FakeCharon(clock, peers)
    connections = [link(name, f"172.17.2.{i}") for i, name in enumerate(peers, start=1)]
    links = bring_up(charon, clock, connections, loaded=list(peers))
    assert links["up"] == ["sl-ready"]
    assert links["down"] == {
        "sl-refuses": "refused by 172.17.2.1, or failed (strongSwan's log says why)",
        "sl-silent": "no answer from 172.17.2.2 in 5 s",
    }
    # Neither failed the call nor held it to up_timeout (15 s): the answer timeout, once.
    assert 5.0 <= links["waited"] <= 6.0
    # The refusing peer is asked again once (its first refusal may have been quick enough
    # to look like an initiation not started yet), never more.
    assert charon.calls == ["initiate sl-refuses"]


def test_refused_links_do_not_wait_for_the_answer_timeout():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": "refuses"})
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")], loaded=["sl-a"])
    assert list(links["down"]) == ["sl-a"] and links["waited"] < 2.5


def test_a_peer_negotiating_slowly_is_waited_for_until_up_timeout():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 9.0, "sl-b": 40.0})
    connections = [link("sl-a", "172.17.2.10"), link("sl-b", "172.17.2.11")]
    links = bring_up(charon, clock, connections, loaded=["sl-a", "sl-b"])
    # It answered, so it is waited for past the answer timeout, until up_timeout.
    assert links["up"] == ["sl-a"] and links["down"] == {"sl-b": "IKE still negotiating"}
    assert 15.0 <= links["waited"] <= 15.5


def test_no_waiting_with_up_timeout_zero():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 1.0})
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")], up_timeout=0)
    assert links["down"] == {"sl-a": "initiated"} and charon.calls == ["initiate sl-a"]
    assert clock.sleeps == 0 and charon.listed == 1


def test_charon_refusing_to_initiate_is_reported_and_not_retried():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 1.0})
    charon.initiate = lambda name: (charon.calls.append(name), "no config 'sl-a'")[1]
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")])
    assert links["down"] == {"sl-a": "no config 'sl-a'"} and charon.calls == ["sl-a"]


def test_the_old_sas_of_a_changed_link_do_not_count_as_up():
    """A changed link: charon closes its old IKE_SA and initiates a new one; the old one
    may still be listed as up for a moment."""
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 1.0})
    old = charon.up("sl-a")
    old.closing_at = clock.now + 0.8
    replaced = {"sl-a": {str(old.uniqueid)}}
    links = bring_up(
        charon, clock, [link("sl-a", "172.17.2.10")], loaded=["sl-a"], replaced=replaced
    )
    assert links["up"] == ["sl-a"] and links["waited"] >= 1.0


def test_a_changed_link_is_not_taken_for_up_before_charon_initiated_it_again():
    """The old SA, not closed yet, and charon's new initiation not started yet: the call
    does not return on the old SA (the link would go down right after)."""
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 1.0})
    old = charon.up("sl-a")
    old.closing_at = clock.now + 0.5
    links = ipsec.bring_up(
        charon,
        [link("sl-a", "172.17.2.10")],
        clock(),
        loaded=["sl-a"],
        replaced={"sl-a": {str(old.uniqueid)}},
        clock=clock,
        sleep=clock.sleep,
    )
    assert links["up"] == ["sl-a"]
    (now_up,) = charon.ikes
    assert now_up is not old and now_up.started <= clock.now - 1.0


def test_the_sas_of_a_change_charon_takes_for_none_are_kept():
    """The file changed, but not what charon compares (a comment, the order of lines):
    it keeps the link's SA and initiates nothing. Not taken for refused, not initiated."""
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 1.0})
    old = charon.up("sl-a")
    links = bring_up(
        charon, clock, [link("sl-a", "172.17.2.10")], replaced={"sl-a": {str(old.uniqueid)}}
    )
    assert links["up"] == ["sl-a"] and charon.calls == [] and links["waited"] < 2.5


# --- both ends at once ------------------------------------------------------------------


def test_both_ends_at_once_leave_one_ike_sa_and_both_ends_close_the_same_one():
    """Each end initiated before the other's IKE_SA reached it: two IKE_SAs, each with a
    CHILD_SA. Each end sees both, under its own uniqueids but the same SPIs."""
    closed = []
    for order in ((1, 2), (2, 1)):  # the two ends list them in different orders
        clock = Clock()
        charon = FakeCharon(clock, {"sl-a": 0.5})
        spis = {1: "0aaaaaaaaaaaaaaa", 2: "0bbbbbbbbbbbbbbb"}
        ours = {n: charon.up("sl-a", spi=spis[n], initiator=n == order[0]) for n in order}
        links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")])
        assert links["up"] == ["sl-a"]
        (gone,) = [n for n, ike in ours.items() if ike.closing_at is not None]
        closed.append(spis[gone])
        assert links["duplicates_closed"] == [f"sl-a #{ours[gone].uniqueid}"]
    assert closed == ["0bbbbbbbbbbbbbbb", "0bbbbbbbbbbbbbbb"]  # the higher SPI, at both ends


def test_a_second_ike_sa_being_negotiated_is_awaited_and_closed():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 1.0})
    charon.up("sl-a", spi="0000000000000001")
    second = charon.start("sl-a", initiator=False, spi="00000000000000ff")  # the peer's
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")])
    assert links["duplicates_closed"] == [f"sl-a #{second.uniqueid}"]
    # Closed once it is up, and the link reported up by the next poll, which sees it gone.
    assert links["up"] == ["sl-a"] and charon.calls == [f"terminate #{second.uniqueid}"]
    assert 1.0 <= links["waited"] < 2.5


def both_up_and_the_peer_deletes_ours_too(charon, clock):
    """Both ends initiated at once; the peer's ``unique = replace`` kept the newer IKE_SA
    and the lowest-SPI rule the older one: closing the duplicate leaves the link none."""
    ours = charon.up("sl-a", spi="0aaaaaaaaaaaaaaa")
    theirs = charon.up("sl-a", spi="0bbbbbbbbbbbbbbb", initiator=False)
    terminate = charon.terminate_ike_id

    def terminate_both(uniqueid):
        terminate(uniqueid)
        ours.closing_at = clock.now

    charon.terminate_ike_id = terminate_both
    return ours, theirs


def test_a_link_left_without_sas_by_closing_its_duplicate_is_initiated_again():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 0.5})
    ours, theirs = both_up_and_the_peer_deletes_ours_too(charon, clock)
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")])
    assert links["up"] == ["sl-a"] and links["down"] == {}
    assert links["duplicates_closed"] == [f"sl-a #{theirs.uniqueid}"]
    assert charon.calls == [f"terminate #{theirs.uniqueid}", "initiate sl-a"]
    assert links["initiated"] == ["sl-a"]
    (now_up,) = charon.ikes
    assert now_up not in (ours, theirs) and clock.now - now_up.started >= 0.5


def test_a_link_that_closing_its_duplicate_left_down_is_reported_down_with_why():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 0.5})
    _ours, theirs = both_up_and_the_peer_deletes_ours_too(charon, clock)
    terminate = charon.terminate_ike_id

    def terminate_and_refuse(uniqueid):
        terminate(uniqueid)
        charon.peers["sl-a"] = "refuses"  # e.g. the peer's run just unloaded the link

    charon.terminate_ike_id = terminate_and_refuse
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")])
    assert links["up"] == [] and links["down"] == {
        "sl-a": "down after its duplicate IKE_SA was closed: refused by 172.17.2.10, or "
        "failed (strongSwan's log says why)"
    }
    # Initiated again, at most MAX_INITIATIONS times, and within the deadline.
    assert charon.calls == [f"terminate #{theirs.uniqueid}"] + ["initiate sl-a"] * 2
    assert links["waited"] < 15.0


def test_a_link_that_loses_both_ike_sas_each_time_is_initiated_at_most_twice():
    """Both ends initiate again at the same moment each time, and closing the duplicate
    takes both IKE_SAs each time: given up within MAX_INITIATIONS, with why."""
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 0.5})

    def both_ends(name):
        charon.calls.append("initiate " + name)
        charon.start(name, spi=f"0a{charon.next_id:014x}")
        charon.start(name, initiator=False, spi=f"0b{charon.next_id:014x}")

    def terminate_all(uniqueid):
        charon.calls.append("terminate")
        for ike in charon.ikes:
            ike.closing_at = clock.now

    charon.initiate, charon.terminate_ike_id = both_ends, terminate_all
    both_ends("sl-a")
    charon.calls.clear()
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")])
    assert links["down"] == {
        "sl-a": "down after its duplicate IKE_SA was closed: initiated 2 times already"
    }
    assert charon.calls == ["terminate", "initiate sl-a"] * 2 + ["terminate"]
    assert len(links["duplicates_closed"]) == 3 and links["waited"] < 15.0


def test_a_duplicate_still_listed_after_its_close_is_waited_for_not_closed_twice():
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 0.5})
    charon.up("sl-a", spi="0aaaaaaaaaaaaaaa")
    theirs = charon.up("sl-a", spi="0bbbbbbbbbbbbbbb", initiator=False)
    charon.terminate_ike_id = lambda uniqueid: (
        charon.calls.append(f"terminate #{uniqueid}"),
        setattr(theirs, "closing_at", clock.now + 1.2),
    )
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")])
    assert links["up"] == ["sl-a"] and charon.calls == [f"terminate #{theirs.uniqueid}"]
    assert links["waited"] >= 1.2
    # Not gone by the deadline: not reported up.
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": 0.5})
    charon.up("sl-a", spi="0aaaaaaaaaaaaaaa")
    charon.up("sl-a", spi="0bbbbbbbbbbbbbbb", initiator=False)
    charon.terminate_ike_id = charon.calls.append
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")], up_timeout=3)
    assert links["down"] == {"sl-a": "closing its duplicate IKE_SA"} and len(charon.calls) == 1


def test_an_unanswered_ike_sa_beside_an_up_link_is_not_awaited():
    """Our own IKE_SA_INIT from when the peer was not ready is still being retransmitted
    (for minutes): the link is up through the peer's IKE_SA, nothing to wait for."""
    clock = Clock()
    charon = FakeCharon(clock, {"sl-a": "silent"})
    charon.up("sl-a", initiator=False)
    charon.start("sl-a", at=clock.now - 60)
    links = bring_up(charon, clock, [link("sl-a", "172.17.2.10")])
    assert links["up"] == ["sl-a"] and clock.sleeps == 0 and charon.calls == []
    assert ipsec.link_state(charon.sas(), "sl-a")["opening"]  # it is there


# --- scale: a hub ------------------------------------------------------------------------


def test_a_hub_with_hundreds_of_links_waits_once_for_all():
    """500 links loaded at once on a hub's first run: 300 branches answer within 3 s,
    200 are not configured yet. One deadline for all, a few dozen polls, no per-link
    wait, and nothing initiated one by one (charon initiated them all at load)."""
    clock = Clock()
    peers = {f"sl-{i:03d}": (0.5 + i % 25 / 10 if i < 300 else "silent") for i in range(500)}
    charon = FakeCharon(clock, peers)
    connections = [link(name, "172.17.2.10") for name in peers]
    links = bring_up(charon, clock, connections, loaded=list(peers))
    assert len(links["up"]) == 300 and len(links["down"]) == 200
    assert charon.calls == [] and charon.listed <= 12
    assert links["waited"] <= 6.0


def test_each_poll_reads_the_list_of_sas_once_not_once_per_link():
    clock = Clock()
    peers = {f"sl-{i:03d}": 0.5 + i % 5 / 10 for i in range(300)}
    charon = FakeCharon(clock, peers)
    for name in peers:
        charon.up(name)
        charon.start(name, initiator=False)  # a second IKE_SA of each, being negotiated
    Listed.reads = 0
    links = bring_up(charon, clock, [link(name, "172.17.2.10") for name in peers])
    assert len(links["up"]) == 300 and len(links["duplicates_closed"]) == 300
    assert Listed.reads <= 2 * charon.listed


def test_hundreds_of_idle_links_are_initiated_in_one_pass():
    clock = Clock()
    peers = {f"sl-{i:03d}": 1.0 for i in range(200)}
    charon = FakeCharon(clock, peers)
    links = bring_up(charon, clock, [link(name, "172.17.2.10") for name in peers])
    assert len(links["up"]) == 200 and len(charon.calls) == 200
    # Initiating returns at once (charon goes on alone): the wait is IKE's, once, after
    # the swanctl calls; not 200 waits.
    assert links["waited"] <= 200 * SWANCTL_COST + 2.0


# --- the module: not a change, check mode, what it returns --------------------------------


class ModuleCharon(FakeCharon):
    """FakeCharon behind the module: loading the file runs the start actions of the new
    and changed connections, and closes the SAs of the changed ones."""

    def __init__(self, clock, peers, path, loaded=(), strongswan=(5, 9, 8), load_takes=0.0):
        super().__init__(clock, peers, strongswan)
        self.path = path
        self.blocks = {name: None for name in loaded}
        self.load_takes = load_takes
        self.loaded_at = None

    def loaded(self):
        return set(self.blocks)

    def load_all(self):
        self.calls.append("load-all")
        text = Path(self.path).read_text() if os.path.exists(self.path) else ""
        if "trap|start" in text and self.strongswan < (5, 9, 6):
            # What swanctl --load-all says, and the module fails with.
            raise ipsec.IpsecError("loading connection 'sl-a' failed: invalid value")
        self.clock.now += self.load_takes
        blocks = ipsec.connection_blocks(text)
        for name, block in blocks.items():
            if self.blocks.get(name, "new") != block:
                for ike in self.ikes:
                    if ike.name == name:
                        ike.closing_at = self.clock.now + 0.3
                if "trap|start" in block:
                    self.start(name)
        self.blocks = blocks
        self.loaded_at = self.clock.now

    def terminate(self, name):
        self.calls.append("terminate " + name)


def run(tmp_path, charon, clock, check=False, **extra):
    params = {
        "connections": [link("sl-a", "172.17.2.10")],
        "keys": {"sl-a+hub": KEY},
        "path": str(tmp_path / "sitelink-gateway.conf"),
        "ike_proposals": "aes256gcm16-prfsha256-x25519",
        "esp_proposals": "aes256gcm16",
        "dpd_delay": 30,
        "rollback_timeout": 0,
        "state": "present",
        "up_timeout": 15,
        "answer_timeout": 5,
        **extra,
    }
    module = FakeModule(params, check_mode=check)
    systemd = FakeSystemd(enabled={ipsec.SERVICE}, active={ipsec.SERVICE})
    with pytest.raises(Exit) as info:
        ipsec.run_module(module, swanctl=charon, systemd=systemd, clock=clock, sleep=clock.sleep)
    assert not info.value.failed, info.value.result
    return info.value.result


def test_initiating_a_link_is_not_a_change(tmp_path):
    clock = Clock()
    path = str(tmp_path / "sitelink-gateway.conf")
    first = run(tmp_path, ModuleCharon(clock, {"sl-a": 1.0}, path), clock)
    assert first["changed"] and first["links"]["up"] == ["sl-a"]
    # The same file again, with the link down (its peer rebooted, say): initiated and up,
    # and nothing changed.
    charon = ModuleCharon(clock, {"sl-a": 1.0}, path, loaded=["sl-a"])
    charon.blocks = ipsec.connection_blocks(Path(path).read_text())
    again = run(tmp_path, charon, clock)
    assert not again["changed"] and again["steps"] == []
    assert again["links"]["up"] == ["sl-a"] and again["links"]["initiated"] == ["sl-a"]
    assert charon.calls == ["initiate sl-a"]
    # Up: nothing at all.
    charon.calls.clear()
    third = run(tmp_path, charon, clock)
    assert not third["changed"] and charon.calls == [] and third["links"]["initiated"] == []


def test_a_changed_link_is_keyed_again_before_the_call_returns(tmp_path):
    clock = Clock()
    path = str(tmp_path / "sitelink-gateway.conf")
    charon = ModuleCharon(clock, {"sl-a": 1.0}, path)
    run(tmp_path, charon, clock)
    (before,) = charon.ikes
    changed = run(tmp_path, charon, clock, dpd_delay=10)
    assert changed["changed"] and changed["links"]["up"] == ["sl-a"]
    (after,) = charon.ikes
    assert after is not before and clock.now - after.started >= 1.0


def test_strongswan_before_5_9_6_links_are_initiated_by_the_module(tmp_path):
    """Debian 11 (5.9.1): no ``trap|start``, so charon initiates nothing at load (nor at
    boot); the module initiates the links, and they are up when it returns."""
    clock = Clock()
    path = str(tmp_path / "sitelink-gateway.conf")
    charon = ModuleCharon(clock, {"sl-a": 1.0}, path, strongswan=(5, 9, 1))
    done = run(tmp_path, charon, clock)
    assert done["changed"] and done["links"]["up"] == ["sl-a"]
    assert charon.calls == ["load-all", "initiate sl-a"] and charon.versions == 1
    charon.calls.clear()
    again = run(tmp_path, charon, clock)
    assert not again["changed"] and charon.calls == [] and charon.versions == 2


def test_a_slow_load_does_not_eat_the_answer_timeout(tmp_path):
    clock = Clock()
    path = str(tmp_path / "sitelink-gateway.conf")
    charon = ModuleCharon(clock, {"sl-a": "silent"}, path, load_takes=4.0)
    done = run(tmp_path, charon, clock)
    assert done["links"]["down"] == {"sl-a": "no answer from 172.17.2.10 in 5 s"}
    assert clock.now - charon.loaded_at >= 5.0


def test_check_mode_initiates_nothing_and_tells_which_links_are_down(tmp_path):
    clock = Clock()
    path = str(tmp_path / "sitelink-gateway.conf")
    charon = ModuleCharon(clock, {"sl-a": 1.0}, path)
    done = run(tmp_path, charon, clock, check=True)
    assert done["changed"] and charon.calls == [] and charon.ikes == []
    assert done["links"]["down"] == {"sl-a": "down (check mode: not initiated)"}
    assert clock.sleeps == 0


def test_a_rotation_changes_keys_only_and_touches_no_sa(tmp_path):
    """Each step of a rotation rewrites the keys, never a connection: charon loads the
    file and the SAs up stay up (their keys come from Diffie-Hellman), so no packet is
    lost; they authenticate with the new key the next time they authenticate."""
    old, new = "ab" * 32, "cd" * 32
    clock = Clock()
    path = str(tmp_path / "sitelink-gateway.conf")
    charon = ModuleCharon(clock, {"sl-a": 1.0}, path)
    run(tmp_path, charon, clock, keys={"sl-a+hub": old})
    (before,) = charon.ikes
    for keys in ([old, new], [new, old], new):
        charon.calls.clear()
        step = run(tmp_path, charon, clock, keys={"sl-a+hub": keys})
        assert step["changed"] and step["steps"] == [f"write {path}", "swanctl --load-all"]
        assert charon.calls == ["load-all"] and charon.ikes == [before]
        assert step["links"]["up"] == ["sl-a"] and before.closing_at is None


class RunCommand:
    def __init__(self, answers):
        self.answers = answers
        self.argv = []

    def __call__(self, argv, check_rc=False):
        self.argv.append(argv)
        return self.answers.get(argv[1], (0, "", ""))


def test_swanctl_initiates_without_waiting_and_reads_the_pretty_list():
    module = FakeModule({})
    module.get_bin_path = lambda name: "/usr/sbin/swanctl"
    module.run_command = RunCommand(
        {
            "--list-sas": (0, LISTED, "plugin 'ldap': failed to load - no plugin file"),
            "--initiate": (1, "", "plugin 'x': failed to load\ninitiate failed: no config"),
        }
    )
    swanctl = ipsec.Swanctl(module)
    assert [s["name"] for s in swanctl.sas()] == ["sl-manhattan", "sl-queens"]
    assert swanctl.initiate("sl-a") == "charon would not initiate it: initiate failed: no config"
    swanctl.terminate_ike_id("7")
    assert module.run_command.argv[1:] == [
        ["/usr/sbin/swanctl", "--initiate", "--child", "sl-a", "--ike", "sl-a", "--timeout", "-1"],
        ["/usr/sbin/swanctl", "--terminate", "--ike-id", "7", "--timeout", "-1"],
    ]
