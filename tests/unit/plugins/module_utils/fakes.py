"""A stand-in for AnsibleModule: exit_json/fail_json raise Exit with the result; warn()
keeps its warnings in ``warnings``."""

from __future__ import annotations

import shutil


class Exit(Exception):
    def __init__(self, result, failed):
        super().__init__(result.get("msg"))
        self.result = result
        self.failed = failed


class FakeModule:
    def __init__(self, params, check_mode=False, diff=False):
        self.params = dict(params)
        self.check_mode = check_mode
        self._diff = diff
        self.warnings = []

    def warn(self, warning):
        self.warnings.append(warning)

    def fail_json(self, **kw):
        raise Exit(kw, True)

    def exit_json(self, **kw):
        raise Exit(kw, False)

    def atomic_move(self, src, dest):
        shutil.move(src, dest)


class FakeSystemd:
    """systemctl as persist.Systemd offers it: units enabled and active, calls recorded.

    ``is-active`` answers from ``active`` (plus ``states`` for other answers, e.g.
    "activating" or "failed"); ``stop`` and ``disable --now`` make a unit inactive.
    FakeCommandRunner's systemd-run makes a transient timer active here.
    """

    systemctl = "systemctl"

    def __init__(self, enabled=(), active=()):
        self.enabled, self.active = set(enabled), set(active)
        self.states = {}
        self.calls = []

    def run(self, *args, check=True):
        self.calls.append(args)
        verb, units = args[0], [a for a in args[1:] if not a.startswith("-")]
        if verb == "is-active":
            unit = units[0]
            state = "active" if unit in self.active else self.states.get(unit, "inactive")
            return (0 if state == "active" else 3), state
        if verb == "enable":
            self.enabled.update(units)
        elif verb == "start":
            self.active.update(units)
        elif verb == "stop":
            self.active.difference_update(units)
            for unit in units:
                self.states.pop(unit, None)
        elif verb == "disable":
            self.enabled.difference_update(units)
            if "--now" in args:
                self.active.difference_update(units)
        return 0, ""

    def is_enabled(self, unit):
        return unit in self.enabled

    def is_active(self, unit):
        return unit in self.active

    def verbs(self):
        """The changing calls (is-active left out)."""
        return [c for c in self.calls if c[0] != "is-active"]


class FakeCommandRunner:
    """checkpoint.CommandRunner: records argv lists; ``systemd-run --unit=U --on-active=...``
    makes U.timer active in ``systemd``. ``fail``: (rc, stderr) for every command."""

    def __init__(self, systemd=None, fail=None):
        self.systemd = systemd
        self.fail = fail
        self.calls = []

    def bin(self, name):
        return name

    def run(self, argv):
        self.calls.append(list(argv))
        if self.fail:
            return self.fail[0], "", self.fail[1]
        if argv[0].endswith("systemd-run") and self.systemd is not None:
            unit = next(a.split("=", 1)[1] for a in argv if a.startswith("--unit="))
            if any(a.startswith("--on-active=") for a in argv):
                self.systemd.active.add(unit + ".timer")
            else:
                self.systemd.active.add(unit + ".service")
        return 0, "", ""


class CheckpointHost:
    """A rollback checkpoint under ``root`` (for checkpoint.Checkpoint), with fake
    systemctl and systemd-run, and the means to run its restore program for real."""

    def __init__(self, root):
        import os

        self.root = root
        self.directory = os.path.join(str(root), "run", "sitelink", "checkpoint")
        self.record = os.path.join(str(root), "run", "sitelink", "rollback.json")
        self.systemd = FakeSystemd()
        self.runner = FakeCommandRunner(self.systemd)

    def checkpoint(self, module=None, **kw):
        from ansible_collections.sitelink.gateway.plugins.module_utils.checkpoint import (
            Checkpoint,
        )

        return Checkpoint(
            module or FakeModule({}),
            runner=kw.pop("runner", self.runner),
            systemd=kw.pop("systemd", self.systemd),
            directory=self.directory,
            record=self.record,
            **kw,
        )

    def manifest(self):
        import json
        import os

        with open(os.path.join(self.directory, "manifest.json")) as fh:
            return json.load(fh)

    def systemd_runs(self):
        return [c for c in self.runner.calls if c[0].endswith("systemd-run")]

    def restore(self):
        """Run the restore program as sitelink-rollback.service would; the CompletedProcess."""
        import os
        import subprocess
        import sys

        release_checkpoint_locks()  # the module process has ended
        return subprocess.run(
            [
                sys.executable,
                os.path.join(self.directory, "restore.py"),
                os.path.join(self.directory, "manifest.json"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )

    def rollback_record(self):
        import json

        with open(self.record) as fh:
            return json.load(fh)


def release_checkpoint_locks():
    """Drop the checkpoint locks this process holds (a module's exit does that)."""
    import os

    from ansible_collections.sitelink.gateway.plugins.module_utils import checkpoint

    for path in list(checkpoint._HELD):
        os.close(checkpoint._HELD.pop(path))


def fake_program(path, log):
    """An executable at ``path`` that appends its arguments, and the content of any
    argument that is a file, to ``log``: stands in for nft, ip or systemctl in a restore."""
    import os

    with open(path, "w") as fh:
        fh.write(
            "#!/bin/sh\n"
            f'echo "$(basename "$0") $*" >> "{log}"\n'
            'for a in "$@"; do if [ -f "$a" ]; then cat "$a" >> "' + str(log) + '"; fi; done\n'
        )
    os.chmod(path, 0o700)
    return str(path)


def write(path, text, mode=0o644):
    """Write ``text`` to ``path`` (a pathlib path), directories and mode included; its str."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return str(path)
