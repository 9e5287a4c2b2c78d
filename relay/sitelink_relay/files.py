"""Reading the relay's own files: regular files only, JSON without duplicate keys."""

from __future__ import annotations

import json
import os
import stat
from typing import Any


class FileProblem(Exception):
    """A file that cannot be used; the message names the path, never the content."""


def read_regular(path: str, limit: int) -> bytes:
    """Up to ``limit`` + 1 bytes of the regular file ``path``.

    Opened non-blocking and checked with fstat before any read: a FIFO, a device
    or a directory at a config path is refused at once instead of hanging the
    relay (a FIFO's open and read block until someone writes to it).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise FileProblem(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileProblem(f"{path}: not a regular file ({_kind(mode)})")
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise FileProblem(f"{path}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a plain file"


class DuplicateKey(ValueError):
    """A JSON object names one key twice; ``key`` is the name (never a value)."""

    def __init__(self, key: str):
        super().__init__(f"duplicate key {json.dumps(key)}")
        self.key = key


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """``object_pairs_hook`` for json.loads: refuse what ``dict`` would overwrite silently."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


def writable_dir(path: str) -> str | None:
    """Why ``path`` cannot hold the relay's state (None: it can, or can be created)."""
    probe = path
    while probe and not os.path.lexists(probe):
        parent = os.path.dirname(probe.rstrip("/"))
        if parent == probe:
            break
        probe = parent
    if not probe:
        return f"{path}: no such directory"
    if not os.path.isdir(probe):
        return f"{probe}: not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe}: not writable by uid {os.geteuid()}"
    return None
