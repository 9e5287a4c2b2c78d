"""nft_table: rendering, drift detection, check mode, removal, validation failures."""

from __future__ import annotations

import fakes
import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import nftables, persist
from fakes import Exit

BODY = """chain postrouting {
  type nat hook postrouting priority srcnat; policy accept;
  oifname "eth0" ip saddr { 192.168.2.0/24 } counter snat ip to 192.168.1.126
}"""


class FakeModule(fakes.FakeModule):
    def __init__(self, path, check_mode=False, diff=False, **params):
        defaults = {
            "name": "sitelink_masquerade",
            "family": "ip",
            "body": BODY,
            "state": "present",
            "path": str(path),
            "unit": None,
        }
        super().__init__(dict(defaults, **params), check_mode, diff)


class FakeNft:
    """The kernel's view: which rules file was loaded last; nft -c can be told to refuse."""

    def __init__(self, loaded=None, refuse=None):
        self.loaded, self.refuse, self.calls = loaded, refuse, []

    def listing(self, family, name):
        return self.loaded

    def check(self, text):
        self.calls.append("check")
        if self.refuse:
            raise nftables.NftError("nft -c rejected the rules: " + self.refuse, self.refuse)

    def load(self, path):
        self.calls.append("load")
        with open(path) as fh:
            self.loaded = fh.read()

    def delete(self, family, name):
        self.calls.append("delete")
        self.loaded = None


class FakeSystemd:
    def __init__(self):
        self.enabled, self.active, self.calls = set(), set(), []

    def run(self, *args, check=True):
        self.calls.append(args)
        if args[0] == "enable":
            self.enabled.add(args[1])
        if args[0] == "start":
            self.active.add(args[1])
        if args[0] == "disable":
            self.enabled.discard(args[-1])
            self.active.discard(args[-1])
        return 0, ""

    def is_enabled(self, unit):
        return unit in self.enabled

    def is_active(self, unit):
        return unit in self.active


@pytest.fixture(autouse=True)
def unit_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(persist, "UNIT_DIR", str(tmp_path / "units"))
    return tmp_path / "units"


def run(module, nft, systemd):
    with pytest.raises(Exit) as exc:
        nftables.run_module(module, nft, systemd)
    return exc.value


def test_first_run_validates_writes_enables_loads_then_is_idempotent(tmp_path, unit_dir):
    path = tmp_path / "etc" / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    out = run(FakeModule(path), nft, systemd)
    assert not out.failed and out.result["changed"]
    text = path.read_text()
    # Replaces only its own table, in one file: create, delete, define.
    assert text.splitlines()[3:6] == [
        "table ip sitelink_masquerade",
        "delete table ip sitelink_masquerade",
        "table ip sitelink_masquerade {",
    ]
    assert "flush ruleset" not in text
    assert nft.calls == ["check", "load"]
    unit = (unit_dir / "sitelink-masquerade.service").read_text()
    assert f"ExecStart=nft -f {path}" in unit and "After=nftables.service" in unit
    assert "sitelink-masquerade.service" in systemd.enabled | systemd.active

    nft.calls.clear()
    systemd.calls.clear()
    again = run(FakeModule(path), nft, systemd)
    assert again.result["changed"] is False, again.result["steps"]
    assert nft.calls == ["check"] and systemd.calls == []


def test_a_table_missing_from_the_kernel_is_loaded_again(tmp_path):
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    run(FakeModule(path), nft, systemd)
    nft.loaded = None  # e.g. someone ran "nft flush ruleset"
    out = run(FakeModule(path), nft, systemd)
    assert out.result["steps"] == [f"nft -f {path}"]


def test_a_changed_body_is_written_and_loaded(tmp_path):
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    run(FakeModule(path), nft, systemd)
    out = run(FakeModule(path, body=BODY.replace("192.168.2.0/24", "10.9.0.0/16")), nft, systemd)
    assert out.result["steps"] == [f"write {path}", f"nft -f {path}"]
    assert "10.9.0.0/16" in nft.loaded


def test_check_mode_reports_and_touches_nothing(tmp_path, unit_dir):
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    out = run(FakeModule(path, check_mode=True, diff=True), nft, systemd)
    assert out.result["changed"] is True
    assert not path.exists() and not unit_dir.exists()
    assert nft.calls == ["check"] and systemd.calls == []
    assert "snat ip to 192.168.1.126" in out.result["diff"][0]["after"]


def test_rules_nft_refuses_change_nothing_and_say_why(tmp_path):
    path = tmp_path / "masquerade.nft"
    nft = FakeNft(refuse="Error: syntax error, unexpected junk")
    out = run(FakeModule(path, body="junk"), nft, FakeSystemd())
    assert out.failed and "nft -c rejected the rules: Error: syntax error" in out.result["msg"]
    assert not path.exists() and nft.calls == ["check"]


def test_absent_removes_table_file_and_unit(tmp_path, unit_dir):
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    run(FakeModule(path), nft, systemd)
    out = run(FakeModule(path, state="absent"), nft, systemd)
    assert out.result["changed"] is True
    assert nft.loaded is None and not path.exists()
    assert not (unit_dir / "sitelink-masquerade.service").exists()
    assert run(FakeModule(path, state="absent"), nft, systemd).result["changed"] is False


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"name": "bad name"}, "name: 'bad name' is not a table name"),
        ({"path": "relative.nft"}, "must be an absolute path"),
        ({"body": 'comment "sitelink-gateway x"'}, "the module owns it"),
    ],
)
def test_bad_parameters_fail_before_anything(tmp_path, params, message):
    nft = FakeNft()
    module = FakeModule(tmp_path / "x.nft")
    module.params.update(params)
    out = run(module, nft, FakeSystemd())
    assert out.failed and message in out.result["msg"] and nft.calls == []


def test_digest_follows_the_definition():
    one = nftables.render_rules("ip", "t", BODY, "t.service")
    two = nftables.render_rules("ip", "t", BODY + "\n", "t.service")
    other = nftables.render_rules("ip", "t2", BODY, "t2.service")
    assert nftables.live_digest(one) == nftables.live_digest(two)
    assert nftables.live_digest(one) != nftables.live_digest(other)
    assert nftables.live_digest("table ip t {\n}") is None
