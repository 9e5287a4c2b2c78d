# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is this gateway doing what its plan says? Read-only checks, run on the gateway.

Standard library only (Python 3.9+). Everything but ``Runner`` is pure: each
``check_*`` function takes this gateway's plan (``office_plan``) and what the
tools printed, and returns a dict of findings whose ``problems`` are sentences
naming the tunnel, route, service or table, e.g.
``tunnel sl-manhattan: no answer from 192.168.1.126``.

Commands per gateway, whatever its number of tunnels: ``ip -j -d link show``,
``ip -j route show table main``, one ``ip -j -batch`` asking ``route get`` for
every tunnel that is up, then echo requests through all of them at once from one
ICMP socket (``probe``: bounded concurrency, one overall deadline), then (with
IPsec) ``ip xfrm state list`` and ``ip xfrm policy list`` once, after the probes,
then ``systemctl is-active``, ``nft -j list table`` (NAT) and ``nft -t list table``
(firewall). Nothing is ever changed.

``ip xfrm state`` prints every SA's keys. Its output is parsed line by line and
only the lines naming an SA (addresses, protocol, mode) are read; neither the
output nor anything taken from a key line ever reaches a result or a message.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from typing import Any, Optional

from ansible_collections.sitelink.gateway.plugins.module_utils import contract, probe
from ansible_collections.sitelink.gateway.plugins.module_utils.failover import (
    parse_xfrm_states,  # one reader of `ip xfrm state`, which never reads a key
)
from ansible_collections.sitelink.gateway.plugins.module_utils.ipsec import (
    DEFAULT_PATH as IPSEC_CONFIG,  # the ipsec role's ipsec_config_path
)
from ansible_collections.sitelink.gateway.plugins.module_utils.ipsec import (
    key_counts as ipsec_key_counts,
)
from ansible_collections.sitelink.gateway.plugins.module_utils.nftables import (
    MARKER,
    live_digest,
)
from ansible_collections.sitelink.gateway.plugins.module_utils.tunnel import (
    parse_links,
    parse_routes,
)

RELAY_UNIT = contract.RELAY_UNIT
RELAY_STATUS_FILE = contract.RELAY_STATUS_FILE
RELAY_STATUS_INTERVAL = 5.0  # the relay's default, when its status file does not say
MASQUERADE_TABLE = "sitelink_masquerade"
FIREWALL_TABLE = "sitelink_firewall"  # family inet
PING_COUNT = probe.COUNT
PROBE_DEADLINE = probe.DEADLINE
PROBE_CONCURRENCY = probe.CONCURRENCY
COUNTERS = ("received", "forwarded", "rebroadcast", "transited", "dropped", "send_errors")
PEER_COUNTERS = ("received", "accepted", "sent", "dropped")

# ip xfrm (iproute2 ipxfrm.c): an SA is "src A dst B" at column 0, then
# "\tproto esp spi 0x... reqid N mode transport"; a policy is its selector
# "src A/n dst B/n proto P" at column 0, then "\tdir out ...", then per template
# "\ttmpl src ... dst ..." and "\t\tproto esp reqid N mode transport".
_POLICY_SELECTOR = re.compile(r"^src (\S+) dst (\S+)(?: proto (\S+))?")
_TMPL_ID = re.compile(r"^proto (\S+) .*\bmode (\S+)")
# IP protocol 4 as getprotobynumber names it (netbase: "ipencap"), or its number.
_IPIP_NAMES = frozenset(("4", "ipencap", "ip-encap", "ipip", "ipv4"))


class HealthError(Exception):
    """The plan given to the module is not a gateway plan; nothing was checked."""


# --------------------------------------------------------------------------
# the plan


def plan_view(plan: Any) -> dict[str, Any]:
    """What the checks need from ``office_plan``; raises HealthError if it is not one
    (the contract's check: every field the planner gives is there, of its type)."""
    problems = contract.problems(plan)
    if problems:
        raise HealthError(
            "plan: not an office_plan of this collection ({}); run the sitelink.gateway.office "
            "role first".format("; ".join(problems))
        )
    peers = {link["tunnel"]: link for link in plan["links"]}
    tunnels = []
    for t in plan["tunnels"]:
        link = peers.get(t["name"]) or {}
        tunnels.append(
            {
                "name": t["name"],
                "local": t["local"],
                "remote": t["remote"],
                "mtu": t["mtu"],
                "routes": list(t["routes"]),
                "backup": t.get("backup"),
                "peer": link.get("peer"),
                "peer_address": link.get("peer_address"),
            }
        )
    masquerade, ipsec, relay = plan["masquerade"], plan["ipsec"], plan["relay"]
    return {
        "office": plan["office"],
        "address": plan["lan"]["address"],
        "tunnels": tunnels,
        "protection": plan["protection"],
        # Every protected link: with protection none, those to external peers that chose
        # ipsec (office_external_peers[].protection).
        "connections": [
            {key: c[key] for key in ("name", "peer", "local", "remote")}
            for c in ipsec["connections"]
        ],
        # Plain IPIP where the deployment's links are protected: external peers that
        # chose protection none. (With protection none, every other link is plain.)
        "unprotected": [{key: u[key] for key in ("name", "peer")} for u in ipsec["unprotected"]]
        if plan["protection"] == "ipsec"
        else [],
        "masquerade": {
            "interface": masquerade["interface"],
            "address": masquerade["address"],
            "sources": list(masquerade["sources"]),
        },
        "relay_ports": sorted(int(r["port"]) for r in relay["rules"]),
        "relay_wire": relay["wire"],
    }


