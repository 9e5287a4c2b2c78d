"""nft_table: rendering, drift detection, check mode, removal, validation failures."""

from __future__ import annotations

import os

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import nftables, persist
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils import fakes
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import Exit

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
            "rollback_timeout": 0,
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


# --------------------------------------------------------------------------
# rollback_timeout: arm a rollback before changing anything live


@pytest.fixture
def gw(tmp_path):
    yield fakes.CheckpointHost(tmp_path / "gw")
    fakes.release_checkpoint_locks()


class OrderedNft(FakeNft):
    """Records whether the rollback was already armed when the table was loaded."""

    def __init__(self, gw, **kw):
        super().__init__(**kw)
        self.gw = gw

    def load(self, path):
        self.calls.append(
            ("armed", os.path.exists(os.path.join(self.gw.directory, "manifest.json")))
        )
        super().load(path)


def run_armed(module, nft, systemd, gw):
    with pytest.raises(Exit) as exc:
        nftables.run_module(module, nft, systemd, gw.checkpoint(module))
    return exc.value


def test_rollback_is_armed_before_the_first_load(tmp_path, gw, unit_dir):
    path = tmp_path / "masquerade.nft"
    nft, systemd = OrderedNft(gw), FakeSystemd()
    out = run_armed(FakeModule(path, rollback_timeout=90), nft, systemd, gw)
    assert not out.failed and out.result["changed"]
    assert ("armed", True) in nft.calls
    armed = out.result["rollback"]
    assert armed["resources"] == ["nft ip sitelink_masquerade"] and armed["added"] is True
    assert out.result["ansible_facts"] == {
        "sitelink_rollback": {k: armed[k] for k in ("unit", "deadline", "armed_at", "resources")}
    }
    (run,) = gw.systemd_runs()
    assert "--on-active=90s" in run
    (resource,) = gw.manifest()["resources"]
    unit = str(unit_dir / "sitelink-masquerade.service")
    wants = str(unit_dir / "multi-user.target.wants" / "sitelink-masquerade.service")
    # Nothing existed: the restore deletes all three, then deletes the table.
    assert resource["files"] == [
        {"path": str(path), "absent": True},
        {"path": unit, "absent": True},
        {"path": wants, "absent": True},
    ]
    assert resource["commands"] == [
        ["systemctl", "daemon-reload"],
        ["systemctl", "stop", "sitelink-masquerade.service"],
        ["nft", "-f", resource["dir"] + "/table.nft"],
    ]
    with open(os.path.join(resource["dir"], "table.nft")) as fh:
        assert fh.read() == ("table ip sitelink_masquerade\ndelete table ip sitelink_masquerade\n")


def test_rollback_of_a_change_saves_the_old_table_files_and_unit_state(tmp_path, gw, unit_dir):
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    run(FakeModule(path), nft, systemd)  # deployed and confirmed long ago
    old_rules, old_listing = path.read_text(), nft.loaded
    changed = BODY.replace("192.168.2.0/24", "10.9.0.0/16")
    out = run_armed(FakeModule(path, body=changed, rollback_timeout=60), nft, systemd, gw)
    assert out.result["steps"] == [f"write {path}", f"nft -f {path}"]
    (resource,) = gw.manifest()["resources"]
    saved_rules = resource["files"][0]
    with open(saved_rules["saved"]) as fh:
        assert fh.read() == old_rules
    assert resource["files"][1]["path"] == str(unit_dir / "sitelink-masquerade.service")
    assert "saved" in resource["files"][1]
    assert resource["commands"][1] == ["systemctl", "start", "sitelink-masquerade.service"]
    with open(os.path.join(resource["dir"], "table.nft")) as fh:
        blob = fh.read()
    assert blob == (
        "table ip sitelink_masquerade\ndelete table ip sitelink_masquerade\n" + old_listing
    )
    assert "10.9.0.0/16" in nft.loaded  # and the change itself went through


def test_no_rollback_without_a_change_in_check_mode_or_with_timeout_0(tmp_path, gw):
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    out = run_armed(FakeModule(path, check_mode=True, rollback_timeout=60), nft, systemd, gw)
    assert out.result["changed"] and "rollback" not in out.result
    out = run_armed(FakeModule(path, rollback_timeout=0), nft, systemd, gw)
    assert out.result["changed"] and "rollback" not in out.result
    out = run_armed(FakeModule(path, rollback_timeout=60), nft, systemd, gw)
    assert not out.result["changed"] and "ansible_facts" not in out.result
    assert gw.systemd_runs() == [] and not os.path.exists(gw.directory)


