"""Structured journal logs (relay/sitelink_relay/journal.py) against a stand-in journald."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path

import pytest
from sitelink_relay import journal
from sitelink_relay.journal import JournalHandler


def parse(datagram: bytes) -> list[tuple[str, bytes]]:
    """journald's side of the native protocol."""
    fields = []
    i = 0
    while i < len(datagram):
        end = datagram.index(b"\n", i)
        line = datagram[i:end]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = end + 1
        else:  # KEY\n<u64 LE length><value>\n
            key = line
            (size,) = struct.unpack("<Q", datagram[end + 1 : end + 9])
            value = datagram[end + 9 : end + 9 + size]
            assert datagram[end + 9 + size : end + 10 + size] == b"\n"
            i = end + 10 + size
        fields.append((key.decode("ascii"), value))
    return fields


class FakeJournal:
    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(5)

    def entry(self) -> dict[str, bytes]:
        fields = parse(self.sock.recv(1 << 22))
        names = [k for k, _unused in fields]
        assert len(names) == len(set(names)), names
        return dict(fields)

    def pending(self) -> int:
        n = 0
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(1 << 22)
                n += 1
        except BlockingIOError:
            return n
        finally:
            self.sock.settimeout(5)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def fake_journal(tmp_path):
    j = FakeJournal(tmp_path / "journal.sock")
    yield j
    j.close()


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture
def logger(fake_journal):
    """A logger of its own (not the relay's, whose records caplog must still see)."""
    fallback = Collect()
    handler = JournalHandler("sitelink-relay", fake_journal.path, fallback=fallback)
    log = logging.getLogger("sitelink-relay-test-journal")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, handler, fallback
    handler.close()
    log.handlers[:] = []


def test_message_and_standard_fields(logger, fake_journal):
    log, _unused, fallback = logger
    log.info("udp/%d ready", 6799)
    entry = fake_journal.entry()
    assert entry["MESSAGE"] == b"udp/6799 ready"
    assert entry["PRIORITY"] == b"6"
    assert entry["SYSLOG_IDENTIFIER"] == b"sitelink-relay"
    assert entry["CODE_FUNC"] == b"test_message_and_standard_fields"
    assert entry["CODE_FILE"].endswith(b"test_journal.py")
    assert int(entry["CODE_LINE"]) > 0
    assert fallback.records == []


@pytest.mark.parametrize(
    "level, priority",
    [(logging.DEBUG, b"7"), (logging.INFO, b"6"), (25, b"6"), (logging.WARNING, b"4")]
    + [(logging.ERROR, b"3"), (logging.CRITICAL, b"2")],
)
def test_priorities(logger, fake_journal, level, priority):
    logger[0].log(level, "x")
    assert fake_journal.entry()["PRIORITY"] == priority


def test_structured_fields(logger, fake_journal):
    log = logger[0]
    log.warning(
        "storm control: %s cut off",
        "192.168.1.66",
        extra={
            "fields": {
                "SITELINK_EVENT": "cut_off",
                "SITELINK_PORT": 6799,
                "sitelink_peer": "192.168.2.126",  # upper-cased
                "SITELINK_NOTE": "two\nlines",  # binary form
                "SITELINK_NONE": None,  # left out
                "S" * 64: "longest name allowed",
            }
        },
    )
    entry = fake_journal.entry()
    assert entry["MESSAGE"] == b"storm control: 192.168.1.66 cut off"
    assert entry["SITELINK_EVENT"] == b"cut_off"
    assert entry["SITELINK_PORT"] == b"6799"
    assert entry["SITELINK_PEER"] == b"192.168.2.126"
    assert entry["SITELINK_NOTE"] == b"two\nlines"
    assert entry["S" * 64] == b"longest name allowed"
    assert "SITELINK_NONE" not in entry


