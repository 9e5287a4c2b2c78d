"""The status file: --status rendering, reading, and the Prometheus text format."""

from __future__ import annotations

import json
import math
import os
import re
import stat

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sitelink_relay import status
from sitelink_relay.storm import StormControl

NOW = 1_700_000_000.0

STATUS_V2 = {
    "relay_version": "2.1.0",
    "pid": 4242,
    "mode": "service",
    "started": NOW - 3700,
    "updated": NOW - 2,
    "interval": 5.0,
    "config": "/etc/sitelink/relay.json",
    "wire": "sitelink1",
    "office": "manhattan",
    "lan": {
        "interface": "eth0",
        "ifindex": 2,
        "address": "192.168.1.126/24",
        "broadcast": "192.168.1.255",
    },
    "ports": {
        "6799": {
            "received": 17,
            "forwarded": 10,
            "rebroadcast": 2,
            "transited": 0,
            "dropped": {"own": 3, "foreign": 2, "auth": 1},
            "send_errors": {"ENETUNREACH": 1},
            "forward_to": ["192.168.2.126"],
            "accept_from": ["192.168.2.126"],
            "transit": {},
            "multicast_groups": ["239.255.0.1"],
        }
    },
    "peers": {
        "192.168.2.126": {
            "office": "brooklyn",
            "received": 5,
            "accepted": 4,
            "sent": 10,
            "dropped": {"auth": 1},
        }
    },
    "storm": {
        "per_source_rate": 1000.0,
        "per_source_burst": 2000.0,
        "global_rate": 20000.0,
        "global_burst": 40000.0,
        "cutoff_seconds": 10.0,
        "trip_seconds": 1.0,
        "sources": 3,
        "cut_off": {"192.168.1.66": 7.5},
        "tripped_total": 1,
    },
}

EXPECTED_TEXT = """\
sitelink-relay 2.1.0: pid 4242, service mode, up 61m, updated 2s ago
LAN eth0 (ifindex 2) address 192.168.1.126/24 broadcast 192.168.1.255
config /etc/sitelink/relay.json, wire sitelink1, office manhattan
port  received  forwarded  rebroadcast  transited  dropped  send errors
6799        17         10            2          0        6            1
  port 6799: forward to 192.168.2.126; accept from 192.168.2.126; multicast groups 239.255.0.1
  port 6799 dropped: auth 1, foreign 2, own 3
  port 6799 send errors: ENETUNREACH 1
peer           office    received  accepted  sent  dropped
192.168.2.126  brooklyn         5         4    10        1
  peer 192.168.2.126 dropped: auth 1
storm control: per source 1000/s (burst 2000), global 20000/s (burst 40000), cut off for 10s\
 after 1s over the rate; 3 sources tracked, 1 trips
  cut off: 192.168.1.66 (7.5s left)"""


def test_format_status_v2():
    assert status.format_status(STATUS_V2, now=NOW) == EXPECTED_TEXT


def test_format_status_of_a_v1_file():
    data = {"relay_version": "1.0.0", "pid": 7, "mode": "compat", "ports": {"6799": {}}}
    text = status.format_status(data, now=NOW)
    assert text.splitlines()[0] == "sitelink-relay 1.0.0: pid 7, compat mode, up ?, updated ? ago"
    assert text.splitlines()[-1].split() == ["6799", "0", "0", "0", "0", "0", "0"]
    assert "peer" not in text and "storm" not in text


def test_format_status_of_storm_control_status():
    sc = StormControl()
    now = 100.0
    while sc.check("192.168.1.66", now) != "cut_off":
        now += 1e-5
    text = status.format_status({"storm": sc.status(now + 2.0)}, now=NOW)
    assert "3 sources tracked" not in text
    assert "storm control: per source 1000/s (burst 2000)" in text
    assert "1 sources tracked, 1 trips" in text
    assert "cut off: 192.168.1.66 (8s left)" in text


