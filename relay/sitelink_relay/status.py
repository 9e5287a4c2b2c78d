"""The status file the relay writes, ``--status`` renders, and its Prometheus form.

The relay writes ``Relay.status()`` as JSON every few seconds.  Readers
(``read_status``, ``format_status``, ``prometheus_text``) take whatever a file holds:
files of older or newer relays, hand-edited or truncated ones.  Wrong types anywhere
render as "?" (or are left out of the metrics); nothing here raises on bad content.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import stat
import time
from typing import Any, Callable, Optional, Union

from . import PROG

STATUS_INTERVAL = 5.0  # seconds between status file writes
READ_LIMIT = 4 << 20  # a status file is a few KiB; more is not one (e.g. /dev/zero)
MAX_TEXT = 200  # characters of one value shown by --status
MAX_ITEMS = 50  # entries of one list or mapping shown by --status
MAX_LABEL = 1024  # characters of one Prometheus label value

Number = Union[int, float]


# ----------------------------------------------------------------------- writing


def _write_atomic(path: str, write: Callable[[Any], None]) -> None:
    """Write via a temporary file in the same directory and rename it over ``path``.

    Readers (``--status``, node_exporter's textfile collector) never see a partial
    file.  No fsync: the file is rewritten every few seconds from the event loop, which
    must not stall on the disk, and a lost update after a crash is harmless.  The
    temporary name does not end in ``.prom``, so the textfile collector skips it.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            write(fh)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str, data: Any) -> None:
    def write(fh: Any) -> None:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")

    _write_atomic(path, write)


def write_text_atomic(path: str, text: str) -> None:
    """E.g. the metrics file for node_exporter's textfile collector (mode 0644)."""
    _write_atomic(path, lambda fh: fh.write(text))


# ----------------------------------------------------------------------- reading


def read_status(path: str) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """(data, None), or (None, why it is not a readable status file).  Never raises.

    The message leaves out the path, e.g. "No such file or directory" or "invalid JSON:
    Expecting value: line 1 column 1 (char 0)".
    """
    try:
        raw = _read_limited(path)
    except OSError as exc:
        return None, exc.strerror or str(exc)
    except ValueError as exc:  # not a regular file, too large
        return None, str(exc)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start})"
    try:
        data = json.loads(text)
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except (ValueError, MemoryError) as exc:  # JSONDecodeError, integers too long
        return None, f"invalid JSON: {_text(str(exc))}"
    if not isinstance(data, dict):
        return None, f"not a status file: JSON {_kind(data)}, not an object"
    return data, None


