"""The authenticated wire: envelope, keys, replay windows, epochs."""

from __future__ import annotations

import contextlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sitelink_relay import wire

KEY = bytes(range(32))
KEY2 = bytes(range(32, 64))
OFFICE = wire.office_id("manhattan")
SENDER = bytes([192, 168, 1, 126])


def test_tag_is_hmac_sha256_truncated():
    header = wire.HEADER.pack(wire.MAGIC, 1, 0, OFFICE, SENDER, 7, 9, wire.NO_GROUP)
    payload = b"x" * 200
    assert (
        wire.LinkKey(KEY).tag(header, payload) == hmac.digest(KEY, header + payload, "sha256")[:16]
    )


def test_fanout_tags_each_envelope_with_its_own_links_key():
    """A hub's fan-out: one header and payload, a tag per peer, each that link's HMAC."""
    keys = [bytes([i]) * 32 for i in range(1, 6)]
    header = wire.HEADER.pack(wire.MAGIC, 1, 0, OFFICE, SENDER, 7, 9, wire.NO_GROUP)
    payload = memoryview(bytearray(b"p" * 200))  # as the receiver hands it over
    fanout = wire.FanoutKeys(wire.LinkKey(k) for k in keys)
    tags = fanout.tags(header, payload)
    assert len(fanout) == len(keys)
    assert tags == [hmac.digest(k, header + b"p" * 200, "sha256")[:16] for k in keys]
    assert tags == [wire.LinkKey(k).tag(header, payload) for k in keys]
    assert {type(t) for t in tags} == {bytes}  # the sender points at them
    assert wire.FanoutKeys([]).tags(header, payload) == []
    # a run of messages (a burst): per key, the tag of each message
    messages = [header + b"p" * 200, header[:-1] + b"\1" + b"q" * 10]
    assert fanout.tags_by_key(messages) == [
        [hmac.digest(k, m, "sha256")[:16] for m in messages] for k in keys
    ]


def test_key_repr_and_fingerprint_never_show_the_key():
    key = wire.LinkKey(KEY)
    assert KEY.hex() not in repr(key) and KEY.hex()[:8] != key.fingerprint
    assert len(key.fingerprint) == 8


def test_sealer_counts_and_rolls_the_epoch():
    bumps = []

    def bump():
        bumps.append(1)
        return 100

    sealer = wire.Sealer(OFFICE, SENDER, 5, bump)
    h0 = wire.HEADER.unpack(sealer.header(wire.KIND_BROADCAST))
    h1 = wire.HEADER.unpack(sealer.header(wire.KIND_MULTICAST, bytes([239, 255, 255, 250])))
    assert (h0[5], h0[6]) == (5, 0) and (h1[5], h1[6]) == (5, 1)
    assert h1[2] == wire.KIND_MULTICAST and h1[7] == bytes([239, 255, 255, 250])
    sealer.seq = wire.SEQ_LIMIT
    h2 = wire.HEADER.unpack(sealer.header(wire.KIND_BROADCAST, office=b"abcd"))
    assert (h2[3], h2[5], h2[6]) == (b"abcd", 100, 0) and bumps == [1]


ACCEPTED = (None, wire.LEASE)  # new: as is, or once the saved state covers it