EXPECTED_METRICS = """\
# HELP sitelink_relay_info Relay version, mode, wire format and office; always 1.
# TYPE sitelink_relay_info gauge
sitelink_relay_info{version="2.1.0",mode="service",wire="raw",office=""} 1
# HELP sitelink_relay_start_time_seconds Unix time the relay started.
# TYPE sitelink_relay_start_time_seconds gauge
sitelink_relay_start_time_seconds 1699996300.0
# HELP sitelink_relay_last_update_seconds Unix time the relay last wrote its status.
# TYPE sitelink_relay_last_update_seconds gauge
sitelink_relay_last_update_seconds 1699999998.5
# HELP sitelink_relay_status_interval_seconds Seconds between status updates.
# TYPE sitelink_relay_status_interval_seconds gauge
sitelink_relay_status_interval_seconds 5
# HELP sitelink_relay_datagrams_received_total Datagrams received on the port.
# TYPE sitelink_relay_datagrams_received_total counter
sitelink_relay_datagrams_received_total{port="137"} 3
sitelink_relay_datagrams_received_total{port="6799"} 17
# HELP sitelink_relay_datagrams_forwarded_total LAN broadcasts sent to the forward_to peers.
# TYPE sitelink_relay_datagrams_forwarded_total counter
sitelink_relay_datagrams_forwarded_total{port="6799"} 10
# HELP sitelink_relay_datagrams_dropped_total Datagrams dropped, by reason.
# TYPE sitelink_relay_datagrams_dropped_total counter
sitelink_relay_datagrams_dropped_total{port="6799",reason="cut_off"} 40
sitelink_relay_datagrams_dropped_total{port="6799",reason="own"} 3
# HELP sitelink_relay_send_errors_total Failed sends (and receives), by error.
# TYPE sitelink_relay_send_errors_total counter
sitelink_relay_send_errors_total{port="6799",error="ENETUNREACH"} 1
# HELP sitelink_relay_peer_datagrams_received_total Datagrams received from the peer.
# TYPE sitelink_relay_peer_datagrams_received_total counter
sitelink_relay_peer_datagrams_received_total{peer="192.168.2.126",office="brooklyn"} 5
# HELP sitelink_relay_peer_datagrams_dropped_total Datagrams of the peer dropped.
# TYPE sitelink_relay_peer_datagrams_dropped_total counter
sitelink_relay_peer_datagrams_dropped_total{peer="192.168.2.126",office="brooklyn",reason="auth"} 2
# HELP sitelink_relay_sources_cut_off Sources cut off by the storm breaker now.
# TYPE sitelink_relay_sources_cut_off gauge
sitelink_relay_sources_cut_off 1
# HELP sitelink_relay_storm_trips_total Times a source tripped the storm breaker.
# TYPE sitelink_relay_storm_trips_total counter
sitelink_relay_storm_trips_total 4
"""


def test_prometheus_text_exact():
    data = {
        "relay_version": "2.1.0",
        "mode": "service",
        "wire": "raw",
        "started": NOW - 3700,
        "updated": NOW - 1.5,
        "interval": 5,
        "ports": {
            "6799": {
                "received": 17,
                "forwarded": 10,
                "dropped": {"own": 3, "cut_off": 40},
                "send_errors": {"ENETUNREACH": 1},
            },
            "137": {"received": 3, "forwarded": "many", "dropped": [1, 2]},
        },
        "peers": {"192.168.2.126": {"office": "brooklyn", "received": 5, "dropped": {"auth": 2}}},
        "storm": {"cut_off": {"192.168.1.66": 3.2}, "tripped_total": 4},
    }
    text = status.prometheus_text(data)
    assert text == EXPECTED_METRICS
    assert list(exposition_errors(text)) == []


def test_prometheus_label_escaping():
    data = {
        "relay_version": 'a"b\\c\nd',
        "office": "caf\u00e9 \u2603",
        "peers": {'x"\\\ny': {"received": 1, "office": "\ud800"}},
    }
    text = status.prometheus_text(data)
    assert 'version="a\\"b\\\\c\\nd"' in text
    assert 'office="caf\u00e9 \u2603"' in text  # UTF-8 is allowed as is
    assert 'peer="x\\"\\\\\\ny"' in text
    assert 'office="\\\\ud800"' in text  # a lone surrogate cannot be UTF-8: spelt out
    text.encode("utf-8")
    assert list(exposition_errors(text)) == []