def _load_json(text: str) -> Any:
    text = (text or "").strip()
    return json.loads(text) if text else []


def _tool_error(rc: int, stdout: str, stderr: str) -> str:
    """The last line the tool printed (its error), or its exit status."""
    lines = (stderr or stdout or "").strip().splitlines()
    return lines[-1].strip() if lines else f"exit status {rc}"


# --------------------------------------------------------------------------
# tunnels: present, up, the right endpoints, the peer reached through them


def check_link(tunnel: dict[str, Any], links: dict[str, dict[str, Any]]) -> list[str]:
    """Problems of one planned tunnel's link (``parse_links`` of ``ip -j -d link show``)."""
    name = tunnel["name"]
    link = links.get(name)
    if link is None:
        return [f"tunnel {name}: missing"]
    if link["kind"] != "ipip":
        return [f"tunnel {name}: is a {link['kind'] or 'non-virtual'} link, not an ipip tunnel"]
    problems = []
    for end in ("local", "remote"):
        if tunnel.get(end) and link.get(end) != tunnel[end]:
            problems.append(
                f"tunnel {name}: {end} end {link.get(end)}, the plan says {tunnel[end]}"
            )
    # The article's warning: ipip adds 20 bytes, so the MTU is part of health.
    if tunnel.get("mtu") and link.get("mtu") != tunnel["mtu"]:
        problems.append(f"tunnel {name}: MTU {link.get('mtu')}, the plan says {tunnel['mtu']}")
    if not link["up"]:
        problems.append(f"tunnel {name}: down")
    return problems


_BATCH_FAILED = re.compile(r"^Command failed -:(\d+)\s*$")


def route_get_argv() -> list[str]:
    """One ``ip`` for every tunnel's path: ``route get`` lines on its standard input."""
    return ["ip", "-j", "-force", "-batch", "-"]


def route_get_script(paths: list[tuple[str, str]]) -> str:
    """The batch for ``route_get_argv``: a ``route get DST from SRC`` line per (dst, src)."""
    return "".join(f"route get {destination} from {source}\n" for destination, source in paths)


def parse_route_gets(
    paths: list[tuple[str, str]], rc: int, stdout: str, stderr: str
) -> list[tuple[Optional[str], Optional[str]]]:
    """What ``ip -j -force -batch`` answered for each (dst, src) of ``paths``: its output
    device, or None and the error ``ip`` gave for that line.

    Each command that succeeds prints one JSON list naming its ``dst``; one that fails
    prints its error, then ``Command failed -:N`` (N: its line), on standard error."""
    devices: dict[str, Optional[str]] = {}
    decoder, text, at = json.JSONDecoder(), stdout or "", 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        try:
            entries, at = decoder.raw_decode(text, at)
        except ValueError:
            break
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("dst"), str):
                devices.setdefault(entry["dst"], entry.get("dev"))
    errors: dict[int, str] = {}
    message: list[str] = []
    for line in (stderr or "").splitlines():
        failed = _BATCH_FAILED.match(line)
        if failed:
            errors[int(failed.group(1))] = message[-1] if message else "failed"
            message = []
        elif line.strip():
            message.append(line.strip())
    answers: list[tuple[Optional[str], Optional[str]]] = []
    for number, (destination, _source) in enumerate(paths, start=1):
        if destination in devices and number not in errors:
            answers.append((devices[destination], None))
        else:
            fallback = _tool_error(rc, "", stderr) if rc != 0 else "no answer"
            answers.append((None, errors.get(number, fallback)))
    return answers


