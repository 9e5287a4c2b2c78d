# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the collection's modules leave on a gateway so it comes back at boot.

Files are written atomically and only when their content changes; a boot
unit is a systemd oneshot that the module writes and enables itself, so one
module call both applies a change and persists it (under software emulation
every extra task costs seconds per gateway, on every run).
"""

from __future__ import annotations

import hashlib
import os
import tempfile

UNIT_DIR = "/etc/systemd/system"


def read_file(path):
    """Content of ``path``, or None when it does not exist or is unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def hidden(secret):
    """What a diff may show of a secret: a short fingerprint.

    32 bits of a hash of a 256-bit random key say nothing about the key, but they
    make a rotation visible: without them a change of keys alone would diff as
    nothing at all.
    """
    digest = hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8]
    return f"<hidden> (sha256 {digest}...)"


def stage_file(path, content, mode=0o644):
    """``content`` (text or bytes) in a temp file beside ``path``, with ``mode``, to be
    renamed into place with :func:`move_into_place`; create the directory (0755)."""
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, 0o755)
        os.chmod(directory, 0o755)  # noqa: S103  (world-readable on purpose; umask filters makedirs)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        binary = isinstance(content, bytes)
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as fh:
            fh.write(content)
        os.chmod(tmp, mode)
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def move_into_place(module, tmp, path, mode):
    module.atomic_move(tmp, path)
    os.chmod(path, mode)  # atomic_move keeps an existing file's mode


def write_atomic(module, path, content, mode=0o644):
    """Replace ``path`` with ``content`` in one rename; create its directory (0755)."""
    tmp = stage_file(path, content, mode)
    try:
        move_into_place(module, tmp, path, mode)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def put_file(module, path, old, new, mode=0o644):
    """Make ``path``, which holds ``old`` (None: absent), hold ``new`` (None: absent):
    written atomically, or deleted; nothing when they are the same."""
    if new == old:
        return
    if new is None:
        remove_file(path, False)
    else:
        write_atomic(module, path, new, mode)


def remove_file(path, check_mode):
    """Delete ``path`` if it exists. Returns whether it was (or would be) deleted."""
    if not os.path.lexists(path):
        return False
    if not check_mode:
        os.unlink(path)
    return True


def remove_dir_if_empty(path, check_mode, leaving=()):
    """Delete directory ``path`` if it holds nothing but ``leaving``.

    ``leaving``: names in it that this same call deletes first, so check mode
    predicts what a real run does. Returns whether it was (or would be) deleted.
    """
    try:
        left = set(os.listdir(path)) - set(leaving)
    except OSError:  # missing, or not a directory
        return False
    if left:
        return False
    if not check_mode:
        os.rmdir(path)
    return True


def unit_path(unit):
    return os.path.join(UNIT_DIR, unit)


class SystemdError(Exception):
    def __init__(self, argv, rc, stderr):
        self.argv, self.rc, self.stderr = argv, rc, stderr
        super().__init__("'{}' failed (rc={}): {}".format(" ".join(argv), rc, stderr.strip()))


class Systemd:
    """systemctl through AnsibleModule.run_command; tests inject a fake."""

    def __init__(self, module):
        self.module = module
        self.systemctl = module.get_bin_path("systemctl", required=True)

    def run(self, *args, check=True):
        argv = [self.systemctl, *args]
        rc, out, err = self.module.run_command(argv, check_rc=False)
        if check and rc != 0:
            raise SystemdError(argv, rc, err or out)
        return rc, out.strip()

    def is_enabled(self, unit):
        return self.run("is-enabled", unit, check=False)[1] == "enabled"

    def is_active(self, unit):
        return self.run("is-active", unit, check=False)[1] == "active"


def ensure_boot_unit(module, systemd, unit, content, check_mode):
    """Write and enable ``unit``. Returns (changed, old_content, steps done or due)."""
    path = unit_path(unit)
    old = read_file(path)
    steps = []
    if old != content:
        steps.append("write " + path)
        if not check_mode:
            write_atomic(module, path, content)
            systemd.run("daemon-reload")
    if not systemd.is_enabled(unit):
        steps.append("systemctl enable " + unit)
        if not check_mode:
            systemd.run("enable", unit)
    return bool(steps), old, steps


def remove_boot_unit(module, systemd, unit, check_mode):
    """Disable and delete ``unit`` if it exists. Returns (changed, steps)."""
    path = unit_path(unit)
    if not os.path.exists(path):
        return False, []
    steps = ["systemctl disable --now " + unit, "remove " + path]
    if not check_mode:
        systemd.run("disable", "--now", unit, check=False)
        # A failed unit would linger as "not-found failed" in systemctl list-units.
        systemd.run("reset-failed", unit, check=False)
        os.unlink(path)
        systemd.run("daemon-reload")
    return True, steps