def test_prometheus_leaves_out_what_is_not_a_counter():
    data = {
        "ports": {
            "1": {"received": -1, "forwarded": float("nan"), "rebroadcast": True},
            "2": {"received": 10**400, "forwarded": "12", "rebroadcast": 2**60},
            "3": "oops",
        }
    }
    text = status.prometheus_text(data)
    assert 'port="1"' not in text and 'port="3"' not in text
    assert 'sitelink_relay_datagrams_forwarded_total{port="2"} 12\n' in text
    assert 'sitelink_relay_datagrams_rebroadcast_total{port="2"} 1.152921504606847e+18\n' in text
    assert 'sitelink_relay_datagrams_received_total{port="2"}' not in text  # beyond float
    assert list(exposition_errors(text)) == []


def test_prometheus_no_duplicate_series():
    long_a = "a" * 5000 + "x"
    long_b = "a" * 5000 + "y"  # the same once cut to MAX_LABEL
    text = status.prometheus_text({"ports": {long_a: {"received": 1}, long_b: {"received": 2}}})
    assert len([line for line in text.splitlines() if line.startswith("sitelink_relay_d")]) == 1
    assert list(exposition_errors(text)) == []


def test_prometheus_of_nothing():
    assert status.prometheus_text([]) == ""
    assert status.prometheus_text(None) == ""
    text = status.prometheus_text({})
    assert text.startswith("# HELP sitelink_relay_info ")
    assert list(exposition_errors(text)) == []


# ------------------------------------------------------------ the text format


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_VALUE = r"(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|NaN|[+-]Inf)"
HELP = re.compile(rf"# HELP ({_NAME}) (?:[^\\\n]|\\[\\n])*")
TYPE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")
SAMPLE = re.compile(rf"({_NAME})(\{{(?:{_LABEL}(?:,{_LABEL})*)?\}})? ({_VALUE})")


def exposition_errors(text: str):
    """Problems of ``text`` as text format 0.0.4 (what promtool would reject)."""
    if text and not text.endswith("\n"):
        yield "no final newline"
    typed: dict[str, str] = {}
    helped: set[str] = set()
    series: set[str] = set()
    family = None
    lines = text.split("\n") if text else []  # the format's only line separator
    for line in lines[:-1] if text.endswith("\n") else lines:
        m = HELP.fullmatch(line)
        if m:
            if m[1] in helped:
                yield f"second HELP: {line}"
            helped.add(m[1])
            continue
        m = TYPE.fullmatch(line)
        if m:
            if m[1] in typed:
                yield f"second TYPE: {line}"
            typed[m[1]] = m[2]
            family = m[1]
            continue
        m = SAMPLE.fullmatch(line)
        if not m:
            yield f"bad line: {line!r}"
            continue
        if m[1] != family:
            yield f"sample outside its family: {line}"
        if typed.get(m[1]) == "counter" and not m[1].endswith("_total"):
            yield f"counter without _total: {line}"
        if typed.get(m[1]) == "counter" and (m[3].startswith("-") or m[3] == "NaN"):
            yield f"negative counter: {line}"
        key = m[1] + (m[2] or "")
        if key in series:
            yield f"duplicate series: {line}"
        series.add(key)


def test_the_checker_catches_errors():
    assert list(exposition_errors("a 1")) == ["no final newline", "sample outside its family: a 1"]
    bad = '# TYPE a_total counter\na_total{x="\n"} 1\na_total{x="1"} -1\n'
    assert len(list(exposition_errors(bad))) == 3


def test_prometheus_client_parses_it():
    parser = pytest.importorskip("prometheus_client.parser")
    families = {f.name: f for f in parser.text_string_to_metric_families(EXPECTED_METRICS)}
    dropped = families["sitelink_relay_datagrams_dropped"].samples
    assert {(s.labels["reason"], s.value) for s in dropped} == {("own", 3.0), ("cut_off", 40.0)}


# ------------------------------------------------------------ malformed input

