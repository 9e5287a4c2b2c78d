"""Structured logs: the systemd journal's native protocol, stderr otherwise.

Under systemd, log records go to journald as datagrams of ``KEY=value`` fields
(sd_journal_sendv(3)'s protocol, no libsystemd needed): MESSAGE, PRIORITY,
SYSLOG_IDENTIFIER, CODE_FILE/CODE_LINE/CODE_FUNC, and any fields a call adds::

    log.warning("storm control: %s cut off", src,
                extra={"fields": {"SITELINK_EVENT": "cut_off", "SITELINK_SOURCE": src}})

so that ``journalctl SITELINK_EVENT=cut_off`` finds them.  Run by hand, or when the
journal socket is missing, the same records go to stderr as before.  Nothing here
raises into the code that logs, and nothing blocks it: a busy journal loses log
lines (counted, and reported in the next one) rather than stalling the relay.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping
from typing import Any, Optional, TextIO

from . import PROG

JOURNAL_SOCKET = "/run/systemd/journal/socket"
TRUNCATED_VALUE = 8192  # bytes of each value kept when a record is too big to send
# journald's rule for field names: A-Z, 0-9, _; not starting with a digit; at most 64.
# A leading _ marks the trusted fields journald adds itself: never ours to send.
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
# Set by this handler; fields given in extra={"fields": ...} cannot override them.
_OWN_FIELDS = frozenset(
    {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC"}
)
LOST_FIELD = "SITELINK_LOG_LOST"  # log records lost since the last one that got through


def syslog_priority(levelno: int) -> int:
    """syslog(3) priority of a logging level: 7 debug ... 2 critical."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class StderrFormatter(logging.Formatter):
    """One line per record; with a ``<N>`` syslog priority when stderr is the journal.

    journald reads the ``<N>`` prefix of each line written to a journal stream
    (SyslogLevelPrefix=, on by default); newlines would split a record into entries.
    """

    def __init__(self, journal: bool, prog: str = PROG):
        super().__init__("%(message)s" if journal else prog + ": %(levelname)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            return f"<{syslog_priority(record.levelno)}>" + text.replace("\n", " | ")
        return text


def journal_field_name(name: Any) -> Optional[str]:
    """``name`` as a journal field name (upper-cased), or None if it cannot be one."""
    if not isinstance(name, str):
        return None
    name = name.upper()
    return name if _FIELD_NAME.fullmatch(name) else None


def _value_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # a field value whose __str__ fails still gets a value
        text = f"<unprintable {type(value).__name__}>"
    return text.encode("utf-8", "backslashreplace")  # lone surrogates too


def _truncate(data: bytes, limit: int) -> bytes:
    if len(data) <= limit:
        return data
    # Drop a UTF-8 sequence cut in half, mark the cut.
    return data[:limit].decode("utf-8", "ignore").encode("utf-8") + b"... [truncated]"


def encode_fields(fields: list[tuple[str, bytes]]) -> bytes:
    """The native protocol: ``KEY=value\\n``; a value containing a newline as
    ``KEY\\n<64-bit little-endian length><value>\\n``."""
    parts = []
    for name, data in fields:
        key = name.encode("ascii")
        if b"\n" in data:
            parts.append(key + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(key + b"=" + data + b"\n")
    return b"".join(parts)


class JournalHandler(logging.Handler):
    """A logging handler that sends each record to journald's native socket.

    When the socket is unavailable (journald stopped, no such path), the record goes to
    ``fallback`` (stderr) instead; when journald is busy (its queue full), it is
    dropped and counted rather than blocking the caller.
    """

    def __init__(
        self,
        identifier: str = PROG,
        path: str = JOURNAL_SOCKET,
        fallback: Optional[logging.Handler] = None,
        level: int = logging.NOTSET,
    ):
        super().__init__(level)
        self.identifier = identifier
        self.path = path
        if fallback is None:
            fallback = logging.StreamHandler(sys.stderr)
            fallback.setFormatter(StderrFormatter(True, identifier))
        self.fallback = fallback
        self.lost = 0  # records dropped because journald was busy
        self._sock: Optional[socket.socket] = None
        self.setFormatter(logging.Formatter("%(message)s"))

    def _socket(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)  # a stuck journal must not stall the relay
            self._sock = sock
        return self._sock

    def fields(self, record: logging.LogRecord) -> list[tuple[str, bytes]]:
        """The record's journal fields: ours first, then the valid extra ones."""
        fields = [
            ("MESSAGE", _value_bytes(self.format(record))),
            ("PRIORITY", b"%d" % syslog_priority(record.levelno)),
            ("SYSLOG_IDENTIFIER", _value_bytes(self.identifier)),
        ]
        if record.pathname:
            fields.append(("CODE_FILE", _value_bytes(record.pathname)))
        if record.lineno:
            fields.append(("CODE_LINE", b"%d" % record.lineno))
        if record.funcName:
            fields.append(("CODE_FUNC", _value_bytes(record.funcName)))
        extra = getattr(record, "fields", None)
        if isinstance(extra, Mapping):
            for key, value in extra.items():
                name = journal_field_name(key)
                # Invalid names are left out: journald ignores them anyway, and a name
                # with "=" or a newline would forge other fields (even MESSAGE).
                if name is not None and name not in _OWN_FIELDS and value is not None:
                    fields.append((name, _value_bytes(value)))
        if self.lost:
            fields.append((LOST_FIELD, b"%d" % self.lost))
        return fields

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = self.fields(record)
            sent = self._send(fields)
            if sent is None:
                self.lost = 0
            elif sent == errno.EAGAIN:
                self.lost += 1
            else:
                self.fallback.handle(record)
        except Exception:
            self.handleError(record)  # prints to stderr, never raises

    def _send(self, fields: list[tuple[str, bytes]]) -> Optional[int]:
        """None when sent, else the errno that stopped it.

        A datagram larger than the socket buffer (EMSGSIZE, or ENOBUFS for huge ones)
        is retried with every value truncated, then with the message alone.
        """
        sock = self._socket()
        attempts = (
            lambda: fields,
            lambda: [(k, _truncate(v, TRUNCATED_VALUE)) for k, v in fields],
            lambda: [(k, _truncate(v, TRUNCATED_VALUE)) for k, v in fields[:3]],
        )
        code: Optional[int] = None
        for attempt in attempts:
            try:
                sock.sendto(encode_fields(attempt()), self.path)
                return None
            except BlockingIOError:
                return errno.EAGAIN
            except OSError as exc:
                code = exc.errno or errno.EIO
                if code not in (errno.EMSGSIZE, errno.ENOBUFS):
                    return code
        return code

    def close(self) -> None:
        try:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        finally:
            super().close()


def journal_available(path: str = JOURNAL_SOCKET) -> bool:
    """Whether a journald listens on ``path`` (connect() sends nothing)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(path)
    except OSError:
        return False
    return True


def stderr_is_journal(environ: Mapping[str, str], stream: Any) -> bool:
    """Whether ``stream`` is the journal stream systemd connected us to.

    systemd sets JOURNAL_STREAM=<device>:<inode> of that stream; comparing it with the
    stream itself (as systemd.exec(5) advises) rules out a stderr redirected since,
    e.g. by a shell started from a unit.
    """
    value = environ.get("JOURNAL_STREAM", "")
    dev, _unused, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no file descriptor, or closed
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(
    debug: bool,
    prog: str = PROG,
    environ: Optional[Mapping[str, str]] = None,
    stream: Optional[TextIO] = None,
    socket_path: str = JOURNAL_SOCKET,
) -> logging.Logger:
    """The ``prog`` logger, to the journal (native protocol) under systemd, else stderr.

    Replaces the logger's handlers (closing a JournalHandler set up before), so it may
    be called again.  Debug enables per-datagram records.
    """
    env = os.environ if environ is None else environ
    out = sys.stderr if stream is None else stream
    journal_stream = stderr_is_journal(env, out)
    stderr_handler = logging.StreamHandler(out)
    stderr_handler.setFormatter(StderrFormatter(journal_stream, prog))
    handler: logging.Handler = stderr_handler
    if journal_stream and journal_available(socket_path):
        handler = JournalHandler(prog, socket_path, fallback=stderr_handler)
    logger = logging.getLogger(prog)
    for old in logger.handlers:
        if isinstance(old, JournalHandler):
            old.close()
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    return logger