def check_tunnels(
    tunnels: list[dict[str, Any]],
    own: str,
    links: dict[str, dict[str, Any]],
    runner,
    count: int = PING_COUNT,
    deadline: float = PROBE_DEADLINE,
    concurrency: int = PROBE_CONCURRENCY,
) -> list[dict[str, Any]]:
    """Every tunnel: its link, then the path to the peer's LAN address (one ``ip`` for
    all of them), then echo requests through it, all tunnels at once
    (``runner.probe``: bounded concurrency, one overall deadline).

    The path and the probe are skipped when the link is already wrong: the problem
    is known, and an echo that leaves by another way would prove nothing.
    """
    found: list[dict[str, Any]] = []
    problems: dict[str, list[str]] = {}
    for tunnel in tunnels:
        name, peer_address = tunnel["name"], tunnel["peer_address"]
        link = links.get(name) or {}
        found.append(
            {
                "name": name,
                "peer": tunnel["peer"],
                "peer_address": peer_address,
                "present": name in links,
                "up": bool(link.get("up")),
                "path": None,
                "ping": None,
            }
        )
        problems[name] = check_link(tunnel, links)
        if not problems[name] and not peer_address:
            problems[name].append(f"tunnel {name}: the plan names no peer address to ping")

    routed = [t for t in found if not problems[t["name"]]]
    if routed:
        paths = [(t["peer_address"], own) for t in routed]
        rc, out, err = runner.run(route_get_argv(), data=route_get_script(paths))
        for t, (device, error) in zip(routed, parse_route_gets(paths, rc, out, err)):
            t["path"] = device
            if error is not None:
                problems[t["name"]].append(
                    f"tunnel {t['name']}: no route from {own} to {t['peer_address']} ({error})"
                )
            elif device != t["name"]:
                problems[t["name"]].append(
                    f"tunnel {t['name']}: {t['peer_address']} is routed via {device}, "
                    "not the tunnel"
                )

    probed = [t for t in found if not problems[t["name"]]]
    if probed:
        answers = runner.probe(
            own,
            [(t["name"], t["peer_address"]) for t in probed],
            count=count,
            deadline=deadline,
            concurrency=concurrency,
        )
        for t in probed:
            answer = answers[t["name"]]
            if not answer["probed"]:
                problems[t["name"]].append(
                    f"tunnel {t['name']}: not probed: the {deadline:g} s deadline for all "
                    "tunnels passed first (probe_deadline)"
                )
                continue
            t["ping"] = {k: answer[k] for k in ("transmitted", "received", "rtt_avg_ms")}
            if answer["received"] == 0:
                detail = f" ({answer['error']})" if answer.get("error") else ""
                problems[t["name"]].append(
                    f"tunnel {t['name']}: no answer from {t['peer_address']}{detail}"
                )
    for t in found:
        t["ok"] = not problems[t["name"]]
        t["problems"] = problems[t["name"]]
    return found


# --------------------------------------------------------------------------
# routes: every planned prefix in the main table, via its tunnel


def _network(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=False))
    except ValueError:
        return value


def check_routes(tunnels: list[dict[str, Any]], routes_text: str) -> dict[str, Any]:
    """Every prefix each tunnel routes, against ``ip -j route show table main``."""
    devices: dict[str, list[str]] = {}
    for dev, routes in parse_routes(routes_text).items():
        for route in routes:
            devices.setdefault(route["dst"], []).append(dev)
    total, failed, problems, carriers = 0, [], [], []
    peers = {t["name"]: t.get("peer") for t in tunnels}
    for tunnel in tunnels:
        backup, moved = tunnel.get("backup"), 0
        for prefix in tunnel["routes"]:
            total += 1
            via = devices.get(_network(prefix), [])
            if tunnel["name"] in via:
                continue
            if backup and backup in via:
                moved += 1  # the failover hook moved it: the link is down (two hubs)
                continue
            failed.append({"prefix": prefix, "tunnel": tunnel["name"], "via": sorted(via)})
            if via:
                problems.append(
                    "route {}: via {}, not {}".format(
                        prefix, ", ".join(sorted(via)), tunnel["name"]
                    )
                )
            else:
                problems.append(f"route {prefix}: missing (should go via {tunnel['name']})")
        if backup:
            carrier = backup if moved and moved == len(tunnel["routes"]) else tunnel["name"]
            carriers.append(
                {
                    "tunnel": tunnel["name"],
                    "backup": backup,
                    "peer": peers.get(tunnel["name"]),
                    "routes": list(tunnel["routes"]),
                    "carrier": carrier,
                    "carrier_peer": peers.get(carrier),
                }
            )
    return {
        "total": total,
        "ok": total - len(failed),
        "failed": failed,
        "problems": problems,
        "carriers": carriers,
    }


# --------------------------------------------------------------------------
# IPsec: ESP transport-mode SAs both ways and the kernel policies for each tunnel


def parse_xfrm_policies(text: str) -> list[dict[str, Any]]:
    """``ip xfrm policy list`` -> selector, direction, action and templates of each policy."""
    policies: list[dict[str, Any]] = []
    current: Optional[dict[str, Any]] = None
    template_next = False
    for line in (text or "").splitlines():
        if line[:1] not in (" ", "\t"):
            match = _POLICY_SELECTOR.match(line)
            current = None
            if match:
                current = {
                    "src": match.group(1),
                    "dst": match.group(2),
                    "proto": match.group(3),
                    "dir": None,
                    "socket": False,
                    "action": "allow",
                    "templates": [],
                }
                policies.append(current)
            template_next = False
            continue
        if current is None:
            continue
        words = line.split()
        if template_next:
            match = _TMPL_ID.match(line.strip())
            if match:
                current["templates"].append({"proto": match.group(1), "mode": match.group(2)})
            template_next = False
        elif words and words[0] in ("dir", "socket") and len(words) > 1:
            current["socket"] = words[0] == "socket"
            current["dir"] = words[1]
            if "action" in words[:-1]:
                current["action"] = words[words.index("action") + 1]
        elif words and words[0] == "tmpl":
            template_next = True
    return policies


def _host_selector(selector: Optional[str], address: str) -> bool:
    return _network(selector or "") == f"{address}/32"


def _ipip_policies(policies, direction, src, dst):
    return [
        p
        for p in policies
        if p["dir"] == direction
        and not p["socket"]
        and str(p["proto"] or "").lower() in _IPIP_NAMES
        and _host_selector(p["src"], src)
        and _host_selector(p["dst"], dst)
    ]


