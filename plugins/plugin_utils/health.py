# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The health report of every office, from what each gateway said about itself.

Pure functions, on the controller: ``build_report`` takes the play's hosts and
each host's ``gateway_health`` result (or its unreachable / failed result, or
nothing) and returns the JSON report; ``render_table`` makes it one table, an
office per row. Every host of the play gets a row: an office whose gateway
could not be checked is unhealthy, never skipped. Links run as plain IPIP
(``office_tunnel_protection: none``, or an external peer's ``protection: none``)
and relays on the raw wire are not a problem, but the report says so in its
``warnings`` (and the table in its protection column).

Then the state of a key rotation: the links that still accept more than one key
(IPsec, and the relay from each peer), office by office; none when no rotation is
under way. Not a problem: a step of a rotation, run over every office, leaves it so
until the next step (README, Key rotation).

A second table shows the relay's counters, a row per office and port. Its drops
(authentication failures, replays, storm control) never make an office unhealthy:
anyone who can reach a relay port could otherwise make any office unhealthy.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Optional

REPORT_VERSION = 1
COUNTER_LEGEND = "relay counters: received/forwarded/rebroadcast/transited/dropped, all ports"
_RELAY_COUNTERS = ("received", "forwarded", "rebroadcast", "transited", "dropped")
_SECTIONS = ("tunnels", "probes", "routes", "ipsec", "firewall", "relay", "masquerade")
PLAIN_IPIP_WARNING = (
    "office_tunnel_protection: none: the links of {} are plain IPIP, readable by anyone on "
    "the path and forgeable by anyone on the Internet (RFC 2003 has no authentication)"
)
UNPROTECTED_PEER_WARNING = (
    "office_external_peers: protection none: the links of {} to the external peer {} are "
    "plain IPIP, readable by anyone on the path and forgeable by anyone on the Internet "
    "(RFC 2003 has no authentication)"
)
RAW_WIRE_WARNING = (
    "office_relay_wire: raw: the relays of {} send datagrams as they are (no origin, sequence "
    "number or signature): forged, replayed or duplicated ones are not recognised"
)
# The relay's drop reasons, as the counters table groups them (the JSON report has
# every reason): authentication failures, replays (and datagrams older than the
# replay window or the sender's epoch), and storm control.
AUTH_DROPS = ("auth",)
REPLAY_DROPS = ("replay", "stale")
STORM_DROPS = ("rate_limited", "cut_off", "storm")
RELAY_COUNTER_LEGEND = (
    "relay counters by port: relayed = forwarded + transited; auth, replay (with stale) and",
    "rate-limited (storm control) are among the dropped. Drops never make an office unhealthy,",
    "auth failures included: anyone who reaches a relay port can cause them (JSON: every reason)",
)


def _first_line(text: Any) -> str:
    """The first line of Ansible's message, without its generic ``Task failed:`` head."""
    lines = str(text or "").strip().splitlines()
    line = lines[0].strip() if lines else "no message"
    return line[len("Task failed: ") :] if line.startswith("Task failed: ") else line


def office_entry(host: str, office: Optional[str], result: Optional[dict[str, Any]]) -> dict:
    """One office's row of the report, from its host's result (None: no result)."""
    entry: dict[str, Any] = {
        "office": office or host,
        "host": host,
        "verdict": "healthy",
        "healthy": False,
        "problems": [],
        **{section: None for section in _SECTIONS},
    }
    if not isinstance(result, dict):
        entry["verdict"] = "no result"
        entry["problems"] = ["no result: the check did not run on this gateway"]
    elif result.get("unreachable"):
        entry["verdict"] = "unreachable"
        entry["problems"] = [f"unreachable ({_first_line(result.get('msg'))})"]
    elif result.get("failed"):
        entry["verdict"] = "failed"
        entry["problems"] = [f"check failed: {_first_line(result.get('msg'))}"]
    elif result.get("skipped") or "healthy" not in result:
        entry["verdict"] = "no result"
        entry["problems"] = ["no result: the check was skipped on this gateway"]
    else:
        entry["office"] = result.get("office") or entry["office"]
        entry["problems"] = [str(p) for p in result.get("problems") or []]
        entry["healthy"] = bool(result["healthy"]) and not entry["problems"]
        entry["verdict"] = "healthy" if entry["healthy"] else "unhealthy"
        for section in _SECTIONS:
            entry[section] = result.get(section)
    return entry


def build_report(
    hosts: list[str],
    results: dict[str, Optional[dict[str, Any]]],
    offices: dict[str, Optional[str]],
    generated: str,
) -> dict[str, Any]:
    """The report: every host of ``hosts``, by office name; ``offices`` maps host -> office."""
    entries = sorted(
        (office_entry(host, offices.get(host), results.get(host)) for host in hosts),
        key=lambda e: (e["office"], e["host"]),
    )
    healthy = sum(1 for e in entries if e["healthy"])
    return {
        "version": REPORT_VERSION,
        "generated": generated,
        "healthy": bool(entries) and healthy == len(entries),
        "counts": {
            "offices": len(entries),
            "healthy": healthy,
            "unhealthy": len(entries) - healthy,
        },
        "problems": problem_lines(entries) if entries else ["no office was checked"],
        "warnings": warning_lines(entries),
        "rotation": rotation_state(entries),
        "failover": failover_state(entries),
        "offices": entries,
    }


def rotation_state(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each office with links that accept more than one key: a rotation under way.
    ``ipsec``: its tunnels; ``relay``: the offices of the peer relays."""
    found = []
    for e in entries:
        ipsec = [
            str(c.get("name"))
            for c in (e.get("ipsec") or {}).get("connections") or []
            if (c.get("keys") or 0) > 1
        ]
        peers = ((e.get("relay") or {}).get("peers")) or {}
        relay = sorted(
            str(p.get("office") or address)
            for address, p in peers.items()
            if isinstance(p, dict) and (p.get("keys") or 0) > 1
        )
        if ipsec or relay:
            found.append({"office": e["office"], "ipsec": ipsec, "relay": relay})
    return found


def failover_state(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two hubs: each office's links failed over (their routes ride another hub's
    tunnel: the link is down), and for a branch the hub it goes through now (the peer
    whose tunnel carries the most addresses). A branch's two hub tunnels back each other
    up; a hub's branch tunnels are backed by the other hub, whose own tunnel is not."""
    found = []
    for e in entries:
        carriers = (e.get("routes") or {}).get("carriers") or []
        if not carriers:
            continue
        uses = None
        if {c.get("backup") for c in carriers} <= {c["tunnel"] for c in carriers}:  # a branch
            load: dict[str, int] = {}
            for c in carriers:
                peer = str(c.get("carrier_peer") or c.get("carrier"))
                size = sum(ipaddress.ip_network(r).num_addresses for r in c.get("routes") or [])
                load[peer] = load.get(peer, 0) + size
            uses = max(sorted(load), key=lambda peer: load[peer])
        down = sorted(
            str(c.get("peer") or c.get("tunnel")) for c in carriers if c["carrier"] != c["tunnel"]
        )
        found.append({"office": e["office"], "uses": uses, "failed_over": down})
    return found


def failover_lines(report: dict[str, Any]) -> list[str]:
    """The hub each branch goes through now, and the links failed over: nothing
    without two hubs."""
    state = report.get("failover") or []
    if not state:
        return []
    lines = ["", "two hubs: the hub each branch goes through now, and links failed over"]
    for office in state:
        said = []
        if office["uses"]:
            said.append(f"through {office['uses']}")
        if office["failed_over"]:
            said.append(
                "failed over: the link to {} is down".format(", ".join(office["failed_over"]))
            )
        lines.append(f"  {office['office']}: " + ("; ".join(said) or "every link up"))
    return lines


def rotation_lines(report: dict[str, Any]) -> list[str]:
    """The rotation state under the table: nothing when no link accepts a second key."""
    state = report.get("rotation") or []
    if not state:
        return []
    lines = ["", "key rotation not finished here: links that still accept a second key"]
    for office in state:
        parts = []
        if office["ipsec"]:
            parts.append("IPsec " + ", ".join(office["ipsec"]))
        if office["relay"]:
            parts.append("relay from " + ", ".join(office["relay"]))
        lines.append(f"  {office['office']}: " + "; ".join(parts))
    return lines


def warning_lines(entries: list[dict[str, Any]]) -> list[str]:
    """A warning naming the offices whose links are plain IPIP, and one naming those whose
    relay runs the raw wire (deployment-wide choices); then one for each external peer
    whose links are plain IPIP by its own choice, naming the offices linked to it."""
    plain = [e["office"] for e in entries if (e.get("ipsec") or {}).get("plain_ipip")]
    raw = [
        e["office"]
        for e in entries
        if (e.get("relay") or {}).get("expected") and (e.get("relay") or {}).get("wire") == "raw"
    ]
    lines = []
    for offices, warning in ((plain, PLAIN_IPIP_WARNING), (raw, RAW_WIRE_WARNING)):
        if offices:
            lines.append(warning.format(_who(offices, entries)))
    unprotected: dict[str, list[str]] = {}
    for e in entries:
        for link in (e.get("ipsec") or {}).get("unprotected") or []:
            unprotected.setdefault(str(link.get("peer")), []).append(e["office"])
    for peer, offices in sorted(unprotected.items()):
        lines.append(UNPROTECTED_PEER_WARNING.format(_who(offices, entries), peer))
    return lines


def _who(offices: list[str], entries: list[dict[str, Any]]) -> str:
    if len(offices) == len(entries):
        return "every office" if len(offices) > 1 else offices[0]
    if len(offices) <= 5:
        return ", ".join(offices)
    return f"{len(offices)} offices"


def problem_lines(entries: list[dict[str, Any]]) -> list[str]:
    """``office: what failed``, for every problem of every office."""
    return [f"{e['office']}: {problem}" for e in entries for problem in e["problems"]]


# --------------------------------------------------------------------------
# the table


def _tunnels_cell(tunnels: Optional[list[dict[str, Any]]]) -> str:
    if tunnels is None:
        return "-"
    return "{}/{}".format(sum(1 for t in tunnels if t.get("ok")), len(tunnels))


def _routes_cell(routes: Optional[dict[str, Any]]) -> str:
    if routes is None:
        return "-"
    return "{}/{}".format(routes.get("ok", 0), routes.get("total", 0))


def _protection_cell(ipsec: Optional[dict[str, Any]]) -> str:
    """``ipsec ok``, ``ipsec: N problems`` or ``NONE (plain IPIP)``; capitals mark the risk.
    Where external peers chose otherwise than the deployment: ``ipsec ok, 1 PLAIN`` (a
    plain link beside protected ones), ``NONE, ipsec ok`` (protected links in a plain
    deployment)."""
    if ipsec is None:
        return "-"
    plain_deployment = ipsec.get("protection") == "none" or ipsec.get("plain_ipip")
    if plain_deployment and not ipsec.get("connections"):
        return "NONE (plain IPIP)"
    problems = len(ipsec.get("problems") or [])
    if problems:
        cell = "ipsec: {} problem{}".format(problems, "" if problems == 1 else "s")
    elif not ipsec.get("connections"):
        cell = "ipsec (no links)"
    else:
        cell = "ipsec ok"
    if plain_deployment:
        return f"NONE, {cell}"
    plain = len(ipsec.get("unprotected") or [])
    return f"{cell}, {plain} PLAIN" if plain else cell


def _firewall_cell(firewall: Optional[dict[str, Any]]) -> str:
    if firewall is None:
        return "-"
    if firewall.get("present") is None:
        return "UNKNOWN"  # nft could not list it
    if not firewall.get("present"):
        return "MISSING"
    if not firewall.get("ours"):
        return "NOT OURS"  # a table of that name without the collection's comment
    return "ok"


def _relay_cell(relay: Optional[dict[str, Any]]) -> str:
    """``off`` or the state and summed counters; capitals mark what is wrong."""
    if relay is None:
        return "-"
    active = relay.get("state") == "active"
    if not relay.get("expected"):
        return "ACTIVE (no rules)" if active else "off"
    if not active:
        return str(relay.get("state") or "unknown").upper()
    if relay.get("age") is None and relay.get("problems"):
        return "NO STATUS"  # no status file, or none the check could read
    ports = relay.get("ports") or {}
    totals = "/".join(
        str(sum(int(p.get(name) or 0) for p in ports.values())) for name in _RELAY_COUNTERS
    )
    if relay.get("stale"):
        return f"STALE {totals}"
    if relay.get("stuck"):
        return f"STUCK {totals}"  # a peer relay refused until it is forgotten
    return f"{'active' if relay.get('ok') else 'WRONG'} {totals}"


def _nat_cell(nat: Optional[dict[str, Any]]) -> str:
    if nat is None:
        return "-"
    if not nat.get("expected"):
        return "UNWANTED" if nat.get("present") else "off"
    if not nat.get("present"):
        return "MISSING"
    if not nat.get("ok"):
        return "WRONG"
    return "ok ({} source{})".format(
        len(nat.get("translated") or []), "" if len(nat.get("translated") or []) == 1 else "s"
    )


def table_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    rows = [
        ("office", "host", "tunnels", "routes", "protection", "firewall", "relay", "NAT", "verdict")
    ]
    for e in report["offices"]:
        rows.append(
            (
                e["office"],
                e["host"],
                _tunnels_cell(e["tunnels"]),
                _routes_cell(e["routes"]),
                _protection_cell(e["ipsec"]),
                _firewall_cell(e["firewall"]),
                _relay_cell(e["relay"]),
                _nat_cell(e["masquerade"]),
                "ok" if e["healthy"] else e["verdict"].upper(),
            )
        )
    return rows


def _reason_sum(counters: dict[str, Any], reasons: tuple[str, ...]) -> int:
    by_reason = counters.get("dropped_by_reason") or {}
    return sum(int(by_reason.get(reason) or 0) for reason in reasons)


def relay_rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    """The relay's counters, a row per office and port (offices whose relay reported)."""
    rows = [
        (
            "office",
            "port",
            "received",
            "relayed",
            "rebroadcast",
            "dropped",
            "auth",
            "replay",
            "rate-limited",
        )
    ]
    for e in report["offices"]:
        ports = (e.get("relay") or {}).get("ports") or {}
        for port, c in sorted(ports.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
            rows.append(
                (
                    e["office"],
                    str(port),
                    str(c.get("received") or 0),
                    str(int(c.get("forwarded") or 0) + int(c.get("transited") or 0)),
                    str(c.get("rebroadcast") or 0),
                    str(c.get("dropped") or 0),
                    str(_reason_sum(c, AUTH_DROPS)),
                    str(_reason_sum(c, REPLAY_DROPS)),
                    str(_reason_sum(c, STORM_DROPS)),
                )
            )
    return rows


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Rows in columns, a rule under the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def render_table(report: dict[str, Any]) -> str:
    """One table, an office per row, then the count and the counters' legend; then the
    relay's counters, a row per office and port, with theirs."""
    lines = _aligned(table_rows(report))
    counts = report["counts"]
    lines.append(
        "{} of {} office{} healthy".format(
            counts["healthy"], counts["offices"], "" if counts["offices"] == 1 else "s"
        )
    )
    lines.append(COUNTER_LEGEND)
    lines += rotation_lines(report)
    lines += failover_lines(report)
    relay = relay_rows(report)
    if len(relay) > 1:
        lines += ["", *_aligned(relay), *RELAY_COUNTER_LEGEND]
    return "\n".join(lines)


def summary_text(report: dict[str, Any]) -> str:
    """One line when all is well; else the count, then every problem on a line of its own."""
    counts = report["counts"]
    if report["healthy"]:
        return "{} of {} office{} healthy".format(
            counts["healthy"], counts["offices"], "" if counts["offices"] == 1 else "s"
        )
    return "{} of {} office{} unhealthy:\n".format(
        counts["unhealthy"], counts["offices"], "" if counts["offices"] == 1 else "s"
    ) + "\n".join(f"  - {problem}" for problem in report["problems"])