def test_a_second_change_before_the_confirm_keeps_the_first_saved_table(tmp_path, gw):
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    run(FakeModule(path), nft, systemd)
    good = nft.loaded
    for net in ("10.1.0.0/16", "10.2.0.0/16"):
        body = BODY.replace("192.168.2.0/24", net)
        out = run_armed(FakeModule(path, body=body, rollback_timeout=60), nft, systemd, gw)
    assert out.result["rollback"]["added"] is False and len(gw.systemd_runs()) == 1
    (resource,) = gw.manifest()["resources"]
    with open(os.path.join(resource["dir"], "table.nft")) as fh:
        assert fh.read().endswith(good)


def test_absent_arms_too(tmp_path, gw):
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    run(FakeModule(path), nft, systemd)
    out = run_armed(FakeModule(path, state="absent", rollback_timeout=60), nft, systemd, gw)
    assert out.result["changed"] and out.result["rollback"]["added"]
    assert nft.loaded is None and not path.exists()


def test_arming_fails_before_anything_changes(tmp_path, gw):
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    gw.runner.fail = (1, "Failed to connect to bus")
    out = run_armed(FakeModule(path, rollback_timeout=60), nft, systemd, gw)
    assert out.failed and out.result["msg"].startswith("arming the rollback: ")
    assert "Failed to connect to bus" in out.result["msg"]
    assert nft.calls == ["check"] and systemd.calls == [] and not path.exists()


def test_a_failing_load_after_arming_says_the_gateway_rolls_back(tmp_path, gw):
    path = tmp_path / "masquerade.nft"

    class Refusing(FakeNft):
        def load(self, path):
            raise nftables.NftError("'nft -f x' failed: Error: Could not process rule")

    out = run_armed(FakeModule(path, rollback_timeout=60), Refusing(), FakeSystemd(), gw)
    assert out.failed and "Could not process rule" in out.result["msg"]
    assert "restores its previous state by itself at" in out.result["msg"]
    assert "sitelink-rollback.timer" in out.result["msg"]
    # What ran before the failure is reported.
    assert out.result["steps"][0] == f"write {path}" and out.result["steps"][-1] == f"nft -f {path}"


def test_negative_rollback_timeout_is_refused(tmp_path):
    nft = FakeNft()
    out = run(FakeModule(tmp_path / "x.nft", rollback_timeout=-5), nft, FakeSystemd())
    assert out.failed and "rollback_timeout" in out.result["msg"] and nft.calls == []


def test_the_restore_program_puts_the_table_files_and_unit_back(tmp_path, gw, unit_dir):
    """End to end: the module arms, changes, and the restore runs with stand-in binaries."""
    log = tmp_path / "restore.log"
    path = tmp_path / "masquerade.nft"
    nft, systemd = FakeNft(), FakeSystemd()
    run(FakeModule(path), nft, systemd)
    old_rules = path.read_text()
    old_unit = (unit_dir / "sitelink-masquerade.service").read_text()
    nft.nft = fakes.fake_program(tmp_path / "nft", log)
    systemd.systemctl = fakes.fake_program(tmp_path / "systemctl", log)
    body = BODY.replace("192.168.2.0/24", "10.9.0.0/16")
    run_armed(FakeModule(path, body=body, rollback_timeout=60), nft, systemd, gw)
    assert path.read_text() != old_rules

    proc = gw.restore()
    assert proc.returncode == 0, proc.stdout
    assert path.read_text() == old_rules
    assert (unit_dir / "sitelink-masquerade.service").read_text() == old_unit
    lines = log.read_text().splitlines()
    assert lines[0] == "systemctl daemon-reload"
    assert lines[1] == "systemctl start sitelink-masquerade.service"
    assert lines[2].startswith("nft -f ") and lines[2].endswith("/table.nft")
    assert lines[3:5] == ["table ip sitelink_masquerade", "delete table ip sitelink_masquerade"]
    assert "192.168.2.0/24" in "\n".join(lines[5:])
    assert gw.rollback_record()["resources"][0]["key"] == "nft ip sitelink_masquerade"