class TestReplayWindow:
    def test_in_order_then_replay(self):
        w = wire.ReplayWindow()
        assert [w.check(1, s) in ACCEPTED for s in range(5)] == [True] * 5
        assert w.check(1, 3) == wire.DROP_REPLAY
        assert w.check(1, 4) == wire.DROP_REPLAY

    def test_reordering_within_the_window_is_accepted_once(self):
        w = wire.ReplayWindow()
        assert w.check(1, 10) in ACCEPTED
        assert w.check(1, 8) is None
        assert w.check(1, 8) == wire.DROP_REPLAY
        assert w.check(1, 9) is None

    def test_too_old_and_older_epoch_are_stale(self):
        w = wire.ReplayWindow()
        assert w.check(2, wire.REPLAY_WINDOW + 5) in ACCEPTED
        assert w.check(2, 5) == wire.DROP_STALE
        assert w.check(1, 10_000) == wire.DROP_STALE

    def test_newer_epoch_starts_over(self):
        w = wire.ReplayWindow()
        assert w.check(1, 500) in ACCEPTED
        assert w.check(2, 0) in ACCEPTED
        assert w.check(2, 0) == wire.DROP_REPLAY
        assert w.check(1, 501) == wire.DROP_STALE

    def test_a_huge_jump_costs_nothing(self):
        w = wire.ReplayWindow()
        assert w.check(1, 0) in ACCEPTED
        assert w.check(1, wire.SEQ_LIMIT - 1) in ACCEPTED
        assert w.bits == 1

    @given(st.lists(st.integers(0, 3000), max_size=300))
    @settings(max_examples=200, deadline=None)
    def test_never_accepts_a_number_twice(self, seqs):
        w = wire.ReplayWindow()
        accepted = [s for s in seqs if w.check(1, s) in ACCEPTED]
        assert len(accepted) == len(set(accepted))
        assert len(set(accepted)) >= len(set(s for s in seqs if s > max(seqs, default=0) - 1024))

    def test_a_new_top_past_the_lease_asks_for_a_save_first(self):
        w = wire.ReplayWindow()
        assert w.check(1, 0) is wire.LEASE  # nothing covers it yet
        w.limit = 64  # what ReplayState.lease does
        assert [w.check(1, s) for s in range(1, 65)] == [None] * 64
        assert w.check(1, 65) is wire.LEASE
        assert w.check(2, 0) is wire.LEASE  # a new epoch: its marks are not saved

    def test_an_epoch_from_the_future_is_refused_and_never_stored(self, monkeypatch):
        monkeypatch.setattr(wire.time, "time", lambda: 1_800_000_000.0)
        w = wire.ReplayWindow()
        assert w.check(1_800_000_000, 0) is wire.LEASE
        future = 1_800_000_000 + wire.MAX_EPOCH_SKEW + 1
        assert w.check(future, 0) == wire.DROP_FUTURE
        assert w.epoch == 1_800_000_000  # not stored: the real epoch goes on
        assert w.check(1_800_000_000, 1) is wire.LEASE
        assert w.check(1_800_000_000 + wire.MAX_EPOCH_SKEW, 0) is wire.LEASE  # a day: fine

    def test_a_sender_refused_three_times_in_a_row_is_stuck_until_one_gets_in(self):
        w = wire.ReplayWindow()
        w.check(50, 7)
        for i in range(2):
            assert w.check(40, i) == wire.DROP_STALE
        assert not w.stuck()
        assert w.check(40, 2) == wire.DROP_STALE
        assert w.stuck() and (w.streak, w.offered, w.reason) == (3, 40, "stale")
        assert w.check(50, 8) in ACCEPTED
        assert not w.stuck()
        assert w.check(40, 3) == wire.DROP_STALE and w.streak == 1  # a new streak


def test_replay_state_survives_a_restart_and_ignores_junk():
    state = wire.ReplayState()
    for seq in range(3):
        state.window(SENDER).check(9, seq)
    dumped = json.loads(json.dumps(state.dump(exact=True)))
    assert dumped == {"192.168.1.126": [9, 2]}
    again = wire.ReplayState()
    junk = {"x": [1, 2], "10.0.0.1": "no", "10.0.0.2": [1], "10.0.0.3": [-1, 5]}
    assert again.load({**dumped, **junk}) == 1
    assert again.load([1, 2]) == 0
    window = again.window(SENDER)
    assert window.check(9, 2) == wire.DROP_REPLAY and window.check(9, 0) == wire.DROP_REPLAY
    assert window.check(9, 3) in ACCEPTED


def test_leases_are_saved_ahead_so_a_crash_lets_no_replay_in(tmp_path):
    path = tmp_path / "replay.json"
    state = wire.ReplayState(str(path))
    window = state.window(SENDER)
    assert window.check(9, 0) is wire.LEASE
    assert state.lease(now=100.0) is None
    assert json.loads(path.read_text()) == {"192.168.1.126": [9, wire.LEASE_MIN]}
    for seq in range(1, wire.LEASE_MIN + 1):  # covered: no more writes
        assert window.check(9, seq) is None
    path.write_text("{}")  # (to see that nothing is written)
    assert window.check(9, 5) == wire.DROP_REPLAY and path.read_text() == "{}"
    assert window.check(9, wire.LEASE_MIN + 1) is wire.LEASE
    # a crash now: the next start loads the mark, which covers every number used
    state.lease(now=200.0)
    restarted = wire.ReplayState(str(path))
    restarted.load(json.loads(path.read_text()))
    for seq in range(wire.LEASE_MIN + 2):
        assert restarted.window(SENDER).check(9, seq) == wire.DROP_REPLAY
    # a clean stop saves the exact top: nothing lost at the next start
    state.save(exact=True)
    assert json.loads(path.read_text()) == {"192.168.1.126": [9, wire.LEASE_MIN + 1]}
    # and should the relay go on after all, the next new number leases again
    assert window.check(9, wire.LEASE_MIN + 2) is wire.LEASE