def test_invalid_field_names_are_left_out(logger, fake_journal):
    bad = {
        "_PID": "1",  # trusted fields are journald's
        "_SITELINK": "x",
        "1ST": "x",  # no leading digit
        "BAD-NAME": "x",
        "BAD NAME": "x",
        "S" * 65: "x",
        "": "x",
        "ÄRGER": "x",
        "A=B": "x",  # would read as field A
        "X\nMESSAGE": "forged",  # would add a second MESSAGE
        5: "x",
        "MESSAGE": "forged",  # ours
        "PRIORITY": "0",
        "SYSLOG_IDENTIFIER": "sshd",
    }
    logger[0].info("hello", extra={"fields": {**bad, "OK_1": "yes"}})
    entry = fake_journal.entry()
    assert entry["MESSAGE"] == b"hello"
    assert entry["PRIORITY"] == b"6"
    assert entry["SYSLOG_IDENTIFIER"] == b"sitelink-relay"
    assert entry["OK_1"] == b"yes"
    assert set(entry) == {
        "MESSAGE",
        "PRIORITY",
        "SYSLOG_IDENTIFIER",
        "CODE_FILE",
        "CODE_LINE",
        "CODE_FUNC",
        "OK_1",
    }


def test_fields_that_are_not_a_mapping_are_ignored(logger, fake_journal):
    logger[0].info("hello", extra={"fields": ["SITELINK_EVENT=x"]})
    assert "SITELINK_EVENT" not in fake_journal.entry()


def test_field_name_rule():
    assert journal.journal_field_name("sitelink_event") == "SITELINK_EVENT"
    assert journal.journal_field_name("A") == "A"
    for name in ("_A", "9A", "A-B", "A" * 65, "", None, b"A"):
        assert journal.journal_field_name(name) is None


def test_multiline_message_and_exceptions(logger, fake_journal):
    log = logger[0]
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("reload failed:\nline two")
    entry = fake_journal.entry()
    message = entry["MESSAGE"].decode()
    assert message.startswith("reload failed:\nline two\nTraceback")
    assert "ValueError: boom" in message
    assert entry["PRIORITY"] == b"3"


def test_unencodable_values(logger, fake_journal):
    class Weird:
        def __str__(self):
            raise RuntimeError("no")

    logger[0].info("lone \ud800 surrogate", extra={"fields": {"SITELINK_X": Weird()}})
    entry = fake_journal.entry()
    assert entry["MESSAGE"] == b"lone \\ud800 surrogate"
    assert entry["SITELINK_X"] == b"<unprintable Weird>"


def _sndbuf() -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        return s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


def test_too_big_is_truncated(logger, fake_journal):
    log, _unused, fallback = logger
    log.warning("x" * (2 * _sndbuf()) + " end", extra={"fields": {"SITELINK_EVENT": "big"}})
    entry = fake_journal.entry()
    assert entry["MESSAGE"] == b"x" * journal.TRUNCATED_VALUE + b"... [truncated]"
    assert entry["SITELINK_EVENT"] == b"big"  # kept on the second try
    assert entry["PRIORITY"] == b"4"
    assert fallback.records == []


def test_too_many_big_fields_keep_the_message(logger, fake_journal):
    log, _unused, fallback = logger
    n = 2 * _sndbuf() // journal.TRUNCATED_VALUE + 1
    big = {f"SITELINK_F{i}": "y" * (journal.TRUNCATED_VALUE * 2) for i in range(n)}
    log.error("é" * journal.TRUNCATED_VALUE, extra={"fields": big})
    entry = fake_journal.entry()
    assert set(entry) == {"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER"}
    # cut on a character boundary: "é" is two bytes
    assert entry["MESSAGE"] == "é".encode() * (journal.TRUNCATED_VALUE // 2) + b"... [truncated]"
    assert fallback.records == []


def test_no_journal_falls_back_to_stderr(tmp_path):
    fallback = Collect()
    handler = JournalHandler("sitelink-relay", str(tmp_path / "missing.sock"), fallback=fallback)
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "hello %s", ("you",), None)
    handler.handle(record)
    assert [r.getMessage() for r in fallback.records] == ["hello you"]
    # a socket file nobody listens on (journald stopped): ECONNREFUSED, same thing
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(str(tmp_path / "dead.sock"))
    dead.close()
    handler.path = str(tmp_path / "dead.sock")
    handler.handle(record)
    assert len(fallback.records) == 2
    handler.close()


def test_default_fallback_is_stderr_with_priorities(tmp_path, capsys):
    handler = JournalHandler("sitelink-relay", str(tmp_path / "missing.sock"))
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "a\nb", None, None)
    handler.handle(record)
    handler.close()
    assert capsys.readouterr().err == "<4>a | b\n"


