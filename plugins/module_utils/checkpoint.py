# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A timed rollback on the gateway: candidate, apply, confirm (as VyOS commit-confirm).

A module that is about to change live state calls ``Checkpoint.arm()`` first. That
saves what the change replaces (files, blobs, and the commands that bring the live
state back) under ``/run/sitelink/checkpoint`` and starts, once, a transient systemd
timer, ``sitelink-rollback.timer``. Unless ``confirm()`` (the
``sitelink.gateway.gateway_confirm`` module, run over a NEW connection) cancels it
first, the timer runs the restore program written next to the saved state (``restore.py``,
the source of ``rollback_restore``): it puts back every saved file, runs the commands,
logs to the journal (``journalctl -u sitelink-rollback``), records what it did in
``/run/sitelink/rollback.json`` and deletes the checkpoint.

Both live on /run, a tmpfs: a reboot inside the window boots the NEW configuration
(the boot files the change wrote) and forgets the checkpoint, and with it the rollback.

Several modules may arm before one confirm (the tunnels, then the firewall...). Each
arm names a resource by its key; the restore runs resources in reverse arm order,
and one resource's failure is logged without stopping the others. The first arm of a
key wins until the checkpoint is confirmed or rolled back: it holds the last state
known to be good, and a second run before a confirm must not overwrite it.

The deadline is set by the first arm and never moved: later arms join the pending
checkpoint with the deadline it has. (A transient timer cannot be re-armed in place;
stopping and starting it again leaves a moment with no rollback pending at all, and
the state to go back to is the one before the FIRST change.) So a role's
``rollback_timeout`` must cover the time from its change to the confirm task, not
only its own task.

A lock (``/run/sitelink/checkpoint.lock``, flock) orders the three parties: ``arm()``
takes it and keeps it until ``release()`` or the end of the module process, so a
rollback that fires while a module applies waits until that module is done and then
restores its change too; ``confirm()`` holds it while it cancels.

Standard library only: this runs on the gateways (Python 3.9+).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import stat
import sys
import tempfile
import time

from ansible_collections.sitelink.gateway.plugins.module_utils import rollback_restore
from ansible_collections.sitelink.gateway.plugins.module_utils.persist import Systemd

CHECKPOINT_DIR = "/run/sitelink/checkpoint"
ROLLBACK_RECORD = "/run/sitelink/rollback.json"
UNIT = "sitelink-rollback"
TIMER = UNIT + ".timer"
SERVICE = UNIT + ".service"
MANIFEST = "manifest.json"
PROGRAM = "restore.py"
# How long arm() and confirm() wait for the lock (another module, or a restore running).
LOCK_WAIT = 60
# How long the restore program waits for a module that holds the lock before it
# restores anyway (a module should never take this long; a hung one must not
# keep the gateway locked out). Both travel in the manifest (lock_wait,
# command_timeout); the restore program falls back to these same values.
RESTORE_LOCK_WAIT = rollback_restore.LOCK_WAIT
# Each restore command is killed after this long.
COMMAND_TIMEOUT = rollback_restore.COMMAND_TIMEOUT
# The lock is the process's: Checkpoint objects of one module share it (lock path -> fd).
_HELD = {}
_BLOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# The restore program's first line in the checkpoint directory; the rest is the source
# of rollback_restore (imported above, so AnsiballZ ships it with every module that
# uses this one).
PROGRAM_HEADER = "# Written by sitelink.gateway (module_utils/checkpoint.py): do not edit.\n"


def restore_program():
    """The text of restore.py: the header and rollback_restore's source.

    From the module's loader, so it works where module_utils are files, in AnsiballZ's
    zip (zipimport) and under Ansible's collection loader (which gives bytes). Raises
    OSError when the source is not there.
    """
    name = rollback_restore.__name__
    loader = getattr(rollback_restore, "__loader__", None)
    try:
        source = loader.get_source(name) if loader is not None else None
    except ImportError as exc:
        raise OSError(f"the source of {name}: {exc}") from None
    if not source:
        raise OSError(f"the source of {name} is not available (only bytecode?)")
    if isinstance(source, bytes):  # Ansible's collection loader gives bytes
        source = source.decode("utf-8")
    return PROGRAM_HEADER + source


class CheckpointError(Exception):
    """The rollback could not be armed or confirmed; say what, for the module's msg."""


class RolledBack(Exception):
    """confirm(): the gateway already restored its previous state by itself."""

    def __init__(self, record):
        self.record = record
        keys = ", ".join(r.get("key", "?") for r in record.get("resources") or []) or "nothing"
        super().__init__(
            "the gateway rolled back at {} ({}): restored {}; the change armed at {} was not "
            "confirmed before its deadline {}".format(
                format_time(record.get("rolled_back_at")),
                TIMER,
                keys,
                format_time(record.get("armed_at")),
                format_time(record.get("deadline")),
            )
        )