def _xfrm_error(rc: int, stderr: str) -> str:
    """What ``ip xfrm`` said on stderr, never its stdout: that may hold keys."""
    lines = (stderr or "").strip().splitlines()
    return lines[-1].strip() if lines else f"exit status {rc}"


def check_ipsec(
    protection: str,
    connections: list[dict[str, Any]],
    pinged: list[str],
    states: Optional[tuple[int, str, str]] = None,
    policies: Optional[tuple[int, str, str]] = None,
    unprotected: Optional[list[dict[str, Any]]] = None,
    key_counts: Optional[dict[str, int]] = None,
) -> dict[str, Any]:
    """Every IPsec connection of the plan against ``ip xfrm state`` and ``ip xfrm policy``.

    ``states`` and ``policies`` are (rc, stdout, stderr) of ``ip xfrm state list``
    and ``ip xfrm policy list``; neither is run where the plan has no IPsec.
    SAs exist only after traffic (the policies trap the first packet and IKE
    keys them), so a missing SA is a problem only for the tunnels in ``pinged``,
    whose ping just sent that traffic. The policies must be there regardless.

    ``unprotected``: the links to external peers that chose plain IPIP where the
    deployment's links are protected; not a problem, but the report warns about each.

    ``key_counts``: how many keys each connection accepts (``ipsec.key_counts``; None:
    the file was not read); each entry's ``keys``, for the report's rotation state.
    """
    found: dict[str, Any] = {
        "protection": protection,
        "plain_ipip": protection == "none",
        "unprotected": [dict(u) for u in unprotected or []],
        "connections": [],
    }
    problems: list[str] = []
    if protection != "ipsec" and not connections:
        found["ok"] = True
        found["problems"] = problems
        return found
    sa_list = pol_list = None
    if connections:
        rc, out, err = states if states is not None else (127, "", "not run")
        if rc == 0:
            sa_list = parse_xfrm_states(out)
        else:
            problems.append(f"IPsec: cannot read the kernel's SAs: {_xfrm_error(rc, err)}")
        rc, out, err = policies if policies is not None else (127, "", "not run")
        if rc == 0:
            pol_list = parse_xfrm_policies(out)
        else:
            problems.append(f"IPsec: cannot read the kernel's policies: {_xfrm_error(rc, err)}")
    for conn in connections:
        name, local, remote = conn["name"], conn["local"], conn["remote"]
        entry: dict[str, Any] = {
            "name": name,
            "peer": conn.get("peer"),
            "local": local,
            "remote": remote,
            "sa": {"out": None, "in": None},
            "policy": {"out": None, "in": None},
            "keys": None if key_counts is None else key_counts.get(name, 0),
        }
        mine: list[str] = []
        if sa_list is not None:
            missing = []
            for direction, src, dst, way in (
                ("out", local, remote, "to"),
                ("in", remote, local, "from"),
            ):
                esp = [
                    s
                    for s in sa_list
                    if s["proto"] == "esp"
                    and s["established"]
                    and s["src"] == src
                    and s["dst"] == dst
                ]
                entry["sa"][direction] = any(s["mode"] == "transport" for s in esp)
                if entry["sa"][direction] or name not in pinged:
                    continue
                if esp:
                    mine.append(
                        f"tunnel {name}: ESP SA {way} {remote} is in {esp[0]['mode']} mode, "
                        "not transport"
                    )
                else:
                    missing.append(way)
            if missing:
                mine.insert(
                    0,
                    "tunnel {}: no ESP SA {} {} (IPsec not established)".format(
                        name, " or ".join(missing), remote
                    ),
                )
        if pol_list is not None:
            for direction, src, dst in (("out", local, remote), ("in", remote, local)):
                matching = _ipip_policies(pol_list, direction, src, dst)
                entry["policy"][direction] = any(
                    p["action"] != "block" and any(t["proto"] == "esp" for t in p["templates"])
                    for p in matching
                )
                if entry["policy"][direction]:
                    continue
                if any(p["action"] == "block" for p in matching):
                    way = "to" if direction == "out" else "from"
                    mine.append(f"tunnel {name}: an IPsec policy blocks IPIP {way} {remote}")
                elif direction == "out":
                    mine.append(
                        f"tunnel {name}: no IPsec policy: IPIP to {remote} would leave in "
                        "clear text"
                    )
                else:
                    mine.append(
                        f"tunnel {name}: no inbound IPsec policy: IPIP from {remote} would be "
                        "accepted without ESP"
                    )
        entry["ok"] = not mine and sa_list is not None and pol_list is not None
        entry["problems"] = mine
        found["connections"].append(entry)
        problems += mine
    found["ok"] = not problems
    found["problems"] = problems
    return found


# --------------------------------------------------------------------------
# firewall: the collection's table present, carrying its marker


