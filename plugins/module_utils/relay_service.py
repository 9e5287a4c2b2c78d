# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The broadcast relay's program, files and service on a gateway, in one module call.

Program, config, keys and unit are written atomically and only when they change.
Config and keys are first checked by the relay program (``--check-config``,
``--check-keys``), the new one when it changes (staged beside its place), so a bad
one changes nothing. Then the service: a changed config is reloaded (SIGHUP keeps
unchanged ports open); a changed program or unit restarts it. Changed keys (a
rotation) are reloaded too: systemd copies the keys file as a credential only at
start, so the module puts the same keys in the relay's state directory (owned by
the relay, 0600), which a running relay reads on SIGHUP; a restart would lose the
broadcasts of its seconds. Only a relay without a state directory yet (never
started) is restarted for new keys. One call instead of seven tasks and
two handlers: under software emulation each task costs seconds per gateway, on every
run.

``forget_senders`` asks the relay to forget the replay windows of some senders (or
all): a sender whose epoch went backwards (its epoch file or clock reset) is
otherwise refused as ``stale`` until that epoch catches up (up to a day). The
request is a file in the relay's state directory, which the relay reads at start
and on SIGHUP, then deletes; the module writes it and reloads a running relay.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import os
import tempfile

from ansible_collections.sitelink.gateway.plugins.module_utils import contract
from ansible_collections.sitelink.gateway.plugins.module_utils.persist import (
    Systemd,
    SystemdError,
    hidden,
    move_into_place,
    read_file,
    remove_file,
    stage_file,
    write_atomic,
)

SERVICE = contract.RELAY_UNIT
# The relay's forget request, in its state directory (relay/sitelink_relay reads it).
FORGET_FILE = contract.RELAY_FORGET_FILE
LIVE_KEYS_FILE = contract.RELAY_LIVE_KEYS_FILE


class RelayFileError(Exception):
    pass