def format_time(epoch):
    """``epoch`` as the gateway's local time, for messages."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(float(epoch)))
    except (TypeError, ValueError):
        return str(epoch)


class CommandRunner:
    """argv lists through AnsibleModule.run_command; tests inject a fake."""

    def __init__(self, module):
        self.module = module

    def bin(self, name):
        return self.module.get_bin_path(name, required=True)

    def run(self, argv):
        """Return (rc, stdout, stderr); never raises on rc != 0."""
        return self.module.run_command(list(argv), check_rc=False)


def _slug(key):
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", key).strip("-")[:40] or "resource"


class Checkpoint:
    """The rollback checkpoint of this gateway.

    ``runner``: runs ``systemd-run`` (``CommandRunner``); ``systemd``: systemctl
    (``persist.Systemd``). ``directory`` and ``record`` are injectable so that tests
    run the real restore program in a temporary directory; the lock is
    ``directory + ".lock"``. ``python`` runs the restore program (the module's own
    interpreter by default). ``clock`` gives epoch seconds.
    """

    def __init__(
        self,
        module,
        runner=None,
        systemd=None,
        directory=CHECKPOINT_DIR,
        record=ROLLBACK_RECORD,
        python=None,
        clock=time.time,
    ):
        if not os.path.isabs(directory) or os.path.dirname(directory) == directory:
            raise ValueError(f"checkpoint directory {directory!r}: must be absolute, not /")
        self.module = module
        self._runner = runner
        self._systemd = systemd
        self.directory = directory
        self.record = record
        self.lock_path = directory.rstrip("/") + ".lock"
        self.python = python or sys.executable
        self.clock = clock
        # A rollback that finishes after this moment ran while the caller was reading
        # the live state it plans from: arm() refuses then.
        self.opened_at = clock()

    # -- plumbing -------------------------------------------------------------

    @property
    def runner(self):
        if self._runner is None:
            self._runner = CommandRunner(self.module)
        return self._runner

    @property
    def systemd(self):
        if self._systemd is None:
            self._systemd = Systemd(self.module)
        return self._systemd

    @property
    def manifest_path(self):
        return os.path.join(self.directory, MANIFEST)

    def _lock(self):
        if self.lock_path in _HELD:
            return
        parent = os.path.dirname(self.lock_path)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        end = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() >= end:
                    os.close(fd)
                    raise CheckpointError(
                        f"{self.lock_path} still locked after {LOCK_WAIT} s (another module "
                        "run, or a rollback running now)"
                    ) from None
                time.sleep(0.2)
        _HELD[self.lock_path] = fd

    def release(self):
        """Let a waiting rollback (or another module) go on. The module's exit does this too.

        The lock belongs to the process: this releases it for every Checkpoint object
        of the same directory in it.
        """
        fd = _HELD.pop(self.lock_path, None)
        if fd is not None:
            os.close(fd)

    def _read_json(self, path):
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _write_json(self, path, data, mode=0o600):
        fd, tmp = tempfile.mkstemp(prefix=".tmp.", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.write("\n")
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _state(self, unit):
        return self.systemd.run("is-active", unit, check=False)[1].strip()

    def _timer_pending(self):
        """The timer waits, or it fired and the restore runs (or waits for the lock)."""
        return self._state(TIMER) == "active" or self._state(SERVICE) in (
            "active",
            "activating",
            "deactivating",
            "reloading",
        )

    @staticmethod
    def _summary(manifest, **extra):
        summary = {
            "unit": TIMER,
            "deadline": manifest["deadline"],
            "armed_at": manifest["armed_at"],
            "resources": [r["key"] for r in manifest["resources"]],
        }
        summary.update(extra)
        return summary

    # -- the API ------------------------------------------------------------

    def pending(self):
        """The pending checkpoint as ``arm()`` returns it (without ``added``), or None.

        For deciding what to arm: it takes the lock as ``arm()`` does (and keeps it), so
        nothing changes between the two calls. A checkpoint whose timer is gone (stopped
        by hand) is not pending; ``arm()`` replaces it.
        """
        self._lock()
        manifest = self._read_json(self.manifest_path)
        if manifest is None or not self._timer_pending():
            return None
        return self._summary(manifest)

    def last_rollback(self):
        """The content of rollback.json (the last rollback since boot), or None."""
        return self._read_json(self.record)

    def arm(self, key, files, commands, timeout, blobs=None):
        """Save what a change replaces and make sure the rollback timer is pending.

        Call it BEFORE changing anything live, only when about to change something, never
        in check mode.

        key: names the resource ("nft inet sitelink_firewall", "tunnels", "ipsec"...).
            The first arm of a key wins until confirmed or rolled back: a later arm of the
            same key saves nothing and changes nothing (``added`` is False).
        files: absolute paths whose CURRENT state is restored: a regular file's content,
            mode and owner; a symlink's target; or, when the path does not exist, its
            absence (the restore deletes it). Anything else (a directory...) is refused.
        commands: argv lists run after the files are restored, in order, to bring live
            state back. ``{dir}`` in an argument is replaced by this key's directory in
            the checkpoint (where ``blobs`` are). A failing command is logged, and the
            next still runs. Use absolute paths or names on systemd's default PATH.
        timeout: seconds (>= 1) from this arm to the rollback, when it starts the timer.
            When a checkpoint is already pending its deadline is kept, not extended.
        blobs: {file name: text} saved in this key's directory (mode 0600), e.g. an old
            ``nft list table`` listing for a command to load. Names are plain file names.

        Returns {"unit": "sitelink-rollback.timer", "deadline": epoch seconds (int, the
        timer fires at or within a second after it), "armed_at": epoch seconds of the
        checkpoint's first arm, "resources": [keys, in arm order], "added": whether this
        call saved ``key``}.

        Raises CheckpointError (nothing was changed) on bad arguments, an unreadable
        file, a failing ``systemd-run``, or when a rollback ran since this object was
        created (the caller planned from a state that is gone: run it again).
        Keeps the checkpoint lock until ``release()`` or the process ends.
        """
        self._check_arguments(key, files, commands, timeout, blobs)
        try:
            return self._arm(key, files, commands, timeout, blobs)
        except OSError as exc:  # /run not writable, a file unreadable...
            raise CheckpointError(f"arming {key}: {exc}") from None

    def _arm(self, key, files, commands, timeout, blobs):
        self._lock()
        last = self.last_rollback()
        if last and _number(last.get("rolled_back_at")) >= self.opened_at:
            raise CheckpointError(
                "a rollback ran at {} while this module read the live state; nothing "
                "changed, run it again".format(format_time(last.get("rolled_back_at")))
            )
        manifest = self._read_json(self.manifest_path)
        if manifest is not None and not self._timer_pending():
            # Left over: the timer was stopped by hand, or never started.
            manifest = None
        fresh = manifest is None
        if fresh:
            manifest = self._start_directory(timeout)
        keys = [r["key"] for r in manifest["resources"]]
        added = key not in keys
        if added:
            try:
                manifest["resources"].append(
                    self._save(key, len(keys) + 1, files, commands, blobs or {})
                )
                self._write_json(self.manifest_path, manifest)
            except OSError as exc:
                if fresh:
                    shutil.rmtree(self.directory, ignore_errors=True)
                raise CheckpointError(f"saving the state of {key}: {exc}") from None
        if fresh:
            self._start_timer(timeout)
        return self._summary(manifest, added=added)

    def confirm(self, armed_at=None):
        """Cancel the pending rollback: stop the timer, delete the checkpoint.

        armed_at: the ``armed_at`` the caller's arm returned. If rollback.json records a
            rollback at or after it, the change was already rolled back: raises
            RolledBack (with ``.record``) and touches nothing. None skips that check.

        Returns {"confirmed": whether a checkpoint was pending, "unit", and when one was,
        its "deadline", "armed_at", "resources"}. Idempotent. Raises CheckpointError
        when the lock cannot be taken or the checkpoint cannot be deleted.
        """
        try:
            return self._confirm(armed_at)
        except OSError as exc:
            raise CheckpointError(f"confirming: {exc}") from None

    def _confirm(self, armed_at):
        self._lock()
        try:
            last = self.last_rollback()
            if (
                armed_at is not None
                and last
                and _number(last.get("rolled_back_at")) >= float(armed_at)
            ):
                raise RolledBack(last)
            manifest = self._read_json(self.manifest_path)
            timer, service = self._state(TIMER), self._state(SERVICE)
            if timer in ("active", "activating"):
                self.systemd.run("stop", TIMER, check=False)
            if service in ("active", "activating", "deactivating", "reloading"):
                # We hold the lock: a restore that started is still waiting for it.
                self.systemd.run("stop", SERVICE, check=False)
            if timer == "failed" or service == "failed":
                self.systemd.run("reset-failed", TIMER, SERVICE, check=False)
            if os.path.lexists(self.directory):
                shutil.rmtree(self.directory)
        finally:
            self.release()
        if manifest is None:
            return {"confirmed": False, "unit": TIMER, "resources": []}
        return self._summary(manifest, confirmed=True)

    # -- arm's parts ----------------------------------------------------------

    @staticmethod
    def _check_arguments(key, files, commands, timeout, blobs):
        errors = []
        if not isinstance(key, str) or not key.strip():
            errors.append(f"key: {key!r} must be a non-empty string")
        for path in files or []:
            if not isinstance(path, str) or not os.path.isabs(path):
                errors.append(f"files: {path!r} is not an absolute path")
        for argv in commands or []:
            if not argv or not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                errors.append(f"commands: {argv!r} is not a list of strings")
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 1:
            errors.append(f"timeout: {timeout!r} must be a whole number of seconds >= 1")
        for name, text in (blobs or {}).items():
            if not isinstance(name, str) or not _BLOB_NAME.match(name) or name == "files":
                errors.append(f"blobs: {name!r} is not a plain file name")
            elif not isinstance(text, str):
                errors.append(f"blobs: {name!r} must be text")
        if errors:
            raise CheckpointError("arm: " + "; ".join(errors))

    def _start_directory(self, timeout):
        program = restore_program()  # before anything changes
        if self._state(TIMER) == "active":
            self.systemd.run("stop", TIMER, check=False)
        self.systemd.run("reset-failed", TIMER, SERVICE, check=False)
        if os.path.lexists(self.directory):
            shutil.rmtree(self.directory)
        parent = os.path.dirname(self.directory)
        if not os.path.isdir(parent):
            os.makedirs(parent, 0o755)
        os.mkdir(self.directory, 0o700)
        with open(os.path.join(self.directory, PROGRAM), "w", encoding="utf-8") as fh:
            fh.write(program)
        armed_at = round(self.clock(), 3)
        return {
            "version": 1,
            "armed_at": armed_at,
            "deadline": int(math.ceil(armed_at + timeout)),
            "timeout": timeout,
            "unit": TIMER,
            "record": self.record,
            "lock_wait": RESTORE_LOCK_WAIT,
            "command_timeout": COMMAND_TIMEOUT,
            "resources": [],
        }

    def _save(self, key, number, files, commands, blobs):
        rdir = os.path.join(self.directory, f"{number:02d}-{_slug(key)}")
        shutil.rmtree(rdir, ignore_errors=True)  # left by an arm that failed half-way
        os.makedirs(os.path.join(rdir, "files"), 0o700)
        entries = []
        for index, path in enumerate(files or []):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                entries.append({"path": path, "absent": True})
                continue
            if stat.S_ISLNK(st.st_mode):
                entries.append({"path": path, "link": os.readlink(path)})
            elif stat.S_ISREG(st.st_mode):
                saved = os.path.join(rdir, "files", str(index))
                shutil.copyfile(path, saved)
                entries.append(
                    {
                        "path": path,
                        "saved": saved,
                        "mode": stat.S_IMODE(st.st_mode),
                        "uid": st.st_uid,
                        "gid": st.st_gid,
                    }
                )
            else:
                raise OSError(f"{path} is not a regular file or a symlink")
        for name, text in sorted(blobs.items()):
            fd = os.open(os.path.join(rdir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        return {
            "key": key,
            "dir": rdir,
            "armed_at": round(self.clock(), 3),
            "files": entries,
            "commands": [[a.replace("{dir}", rdir) for a in argv] for argv in commands or []],
        }

    def _start_timer(self, timeout):
        argv = [
            self.runner.bin("systemd-run"),
            f"--unit={UNIT}",
            f"--on-active={timeout}s",
            "--timer-property=AccuracySec=1s",
            "--description=sitelink.gateway: restore the state before an unconfirmed change",
            # A failed restore must not block the next arm with a leftover unit name.
            "--collect",
            self.python,
            os.path.join(self.directory, PROGRAM),
            self.manifest_path,
        ]
        rc, out, err = self.runner.run(argv)
        if rc != 0:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise CheckpointError(
                "'{}' failed (rc={}): {}; nothing changed".format(
                    " ".join(argv), rc, (err or out or "").strip()
                )
            )


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def fact(summary):
    """The ``sitelink_rollback`` fact a module returns after arming."""
    return {
        "sitelink_rollback": {k: summary[k] for k in ("unit", "deadline", "armed_at", "resources")}
    }


def run_confirm(module, checkpoint=None):
    """The gateway_confirm module (its action plugin calls it over a new connection)."""
    armed_at = module.params.get("armed_at")
    if module.check_mode:
        module.exit_json(changed=False, msg="check mode: nothing confirmed")
    checkpoint = checkpoint or Checkpoint(module)
    try:
        confirmed = checkpoint.confirm(armed_at)
    except RolledBack as exc:
        module.fail_json(msg=str(exc), rolled_back=True, rollback=exc.record)
    except (CheckpointError, OSError) as exc:
        module.fail_json(msg=f"confirming: {exc}", rolled_back=False)
    module.exit_json(
        changed=confirmed["confirmed"],
        confirmed=confirmed,
        rolled_back=False,
        msg=(
            "confirmed: rollback of {} cancelled".format(", ".join(confirmed["resources"]))
            if confirmed["confirmed"]
            else "no rollback pending"
        ),
    )