def test_lease_blocks_grow_when_busy_and_shrink_when_quiet(tmp_path):
    state = wire.ReplayState(str(tmp_path / "replay.json"))
    state.window(SENDER).check(9, 0)
    state.lease(now=0.0)
    start = state.block
    state.lease(now=0.5)
    state.lease(now=0.9)
    assert state.block == start * 4
    state.lease(now=100.0)
    assert state.block == start * 2
    for t in range(30):
        state.lease(now=1000.0 + 100 * t)
    assert state.block == wire.LEASE_MIN
    for t in range(40):
        state.lease(now=10_000.0 + 0.01 * t)
    assert state.block == wire.LEASE_MAX


def test_after_a_busy_spell_the_marks_come_back_down(tmp_path):
    path = tmp_path / "replay.json"
    state = wire.ReplayState(str(path))
    window = state.window(SENDER)
    seq = 0
    for t in range(12):  # a busy second: leases 0.1 s apart
        window.check(9, seq)
        state.lease(now=100.0 + t / 10)
        seq = window.limit + 1
    assert state.block >= 1024 and window.limit - window.top >= 1024
    assert state.relax(now=102.0) is None and state.block >= 1024  # not yet
    now = 110.0
    while state.block > wire.LEASE_MIN:
        state.relax(now)
        now += wire.LEASE_RELAX
    assert window.limit - window.top == wire.LEASE_MIN
    assert json.loads(path.read_text()) == {"192.168.1.126": [9, window.top + wire.LEASE_MIN]}


def test_a_failed_save_is_reported_and_counted(tmp_path):
    state = wire.ReplayState(str(tmp_path / "gone" / "replay.json"))
    state.window(SENDER).check(9, 0)
    error = state.lease(now=1.0)
    assert error and "gone/replay.json" in error and state.save_failures == 1
    assert state.save_error == error
    (tmp_path / "gone").mkdir()
    assert state.lease(now=2.0) is None and state.save_error is None and state.save_failures == 1


def test_forget_drops_the_named_senders_or_all():
    state = wire.ReplayState()
    other = bytes([192, 168, 2, 126])
    state.window(SENDER).check(9, 0)
    state.window(other).check(5, 0)
    assert state.forget(["192.168.1.126", "10.9.9.9", "junk"]) == ["192.168.1.126"]
    assert list(state.windows) == [other] and state.forgotten == 1
    assert state.forget("all") == ["192.168.2.126"] and not state.windows
    assert state.window(SENDER).check(1, 0) in ACCEPTED  # an epoch that went back: taken


def test_stuck_senders_for_the_status():
    state = wire.ReplayState()
    state.window(SENDER).check(50, 0)
    for seq in range(4):
        state.window(SENDER).check(49, seq)
    assert state.stuck() == {
        "192.168.1.126": {"streak": 4, "reason": "stale", "epoch": 50, "offered": 49}
    }


def test_next_epoch_grows_even_when_the_clock_goes_back():
    assert wire.next_epoch(None, now=1000) == 1000
    assert wire.next_epoch(5000, now=1000) == 5001
    assert wire.next_epoch(999, now=1000) == 1000