def test_busy_journal_drops_and_counts(logger, fake_journal):
    log, handler, fallback = logger
    for i in range(100_000):
        log.info("flood %d", i)
        if handler.lost >= 5:
            break
    lost = handler.lost
    assert lost >= 5  # never blocked, never raised
    assert fallback.records == []  # stderr would block just the same
    assert fake_journal.pending() > 0
    log.info("after")
    entry = fake_journal.entry()
    assert entry["MESSAGE"] == b"after"
    assert entry[journal.LOST_FIELD] == str(lost).encode()
    assert handler.lost == 0
    log.info("next")
    assert journal.LOST_FIELD not in fake_journal.entry()


def test_logging_errors_never_raise(logger, fake_journal, capsys):
    log = logger[0]
    log.info("%d", "not a number")  # formatting fails: reported on stderr, not raised
    assert "Logging error" in capsys.readouterr().err
    log.info("still fine")
    assert fake_journal.entry()["MESSAGE"] == b"still fine"


def test_encode_fields():
    data = journal.encode_fields([("A", b"1"), ("B", b"x\ny"), ("C", b"")])
    assert data == b"A=1\nB\n" + struct.pack("<Q", 3) + b"x\ny\nC=\n"
    assert parse(data) == [("A", b"1"), ("B", b"x\ny"), ("C", b"")]


# ----------------------------------------------------------------- setup_logging

PROG = "sitelink-relay-test-setup"


@pytest.fixture
def stream(tmp_path):
    with open(tmp_path / "stderr", "w+", encoding="utf-8") as fh:
        yield fh
    log = logging.getLogger(PROG)
    for h in log.handlers:
        h.close()
    log.handlers[:] = []


def journal_stream_of(fh) -> str:
    st = Path(fh.name).stat()
    return f"{st.st_dev}:{st.st_ino}"


def test_setup_logging_interactive(stream, fake_journal):
    log = journal.setup_logging(False, PROG, environ={}, stream=stream)
    assert log is logging.getLogger(PROG) and log.level == logging.INFO and not log.propagate
    log.warning("hello")
    log.debug("hidden")
    stream.seek(0)
    assert stream.read() == f"{PROG}: WARNING: hello\n"


def test_setup_logging_under_systemd(stream, fake_journal):
    env = {"JOURNAL_STREAM": journal_stream_of(stream)}
    log = journal.setup_logging(
        True, PROG, environ=env, stream=stream, socket_path=fake_journal.path
    )
    assert [type(h) for h in log.handlers] == [JournalHandler]
    assert log.level == logging.DEBUG
    log.debug("datagram", extra={"fields": {"SITELINK_PORT": 6799}})
    entry = fake_journal.entry()
    assert (entry["MESSAGE"], entry["PRIORITY"], entry["SITELINK_PORT"]) == (
        b"datagram",
        b"7",
        b"6799",
    )
    assert entry["SYSLOG_IDENTIFIER"] == PROG.encode()
    # set up again: the first handler's socket is closed, one handler left
    first = log.handlers[0]
    journal.setup_logging(False, PROG, environ=env, stream=stream, socket_path=fake_journal.path)
    assert first._sock is None and len(log.handlers) == 1
    # journald goes away: records go to stderr, in the journal stream's format
    fake_journal.close()
    log.warning("journald restarting")
    stream.seek(0)
    assert stream.read() == "<4>journald restarting\n"


def test_setup_logging_journal_stream_without_socket(stream, tmp_path):
    env = {"JOURNAL_STREAM": journal_stream_of(stream)}
    log = journal.setup_logging(
        False, PROG, environ=env, stream=stream, socket_path=str(tmp_path / "nope")
    )
    assert [type(h) for h in log.handlers] == [logging.StreamHandler]
    log.error("multi\nline")
    stream.seek(0)
    assert stream.read() == "<3>multi | line\n"


@pytest.mark.parametrize("value", ["1:2", "garbage", "", "12"])
def test_setup_logging_stderr_not_the_journal_stream(stream, fake_journal, value):
    """JOURNAL_STREAM inherited, but stderr redirected since: plain stderr."""
    log = journal.setup_logging(
        False, PROG, environ={"JOURNAL_STREAM": value}, stream=stream, socket_path=fake_journal.path
    )
    assert [type(h) for h in log.handlers] == [logging.StreamHandler]
    log.info("hi")
    stream.seek(0)
    assert stream.read() == f"{PROG}: INFO: hi\n"


def test_stderr_is_journal_without_a_file_descriptor():
    import io

    assert journal.stderr_is_journal({"JOURNAL_STREAM": "1:2"}, io.StringIO()) is False
