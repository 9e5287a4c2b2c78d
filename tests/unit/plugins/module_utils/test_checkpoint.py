"""The rollback checkpoint, its restore program and the gateway_confirm module.

Its action plugin is tested in tests/unit/plugins/action.

No systemd: systemctl and systemd-run are fakes, and the restore program the
checkpoint writes is run for real, in a temporary directory, as the timer would.
"""

from __future__ import annotations

import ast
import json
import math
import os
import stat
import subprocess
import sys
import time

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import checkpoint as cp
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils import fakes
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import Exit, write

# --------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def _locks():
    yield
    fakes.release_checkpoint_locks()


@pytest.fixture
def gw(tmp_path):
    return fakes.CheckpointHost(tmp_path)


# --------------------------------------------------------------------------
# arm


def test_arm_saves_files_blobs_commands_and_starts_the_timer(gw, tmp_path):
    rules = write(tmp_path / "etc" / "rules.nft", "old rules\n", 0o640)
    missing = str(tmp_path / "etc" / "unit.service")
    link = tmp_path / "etc" / "wants.service"
    link.symlink_to("/lib/systemd/system/x.service")
    before = time.time()
    armed = gw.checkpoint().arm(
        "nft ip t",
        [rules, missing, str(link)],
        [["nft", "-f", "{dir}/table.nft"], ["systemctl", "daemon-reload"]],
        120,
        {"table.nft": "table ip t\ndelete table ip t\n"},
    )
    assert armed["unit"] == "sitelink-rollback.timer"
    assert armed["resources"] == ["nft ip t"] and armed["added"] is True
    assert before - 0.001 <= armed["armed_at"] <= time.time()  # (rounded to ms)
    assert armed["deadline"] == math.ceil(armed["armed_at"] + 120)

    manifest = gw.manifest()
    (resource,) = manifest["resources"]
    rdir = resource["dir"]
    assert rdir == os.path.join(gw.directory, "01-nft-ip-t")
    assert resource["commands"] == [
        ["nft", "-f", rdir + "/table.nft"],
        ["systemctl", "daemon-reload"],
    ]
    saved, absent, symlink = resource["files"]
    assert saved["path"] == rules and saved["mode"] == 0o640
    with open(saved["saved"]) as fh:
        assert fh.read() == "old rules\n"
    assert absent == {"path": missing, "absent": True}
    assert symlink == {"path": str(link), "link": "/lib/systemd/system/x.service"}
    with open(os.path.join(rdir, "table.nft")) as fh:
        assert fh.read() == "table ip t\ndelete table ip t\n"
    assert manifest["record"] == gw.record
    assert stat.S_IMODE(os.stat(gw.directory).st_mode) == 0o700

    (run,) = gw.systemd_runs()
    assert run == [
        "systemd-run",
        "--unit=sitelink-rollback",
        "--on-active=120s",
        "--timer-property=AccuracySec=1s",
        "--description=sitelink.gateway: restore the state before an unconfirmed change",
        "--collect",
        sys.executable,
        os.path.join(gw.directory, "restore.py"),
        os.path.join(gw.directory, "manifest.json"),
    ]
    assert "sitelink-rollback.timer" in gw.systemd.active


def test_first_arm_of_a_key_wins_and_the_timer_starts_once(gw, tmp_path):
    rules = write(tmp_path / "rules.nft", "known good\n")
    first = gw.checkpoint()
    first.arm("nft ip t", [rules], [["true"]], 60)
    first.release()
    (tmp_path / "rules.nft").write_text("changed, unconfirmed\n")

    second = gw.checkpoint()
    again = second.arm("nft ip t", [rules], [["false"]], 300, {"x": "y"})
    assert again["added"] is False and again["resources"] == ["nft ip t"]
    (resource,) = gw.manifest()["resources"]
    with open(resource["files"][0]["saved"]) as fh:
        assert fh.read() == "known good\n"
    assert resource["commands"] == [["true"]]
    assert len(gw.systemd_runs()) == 1


def test_later_keys_join_the_pending_checkpoint_without_moving_its_deadline(gw, tmp_path):
    clock = iter([1000.0, 1000.0, 1000.0, 1050.0, 1050.0, 1050.0]).__next__
    one = gw.checkpoint(clock=clock)
    first = one.arm("tunnels", [], [["true"]], 120)
    one.release()
    two = gw.checkpoint(clock=clock)
    second = two.arm("nft inet sitelink_firewall", [], [["true"]], 600)
    assert first["deadline"] == second["deadline"] == 1120
    assert second["armed_at"] == 1000.0
    assert second["resources"] == ["tunnels", "nft inet sitelink_firewall"]
    assert [os.path.basename(r["dir"]) for r in gw.manifest()["resources"]] == [
        "01-tunnels",
        "02-nft-inet-sitelink_firewall",
    ]
    assert len(gw.systemd_runs()) == 1
    assert two.pending() == {k: v for k, v in second.items() if k != "added"}