KNOWN_KEYS = [
    "relay_version",
    "pid",
    "mode",
    "started",
    "updated",
    "interval",
    "config",
    "wire",
    "office",
    "lan",
    "ports",
    "peers",
    "storm",
    "peer_interfaces",
    "received",
    "forwarded",
    "rebroadcast",
    "transited",
    "dropped",
    "send_errors",
    "forward_to",
    "accept_from",
    "transit",
    "multicast_groups",
    "accepted",
    "sent",
    "cut_off",
    "tripped_total",
    "sources",
    "6799",
]
NASTY_TEXT = ["", "\ud800", "\x1b[2J", "a\nb", '"\\', "\u2603", "1e999", "-5", "nan", " 7 "]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(NASTY_TEXT)
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=8) | st.sampled_from(NASTY_TEXT)


def json_values(max_leaves: int):
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4)
        | st.dictionaries(keys, children, max_size=6),
        max_leaves=max_leaves,
    )


any_json = json_values(40)
small_json = json_values(6)  # inside status-shaped data: keeps generation fast
counts = st.dictionaries(keys, small_json, max_size=4) | small_json


def _entry(fields):
    return st.fixed_dictionaries({}, optional={k: counts for k in fields}) | small_json


status_like = st.fixed_dictionaries(
    {},
    optional={
        **{k: small_json for k in KNOWN_KEYS[:9]},
        "lan": st.dictionaries(keys, small_json, max_size=4) | small_json,
        "ports": st.dictionaries(keys, _entry(KNOWN_KEYS[14:24]), max_size=3) | small_json,
        "peers": st.dictionaries(keys, _entry(KNOWN_KEYS[16:27]), max_size=3) | small_json,
        "storm": _entry(KNOWN_KEYS[26:29] + ["per_source_rate", "cutoff_seconds"]),
        "peer_interfaces": st.dictionaries(keys, small_json, max_size=4) | small_json,
    },
)


def _renders(data) -> None:
    text = status.format_status(data, now=NOW)
    assert isinstance(text, str)
    text.encode("utf-8")  # no lone surrogates
    assert all(c.isprintable() or c == "\n" for c in text)  # no terminal escapes
    metrics = status.prometheus_text(data)
    metrics.encode("utf-8")
    assert all(c.isprintable() or c == "\n" for c in metrics)
    assert list(exposition_errors(metrics)) == []


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(any_json)
def test_any_json_renders(data):
    _renders(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(status_like)
@example({"ports": {"6799": {"dropped": {"auth": -0.0}}}})  # found in CI: "-0.0" once
def test_any_status_shaped_json_renders(data):
    _renders(data)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(status_like)
def test_any_status_file_reads_and_renders(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("s") / "status.json"
    path.write_text(json.dumps(data), encoding="utf-8", errors="surrogatepass")
    read, error = status.read_status(str(path))
    assert (read is None) != (error is None)
    if read is not None:
        _renders(read)


def test_deep_nesting_in_memory():
    deep: list = []
    for _unused in range(200_000):
        deep = [deep]
    data = {"pid": deep, "ports": {"1": {"dropped": {"x": deep}, "forward_to": [deep]}}}
    data["peers"] = {"p": {"office": deep, "dropped": deep}}
    data["storm"] = {"cut_off": {"s": deep}}
    _renders(data)
    assert "pid (array of 1 items)" in status.format_status(data, now=NOW)


def test_odd_values_render_as_something_sensible():
    data = {
        "relay_version": 2,
        "pid": None,
        "mode": ["service"],
        "started": "1699996300",
        "updated": float("nan"),
        "interval": float("inf"),
        "lan": "eth0",
        "ports": {
            6799: {"received": "17", "dropped": {"own": "3", "x": None}, "forward_to": "10.0.0.1"},
            "137": [],
            "abc": {"received": 10**5000, "forwarded": 1.5, "dropped": 7},
        },
        "peers": ["192.168.2.126"],
        "storm": {"cut_off": ["x"], "per_source_rate": "fast"},
    }
    text = status.format_status(data, now=NOW)
    lines = text.splitlines()
    assert lines[0] == "sitelink-relay 2: pid ?, (array of 1 items) mode, up ?, updated ? ago"
    assert "137   ?" in text.replace("        ", " ")
    assert "port 6799: forward to 10.0.0.1" in text
    assert "port 6799 dropped: own 3, x ?" in text
    row_abc = [line for line in lines if line.startswith("abc")][0]
    assert row_abc.split()[:3] == ["abc", "huge", "1.5"]
    assert row_abc.split()[-2] == "?"  # dropped is not a mapping
    assert "peers: malformed (JSON array)" in text
    assert "storm control: per source ?/s" in text
    assert "cut off: malformed (JSON array)" in text


def test_terminal_escapes_are_shown_not_sent():
    text = status.format_status({"pid": "\x1b]0;pwned\x07", "config": "a\nb"}, now=NOW)
    assert "pid \\x1b]0;pwned\\x07" in text
    assert "config a\\nb" in text


def test_long_lists_are_cut():
    data = {"ports": {"1": {"forward_to": [f"10.0.0.{i}" for i in range(200)]}}}
    text = status.format_status(data, now=NOW)
    assert "10.0.0.49, ... (150 more)" in text
    assert len(status.format_status({"config": "x" * 10**6}, now=NOW)) < 1000


# ------------------------------------------------------------------ read_status


def test_read_status_good(tmp_path):
    path = tmp_path / "status.json"
    status.write_json_atomic(str(path), STATUS_V2)
    assert status.read_status(str(path)) == (STATUS_V2, None)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\xff\xfe{}", "not UTF-8 text (byte 0)"),
        (b'{"pid": ', "invalid JSON: Expecting value: line 1 column 9 (char 8)"),
        (b"", "invalid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[" * 200_000 + b"]" * 200_000, "invalid JSON: nested too deeply"),
        (b"[1, 2]", "not a status file: JSON array, not an object"),
        (b"null", "not a status file: JSON null, not an object"),
    ],
    ids=["binary", "truncated", "empty", "deep", "array", "null"],
)
def test_read_status_bad_content(tmp_path, content, message):
    path = tmp_path / "status.json"
    path.write_bytes(content)
    assert status.read_status(str(path)) == (None, message)


