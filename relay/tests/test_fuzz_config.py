"""Any JSON, any bytes: the config parser answers with a Config or a ConfigError."""

from __future__ import annotations

import contextlib
import copy
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from sitelink_relay import config

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)
KEYS = st.sampled_from(
    ["version", "office", "lan", "own_addresses", "wire", "keys_file", "state_dir", "peers",
     "rules", "storm_control", "status_file", "metrics_file", "siblings", "peer_interfaces"]
)  # fmt: skip
GOOD = {
    "version": 2,
    "office": "manhattan",
    "lan": {"interface": "eth0", "address": "192.168.1.126/24"},
    "wire": "sitelink1",
    "state_dir": "/var/lib/sitelink-relay",
    "peers": {"192.168.2.126": {"office": "brooklyn", "interface": "sl-brooklyn"}},
    "rules": [{"port": 6799, "forward_to": ["192.168.2.126"], "accept_from": []}],
}


def check(data):
    try:
        cfg = config.parse_config(data)
    except config.ConfigError as exc:
        assert exc.errors and all(isinstance(line, str) and line for line in exc.errors)
    else:
        assert cfg.rules


@given(JSON)
@settings(max_examples=300, deadline=None)
def test_any_json_document(data):
    check(data)


@given(st.dictionaries(KEYS, JSON, max_size=6))
@settings(max_examples=300, deadline=None)
def test_a_good_config_with_any_field_replaced(changes):
    data = copy.deepcopy(GOOD)
    data.update(changes)
    check(data)


@given(st.sampled_from(["lan", "peers", "rules"]), JSON)
@settings(max_examples=200, deadline=None)
def test_nested_fields_replaced(field, value):
    data = copy.deepcopy(GOOD)
    if field == "lan":
        data["lan"]["interface"] = value
    elif field == "peers":
        data["peers"]["192.168.2.126"] = value
    else:
        data["rules"][0]["multicast_groups"] = value
    check(data)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_bytes_in_the_file(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "relay.json"
    path.write_bytes(raw)
    with contextlib.suppress(config.ConfigError):
        config.load_config(str(path))


def test_the_good_config_is_good_and_deep_nesting_is_an_error(tmp_path):
    assert config.parse_config(copy.deepcopy(GOOD)).office == "manhattan"
    path = tmp_path / "deep.json"
    path.write_text("[" * 200000 + "]" * 200000)
    try:
        config.load_config(str(path))
    except config.ConfigError as exc:
        assert "nested too deep" in str(exc) or "must be a JSON object" in str(exc)
    path.write_text(json.dumps({**GOOD, "lan": {"interface": "a\u0000b", "address": "x"}}))
    try:
        config.load_config(str(path))
    except config.ConfigError as exc:
        assert "lan.interface" in str(exc)
    else:
        raise AssertionError("a NUL in an interface name was accepted")