def _read_limited(path: str) -> bytes:
    # O_NONBLOCK: a FIFO given as the path must not hang --status.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ValueError("is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        chunks = []
        size = 0
        while size <= READ_LIMIT:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > READ_LIMIT:
            raise ValueError(f"larger than {READ_LIMIT} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


# ------------------------------------------------- values of any type, safely


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else type(value).__name__


def _escape_char(c: str) -> str:
    return c.encode("unicode_escape", "backslashreplace").decode("ascii", "replace")


def _printable(s: str, limit: int) -> str:
    """One line of at most ``limit`` printable characters (no terminal escapes)."""
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    if not s.isprintable():
        s = "".join(c if c.isprintable() else _escape_char(c) for c in s)
    return s


def _num_text(n: Number) -> str:
    if isinstance(n, bool):
        return "true" if n else "false"
    if isinstance(n, int):
        if -(10**18) < n < 10**18:
            return str(n)
        try:
            return f"{float(n):.3e}"
        except OverflowError:
            return "huge" if n > 0 else "-huge"
    if math.isfinite(n) and n.is_integer() and abs(n) < 1e18:
        return str(int(n))
    return f"{n:g}"  # nan, inf too


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    """Any value as one short printable line; never raises, never recurses."""
    if isinstance(value, str):
        return _printable(value, limit)
    if value is None:
        return "?"
    if isinstance(value, (bool, int, float)):
        return _num_text(value)
    if isinstance(value, dict):
        return f"({_kind(value)} of {len(value)} keys)"
    if isinstance(value, (list, tuple)):
        return f"({_kind(value)} of {len(value)} items)"
    try:
        return _printable(str(value), limit)
    except Exception:  # a foreign object's __str__ (status data is normally JSON)
        return type(value).__name__


def _number(value: Any) -> Optional[Number]:
    """A finite number from a number or a numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= 64:
        s = value.strip()
        try:
            return int(s)
        except ValueError:
            pass
        try:
            f = float(s)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def _count_text(value: Any) -> str:
    n = _number(value)
    return "?" if n is None else _num_text(n)


def _mapping(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _sum_text(value: Any) -> str:
    """Total of a {name: count} mapping; "?" when it is not one."""
    if value is None:
        return "0"
    if not isinstance(value, dict):
        return "?"
    total: Number = 0
    try:
        for v in value.values():
            n = _number(v)
            if n is not None:
                total += n
    except OverflowError:  # an integer beyond float range plus a float
        return "huge"
    return _num_text(total)


def _sort_key(key: Any) -> tuple[int, int, str]:
    """Ports numerically, then everything else by text; mixed key types never compare."""
    n = key if isinstance(key, int) and not isinstance(key, bool) else None
    if isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 10:
        n = int(key)
    if n is not None and -(2**62) < n < 2**62:
        return (0, n, "")
    return (1, 0, _text(key))


def _sorted_items(value: Any) -> list[tuple[Any, Any]]:
    return sorted(_mapping(value).items(), key=lambda kv: _sort_key(kv[0]))


def _list(value: Any) -> list[str]:
    """A list of addresses (or a single one) as text; nothing for other types."""
    if isinstance(value, str):
        return [_text(value)]
    if not isinstance(value, (list, tuple)):
        return []
    shown = [_text(v) for v in value[:MAX_ITEMS]]
    if len(value) > MAX_ITEMS:
        shown.append(f"... ({len(value) - MAX_ITEMS} more)")
    return shown


def _counts_text(value: Any) -> str:
    """ "name n, name n" of a {name: count} mapping, sorted, at most MAX_ITEMS."""
    items = _sorted_items(value)
    shown = [f"{_text(k)} {_count_text(v)}" for k, v in items[:MAX_ITEMS]]
    if len(items) > MAX_ITEMS:
        shown.append(f"... ({len(items) - MAX_ITEMS} more)")
    return ", ".join(shown)


def _fmt_age(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _time(value: Any) -> Optional[float]:
    n = _number(value)
    if n is None:
        return None
    try:
        f = float(n)
    except OverflowError:
        return None
    return f if 0 < f < 1e15 else None  # 0 or absurd: unknown


def _table(rows: list[tuple[str, ...]], left: int = 1) -> list[str]:
    """Columns padded: the first ``left`` ones (names) left-aligned, numbers right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()
        for r in rows
    ]


# ------------------------------------------------------------------ --status


def format_status(data: Any, now: Optional[float] = None) -> str:
    """Human-readable rendering of a status file's content (any JSON value)."""
    if now is None:
        now = time.time()
    if not isinstance(data, dict):
        return f"{PROG}: malformed status: JSON {_kind(data)}, not an object"
    lines = _head(data, now)
    lines.extend(_ports(data.get("ports")))
    lines.extend(_peers(data.get("peers")))
    lines.extend(_storm(data.get("storm")))
    lines.extend(_replay(data.get("replay")))
    return "\n".join(lines)


def _head(data: dict[str, Any], now: float) -> list[str]:
    updated = _time(data.get("updated"))
    started = _time(data.get("started"))
    lines = [
        "{} {}: pid {}, {} mode, up {}, updated {} ago".format(
            PROG,
            _text(data.get("relay_version")),
            _text(data.get("pid")),
            _text(data.get("mode")),
            _fmt_age(updated - started) if started and updated else "?",
            _fmt_age(now - updated) if updated else "?",
        )
    ]
    interval = _number(data.get("interval"))
    if interval is None or not 0 < interval < 1e9:
        interval = STATUS_INTERVAL
    if updated and now - updated > 3 * interval + 1:
        lines.append("WARNING: status is stale; is the relay running?")
    lan = data.get("lan")
    if lan is not None and not isinstance(lan, dict):
        lines.append(f"LAN: malformed (JSON {_kind(lan)})")
    elif isinstance(lan, dict):
        lines.append(
            "LAN {} (ifindex {}) address {} broadcast {}".format(
                _text(lan.get("interface")),
                _text(lan.get("ifindex")),
                _text(lan.get("address")),
                _text(lan.get("broadcast")),
            )
        )
    setup = [
        f"{key} {_text(data[key])}"
        for key in ("config", "wire", "office")
        if data.get(key) not in (None, "")
    ]
    if setup:
        lines.append(", ".join(setup))
    peer_ifs = data.get("peer_interfaces")
    if isinstance(peer_ifs, dict):
        lines.append(
            "peers only via: {}".format(
                ", ".join(f"{_text(p)} {_text(i)}" for p, i in _sorted_items(peer_ifs)) or "(none)"
            )
        )
    return lines