def check_firewall(rc: int, stdout: str, stderr: str, table: str = FIREWALL_TABLE) -> dict:
    """``nft -t list table inet TABLE`` (rc, stdout, stderr): present and the collection's.

    Text, not ``-j``: nftables 1.0.6 (Debian 12) leaves a table's comment out of
    its JSON, and the comment is the mark of ownership (``nftables.live_digest``).
    """
    found: dict[str, Any] = {
        "table": f"inet {table}",
        "present": False,
        "ours": False,
        "digest": None,
    }
    problems = []
    if rc != 0:
        if "No such file or directory" in (stderr or ""):
            problems.append(f"firewall: table inet {table} missing")
        else:
            found["present"] = None  # unknown
            problems.append(
                f"firewall: cannot list table inet {table}: {_tool_error(rc, '', stderr)}"
            )
    else:
        found["present"] = True
        found["digest"] = live_digest(stdout)
        found["ours"] = found["digest"] is not None
        if not found["ours"]:
            problems.append(
                f'firewall: table inet {table} is not the collection\'s (no "{MARKER}" comment)'
            )
    found["ok"] = not problems
    found["problems"] = problems
    return found


# --------------------------------------------------------------------------
# relay: running where the plan has rules, with fresh counters for each port


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _counters(entry: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Counts of one status entry; a ``{reason: n}`` one is summed, and kept by reason
    as ``<name>_by_reason``."""
    counters: dict[str, Any] = {}
    by_reason = {}
    for name in names:
        value = entry.get(name, 0)
        if isinstance(value, dict):
            reasons = {
                str(k): _count(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
            }
            by_reason[f"{name}_by_reason"] = reasons
            value = sum(reasons.values())
        counters[name] = _count(value)
    counters.update(by_reason)
    return counters


def port_counters(port: dict[str, Any]) -> dict[str, Any]:
    """One port of the status file; ``dropped`` and ``send_errors`` summed over their
    reasons, which are kept as ``dropped_by_reason`` and ``send_errors_by_reason``."""
    return _counters(port, COUNTERS)


def peer_counters(peer: dict[str, Any]) -> dict[str, Any]:
    """One peer relay of the status file: its office and what came from and went to it,
    and (a relay that counts it) how many of its last datagrams in a row were ``stale``."""
    office = peer.get("office")
    counters = {
        "office": office if isinstance(office, str) else None,
        **_counters(peer, PEER_COUNTERS),
    }
    if "stale_streak" in peer:
        counters["stale_streak"] = _count(peer["stale_streak"])
    if isinstance(peer.get("keys"), list):  # fingerprints of the keys it accepts
        counters["keys"] = len(peer["keys"])
    return counters


def _epoch(value: Any) -> Optional[int]:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def forget_command(sender: str, host: Optional[str]) -> str:
    """The command that makes this gateway's relay forget ``sender`` (the relay role's
    ``relay_forget_senders``, for this gateway alone)."""
    extra = json.dumps({"relay_forget_senders": [sender]})
    return (
        f"ansible-playbook -i <inventory> site.yml --limit {host or '<this gateway>'} -e '{extra}'"
    )


def replay_state(replay: dict[str, Any]) -> dict[str, Any]:
    """The status file's ``replay``: where the relay keeps its replay windows, for how many
    senders, whether saving them works, and how many it was asked to forget."""
    state_dir, error = replay.get("state_dir"), replay.get("save_error")
    return {
        "state_dir": state_dir if isinstance(state_dir, str) else None,
        "senders": _count(replay.get("senders")),
        "save_failures": _count(replay.get("save_failures")),
        "save_error": None if error is None else str(error),
        "forgotten_total": _count(replay.get("forgotten_total")),
    }


def stuck_senders(replay: dict[str, Any], peers: dict[str, Any]) -> list[dict[str, Any]]:
    """``replay.stuck``: the senders whose last datagrams were all refused (``stale``: an
    epoch older than the one held; ``future``: more than a day ahead of this clock), by
    address. Only IPv4 addresses: each goes into a command line."""
    stuck = replay.get("stuck") if isinstance(replay.get("stuck"), dict) else {}
    found = []
    for sender, entry in sorted(stuck.items(), key=lambda kv: str(kv[0])):
        try:
            address = str(ipaddress.IPv4Address(str(sender)))
        except ValueError:
            continue
        entry = entry if isinstance(entry, dict) else {}
        reason = entry.get("reason")
        found.append(
            {
                "sender": address,
                "office": (peers.get(address) or {}).get("office"),
                "reason": reason if isinstance(reason, str) else "refused",
                "streak": _count(entry.get("streak")),
                "epoch": _epoch(entry.get("epoch")),
                "offered": _epoch(entry.get("offered")),
            }
        )
    return found


def stuck_problem(stuck: dict[str, Any], host: Optional[str]) -> str:
    """A stuck sender: who, why, and the command that unsticks it."""
    who = stuck["sender"] + (f" ({stuck['office']})" if stuck["office"] else "")
    held = "?" if stuck["epoch"] is None else stuck["epoch"]
    offered = "?" if stuck["offered"] is None else stuck["offered"]
    if stuck["reason"] == "future":
        # Never stored here: nothing to forget. The sender's clock (or epoch) is wrong.
        return (
            f"relay: peer relay {who} is stuck: its last {stuck['streak']} datagrams were all "
            f"refused as future, its epoch {offered} is more than a day ahead of this "
            f"gateway's clock (held: {held}); set that gateway's clock right and restart its "
            "relay (an epoch that far ahead is not kept)"
        )
    return (
        f"relay: peer relay {who} is stuck: its last {stuck['streak']} datagrams were all "
        f"refused as {stuck['reason']}, its epoch {offered} is older than the {held} held "
        f"here (its state or clock was reset); reset it: "
        f"{forget_command(stuck['sender'], host)}"
    )


def check_relay(
    ports: list[int],
    state: str,
    status_text: Optional[str],
    now: float,
    unit: str = RELAY_UNIT,
    status_file: str = RELAY_STATUS_FILE,
    read_error: Optional[str] = None,
    state_error: Optional[str] = None,
    wire: Optional[str] = None,
    host: Optional[str] = None,
) -> dict[str, Any]:
    """``systemctl is-active`` says ``state``; ``status_text`` is the status file (None: absent).

    ``now`` is the gateway's clock, the one the relay stamps its status with; ``wire``
    the plan's (``sitelink1`` or ``raw``). Drops, authentication failures among them,
    are counted, never a problem: anyone who reaches a relay port can cause them.
    A peer relay refused datagram after datagram (``replay.stuck``) is one, with the
    command that resets it (``host``: this gateway's inventory name, for its
    ``--limit``); so are replay windows that cannot be saved. A relay too old to
    report ``replay`` has neither.
    """
    expected = bool(ports)
    found: dict[str, Any] = {
        "expected": expected,
        "unit": unit,
        "state": state,
        "wire": wire,
        "ports": {},
        "peers": {},
        "age": None,
        "stale": None,
        "replay": None,
        "stuck": [],
    }
    problems = []
    active = state == "active"
    wanted = ", ".join(str(p) for p in ports)
    if not expected:
        if active:
            problems.append(f"relay: {unit} is active but the plan has no relay rules")
    elif not active:
        why = f"; systemctl: {state_error}" if state_error else ""
        problems.append(f"relay: {unit} is {state} (the plan relays UDP {wanted}{why})")
    elif read_error is not None:
        problems.append(f"relay: cannot read {status_file}: {read_error}")
    elif status_text is None:
        problems.append(f"relay: no status file {status_file}")
    else:
        try:
            data = json.loads(status_text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            data = None
            problems.append(f"relay: unreadable status file {status_file}: {exc}")
        if data is not None:
            updated = data.get("updated")
            interval = data.get("interval") or RELAY_STATUS_INTERVAL
            if isinstance(updated, (int, float)) and isinstance(interval, (int, float)):
                found["age"] = round(now - updated, 1)
                # The relay's own test (format_status): three missed writes and a second.
                found["stale"] = now - updated > 3 * interval + 1
                if found["stale"]:
                    problems.append(
                        f"relay: status is stale (updated {found['age']:.0f} s ago, "
                        f"written every {interval:g} s)"
                    )
            else:
                problems.append(f"relay: status file {status_file} has no update time")
            listed = data.get("ports") if isinstance(data.get("ports"), dict) else {}
            found["ports"] = {
                str(p): port_counters(v) for p, v in sorted(listed.items()) if isinstance(v, dict)
            }
            peers = data.get("peers") if isinstance(data.get("peers"), dict) else {}
            found["peers"] = {
                str(a): peer_counters(v) for a, v in sorted(peers.items()) if isinstance(v, dict)
            }
            missing = [str(p) for p in ports if str(p) not in found["ports"]]
            if missing:
                problems.append(
                    "relay: not listening on UDP {} (status lists {})".format(
                        ", ".join(missing), ", ".join(found["ports"]) or "no port"
                    )
                )
            replay = data.get("replay")
            if isinstance(replay, dict):
                found["replay"] = replay_state(replay)
                found["stuck"] = stuck_senders(replay, found["peers"])
                problems += [stuck_problem(stuck, host) for stuck in found["stuck"]]
                error = found["replay"]["save_error"]
                if error is not None:
                    where = found["replay"]["state_dir"] or "its state directory"
                    failures = found["replay"]["save_failures"]
                    problems.append(
                        f"relay: replay protection is not being saved in {where} ({failures} "
                        f"failed write{'' if failures == 1 else 's'}, the last: {error}); after "
                        "a restart the relay would not know which datagrams it has seen"
                    )
    found["ok"] = not problems
    found["problems"] = problems
    return found


# --------------------------------------------------------------------------
# masquerade: the SNAT table present with the plan's address and sources, or absent


def _values(node: Any) -> list[str]:
    """Addresses and prefixes on the right of an nft JSON match, as networks."""
    if isinstance(node, str):
        return [_network(node)]
    if isinstance(node, dict):
        if "prefix" in node:
            prefix = node["prefix"]
            return [_network("{}/{}".format(prefix.get("addr"), prefix.get("len")))]
        if "range" in node:
            return ["-".join(str(v) for v in node["range"])]
        if "set" in node:
            return [v for item in node["set"] for v in _values(item)]
    if isinstance(node, list):
        return [v for item in node for v in _values(item)]
    return []


def _span(text: str) -> tuple[Optional[int], Optional[int]]:
    """First and last address of "a.b.c.d/n", "a.b.c.d-e.f.g.h" or an address."""
    try:
        if "-" in text:
            first, last = text.split("-", 1)
            return int(ipaddress.IPv4Address(first)), int(ipaddress.IPv4Address(last))
        network = ipaddress.IPv4Network(text, strict=False)
        return int(network.network_address), int(network.broadcast_address)
    except ValueError:
        return None, None


def parse_snat_rules(text: str) -> list[dict[str, Any]]:
    """``nft -j list table`` -> its SNAT rules: output interface, sources, address."""
    data = json.loads(text or "{}")
    rules = []
    for item in data.get("nftables") or []:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        found: dict[str, Any] = {"interface": None, "sources": [], "address": None}
        for expr in rule.get("expr") or []:
            match = expr.get("match") if isinstance(expr, dict) else None
            if isinstance(match, dict):
                left = match.get("left") or {}
                if (left.get("meta") or {}).get("key") == "oifname":
                    found["interface"] = match.get("right")
                elif (left.get("payload") or {}).get("field") == "saddr":
                    found["sources"] += _values(match.get("right"))
            elif isinstance(expr, dict) and isinstance(expr.get("snat"), dict):
                found["address"] = expr["snat"].get("addr")
        if found["address"] is not None:
            rules.append(found)
    return rules


def check_masquerade(
    masquerade: dict[str, Any], rc: int, stdout: str, stderr: str, table: str = MASQUERADE_TABLE
) -> dict[str, Any]:
    """``nft -j list table ip TABLE`` (rc, stdout, stderr) against the plan's masquerade."""
    sources = [_network(s) for s in masquerade["sources"]]
    expected = bool(sources)
    found: dict[str, Any] = {
        "expected": expected,
        "table": f"ip {table}",
        "present": False,
        "address": None,
        "interface": None,
        "sources": [],
    }
    problems = []
    absent = rc != 0 and "No such file or directory" in (stderr or "")
    if rc != 0 and not absent:
        problems.append(f"NAT: cannot list table ip {table}: {_tool_error(rc, stdout, stderr)}")
    elif rc == 0:
        found["present"] = True
        try:
            rules = parse_snat_rules(stdout)
        except (ValueError, AttributeError) as exc:
            rules = []
            problems.append(f"NAT: cannot parse nft -j output: {exc}")
        # The collection's table holds one SNAT rule; several would all be read.
        for rule in rules:
            found["address"] = found["address"] or rule["address"]
            found["interface"] = found["interface"] or rule["interface"]
            found["sources"] += [s for s in rule["sources"] if s not in found["sources"]]
    if not expected:
        if found["present"]:
            problems.append(f"NAT: table ip {table} is present but the plan masquerades nothing")
    elif absent:
        problems.append(
            "NAT: table ip {} missing (the plan masquerades {})".format(table, ", ".join(sources))
        )
    elif found["present"] and not problems:
        if found["address"] != masquerade["address"]:
            problems.append(
                "NAT: SNAT to {}, the plan says {}".format(
                    found["address"] or "nothing", masquerade["address"]
                )
            )
        if found["interface"] not in (None, masquerade["interface"]):
            problems.append(
                f"NAT: SNAT on {found['interface']}, the plan says {masquerade['interface']}"
            )
        # nft merges adjacent prefixes of a set into ranges (two /24s in a row
        # list as one range), so a source counts when one entry covers it.
        spans = [_span(text) for text in found["sources"]]
        missing = [
            s
            for s in sources
            if not any(
                lo <= _span(s)[0] and _span(s)[1] <= hi for lo, hi in spans if lo is not None
            )
        ]
        found["translated"] = [s for s in sources if s not in missing]
        if missing:
            problems.append("NAT: does not translate {}".format(", ".join(missing)))
    found["ok"] = not problems
    found["problems"] = problems
    return found