def test_next_epoch_ignores_a_saved_epoch_far_ahead_of_the_clock():
    now = 1_800_000_000
    assert wire.next_epoch(now + 3600, now=now) == now + 3601
    assert wire.next_epoch(now + wire.MAX_EPOCH_SKEW, now=now) == now  # a day ahead: ignored
    assert wire.next_epoch(now + wire.MAX_EPOCH_SKEW // 2, now=now) == now


def test_epoch_file_round_trip(tmp_path):
    path = tmp_path / "epoch"
    assert wire.read_int_file(str(path)) is None
    wire.write_file_atomic(str(path), b"42\n")
    assert wire.read_int_file(str(path)) == 42
    path.write_bytes(b"\xff\xfe junk")
    assert wire.read_int_file(str(path)) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch"]


def keys_doc(**peers):
    return {"version": 1, "peers": peers}


class TestKeysFile:
    def test_valid_with_rotation(self):
        keys = wire.parse_keys(
            keys_doc(**{"192.168.2.126": {"send": KEY.hex(), "accept": [KEY.hex(), KEY2.hex()]}})
        )
        peer = keys["192.168.2.126"]
        header, payload = b"h" * 24, b"p"
        assert peer.verify(header, payload, wire.LinkKey(KEY2).tag(header, payload))
        assert not peer.verify(header, payload, wire.LinkKey(bytes(32)).tag(header, payload))

    @pytest.mark.parametrize(
        "doc, message",
        [
            ([], "(top level)"),
            ({"version": 2, "peers": {}}, "version: must be 1"),
            ({"version": 1}, "peers: must be an object"),
            (keys_doc(**{"nope": {}}), 'peers["nope"]: not an IPv4 address'),
            (keys_doc(**{"10.0.0.1": {"send": "ab", "accept": []}}), 'peers["10.0.0.1"].send'),
            (
                keys_doc(**{"10.0.0.1": {"send": KEY.hex(), "accept": [KEY.hex()] * 3}}),
                'peers["10.0.0.1"].accept: must be a list of one or two keys',
            ),
            (
                keys_doc(**{"10.0.0.1": {"send": KEY.hex(), "accept": ["zz" * 32]}}),
                'peers["10.0.0.1"].accept[0]',
            ),
        ],
    )
    def test_errors_name_the_field_never_the_key(self, doc, message):
        with pytest.raises(wire.KeysError) as info:
            wire.parse_keys(doc)
        assert any(line.startswith(message) for line in info.value.errors), info.value.errors
        assert KEY.hex() not in str(info.value)

    @pytest.mark.parametrize(
        "text, key",
        [
            ('{"version": 1, "peers": {"10.0.0.1": {"send": "%s", "send": "%s",'
             ' "accept": ["%s"]}}}', "send"),
            ('{"version": 1, "peers": {"10.0.0.1": {"send": "%s", "accept": ["%s"]},'
             ' "10.0.0.1": {"send": "%s", "accept": ["%s"]}}}', "10.0.0.1"),
        ],
    )  # fmt: skip
    def test_duplicate_keys_are_refused_naming_the_key(self, tmp_path, text, key):
        path = tmp_path / "keys.json"
        path.write_text(text.replace("%s", KEY.hex()))
        with pytest.raises(wire.KeysError) as info:
            wire.load_keys(str(path))
        assert info.value.errors == [f'{path}: duplicate key "{key}"']
        assert KEY.hex() not in str(info.value)

    def test_a_fifo_is_refused_at_once(self, tmp_path):
        import os

        fifo = tmp_path / "keys.json"
        os.mkfifo(fifo)
        with pytest.raises(wire.KeysError, match="not a regular file .a FIFO."):
            wire.load_keys(str(fifo))  # with open(), this would hang until someone writes

    def test_unreadable_files(self, tmp_path):
        bad = tmp_path / "keys.json"
        for content in (b"\xff\xfe", b"{" * 300000, b"[1,"):
            bad.write_bytes(content)
            with pytest.raises(wire.KeysError):
                wire.load_keys(str(bad))
        with pytest.raises(wire.KeysError, match="cannot read"):
            wire.load_keys(str(tmp_path / "missing"))

    @given(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda c: (
                st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4)
            ),
        )
    )
    @settings(max_examples=300, deadline=None)
    def test_fuzz_never_crashes(self, doc):
        with contextlib.suppress(wire.KeysError):
            wire.parse_keys(doc)


@given(st.binary(max_size=120))
@settings(max_examples=500, deadline=None)
def test_fuzz_envelope_parsing_never_crashes(rest):
    """What the loop does with a peer's bytes: length, prefix, tag, header."""
    keys = wire.PeerKeys(wire.LinkKey(KEY), (wire.LinkKey(KEY),))
    data = wire.PREFIX + rest
    if len(data) < wire.OVERHEAD:
        return
    mv = memoryview(data)
    ok = keys.verify(
        mv[: wire.HEADER_SIZE], mv[wire.OVERHEAD :], mv[wire.HEADER_SIZE : wire.OVERHEAD]
    )
    assert not ok  # random bytes never carry a valid tag
    wire.HEADER.unpack(mv[: wire.HEADER_SIZE])


def test_office_ids_differ():
    assert wire.office_id("manhattan") != wire.office_id("brooklyn")
    assert len(wire.office_id("é")) == 4