def read_bytes(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def file_diff(path, before, after, show):
    """One file's entry in the diff; ``show`` turns present content into what may be shown."""
    return {
        "before_header": path,
        "after_header": path,
        "before": "" if before is None else show(before),
        "after": "" if after is None else show(after),
    }


def program_digest(data):
    return f"sha256 {hashlib.sha256(data).hexdigest()}\n"


def keys_fingerprint(text):
    """What the diff shows of a keys file: never its content."""
    return hidden(text) + "\n"


def check_file(module, program, flag, name, content, shown, keys=None):
    """Run ``program flag FILE`` on ``content`` in a private temp file; raise if refused.
    ``name``: the file it is for, ``shown``: the program's name, in the error. ``keys``:
    the keys file's content the check is to use (``--keys``), as the service will."""
    temps = []
    try:
        args = [program, flag]
        for text, extra in ((content, None), (keys, "--keys")):
            if text is None:
                continue
            fd, tmp = tempfile.mkstemp(prefix=".sitelink-relay-check.")
            temps.append(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            args += [extra, tmp] if extra else [tmp]
        rc, out, err = module.run_command(args, check_rc=False)
    finally:
        for tmp in temps:
            os.unlink(tmp)
    if rc != 0:
        # The checker names fields, never key material (relay/sitelink_relay/config.py).
        message = (err or out).strip().replace(temps[0], name)
        if len(temps) > 1:
            message = message.replace(temps[1], "the keys")
        raise RelayFileError(f"{name} refused by {shown} {flag}: {message}")


def forget_senders(values):
    """``forget_senders`` as the request file names them: sorted addresses, or "all".
    Raises RelayFileError naming the option and the value it refuses."""
    values = [str(v).strip() for v in values or []]
    if "all" in values:
        if len(values) > 1:
            raise RelayFileError(
                "forget_senders: all stands alone (every sender is forgotten), got "
                + ", ".join(values)
            )
        return "all"
    senders = set()
    for value in values:
        try:
            senders.add(ipaddress.IPv4Address(value))
        except ValueError:
            raise RelayFileError(
                f"forget_senders: {value!r} is not an IPv4 address (give the peer relays' "
                "addresses, as verify.yml names them, or the single word all)"
            ) from None
    return [str(a) for a in sorted(senders)]


def state_directory(state_dir):
    """The relay's state directory as it is on this host, or None when there is none.

    With DynamicUser, systemd keeps it in ``/var/lib/private/<name>`` and makes
    ``state_dir`` a symlink to it; either may be what exists.
    """
    if os.path.isdir(state_dir):
        return state_dir
    parent, name = os.path.split(os.path.normpath(state_dir))
    private = os.path.join(parent, "private", name)
    return private if os.path.isdir(private) else None


def forget_content(senders, pending):
    """The request file's text: ``senders`` with those of a ``pending`` request the relay
    has not read yet (it is not running), so that neither request is lost."""
    try:
        old = json.loads(pending)["senders"] if pending else []
    except (ValueError, TypeError, KeyError):
        old = []  # not a request we could have written: replaced
    if senders == "all" or old == "all":
        merged = "all"
    elif isinstance(old, list):
        merged = forget_senders([*senders, *(a for a in old if _is_ipv4(a))])
    else:
        merged = senders
    return json.dumps({"senders": merged}) + "\n"


def _is_ipv4(value):
    try:
        ipaddress.IPv4Address(str(value))
    except ValueError:
        return False
    return True


def run_module(module, systemd=None):
    params, check_mode = module.params, module.check_mode
    program_path = program = params["program_path"]
    active = params["config"] is not None
    new_program = None
    if params["program"] is not None:
        try:
            new_program = base64.b64decode(params["program"], validate=True)
        except (binascii.Error, ValueError):
            module.fail_json(msg="program: not base64")
    forget = forget_diff = None
    try:
        forget = forget_senders(params["forget_senders"]) or None
    except RelayFileError as exc:
        module.fail_json(msg=str(exc))
    old_program = read_bytes(program_path)
    digest = params.get("program_sha256")
    if digest is not None:
        digest = digest.strip().lower()
        if new_program is None:
            # Checksum first: the bytes only when the gateway's copy differs.
            if old_program is None or hashlib.sha256(old_program).hexdigest() != digest:
                module.exit_json(changed=False, program_needed=True)
        elif hashlib.sha256(new_program).hexdigest() != digest:
            module.fail_json(msg="program: its SHA-256 is not program_sha256")
    program_changed = new_program is not None and new_program != old_program
    staged = None
    directory = state_directory(params["state_dir"])
    files = {
        # name: (path, wanted content, mode, checker flag, reload or restart on change)
        "config": (params["config_path"], params["config"], 0o644, "--check-config", "reload"),
        # Reloaded from the live copy in the state directory, once there is one.
        "keys": (
            params["keys_path"],
            params["keys"],
            0o600,
            "--check-keys",
            "reload" if directory is not None else "restart",
        ),
        "unit": (params["unit_path"], params["unit"], 0o644, None, "restart"),
    }
    result = {"changed": False, "active": active}
    steps, changed = [], set()
    before = {name: read_file(path) for name, (path, *_unused) in files.items()}
    try:
        if params["keys"] is not None and not active:
            raise RelayFileError("keys without a config: the relay would not run to use them")
        if program_changed and not check_mode:
            # A program: everyone may run it.
            staged = program = stage_file(program_path, new_program, mode=0o755)
        # Everything is checked before anything is written. In check mode too, as far
        # as the program is there to check with (not before the first run).
        # (In check mode a new program is not there yet: the old one cannot judge.)
        can_check = not check_mode or (os.access(program, os.X_OK) and not program_changed)
        for name, (path, wanted, _mode, flag, _effect) in files.items():
            if flag and can_check and wanted is not None and wanted != before[name]:
                # the config is checked as a start would: with the keys it will have
                keys = params["keys"] if name == "config" else None
                check_file(module, program, flag, path, wanted, program_path, keys=keys)
        if program_changed:
            steps.append("install " + program_path)
            changed.add("restart")
            if not check_mode:
                move_into_place(module, staged, program_path, 0o755)
                staged = None
        written = set()
        for name, (path, wanted, mode, _flag, effect) in files.items():
            if wanted == before[name]:
                continue
            if wanted is None:
                if remove_file(path, check_mode):
                    steps.append("remove " + path)
                continue
            steps.append("write " + path)
            written.add(name)
            changed.add(effect)
            if not check_mode:
                write_atomic(module, path, wanted, mode=mode)
        if directory is not None:
            # The keys' live copy, what a running relay takes on SIGHUP (and at start):
            # made when keys the relay has change, and from then on kept equal to the
            # keys file (the credential of the next start). Not needed while the
            # credential holds the keys, nor for a relay's first keys (its unit changes:
            # a restart). No diff: the keys file's fingerprint says it.
            live_path = os.path.join(directory, LIVE_KEYS_FILE)
            current = read_file(live_path)
            live = params["keys"] if active else None
            if current is None and before["keys"] in (None, params["keys"]):
                live = None
            if live != current:
                if live is None:
                    if remove_file(live_path, check_mode):
                        steps.append("remove " + live_path)
                else:
                    steps.append("write " + live_path)
                    changed.add("reload")
                    if not check_mode:
                        write_atomic(module, live_path, live, mode=0o600)
                        owner = os.stat(directory)
                        os.chown(live_path, owner.st_uid, owner.st_gid)
        if forget is not None:
            # Written every time it is asked for: an explicit request, not a state.
            if directory is None:
                module.warn(
                    f"forget_senders: no state directory {params['state_dir']}: the relay "
                    "keeps no replay windows here yet, so there is nothing to forget"
                )
            else:
                forget_path = os.path.join(directory, FORGET_FILE)
                pending = read_file(forget_path)
                content = forget_content(forget, pending)
                forget_diff = file_diff(forget_path, pending, content, str)
                steps.append("write " + forget_path)
                # A running relay reads it on SIGHUP; a stopped one when it starts.
                changed.add("reload")
                if not check_mode:
                    # 0644: the relay (a dynamic user) reads it, and deletes it from
                    # the directory it owns.
                    write_atomic(module, forget_path, content, mode=0o644)
        systemd = systemd or Systemd(module)
        if "unit" in written and not check_mode:
            systemd.run("daemon-reload")
        running = systemd.is_active(SERVICE)
        enabled = systemd.is_enabled(SERVICE)
        actions = []
        if active and not enabled:
            actions.append("enable")
        if not active and enabled:
            actions.append("disable")
        if active and not running:
            actions.append("start")
        elif not active and running:
            actions.append("stop")
        elif active and "restart" in changed:
            actions.append("restart")
        elif active and "reload" in changed:
            actions.append("reload")
        for verb in actions:
            steps.append(f"systemctl {verb} {SERVICE}")
            if not check_mode:
                systemd.run(verb, SERVICE)
    except (RelayFileError, SystemdError, OSError) as exc:
        module.fail_json(msg=str(exc), steps=steps, **result)
    finally:
        if staged is not None and os.path.exists(staged):
            os.unlink(staged)
    result["changed"] = bool(steps)
    result["steps"] = steps
    if module._diff:
        # The program as its digest, the keys as a fingerprint.
        diffs = [
            file_diff(path, before[name], wanted, keys_fingerprint if name == "keys" else str)
            for name, (path, wanted, *_unused) in files.items()
            if wanted != before[name]
        ]
        if program_changed:
            diffs.insert(0, file_diff(program_path, old_program, new_program, program_digest))
        if forget_diff is not None:
            diffs.append(forget_diff)
        result["diff"] = diffs
    module.exit_json(**result)
