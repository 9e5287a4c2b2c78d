# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# The restore program of the timed rollback. checkpoint.py writes this file's source,
# under a "Written by sitelink.gateway ...: do not edit." line, into the checkpoint
# directory as restore.py at the first arm; sitelink-rollback.service runs it as
#   python3 restore.py <dir>/manifest.json
# Standard library only, Python 3.9+, and nothing from Ansible or the collection: it
# runs on the gateway on its own, long after the module that wrote it has exited.
"""Restore what an unconfirmed sitelink.gateway change replaced, then forget it.

Run by sitelink-rollback.timer; logs go to the journal (journalctl -u sitelink-rollback).

The manifest says what to restore, and how long to wait: ``lock_wait`` (seconds to
wait for a module that holds the checkpoint lock) and ``command_timeout`` (seconds
before a restore command is killed). A manifest without them (armed by an older
version) gets LOCK_WAIT and COMMAND_TIMEOUT.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

# Fallbacks for a manifest that does not say (checkpoint.py writes these values).
LOCK_WAIT = 120
COMMAND_TIMEOUT = 60


def log(message):
    """One line to the journal (stdout, flushed: a restore may be cut short)."""
    sys.stdout.write("sitelink-rollback: " + message + "\n")
    sys.stdout.flush()


def seconds(manifest, name, default):
    """``manifest[name]`` when it is a number of seconds (>= 0), else ``default``."""
    value = manifest.get(name) if isinstance(manifest, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return default
    return value


def take_lock(path, wait=LOCK_WAIT):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    end = time.time() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.time() >= end:
                log(f"{path} still locked after {wait} s: restoring anyway")
                return fd
            time.sleep(0.2)


def restore_file(entry):
    path = entry["path"]
    if entry.get("absent"):
        if os.path.lexists(path):
            os.unlink(path)
            log("removed " + path + " (it did not exist before)")
        return
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    tmp = os.path.join(directory, "." + os.path.basename(path) + ".sitelink-rollback")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    if "link" in entry:
        os.symlink(entry["link"], tmp)
    else:
        shutil.copyfile(entry["saved"], tmp)
        os.chmod(tmp, entry["mode"])
        try:
            os.chown(tmp, entry["uid"], entry["gid"])
        except PermissionError:
            log(f"cannot give {path} back to uid {entry['uid']} gid {entry['gid']}")
    os.replace(tmp, path)
    log("restored " + path)


def run(argv, timeout=COMMAND_TIMEOUT):
    """Run one command; return an error text, or None."""
    shown = " ".join(argv)
    try:
        # A program of its own, run by systemd long after Ansible left: there is no
        # AnsibleModule, so no run_command (ansible-core 2.21's pylint asks for it).
        proc = subprocess.run(  # pylint: disable=ansible-bad-function
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"{shown}: {exc}")
        return f"{shown}: {exc}"
    output = (proc.stdout or "").strip()
    log(f"ran {shown}: rc={proc.returncode}" + ((": " + output) if output else ""))
    if proc.returncode != 0:
        return f"{shown}: rc={proc.returncode} {output}"
    return None


def write_json(path, data):
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def read_manifest(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def restore(manifest_path):
    """Restore everything the manifest lists, record it, delete the checkpoint.

    Returns the exit status: 0, or 1 when a resource failed.
    """
    directory = os.path.dirname(os.path.abspath(manifest_path))
    # The lock wait is the manifest's; it is read again under the lock, where a module
    # that was still arming may have added to it.
    try:
        lock_wait = seconds(read_manifest(manifest_path), "lock_wait", LOCK_WAIT)
    except (OSError, ValueError):
        lock_wait = LOCK_WAIT
    lock = take_lock(directory + ".lock", lock_wait)
    try:
        manifest = read_manifest(manifest_path)
    except FileNotFoundError:
        log("nothing to restore: the change was confirmed")
        return 0
    timeout = seconds(manifest, "command_timeout", COMMAND_TIMEOUT)
    results = []
    for resource in reversed(manifest["resources"]):
        errors = []
        log(f"restoring {resource['key']} (saved {resource['armed_at']})")
        try:
            for entry in resource["files"]:
                try:
                    restore_file(entry)
                except OSError as exc:
                    log(f"restoring {entry['path']}: {exc}")
                    errors.append(f"{entry['path']}: {exc}")
            for argv in resource["commands"]:
                error = run(argv, timeout)
                if error:
                    errors.append(error)
        except Exception as exc:  # one resource must not stop the others
            log(f"restoring {resource.get('key')}: {exc!r}")
            errors.append(repr(exc))
        results.append({"key": resource["key"], "ok": not errors, "errors": errors})
    record = {
        "rolled_back_at": round(time.time(), 3),
        "armed_at": manifest["armed_at"],
        "deadline": manifest["deadline"],
        "resources": results,
    }
    try:
        write_json(manifest["record"], record)
    except OSError as exc:
        log(f"writing {manifest['record']}: {exc}")
    shutil.rmtree(directory, ignore_errors=True)
    failed = [r["key"] for r in results if not r["ok"]]
    log(
        "rolled back {}{}".format(
            ", ".join(r["key"] for r in results) or "nothing",
            ("; failed: " + ", ".join(failed)) if failed else "",
        )
    )
    os.close(lock)
    return 1 if failed else 0


def main(argv=None):
    """``restore.py MANIFEST``: argv without the program name (default: sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        sys.stderr.write("usage: restore.py <checkpoint dir>/manifest.json\n")
        return 2
    return restore(args[0])


if __name__ == "__main__":
    raise SystemExit(main())