PORT_COLUMNS = ("received", "forwarded", "rebroadcast", "transited")


def _ports(ports: Any) -> list[str]:
    if ports is not None and not isinstance(ports, dict):
        return [f"ports: malformed (JSON {_kind(ports)})"]
    rows = [("port", *PORT_COLUMNS, "dropped", "send errors")]
    details: list[str] = []
    for port, p in _sorted_items(ports):
        name = _text(port)
        if not isinstance(p, dict):
            rows.append((name,) + ("?",) * (len(rows[0]) - 1))
            continue
        rows.append(
            (
                name,
                # "transited" is absent in status files of older relays: 0
                *(_count_text(p.get(c, 0)) for c in PORT_COLUMNS),
                _sum_text(p.get("dropped")),
                _sum_text(p.get("send_errors")),
            )
        )
        details.extend(_port_details(name, p))
    return _table(rows) + details


def _port_details(name: str, p: dict[str, Any]) -> list[str]:
    details = []
    peers = []
    forward_to = _list(p.get("forward_to"))
    if forward_to:
        peers.append("forward to {}".format(", ".join(forward_to)))
    accept_from = _list(p.get("accept_from"))
    if accept_from:
        peers.append("accept from {}".format(", ".join(accept_from)))
    transit = _sorted_items(p.get("transit"))
    if transit:
        peers.append(
            "transit {}".format(
                ", ".join(f"{_text(src)} -> {' '.join(_list(dst))}" for src, dst in transit)
            )
        )
    groups = _list(p.get("multicast_groups"))
    if groups:
        peers.append("multicast groups {}".format(", ".join(groups)))
    if peers:
        details.append("  port {}: {}".format(name, "; ".join(peers)))
    for key, label in (("dropped", "dropped"), ("send_errors", "send errors")):
        counts = _counts_text(p.get(key))
        if counts:
            details.append(f"  port {name} {label}: {counts}")
    return details


PEER_COLUMNS = ("received", "accepted", "sent")


def _peers(peers: Any) -> list[str]:
    if peers is None or peers == {}:
        return []
    if not isinstance(peers, dict):
        return [f"peers: malformed (JSON {_kind(peers)})"]
    rows = [("peer", "office", *PEER_COLUMNS, "dropped")]
    details = []
    for peer, p in _sorted_items(peers):
        name = _text(peer)
        if not isinstance(p, dict):
            rows.append((name,) + ("?",) * (len(rows[0]) - 1))
            continue
        office = p.get("office")
        rows.append(
            (
                name,
                _text(office) if office not in (None, "") else "-",
                *(_count_text(p.get(c, 0)) for c in PEER_COLUMNS),
                _sum_text(p.get("dropped")),
            )
        )
        counts = _counts_text(p.get("dropped"))
        if counts:
            details.append(f"  peer {name} dropped: {counts}")
    return _table(rows, left=2) + details


