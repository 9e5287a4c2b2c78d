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


class TestReplayWindow:
    def test_in_order_then_replay(self):
        w = wire.ReplayWindow()
        assert [w.check(1, s) for s in range(5)] == [None] * 5
        assert w.check(1, 3) == wire.DROP_REPLAY
        assert w.check(1, 4) == wire.DROP_REPLAY

    def test_reordering_within_the_window_is_accepted_once(self):
        w = wire.ReplayWindow()
        assert w.check(1, 10) is None
        assert w.check(1, 8) is None
        assert w.check(1, 8) == wire.DROP_REPLAY
        assert w.check(1, 9) is None

    def test_too_old_and_older_epoch_are_stale(self):
        w = wire.ReplayWindow()
        assert w.check(2, wire.REPLAY_WINDOW + 5) is None
        assert w.check(2, 5) == wire.DROP_STALE
        assert w.check(1, 10_000) == wire.DROP_STALE

    def test_newer_epoch_starts_over(self):
        w = wire.ReplayWindow()
        assert w.check(1, 500) is None
        assert w.check(2, 0) is None
        assert w.check(2, 0) == wire.DROP_REPLAY
        assert w.check(1, 501) == wire.DROP_STALE

    def test_a_huge_jump_costs_nothing(self):
        w = wire.ReplayWindow()
        assert w.check(1, 0) is None
        assert w.check(1, wire.SEQ_LIMIT - 1) is None
        assert w.bits == 1

    @given(st.lists(st.integers(0, 3000), max_size=300))
    @settings(max_examples=200, deadline=None)
    def test_never_accepts_a_number_twice(self, seqs):
        w = wire.ReplayWindow()
        accepted = [s for s in seqs if w.check(1, s) is None]
        assert len(accepted) == len(set(accepted))


def test_replay_state_survives_a_restart_and_ignores_junk():
    state = wire.ReplayState()
    for seq in range(3):
        state.window(SENDER).check(9, seq)
    dumped = json.loads(json.dumps(state.dump()))
    assert dumped == {"192.168.1.126": [9, 2]}
    again = wire.ReplayState()
    junk = {"x": [1, 2], "10.0.0.1": "no", "10.0.0.2": [1], "10.0.0.3": [-1, 5]}
    assert again.load({**dumped, **junk}) == 1
    assert again.load([1, 2]) == 0
    window = again.window(SENDER)
    assert window.check(9, 2) == wire.DROP_REPLAY and window.check(9, 0) == wire.DROP_REPLAY
    assert window.check(9, 3) is None


def test_next_epoch_grows_even_when_the_clock_goes_back():
    assert wire.next_epoch(None, now=1000) == 1000
    assert wire.next_epoch(5000, now=1000) == 5001
    assert wire.next_epoch(999, now=1000) == 1000


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
