"""The crowd is honest (lab/crowd/crowd.py, the simulated branches of `make scale`).

Its receiver's counting (``Tally``) is fed envelopes made by the relay's own wire code
(relay/sitelink_relay/wire.py: ``Sealer`` and ``LinkKey``), keyed as the collection
keys each link (plan/secrets.link_key): a datagram signed with another link's key is
a failure, not a delivery; a branch that received nothing is named; a second copy is
a duplicate, not a second delivery. No VM, no root.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# No lab/crowd/__pycache__ (the collection tarball would carry it).
sys.dont_write_bytecode = True
sys.path.insert(0, str(ROOT / "relay"))
sys.path.insert(0, str(ROOT / "lab/crowd"))
sys.path.insert(0, str(ROOT / "tests/unit"))
# Makes ansible_collections.sitelink.gateway importable.
import conftest  # noqa: E402,F401  # pylint: disable=unused-import
import crowd  # noqa: E402
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (  # noqa: E402
    link_key,
)
from sitelink_relay import wire  # noqa: E402

SECRET = "lab-only-test-crowd"  # noqa: S105  (public, for this test only)
HUB, HUB_LAN = "hq", "192.168.1.126"
BRANCHES = {"b001": "10.64.0.1", "b002": "10.64.1.1", "b003": "10.64.2.1"}


def relay_key(branch: str) -> bytes:
    return bytes.fromhex(link_key(SECRET, HUB, branch, "relay"))


def new_tally() -> crowd.Tally:
    return crowd.Tally(
        {lan: relay_key(name) for name, lan in BRANCHES.items()},
        {lan: name for name, lan in BRANCHES.items()},
        wire.office_id(HUB),
    )


class Hub:
    """Envelopes as the hub's relay makes them: one sealer, each link's own key."""

    def __init__(self, origin: str = HUB):
        self.sealer = wire.Sealer(wire.office_id(origin), socket.inet_aton(HUB_LAN), 1_700_000_000)

    def envelope(self, key: bytes, payload: bytes) -> bytes:
        header = self.sealer.header(wire.KIND_BROADCAST)
        return header + wire.LinkKey(key).tag(header, payload) + payload


def test_every_branch_counted_once_with_its_own_key():
    tally, hub = new_tally(), Hub()
    for k in range(3):
        payload = crowd.test_payload("t", k)
        for name, lan in BRANCHES.items():
            assert tally.feed(lan, hub.envelope(relay_key(name), payload)) == "ok"
    report = tally.report("t", expected=3)
    assert report["silent"] == []
    assert report["failures"] == 0
    for branch in report["branches"].values():
        assert branch == {"received": 3, "duplicates": 0, "missing": 0, "failures": {}}


def test_wrong_links_key_is_a_failure_and_the_branch_is_reported_silent():
    tally, hub = new_tally(), Hub()
    payload = crowd.test_payload("t", 0)
    # b002 is sent b001's key: the relay's tag is right for another link only.
    assert tally.feed(BRANCHES["b001"], hub.envelope(relay_key("b001"), payload)) == "ok"
    assert tally.feed(BRANCHES["b002"], hub.envelope(relay_key("b001"), payload)) == "auth"
    # b003 receives nothing at all.
    report = tally.report("t", expected=1)
    assert report["auth_failures"] == 1
    assert report["branches"]["b002"] == {
        "received": 0,
        "duplicates": 0,
        "missing": 1,
        "failures": {"auth": 1},
    }
    assert report["silent"] == ["b002", "b003"]
    assert report["branches"]["b001"]["received"] == 1


def test_a_second_copy_is_a_duplicate_and_a_tampered_one_a_failure():
    tally, hub = new_tally(), Hub()
    lan, key = BRANCHES["b001"], relay_key("b001")
    datagram = hub.envelope(key, crowd.test_payload("t", 7))
    assert tally.feed(lan, datagram) == "ok"
    assert tally.feed(lan, datagram) == "duplicate"
    tampered = datagram[:-1] + bytes([datagram[-1] ^ 1])
    assert tally.feed(lan, tampered) == "auth"
    assert tally.feed(lan, datagram[: crowd.OVERHEAD - 1]) == "malformed"
    report = tally.report("t", expected=8)
    assert report["branches"]["b001"] == {
        "received": 1,
        "duplicates": 1,
        "missing": 7,
        "failures": {"auth": 1, "malformed": 1},
    }


def test_another_origin_and_another_destination_are_not_deliveries():
    tally = new_tally()
    other = Hub(origin="elsewhere").envelope(relay_key("b001"), crowd.test_payload("t", 0))
    assert tally.feed(BRANCHES["b001"], other) == "origin"
    assert tally.feed("10.99.0.1", Hub().envelope(relay_key("b001"), b"x")) == "unknown"
    report = tally.report("t", expected=1)
    assert report["silent"] == sorted(BRANCHES)
    assert report["unknown"] == 1


def test_the_controllers_copy_reports_the_same():
    """scale.py reads the VM's tally file back (dump/load) and reports from it."""
    tally, hub = new_tally(), Hub()
    tally.feed(BRANCHES["b001"], hub.envelope(relay_key("b001"), crowd.test_payload("t", 0)))
    tally.feed(BRANCHES["b002"], hub.envelope(relay_key("b003"), crowd.test_payload("t", 0)))
    branches = [{"name": n, "lan": a} for n, a in BRANCHES.items()]
    copy = crowd.Tally.load(tally.dump(), branches)
    assert copy.report("t", expected=1) == tally.report("t", expected=1)
