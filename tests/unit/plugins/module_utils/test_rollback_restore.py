"""The rollback's restore program (module_utils/rollback_restore.py), function by function.

test_checkpoint.py runs it as the timer does, from the restore.py a real arm wrote;
here its functions are called directly, on manifests written by hand (as an older
version of the collection may have armed them), and checkpoint.py's copy of its
source is taken from a zip as AnsiballZ ships module_utils.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import time
import zipfile

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import checkpoint as cp
from ansible_collections.sitelink.gateway.plugins.module_utils import rollback_restore as rr
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import write

MODULE_UTILS = os.path.dirname(os.path.abspath(rr.__file__))


# --------------------------------------------------------------------------
# restore_file


def test_restore_file_removes_what_did_not_exist(tmp_path, capsys):
    created = write(tmp_path / "etc" / "new.service", "[Unit]\n")
    rr.restore_file({"path": created, "absent": True})
    assert not os.path.lexists(created)
    assert "removed " + created + " (it did not exist before)" in capsys.readouterr().out
    # Still absent: nothing to do, nothing said.
    rr.restore_file({"path": created, "absent": True})
    assert capsys.readouterr().out == ""


def test_restore_file_puts_a_symlink_back(tmp_path):
    link = tmp_path / "wants" / "x.service"
    link.parent.mkdir()
    link.symlink_to("../new.service")
    rr.restore_file({"path": str(link), "link": "../old.service"})
    assert os.readlink(link) == "../old.service"
    assert os.listdir(link.parent) == ["x.service"]  # no temporary left


def test_restore_file_puts_content_mode_and_owner_back(tmp_path, capsys):
    saved = write(tmp_path / "saved" / "0", "old rules\n", 0o600)
    target = write(tmp_path / "etc" / "rules.nft", "NEW rules\n", 0o644)
    entry = {
        "path": target,
        "saved": saved,
        "mode": 0o640,
        "uid": os.getuid(),
        "gid": os.getgid(),
    }
    rr.restore_file(entry)
    assert (tmp_path / "etc" / "rules.nft").read_text() == "old rules\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640
    assert os.listdir(tmp_path / "etc") == ["rules.nft"]
    assert "restored " + target in capsys.readouterr().out
    # A directory that is gone is made again.
    gone = str(tmp_path / "gone" / "deeper" / "f")
    rr.restore_file(dict(entry, path=gone))
    assert stat.S_IMODE(os.stat(gone).st_mode) == 0o640


# --------------------------------------------------------------------------
# run


def test_run_returns_none_or_an_error_text(capsys):
    assert rr.run(["/bin/sh", "-c", "echo fine"]) is None
    assert "ran /bin/sh -c echo fine: rc=0: fine" in capsys.readouterr().out
    assert (
        rr.run(["/bin/sh", "-c", "echo oops; exit 3"]) == "/bin/sh -c echo oops; exit 3: rc=3 oops"
    )
    error = rr.run(["/nonexistent/x", "arg"])
    assert error.startswith("/nonexistent/x arg: ") and "No such file" in error
    error = rr.run(["/bin/sleep", "5"], timeout=0.3)
    assert error.startswith("/bin/sleep 5: ") and "timed out" in error


# --------------------------------------------------------------------------
# main


def old_manifest(tmp_path, log):
    """A checkpoint as version 1 armed it before lock_wait and command_timeout: two
    resources, the second failing."""
    directory = tmp_path / "run" / "sitelink" / "checkpoint"
    rdir = directory / "01-good"
    saved = write(rdir / "files" / "0", "good\n", 0o600)
    target = write(tmp_path / "etc" / "good.conf", "changed\n")
    manifest = {
        "version": 1,
        "armed_at": 1000.5,
        "deadline": 1061,
        "timeout": 60,
        "unit": "sitelink-rollback.timer",
        "record": str(tmp_path / "run" / "sitelink" / "rollback.json"),
        "resources": [
            {
                "key": "good",
                "dir": str(rdir),
                "armed_at": 1000.5,
                "files": [
                    {
                        "path": target,
                        "saved": saved,
                        "mode": 0o644,
                        "uid": os.getuid(),
                        "gid": os.getgid(),
                    }
                ],
                "commands": [["/bin/sh", "-c", f"echo good >> {log}"]],
            },
            {
                "key": "broken",
                "dir": str(directory / "02-broken"),
                "armed_at": 1001.0,
                "files": [],
                "commands": [["/bin/sh", "-c", "echo oops; exit 3"], ["/bin/true"]],
            },
        ],
    }
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest))
    return str(path), manifest


def test_main_restores_every_resource_records_and_forgets(tmp_path, capsys):
    log = tmp_path / "log"
    path, manifest = old_manifest(tmp_path, log)
    assert rr.main([path]) == 1
    assert (tmp_path / "etc" / "good.conf").read_text() == "good\n"
    assert log.read_text() == "good\n"
    with open(manifest["record"]) as fh:
        record = json.load(fh)
    assert record["armed_at"] == 1000.5 and record["deadline"] == 1061
    assert record["rolled_back_at"] <= time.time() + 1
    assert record["resources"] == [  # reverse arm order, the failure does not stop "good"
        {"key": "broken", "ok": False, "errors": ["/bin/sh -c echo oops; exit 3: rc=3 oops"]},
        {"key": "good", "ok": True, "errors": []},
    ]
    assert not os.path.exists(os.path.dirname(path))
    assert "rolled back broken, good; failed: broken" in capsys.readouterr().out


def test_main_after_a_confirm_does_nothing(tmp_path, capsys):
    path = str(tmp_path / "checkpoint" / "manifest.json")
    assert rr.main([path]) == 0
    assert "nothing to restore" in capsys.readouterr().out
    assert rr.main([]) == 2


def hold_lock(manifest_path):
    fd = os.open(os.path.dirname(manifest_path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_main_waits_for_the_lock_as_long_as_the_manifest_says(tmp_path, capsys):
    path, manifest = old_manifest(tmp_path, tmp_path / "log")
    manifest["lock_wait"] = 0.5
    manifest["command_timeout"] = 0.3
    manifest["resources"][1]["commands"] = [["/bin/sleep", "5"]]
    with open(path, "w") as fh:
        json.dump(manifest, fh)
    fd = hold_lock(path)  # a module still applying (or hung)
    try:
        started = time.monotonic()
        assert rr.main([path]) == 1
        took = time.monotonic() - started
    finally:
        os.close(fd)
    assert 0.5 <= took < 4  # the lock wait and the command timeout, not 120 and 60
    out = capsys.readouterr().out
    assert "still locked after 0.5 s: restoring anyway" in out
    with open(manifest["record"]) as fh:
        (broken, good) = json.load(fh)["resources"]
    assert "timed out" in broken["errors"][0] and good["ok"]


def test_a_manifest_without_waits_gets_the_defaults(tmp_path, capsys, monkeypatch):
    path, _manifest = old_manifest(tmp_path, tmp_path / "log")
    monkeypatch.setattr(rr, "LOCK_WAIT", 0.4)  # standing in for 120 s
    fd = hold_lock(path)
    try:
        assert rr.main([path]) == 1
    finally:
        os.close(fd)
    assert "still locked after 0.4 s: restoring anyway" in capsys.readouterr().out
    assert (tmp_path / "etc" / "good.conf").read_text() == "good\n"


@pytest.mark.parametrize("value", [None, "10", True, -1, [1]])
def test_seconds_falls_back_on_what_is_not_a_number_of_seconds(value):
    assert rr.seconds({"lock_wait": value}, "lock_wait", 120) == 120
    assert rr.seconds({"lock_wait": 1.5}, "lock_wait", 120) == 1.5
    assert rr.seconds(None, "lock_wait", 120) == 120


def test_checkpoint_uses_the_same_defaults():
    assert cp.RESTORE_LOCK_WAIT == rr.LOCK_WAIT == 120
    assert cp.COMMAND_TIMEOUT == rr.COMMAND_TIMEOUT == 60


# --------------------------------------------------------------------------
# the source, shipped in AnsiballZ's zip

ZIP_CHECK = """
import sys, zipimport
sys.path.insert(0, sys.argv[1])
from ansible_collections.sitelink.gateway.plugins.module_utils import checkpoint
assert isinstance(checkpoint.rollback_restore.__loader__, zipimport.zipimporter), (
    checkpoint.rollback_restore.__loader__
)
assert checkpoint.rollback_restore.__file__.startswith(sys.argv[1])
with open(sys.argv[2], "w") as fh:
    fh.write(checkpoint.restore_program())