def test_a_checkpoint_whose_timer_is_gone_is_started_afresh(gw, tmp_path):
    rules = write(tmp_path / "rules.nft", "v1\n")
    old = gw.checkpoint()
    old.arm("nft ip t", [rules], [], 60)
    old.release()
    gw.systemd.active.clear()  # e.g. "systemctl stop sitelink-rollback.timer" by hand
    (tmp_path / "rules.nft").write_text("v2\n")
    armed = gw.checkpoint().arm("nft ip t", [rules], [], 60)
    assert armed["added"] is True and len(gw.systemd_runs()) == 2
    with open(gw.manifest()["resources"][0]["files"][0]["saved"]) as fh:
        assert fh.read() == "v2\n"


def test_a_running_restore_counts_as_pending(gw, tmp_path):
    one = gw.checkpoint()
    one.arm("a", [], [["true"]], 60)
    one.release()
    # The timer fired; the restore waits for the lock this module holds.
    gw.systemd.active.discard("sitelink-rollback.timer")
    gw.systemd.states["sitelink-rollback.service"] = "active"
    armed = gw.checkpoint().arm("b", [], [["true"]], 60)
    assert armed["resources"] == ["a", "b"] and len(gw.systemd_runs()) == 1


def test_a_failing_systemd_run_leaves_nothing_behind(gw, tmp_path):
    runner = fakes.FakeCommandRunner(gw.systemd, fail=(1, "Failed to start transient timer"))
    with pytest.raises(cp.CheckpointError, match="Failed to start transient timer; nothing"):
        gw.checkpoint(runner=runner).arm("a", [write(tmp_path / "f", "x")], [], 60)
    assert not os.path.exists(gw.directory)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", [], [], 60), "key"),
        (("a", ["relative/path"], [], 60), "not an absolute path"),
        (("a", [], [[]], 60), "not a list of strings"),
        (("a", [], [["nft", 1]], 60), "not a list of strings"),
        (("a", [], [], 0), "timeout"),
        (("a", [], [], True), "timeout"),
        (("a", [], [], 60, {"../x": ""}), "not a plain file name"),
        (("a", [], [], 60, {"files": ""}), "not a plain file name"),
    ],
)
def test_bad_arguments_are_refused_before_anything(gw, args, message):
    with pytest.raises(cp.CheckpointError, match=message):
        gw.checkpoint().arm(*args)
    assert not os.path.exists(gw.directory) and gw.systemd.calls == []