# --------------------------------------------------------------------------
# the whole gateway


def check_gateway(
    plan: Any,
    runner,
    relay_unit: str = RELAY_UNIT,
    relay_status_file: str = RELAY_STATUS_FILE,
    masquerade_table: str = MASQUERADE_TABLE,
    ping_count: int = PING_COUNT,
    firewall_table: str = FIREWALL_TABLE,
    host: Optional[str] = None,
    probe_deadline: float = PROBE_DEADLINE,
    probe_concurrency: int = PROBE_CONCURRENCY,
    ipsec_config: str = IPSEC_CONFIG,
) -> dict[str, Any]:
    """Every check of one gateway; raises HealthError for a plan that is not one.
    ``host``: its inventory name, which the remedies in problems name."""
    view = plan_view(plan)
    problems: list[str] = []

    rc, links_out, err = runner.run(["ip", "-j", "-d", "link", "show"])
    rc_routes, routes_out, err_routes = runner.run(["ip", "-j", "route", "show", "table", "main"])
    if rc != 0 or rc_routes != 0:
        bad = (rc, links_out, err) if rc != 0 else (rc_routes, routes_out, err_routes)
        raise HealthError(f"cannot read the tunnels and routes: {_tool_error(*bad)}")
    try:
        links = parse_links(links_out)
        routes = check_routes(view["tunnels"], routes_out)
    except ValueError as exc:
        raise HealthError(f"cannot parse ip -j output: {exc}") from exc

    started = runner.now()
    tunnels = check_tunnels(
        view["tunnels"],
        view["address"],
        links,
        runner,
        ping_count,
        probe_deadline,
        probe_concurrency,
    )
    probes = {
        "tunnels": len(tunnels),
        "probed": sum(1 for t in tunnels if t["ping"] is not None),
        "seconds": round(max(0.0, runner.now() - started), 1),
        "deadline": probe_deadline,
        "concurrency": probe_concurrency,
    }

    # After every ping: each one that ran has made IKE key its tunnel's SAs.
    # Read once per gateway, whatever the number of tunnels.
    states = policies = key_counts = None
    if view["connections"]:
        states = runner.run(["ip", "xfrm", "state", "list"])
        policies = runner.run(["ip", "xfrm", "policy", "list"])
        try:
            text = runner.read(ipsec_config)
        except OSError:
            text = None  # the SAs and policies above say what matters
        key_counts = None if text is None else ipsec_key_counts(text)
    ipsec = check_ipsec(
        view["protection"],
        view["connections"],
        [t["name"] for t in tunnels if t["ping"] is not None],
        states,
        policies,
        view["unprotected"],
        key_counts,
    )

    rc, state, err = runner.run(["systemctl", "is-active", relay_unit])
    state = (state or "").strip() or "unknown"
    state_error = _tool_error(rc, "", err) if state == "unknown" and err else None
    status_text, read_error = None, None
    if state == "active":
        try:
            status_text = runner.read(relay_status_file)
        except OSError as exc:
            read_error = exc.strerror or str(exc)
    relay = check_relay(
        view["relay_ports"],
        state,
        status_text,
        runner.now(),
        relay_unit,
        relay_status_file,
        read_error,
        state_error,
        view["relay_wire"],
        host,
    )

    rc, out, err = runner.run(["nft", "-j", "list", "table", "ip", masquerade_table])
    masquerade = check_masquerade(view["masquerade"], rc, out, err, masquerade_table)

    rc, out, err = runner.run(["nft", "-t", "list", "table", "inet", firewall_table])
    firewall = check_firewall(rc, out, err, firewall_table)

    for t in tunnels:
        problems += t["problems"]
    for section in (routes, ipsec, firewall, relay, masquerade):
        problems += section["problems"]
    return {
        "office": view["office"],
        "healthy": not problems,
        "problems": problems,
        "tunnels": tunnels,
        "probes": probes,
        "routes": routes,
        "ipsec": ipsec,
        "firewall": firewall,
        "relay": relay,
        "masquerade": masquerade,
    }