"""


def test_the_source_is_read_from_a_zip_as_ansiballz_ships_it(tmp_path):
    archive = tmp_path / "ansiballz.zip"
    package = "ansible_collections/sitelink/gateway/plugins/module_utils/"
    with zipfile.ZipFile(archive, "w") as zf:
        parts = package.rstrip("/").split("/")
        for depth in range(1, len(parts) + 1):
            zf.writestr("/".join(parts[:depth]) + "/__init__.py", "")
        for name in ("checkpoint.py", "persist.py", "rollback_restore.py"):
            zf.write(os.path.join(MODULE_UTILS, name), package + name)
    program = tmp_path / "restore.py"
    subprocess.run(
        [sys.executable, "-I", "-c", ZIP_CHECK, str(archive), str(program)],
        cwd=str(tmp_path),
        check=True,
        timeout=60,
    )
    with open(os.path.join(MODULE_UTILS, "rollback_restore.py"), encoding="utf-8") as fh:
        source = fh.read()
    assert program.read_text() == cp.PROGRAM_HEADER + source

    # And the program so written runs on its own, outside any package.
    proc = subprocess.run(
        [sys.executable, "-I", str(program), str(tmp_path / "none" / "manifest.json")],
        stdout=subprocess.PIPE,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and "nothing to restore" in proc.stdout


def test_the_source_is_text_whatever_the_loader_gives(monkeypatch):
    """Ansible's collection loader (ansible-test units, the controller) gives bytes."""
    with open(rr.__file__, encoding="utf-8") as fh:
        source = fh.read()

    class BytesLoader:
        def get_source(self, _name):
            return source.encode("utf-8")

    monkeypatch.setattr(rr, "__loader__", BytesLoader())
    assert cp.restore_program() == cp.PROGRAM_HEADER + source