def test_a_directory_cannot_be_saved(gw, tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(cp.CheckpointError, match="not a regular file"):
        gw.checkpoint().arm("a", [str(tmp_path / "adir")], [], 60)
    assert not os.path.exists(gw.directory) and gw.systemd_runs() == []


def test_arm_refuses_after_a_rollback_that_ran_while_the_module_read_state(gw):
    checkpoint = gw.checkpoint()
    os.makedirs(os.path.dirname(gw.record))
    with open(gw.record, "w") as fh:
        json.dump({"rolled_back_at": time.time() + 1, "armed_at": 1, "resources": []}, fh)
    with pytest.raises(cp.CheckpointError, match="run it again"):
        checkpoint.arm("a", [], [], 60)
    assert gw.systemd_runs() == []


# --------------------------------------------------------------------------
# confirm


def test_confirm_cancels_the_timer_and_forgets_the_checkpoint(gw):
    armed = gw.checkpoint().arm("tunnels", [], [["true"]], 60)
    done = gw.checkpoint().confirm(armed["armed_at"])
    assert done == {
        "confirmed": True,
        "unit": "sitelink-rollback.timer",
        "deadline": armed["deadline"],
        "armed_at": armed["armed_at"],
        "resources": ["tunnels"],
    }
    assert ("stop", "sitelink-rollback.timer") in gw.systemd.calls
    assert not os.path.exists(gw.directory) and not gw.systemd.active

    gw.systemd.calls.clear()
    again = gw.checkpoint().confirm(armed["armed_at"])
    assert again == {"confirmed": False, "unit": "sitelink-rollback.timer", "resources": []}
    assert gw.systemd.verbs() == []


def test_confirm_stops_a_restore_that_waits_for_the_lock(gw):
    gw.checkpoint().arm("a", [], [["true"]], 60)
    gw.systemd.active = {"sitelink-rollback.service"}  # fired, blocked on the lock
    assert gw.checkpoint().confirm()["confirmed"] is True
    assert ("stop", "sitelink-rollback.service") in gw.systemd.calls


def test_confirm_after_a_rollback_fails_and_touches_nothing(gw):
    os.makedirs(os.path.dirname(gw.record))
    record = {"rolled_back_at": 2000.5, "armed_at": 1900.0, "deadline": 2000, "resources": []}
    with open(gw.record, "w") as fh:
        json.dump(record, fh)
    with pytest.raises(cp.RolledBack, match="rolled back at .* not confirmed") as exc:
        gw.checkpoint().confirm(1900.0)
    assert exc.value.record == record and gw.systemd.verbs() == []
    # An older rollback is not this change's.
    assert gw.checkpoint().confirm(2100.0)["confirmed"] is False
    # Without armed_at, nothing is checked.
    assert gw.checkpoint().confirm()["confirmed"] is False


# --------------------------------------------------------------------------
# the restore program, run for real


def test_restore_puts_files_back_runs_commands_records_and_forgets(gw, tmp_path):
    log = tmp_path / "commands.log"
    shell = ["/bin/sh", "-c"]
    rules = write(tmp_path / "etc" / "rules.nft", "old rules\n", 0o640)
    created = str(tmp_path / "etc" / "new.service")
    link = tmp_path / "etc" / "wants" / "x.service"
    link.parent.mkdir(parents=True)
    link.symlink_to("../old.service")
    one = gw.checkpoint()
    armed = one.arm(
        "first",
        [rules, created, str(link)],
        [shell + [f"cat {{dir}}/blob >> {log}"], shell + [f"echo first-2 >> {log}"]],
        60,
        {"blob": "first-1\n"},
    )
    one.arm("second", [], [shell + [f"echo second >> {log}"]], 60)
    one.release()
    # The change:
    write(tmp_path / "etc" / "rules.nft", "NEW rules\n", 0o600)
    write(tmp_path / "etc" / "new.service", "[Unit]\n")
    link.unlink()
    link.symlink_to("../new.service")

    proc = gw.restore()
    assert proc.returncode == 0, proc.stdout
    with open(rules) as fh:
        assert fh.read() == "old rules\n"
    assert stat.S_IMODE(os.stat(rules).st_mode) == 0o640
    assert not os.path.exists(created)
    assert os.readlink(link) == "../old.service"
    # Reverse arm order; a key's commands in order, with {dir} resolved.
    assert log.read_text() == "second\nfirst-1\nfirst-2\n"
    record = gw.rollback_record()
    assert [r["key"] for r in record["resources"]] == ["second", "first"]
    assert all(r["ok"] for r in record["resources"])
    assert record["armed_at"] == armed["armed_at"] and record["deadline"] == armed["deadline"]
    assert record["rolled_back_at"] >= record["armed_at"]
    assert not os.path.exists(gw.directory)
    assert "sitelink-rollback: restored " + rules in proc.stdout
    assert not [p for p in os.listdir(tmp_path / "etc") if p.startswith(".")]

    # What gateway_confirm then finds.
    with pytest.raises(cp.RolledBack):
        gw.checkpoint().confirm(record["armed_at"])


def test_restore_logs_a_failing_resource_and_still_restores_the_others(gw, tmp_path):
    log = tmp_path / "log"
    first = write(tmp_path / "first.conf", "first\n")
    one = gw.checkpoint()
    one.arm("first", [first], [["/bin/sh", "-c", f"echo first >> {log}"]], 60)
    one.arm("broken", [], [["/bin/sh", "-c", "echo oops; exit 3"], ["/nonexistent/x"]], 60)
    one.release()
    (tmp_path / "first.conf").write_text("changed\n")
    proc = gw.restore()
    assert proc.returncode == 1
    assert (tmp_path / "first.conf").read_text() == "first\n"
    assert log.read_text() == "first\n"
    broken, good = gw.rollback_record()["resources"]
    assert broken["key"] == "broken" and broken["ok"] is False
    assert "rc=3 oops" in broken["errors"][0] and "/nonexistent/x" in broken["errors"][1]
    assert good == {"key": "first", "ok": True, "errors": []}
    assert "rc=3: oops" in proc.stdout


def test_restore_after_a_confirm_does_nothing(gw):
    one = gw.checkpoint()
    one.arm("a", [], [["/bin/sh", "-c", "exit 9"]], 60)
    one.release()
    program = os.path.join(gw.directory, cp.PROGRAM)
    saved = gw.root / "restore.py"
    with open(program) as fh:
        saved.write_text(fh.read())  # the process has it loaded already
    gw.checkpoint().confirm()
    proc = subprocess.run(
        [sys.executable, str(saved), os.path.join(gw.directory, cp.MANIFEST)],
        stdout=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "nothing to restore" in proc.stdout
    assert not os.path.exists(gw.record)


def test_restore_waits_for_the_module_that_holds_the_lock(gw, tmp_path):
    target = write(tmp_path / "f", "good\n")
    module = gw.checkpoint()
    module.arm("a", [target], [], 60)
    (tmp_path / "f").write_text("half-applied\n")
    program = os.path.join(gw.directory, cp.PROGRAM)
    proc = subprocess.Popen(
        [sys.executable, program, os.path.join(gw.directory, cp.MANIFEST)],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.6)
    assert proc.poll() is None  # still waiting: the module is applying
    (tmp_path / "f").write_text("applied\n")
    module.release()  # the module process ends
    assert proc.wait(timeout=30) == 0
    assert (tmp_path / "f").read_text() == "good\n"


def test_the_restore_program_runs_on_python_3_9_syntax(gw):
    gw.checkpoint().arm("a", [], [], 60)
    with open(os.path.join(gw.directory, cp.PROGRAM), encoding="utf-8") as fh:
        program = fh.read()
    ast.parse(program, "restore.py", feature_version=(3, 9))
    assert program.startswith(
        "# Written by sitelink.gateway (module_utils/checkpoint.py): do not edit."
    )
    assert program == cp.restore_program()
    # Its waits travel in the manifest.
    manifest = gw.manifest()
    assert manifest["lock_wait"] == cp.RESTORE_LOCK_WAIT == 120
    assert manifest["command_timeout"] == cp.COMMAND_TIMEOUT == 60
    assert manifest["version"] == 1


# --------------------------------------------------------------------------
# the gateway_confirm module


class FakeCheckpoint:
    def __init__(self, outcome):
        self.outcome, self.calls = outcome, []

    def confirm(self, armed_at=None):
        self.calls.append(armed_at)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def confirm_module(outcome, check_mode=False, armed_at=1000.5):
    checkpoint = FakeCheckpoint(outcome)
    module = fakes.FakeModule({"armed_at": armed_at, "timeout": None}, check_mode)
    with pytest.raises(Exit) as exc:
        cp.run_confirm(module, checkpoint)
    return exc.value, checkpoint


def test_module_confirms_what_was_pending():
    done = {"confirmed": True, "unit": cp.TIMER, "deadline": 1100, "armed_at": 1000.5}
    out, checkpoint = confirm_module(dict(done, resources=["tunnels"]))
    assert not out.failed and out.result["changed"] is True
    assert out.result["confirmed"]["resources"] == ["tunnels"]
    assert checkpoint.calls == [1000.5] and out.result["rolled_back"] is False


def test_module_with_nothing_pending_changes_nothing():
    out, _unused = confirm_module({"confirmed": False, "unit": cp.TIMER, "resources": []})
    assert not out.failed and out.result["changed"] is False


def test_module_reports_a_rollback_as_a_failure():
    record = {"rolled_back_at": 1101.0, "armed_at": 1000.5, "deadline": 1100, "resources": []}
    out, _unused = confirm_module(cp.RolledBack(record))
    assert out.failed and out.result["rolled_back"] is True
    assert out.result["rollback"] == record and "rolled back at" in out.result["msg"]


def test_module_check_mode_confirms_nothing():
    out, checkpoint = confirm_module({"confirmed": True}, check_mode=True)
    assert out.result["changed"] is False and checkpoint.calls == []


def test_pending_needs_a_waiting_timer(gw):
    assert gw.checkpoint().pending() is None
    armed = gw.checkpoint().arm("a", [], [["true"]], 60)
    assert gw.checkpoint().pending() == {k: v for k, v in armed.items() if k != "added"}
    gw.systemd.active.clear()  # stopped by hand: arm() would start afresh
    assert gw.checkpoint().pending() is None


def test_an_unwritable_run_directory_is_a_checkpoint_error(tmp_path):
    (tmp_path / "run").write_text("a file where /run/sitelink should be\n")
    gw = fakes.CheckpointHost(tmp_path)
    with pytest.raises(cp.CheckpointError, match="arming a: "):
        gw.checkpoint().arm("a", [], [], 60)
    assert gw.systemd_runs() == []