def _storm(storm: Any) -> list[str]:
    if storm is None:
        return []
    if not isinstance(storm, dict):
        return [f"storm control: malformed (JSON {_kind(storm)})"]

    def num(key: str) -> str:
        return _count_text(storm.get(key))

    lines = [
        "storm control: per source {}/s (burst {}), global {}/s (burst {}),"
        " cut off for {}s after {}s over the rate; {} sources tracked, {} trips".format(
            num("per_source_rate"),
            num("per_source_burst"),
            num("global_rate"),
            num("global_burst"),
            num("cutoff_seconds"),
            num("trip_seconds"),
            num("sources"),
            num("tripped_total"),
        )
    ]
    cut = storm.get("cut_off")
    if isinstance(cut, dict) and cut:
        items = _sorted_items(cut)
        shown = [f"{_text(src)} ({_count_text(left)}s left)" for src, left in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            shown.append(f"... ({len(items) - MAX_ITEMS} more)")
        lines.append("  cut off: " + ", ".join(shown))
    elif cut is not None and not isinstance(cut, dict):
        lines.append(f"  cut off: malformed (JSON {_kind(cut)})")
    return lines


def _replay(replay: Any) -> list[str]:
    """The replay windows: where they are saved, failures, senders stuck on an epoch."""
    if replay is None:
        return []
    if not isinstance(replay, dict):
        return [f"replay windows: malformed (JSON {_kind(replay)})"]
    lines = [
        "replay windows: {} senders, saved in {} ({} failed saves)".format(
            _count_text(replay.get("senders")),
            _text(replay.get("state_dir")),
            _count_text(replay.get("save_failures")),
        )
    ]
    if replay.get("save_error"):
        lines.append(f"  WARNING: not saved: {_text(replay.get('save_error'))}")
    stuck = replay.get("stuck")
    if isinstance(stuck, dict):
        for sender, entry in _sorted_items(stuck)[:MAX_ITEMS]:
            if not isinstance(entry, dict):
                continue
            lines.append(
                "  stuck: {} refused {} times in a row as {} (epoch {}, we hold {});"
                " forget it: relay_forget_senders".format(
                    _text(sender),
                    _count_text(entry.get("streak")),
                    _text(entry.get("reason")),
                    _text(entry.get("offered")),
                    _text(entry.get("epoch")),
                )
            )
    return lines


# ---------------------------------------------------------------- Prometheus

Labels = tuple[tuple[str, Any], ...]


def _label_value(value: Any) -> str:
    """Text format 0.0.4 label value: backslash, double quote and newline escaped.

    Other control characters, lone surrogates (possible in JSON strings, impossible in
    UTF-8) and line separators are spelt out as ``\\x..``/``\\u....`` text first, so every
    sample stays on one line for any reader.
    """
    s = "" if value is None else value if isinstance(value, str) else _text(value)
    if len(s) > MAX_LABEL:
        s = s[: MAX_LABEL - 3] + "..."
    if not s.isprintable():
        s = "".join(c if c.isprintable() or c == "\n" else _escape_char(c) for c in s)
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample_value(value: Any, counter: bool) -> Optional[str]:
    """The sample value, or None to leave a malformed one out."""
    n = _number(value)
    if n is None or (counter and n < 0):
        return None
    if n == 0:
        n = 0  # not "-0.0", which a scraper reads as a negative counter
    if isinstance(n, int):
        if -(2**53) <= n <= 2**53:
            return str(n)
        try:
            n = float(n)
        except OverflowError:
            return None
    return repr(n)


class _Family:
    """One metric family: HELP, TYPE and its samples, each label set once."""

    def __init__(self, name: str, kind: str, help_text: str):
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: dict[str, str] = {}

    def add(self, labels: Labels, value: Any) -> None:
        text = _sample_value(value, self.kind == "counter")
        if text is None:
            return
        rendered = ",".join(f'{k}="{_label_value(v)}"' for k, v in labels)
        # A duplicate series would make the scrape fail; keep the first.
        self.samples.setdefault(rendered, text)

    def lines(self) -> list[str]:
        if not self.samples:
            return []
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for labels, value in self.samples.items():
            out.append(f"{self.name}{{{labels}}} {value}" if labels else f"{self.name} {value}")
        return out


METRIC_PREFIX = "sitelink_relay_"
_INFO_LABELS = (  # (label, status key)
    ("version", "relay_version"),
    ("mode", "mode"),
    ("wire", "wire"),
    ("office", "office"),
)

PORT_COUNTERS = (
    ("received", "datagrams_received_total", "Datagrams received on the port."),
    ("forwarded", "datagrams_forwarded_total", "LAN broadcasts sent to the forward_to peers."),
    ("rebroadcast", "datagrams_rebroadcast_total", "Peer datagrams re-broadcast on the LAN."),
    ("transited", "datagrams_transited_total", "Peer datagrams passed on to transit peers."),
)
PEER_COUNTERS = (
    ("received", "peer_datagrams_received_total", "Datagrams received from the peer."),
    ("accepted", "peer_datagrams_accepted_total", "Datagrams of the peer accepted."),
    ("sent", "peer_datagrams_sent_total", "Datagrams sent to the peer."),
)


def prometheus_text(data: Any) -> str:
    """The status as Prometheus text exposition format 0.0.4 (node_exporter textfile).

    Malformed parts of ``data`` are left out; the result is always valid exposition.
    """
    if not isinstance(data, dict):
        return ""
    families: list[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        f = _Family(METRIC_PREFIX + name, kind, help_text)
        families.append(f)
        return f

    family("info", "gauge", "Relay version, mode, wire format and office; always 1.").add(
        tuple((k, data.get(key)) for k, key in _INFO_LABELS), 1
    )
    family("start_time_seconds", "gauge", "Unix time the relay started.").add(
        (), _time(data.get("started"))
    )
    family("last_update_seconds", "gauge", "Unix time the relay last wrote its status.").add(
        (), _time(data.get("updated"))
    )
    family("status_interval_seconds", "gauge", "Seconds between status updates.").add(
        (), data.get("interval")
    )
    _port_metrics(data.get("ports"), family)
    _peer_metrics(data.get("peers"), family)
    _storm_metrics(data.get("storm"), family)
    _replay_metrics(data.get("replay"), family)
    lines = [line for f in families for line in f.lines()]
    return "\n".join(lines) + "\n" if lines else ""


FamilyMaker = Callable[[str, str, str], _Family]


def _add_counts(f: _Family, labels: Labels, name: str, counts: Any) -> None:
    for key, n in _sorted_items(counts):
        f.add(labels + ((name, key),), n)


def _port_metrics(ports: Any, family: FamilyMaker) -> None:
    items = [(port, p) for port, p in _sorted_items(ports) if isinstance(p, dict)]
    for key, name, help_text in PORT_COUNTERS:
        f = family(name, "counter", help_text)
        for port, p in items:
            f.add((("port", port),), p.get(key))
    f = family("datagrams_dropped_total", "counter", "Datagrams dropped, by reason.")
    for port, p in items:
        _add_counts(f, (("port", port),), "reason", p.get("dropped"))
    f = family("send_errors_total", "counter", "Failed sends (and receives), by error.")
    for port, p in items:
        _add_counts(f, (("port", port),), "error", p.get("send_errors"))


def _peer_metrics(peers: Any, family: FamilyMaker) -> None:
    items = [
        ((("peer", peer), ("office", p.get("office"))), p)
        for peer, p in _sorted_items(peers)
        if isinstance(p, dict)
    ]
    for key, name, help_text in PEER_COUNTERS:
        f = family(name, "counter", help_text)
        for labels, p in items:
            f.add(labels, p.get(key))
    f = family("peer_datagrams_dropped_total", "counter", "Datagrams of the peer dropped.")
    for labels, p in items:
        _add_counts(f, labels, "reason", p.get("dropped"))


def _replay_metrics(replay: Any, family: FamilyMaker) -> None:
    if not isinstance(replay, dict):
        return
    stuck = replay.get("stuck")
    family("senders_stuck", "gauge", "Senders whose datagrams are refused as stale or future.").add(
        (), len(stuck) if isinstance(stuck, dict) else None
    )
    family("replay_save_failures_total", "counter", "Failed saves of the replay windows.").add(
        (), replay.get("save_failures")
    )


def _storm_metrics(storm: Any, family: FamilyMaker) -> None:
    if not isinstance(storm, dict):
        return
    cut = storm.get("cut_off")
    family("sources_cut_off", "gauge", "Sources cut off by the storm breaker now.").add(
        (), len(cut) if isinstance(cut, dict) else None
    )
    family("storm_sources_tracked", "gauge", "Sources in the storm control table.").add(
        (), storm.get("sources")
    )
    family("storm_trips_total", "counter", "Times a source tripped the storm breaker.").add(
        (), storm.get("tripped_total")
    )