# --------------------------------------------------------------------------
# side effects (reads only)


class Runner:
    """Runs the read-only tools through AnsibleModule.run_command; tests inject a fake."""

    def __init__(self, module):
        self.module = module
        self._paths: dict[str, Optional[str]] = {}

    def run(self, argv: list[str], data: Optional[str] = None) -> tuple[int, str, str]:
        """(rc, stdout, stderr); ``data`` goes to its standard input; a tool that is not
        installed gives rc 127."""
        tool = argv[0]
        if tool not in self._paths:
            self._paths[tool] = self.module.get_bin_path(tool, required=False)
        if not self._paths[tool]:
            return 127, "", f"{tool}: command not found"
        return self.module.run_command(
            [self._paths[tool], *argv[1:]], check_rc=False, data=data, binary_data=True
        )

    @staticmethod
    def probe(source: str, targets: list[tuple[str, str]], **options) -> dict[str, Any]:
        """Echo requests from ``source`` to every (name, address) at once (probe.Prober)."""
        try:
            transport = probe.IcmpTransport(source)
        except OSError as exc:
            return probe.not_sent(targets, f"cannot send from {source}: {exc.strerror or exc}")
        try:
            return probe.Prober(transport, _Clock, **options).run(targets)
        finally:
            transport.close()

    @staticmethod
    def read(path: str) -> Optional[str]:
        """The file's text, or None when it does not exist."""
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    @staticmethod
    def now() -> float:
        return time.time()


