"""The status file the relay writes and ``--status`` renders."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, Optional

from . import PROG

STATUS_INTERVAL = 5.0  # seconds between status file writes


def write_json_atomic(path: str, data: Any) -> None:
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _fmt_age(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def format_status(data: dict[str, Any], now: Optional[float] = None) -> str:
    """Human-readable rendering of a status file's content."""
    if now is None:
        now = time.time()
    lines = []
    updated = float(data.get("updated", 0) or 0)
    started = float(data.get("started", 0) or 0)
    head = "{} {}: pid {}, {} mode, up {}, updated {} ago".format(
        PROG,
        data.get("relay_version", "?"),
        data.get("pid", "?"),
        data.get("mode", "?"),
        _fmt_age(updated - started) if started else "?",
        _fmt_age(now - updated) if updated else "?",
    )
    lines.append(head)
    interval = float(data.get("interval", STATUS_INTERVAL) or STATUS_INTERVAL)
    if updated and now - updated > 3 * interval + 1:
        lines.append("WARNING: status is stale; is the relay running?")
    lan = data.get("lan")
    if isinstance(lan, dict):
        lines.append(
            "LAN {} (ifindex {}) address {} broadcast {}".format(
                lan.get("interface", "?"),
                lan.get("ifindex", "?"),
                lan.get("address", "?"),
                lan.get("broadcast", "?"),
            )
        )
    if data.get("config"):
        lines.append("config {}, wire {}".format(data["config"], data.get("wire", "?")))
    peer_ifs = data.get("peer_interfaces")
    if isinstance(peer_ifs, dict):
        lines.append(
            "peers only via: {}".format(
                ", ".join(f"{p} {i}" for p, i in peer_ifs.items()) or "(none)"
            )
        )
    ports = data.get("ports") or {}
    header = (
        "port",
        "received",
        "forwarded",
        "rebroadcast",
        "transited",
        "dropped",
        "send errors",
    )
    rows = [header]
    details = []
    for port in sorted(ports, key=lambda p: int(p) if str(p).isdigit() else 0):
        p = ports[port]
        dropped = p.get("dropped") or {}
        errors = p.get("send_errors") or {}
        rows.append(
            (
                str(port),
                str(p.get("received", 0)),
                str(p.get("forwarded", 0)),
                str(p.get("rebroadcast", 0)),
                str(p.get("transited", 0)),  # absent in status files of older relays
                str(sum(dropped.values())),
                str(sum(errors.values())),
            )
        )
        peers = []
        if p.get("forward_to"):
            peers.append("forward to {}".format(", ".join(p["forward_to"])))
        if p.get("accept_from"):
            peers.append("accept from {}".format(", ".join(p["accept_from"])))
        transit = p.get("transit")
        if isinstance(transit, dict) and transit:
            peers.append(
                "transit {}".format(
                    ", ".join(f"{src} -> {' '.join(dst)}" for src, dst in transit.items())
                )
            )
        if peers:
            details.append("  port {}: {}".format(port, "; ".join(peers)))
        if dropped:
            details.append(
                "  port {} dropped: {}".format(
                    port, ", ".join(f"{k} {dropped[k]}" for k in sorted(dropped))
                )
            )
        if errors:
            details.append(
                "  port {} send errors: {}".format(
                    port, ", ".join(f"{k} {errors[k]}" for k in sorted(errors))
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            ).rstrip()
        )
    lines.extend(details)
    return "\n".join(lines)