def test_read_status_huge_integer(tmp_path):
    path = tmp_path / "status.json"
    path.write_bytes(b'{"pid": ' + b"9" * 5000 + b"}")
    data, error = status.read_status(str(path))
    if data is None:  # Python >= 3.11 (and patched 3.9/3.10) limit int digits
        assert error.startswith("invalid JSON: ")
    else:
        assert "pid huge" in status.format_status(data, now=NOW)


def test_read_status_nan(tmp_path):
    path = tmp_path / "status.json"
    path.write_bytes(b'{"pid": NaN, "updated": Infinity, "ports": {"1": {"received": -Infinity}}}')
    data, error = status.read_status(str(path))
    assert error is None and math.isnan(data["pid"])
    _renders(data)


def test_read_status_not_a_file(tmp_path):
    assert status.read_status(str(tmp_path / "nope.json")) == (None, "No such file or directory")
    assert status.read_status(str(tmp_path)) == (None, "is a directory")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert status.read_status(str(fifo)) == (None, "not a regular file")  # and does not hang
    assert status.read_status("/dev/zero") == (None, "not a regular file")


def test_read_status_too_large(tmp_path, monkeypatch):
    monkeypatch.setattr(status, "READ_LIMIT", 100)
    path = tmp_path / "status.json"
    path.write_text(json.dumps({"config": "x" * 200}))
    assert status.read_status(str(path)) == (None, "larger than 100 bytes")


def test_read_status_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "status.json"
    path.write_text("{}")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(status.os, "open", denied)
    assert status.read_status(str(path)) == (None, "Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_read_status_unreadable_file(tmp_path):
    path = tmp_path / "status.json"
    path.write_text("{}")
    path.chmod(0)
    assert status.read_status(str(path)) == (None, "Permission denied")


# ------------------------------------------------------------------ writing


def test_write_text_atomic(tmp_path):
    path = tmp_path / "sitelink_relay.prom"
    path.write_text("old\n")
    path.chmod(0o600)
    text = status.prometheus_text(STATUS_V2)
    status.write_text_atomic(str(path), text)
    assert path.read_text() == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sitelink_relay.prom"]


def test_write_atomic_failure_leaves_no_temp_file(tmp_path):
    with pytest.raises(TypeError):
        status.write_json_atomic(str(tmp_path / "status.json"), {"x": object()})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        status.write_text_atomic(str(tmp_path / "missing" / "m.prom"), "x\n")