class _Clock:
    """The probes' clock: monotonic, as a deadline must be."""

    now = staticmethod(time.monotonic)


def run_module(module, runner=None):
    """Entry point of the thin module; ``runner`` is injectable for tests."""
    params = module.params
    if params.get("ping_count") is not None and not 1 <= params["ping_count"] <= 100:
        module.fail_json(msg="ping_count: must be 1..100", changed=False)
    if params.get("probe_deadline") is not None and not 1 <= params["probe_deadline"] <= 3600:
        module.fail_json(msg="probe_deadline: must be 1..3600 seconds", changed=False)
    if params.get("probe_concurrency") is not None and not 1 <= params["probe_concurrency"] <= 1024:
        module.fail_json(msg="probe_concurrency: must be 1..1024", changed=False)
    try:
        result = check_gateway(
            params["plan"],
            runner or Runner(module),
            relay_unit=params.get("relay_unit") or RELAY_UNIT,
            relay_status_file=params.get("relay_status_file") or RELAY_STATUS_FILE,
            masquerade_table=params.get("masquerade_table") or MASQUERADE_TABLE,
            ping_count=params.get("ping_count") or PING_COUNT,
            firewall_table=params.get("firewall_table") or FIREWALL_TABLE,
            host=params.get("host"),
            probe_deadline=params.get("probe_deadline") or PROBE_DEADLINE,
            probe_concurrency=params.get("probe_concurrency") or PROBE_CONCURRENCY,
            ipsec_config=params.get("ipsec_config") or IPSEC_CONFIG,
        )
    except HealthError as exc:
        module.fail_json(msg=str(exc), changed=False)
    module.exit_json(changed=False, **result)
