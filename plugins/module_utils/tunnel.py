# Copyright: sitelink.gateway contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Reconcile the IPIP tunnels of a Linux gateway with a desired set.

Runs on the managed gateway, so standard library only (Python 3.9+).  It is
split so that everything except ``run_module`` / ``IpRunner`` is pure and can
be unit tested without Ansible, root or an ipip-capable kernel:

* ``validate_tunnels``  raw module input -> normalised tunnel dicts
* ``parse_*``           ``ip -j`` JSON -> plain Python structures
* ``plan``              desired + live -> ordered list of ``Action`` (ip argv)
* ``render_persist``    desired -> ``ip -batch`` file text for boot
* ``apply``             runs actions through an injected runner
"""

from __future__ import annotations

import ipaddress
import json
import os
import re

from ansible_collections.sitelink.gateway.plugins.module_utils import failover
from ansible_collections.sitelink.gateway.plugins.module_utils.checkpoint import (
    Checkpoint,
    CheckpointError,
    format_time,
)
from ansible_collections.sitelink.gateway.plugins.module_utils.checkpoint import (
    fact as rollback_fact,
)
from ansible_collections.sitelink.gateway.plugins.module_utils.persist import (
    Systemd,
    SystemdError,
    ensure_boot_unit,
    put_file,
    read_file,
    remove_boot_unit,
    remove_dir_if_empty,
    remove_file,
    unit_path,
    write_atomic,
)

# Every link we create carries this prefix in its ifalias; it is the only
# ownership signal, so links without it are never modified or deleted.
MARKER = "sitelink-gateway"
PERSIST_HEADER = "# Managed by sitelink.gateway: do not edit"
DEFAULT_PERSIST_PATH = "/etc/sitelink/tunnels.batch"
DEFAULT_MTU = 1480
DEFAULT_TTL = 64
# IFNAMSIZ is 16 including the NUL byte.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
# IFALIASZ is 256 including the NUL byte.
_MAX_ALIAS = 255
# ip -batch has no escape syntax: '#' starts a comment anywhere on a line and
# a quoted word ends at the next quote, so these cannot appear in the alias.
_BAD_DESC_RE = re.compile(r"[\"'#\\\x00-\x1f\x7f]")
# How ip -batch names the line that failed (it stops there).
_BATCH_FAILED = re.compile(r"Command failed -:(\d+)\s*")
# Largest MTU the kernel accepts on ipip: IP_MAX_MTU minus the outer header.
MTU_MIN, MTU_MAX = 68, 65515


class TunnelError(Exception):
    """Invalid input or a live state we refuse to touch; nothing was changed."""


class CommandError(Exception):
    """An ip command failed while applying; ``done`` lists what already ran."""

    def __init__(self, argv, rc, stdout, stderr, done):
        self.argv = list(argv)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.done = list(done)
        super().__init__(
            "'{}' failed (rc={}): {}".format(
                format_cmd(argv), rc, (stderr or stdout or "").strip() or "no output"
            )
        )


class Action:
    """One ip invocation; ``argv`` excludes the ip binary itself."""

    def __init__(self, tunnel, kind, argv):
        self.tunnel = tunnel
        self.kind = kind  # remove | recreate | create | update
        self.argv = list(argv)

    def __repr__(self):
        return f"Action({self.tunnel!r}, {self.kind!r}, {self.argv!r})"

    def __eq__(self, other):
        return isinstance(other, Action) and (self.tunnel, self.kind, self.argv) == (
            other.tunnel,
            other.kind,
            other.argv,
        )


# --------------------------------------------------------------------------
# input validation


def alias_for(description):
    return f"{MARKER}: {description}" if description else MARKER


def _ipv4(value, where, errors):
    try:
        return ipaddress.IPv4Address(str(value).strip())
    except (ipaddress.AddressValueError, ValueError):
        errors.append(f"{where}: {value!r} is not an IPv4 address")
        return None


def _int_in(value, lo, hi, where, errors):
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value)
    except (TypeError, ValueError):
        errors.append(f"{where}: {value!r} is not an integer")
        return None
    if not lo <= number <= hi:
        errors.append(f"{where}: {number} is outside {lo}..{hi}")
        return None
    return number


def validate_tunnels(raw):
    """Return the normalised desired tunnels sorted by name.

    Collects every problem before raising so the user can fix all in one go.
    """
    errors = []
    result = []
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise TunnelError("tunnels: must be a list")
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            errors.append(f"tunnels[{index}]: must be a dict")
            continue
        name = item.get("name")
        label = f"tunnel {name!r}" if name else f"tunnels[{index}]"
        if not isinstance(name, str) or not _NAME_RE.match(name) or name in (".", ".."):
            errors.append(
                f"{label}: name must be 1-15 characters of A-Z a-z 0-9 _ . - (got {name!r})"
            )
        local = _ipv4(item.get("local"), label + " local", errors)
        remote = _ipv4(item.get("remote"), label + " remote", errors)
        if local is not None and (local.is_unspecified or local.is_multicast):
            errors.append(f"{label} local: {local} is not a unicast address")
        if remote is not None and (remote.is_unspecified or remote.is_multicast):
            errors.append(f"{label} remote: {remote} is not a unicast address")
        if local is not None and local == remote:
            errors.append(f"{label}: local and remote are both {local}")

        address = None
        raw_addr = item.get("address")
        if isinstance(raw_addr, str) and "/" in raw_addr:
            # Tolerate an explicit /32, nothing else: the tunnel address is a host address.
            raw_addr, _unused, plen = raw_addr.partition("/")
            if plen.strip() != "32":
                errors.append(
                    "{} address: only /32 is allowed (got {!r})".format(label, item["address"])
                )
        address = _ipv4(raw_addr, label + " address", errors)

        routes = []
        raw_routes = item.get("routes") or []
        if not isinstance(raw_routes, list):
            errors.append(f"{label} routes: must be a list")
            raw_routes = []
        for prefix in raw_routes:
            try:
                net = ipaddress.IPv4Network(str(prefix).strip(), strict=True)
            except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as e:
                errors.append(f"{label} routes: {prefix!r} is not an IPv4 prefix ({e})")
                continue
            if net in routes:
                errors.append(f"{label} routes: {net} listed twice")
                continue
            routes.append(net)
        routes.sort()

        mtu = item.get("mtu")
        mtu = _int_in(DEFAULT_MTU if mtu is None else mtu, MTU_MIN, MTU_MAX, label + " mtu", errors)
        ttl = item.get("ttl")
        ttl = _int_in(DEFAULT_TTL if ttl is None else ttl, 0, 255, label + " ttl", errors)

        description = item.get("description")
        description = "" if description is None else str(description).strip()
        if _BAD_DESC_RE.search(description):
            errors.append(
                f"{label} description: must not contain quotes, '#', backslash or control "
                "characters"
            )
        elif len(alias_for(description).encode("utf-8")) > _MAX_ALIAS:
            errors.append(f"{label} description: too long for the link alias")

        backup = item.get("backup") or None
        if backup is not None and (not isinstance(backup, str) or backup == name):
            errors.append(f"{label} backup: must name another tunnel (got {backup!r})")

        tunnel = {
            "name": name,
            "local": str(local) if local else None,
            "remote": str(remote) if remote else None,
            "address": str(address) if address else None,
            "routes": [str(n) for n in routes],
            "mtu": mtu,
            "ttl": ttl,
            "description": description,
        }
        if backup:
            tunnel["backup"] = backup
        result.append(tunnel)

    # Cross-tunnel checks: each would make the kernel or routing ambiguous.
    seen = {}
    for t in result:
        for field in ("name", "remote"):
            value = t[field]
            if value is None:
                continue
            other = seen.get((field, value))
            if other is not None:
                errors.append(
                    "tunnel {!r} {}: {} already used by tunnel {!r}".format(
                        t["name"], field, value, other
                    )
                )
            else:
                seen[(field, value)] = t["name"]
        for prefix in t["routes"]:
            other = seen.get(("route", prefix))
            if other is not None:
                errors.append(
                    "tunnel {!r} routes: {} already routed via tunnel {!r}".format(
                        t["name"], prefix, other
                    )
                )
            else:
                seen[("route", prefix)] = t["name"]
    names = {t["name"] for t in result}
    for t in result:
        if t.get("backup") not in (None, t["name"], *names):
            errors.append(
                "tunnel {!r} backup: {!r} is not one of the tunnels".format(t["name"], t["backup"])
            )
    if errors:
        raise TunnelError("invalid tunnels: " + "; ".join(errors))
    return sorted(result, key=lambda t: t["name"])


# --------------------------------------------------------------------------
# parsing `ip -j` output (iproute2 >= 4.15; field names as in iproute2 6.1)


def _load(text):
    text = (text or "").strip()
    if not text:
        return []  # some iproute2 versions print nothing when nothing matches
    data = json.loads(text)
    return data if isinstance(data, list) else []


def parse_links(text):
    """``ip -j -d link show`` -> {ifname: link dict}; all kinds, so name clashes are seen."""
    links = {}
    for entry in _load(text):
        if not isinstance(entry, dict) or not entry.get("ifname"):
            continue
        info = entry.get("linkinfo") or {}
        data = info.get("info_data") or {}
        alias = entry.get("ifalias") or ""
        ttl = data.get("ttl")
        if ttl == "inherit":  # text form of 0; JSON prints a number, be tolerant anyway
            ttl = 0
        try:
            ttl = int(ttl) if ttl is not None else 0
        except (TypeError, ValueError):
            ttl = None
        links[entry["ifname"]] = {
            "name": entry["ifname"],
            "kind": info.get("info_kind"),
            # "any" when the endpoint is unset (e.g. the tunl0 fallback device).
            "local": data.get("local"),
            "remote": data.get("remote"),
            "ttl": ttl,
            "mtu": entry.get("mtu"),
            "alias": alias,
            "owned": alias.startswith(MARKER),
            "up": "UP" in (entry.get("flags") or []),
        }
    return links


def parse_addrs(text):
    """``ip -j addr show`` -> {ifname: ["a.b.c.d/len", ...]} (IPv4 only)."""
    addrs = {}
    for entry in _load(text):
        if not isinstance(entry, dict) or not entry.get("ifname"):
            continue
        lst = addrs.setdefault(entry["ifname"], [])
        for info in entry.get("addr_info") or []:
            if info.get("family") == "inet" and info.get("local"):
                lst.append("{}/{}".format(info["local"], info.get("prefixlen", 32)))
    return addrs


def _norm_dst(dst):
    if dst in (None, "default"):
        return "0.0.0.0/0"
    try:
        # Host routes are printed without "/32".
        return str(ipaddress.IPv4Network(dst, strict=False))
    except ValueError:
        return dst


def parse_routes(text):
    """``ip -j route show table main`` -> {dev: [route dict]}.

    Multipath and typed (blackhole, unreachable...) routes have no single
    "dev" and are skipped: they cannot belong to one of our tunnels.
    """
    routes = {}
    for entry in _load(text):
        if not isinstance(entry, dict) or not entry.get("dev"):
            continue
        if entry.get("type", "unicast") != "unicast":
            continue
        routes.setdefault(entry["dev"], []).append(
            {
                "dst": _norm_dst(entry.get("dst")),
                "prefsrc": entry.get("prefsrc"),
                "gateway": entry.get("gateway"),
                "metric": entry.get("metric") or 0,
                "protocol": entry.get("protocol"),
            }
        )
    return routes


def _describe_route(route, own_addrs):
    # Plain prefix when it looks like what the module sets up, so an unchanged
    # tunnel renders identically before and after in --diff.
    text = route["dst"]
    if route["gateway"]:
        text += " via " + route["gateway"]
    if route["prefsrc"] not in own_addrs:
        text += " src " + str(route["prefsrc"])
    if route["metric"]:
        text += " metric " + str(route["metric"])
    return text


class LiveState:
    def __init__(self, links, addrs, routes):
        self.links = links
        self.addrs = addrs
        self.routes = routes

    @classmethod
    def from_json(cls, link_json, addr_json, route_json):
        return cls(parse_links(link_json), parse_addrs(addr_json), parse_routes(route_json))

    def host_addresses(self):
        return {a.split("/")[0] for lst in self.addrs.values() for a in lst}

    def owned(self):
        return sorted(n for n, lk in self.links.items() if lk["kind"] == "ipip" and lk["owned"])

    def describe(self, name):
        """Owned tunnel as a dict shaped like a desired one (for diffs)."""
        lk = self.links[name]
        alias = lk["alias"]
        desc = alias[len(MARKER) :]
        desc = desc[1:].strip() if desc.startswith(":") else desc.strip()
        addrs = sorted(self.addrs.get(name, []))
        own = {a.split("/")[0] for a in addrs}
        return {
            "name": name,
            "local": lk["local"],
            "remote": lk["remote"],
            "address": ", ".join(addrs) if addrs else None,
            "routes": sorted(
                _describe_route(r, own)
                for r in self.routes.get(name, [])
                if r["protocol"] != "kernel"
            ),
            "mtu": lk["mtu"],
            "ttl": lk["ttl"],
            "description": desc,
            "up": lk["up"],
        }


# --------------------------------------------------------------------------
# planning


def create_argvs(t):
    """ip argv lists that build tunnel ``t`` from nothing; shared by plan and boot file."""
    name = t["name"]
    argvs = [
        ["link", "add", "name", name, "type", "ipip"]
        + ["local", t["local"], "remote", t["remote"], "ttl", str(t["ttl"])],
        # Must be up before routes can be added onto it.
        [
            "link",
            "set",
            "dev",
            name,
            "mtu",
            str(t["mtu"]),
            "alias",
            alias_for(t["description"]),
            "up",
        ],
        ["address", "add", t["address"] + "/32", "dev", name],
    ]
    for prefix in t["routes"]:
        argvs.append(["route", "replace", prefix, "dev", name, "src", t["address"]])
    return argvs


def _route_del(name, route):
    argv = ["route", "del", route["dst"], "dev", name]
    if route["metric"]:
        argv += ["metric", str(route["metric"])]
    return argv


def plan(desired, live, purge=True):
    """Pure: return (actions, removed) turning ``live`` into ``desired``.

    Raises TunnelError before any action when a desired name is taken by a
    link we do not own, or a ``local`` is not configured on the host.

    Actions are ordered in phases so that one tunnel's step never trips over
    another's: deletions first (a renamed tunnel frees its local/remote pair;
    a route moving between tunnels is deleted from the old one before
    ``route replace`` would move it), extra routes before extra addresses (the
    kernel flushes routes whose src address goes away, a later ``route del``
    would then fail), and adds last.
    """
    errors = []
    host_addrs = live.host_addresses()
    for t in desired:
        lk = live.links.get(t["name"])
        if lk is not None and lk["kind"] != "ipip":
            errors.append(
                "tunnel {!r}: a {} link with that name exists and is not an ipip tunnel".format(
                    t["name"], lk["kind"] or "non-virtual"
                )
            )
        elif lk is not None and not lk["owned"]:
            errors.append(
                "tunnel {!r}: an ipip link with that name exists but is not managed by "
                "sitelink.gateway (its alias does not start with {!r})".format(t["name"], MARKER)
            )
        if t["local"] not in host_addrs:
            errors.append(
                "tunnel {!r} local: {} is not configured on any interface of this host".format(
                    t["name"], t["local"]
                )
            )
    if errors:
        raise TunnelError("; ".join(errors))

    wanted = {t["name"] for t in desired}
    # Routes the failover hook moved onto a tunnel's backup stay there: the hook owns
    # which of the two carries them (module_utils/failover.py).
    backed_up = {}
    for t in desired:
        if t.get("backup"):
            backed_up.setdefault(t["backup"], set()).update(t["routes"])
    removes, route_dels, addr_dels, adds = [], [], [], []
    removed = []
    if purge:
        for name in live.owned():
            if name not in wanted:
                removes.append(Action(name, "remove", ["link", "del", "dev", name]))
                removed.append(name)

    for t in desired:
        name = t["name"]
        lk = live.links.get(name)
        if lk is None:
            adds += [Action(name, "create", a) for a in create_argvs(t)]
            continue
        if (lk["local"], lk["remote"], lk["ttl"]) != (t["local"], t["remote"], t["ttl"]):
            # Changing endpoints in place is unreliable, so rebuild this one tunnel.
            removes.append(Action(name, "recreate", ["link", "del", "dev", name]))
            adds += [Action(name, "recreate", a) for a in create_argvs(t)]
            continue

        link_set = []
        if lk["mtu"] != t["mtu"]:
            link_set += ["mtu", str(t["mtu"])]
        if lk["alias"] != alias_for(t["description"]):
            link_set += ["alias", alias_for(t["description"])]
        if not lk["up"]:
            link_set.append("up")
        if link_set:
            adds.append(Action(name, "update", ["link", "set", "dev", name] + link_set))

        want_addr = t["address"] + "/32"
        have_addrs = live.addrs.get(name, [])
        for addr in sorted(have_addrs):
            if addr != want_addr:
                addr_dels.append(Action(name, "update", ["address", "del", addr, "dev", name]))
        if want_addr not in have_addrs:
            adds.append(Action(name, "update", ["address", "add", want_addr, "dev", name]))

        good = set()
        for route in live.routes.get(name, []):
            if route["protocol"] == "kernel":
                # Derived from an address; goes away with the address itself.
                continue
            if route["dst"] in t["routes"] and not route["metric"]:
                if route["prefsrc"] == t["address"] and not route["gateway"]:
                    good.add(route["dst"])
                # else: fixed by the `route replace` below (same dst/metric key)
            elif route["dst"] in backed_up.get(name, ()) and not route["metric"]:
                pass  # another tunnel's route, moved here by the failover hook
            else:
                route_dels.append(Action(name, "update", _route_del(name, route)))
        on_backup = {
            r["dst"]
            for r in live.routes.get(t.get("backup") or "", [])
            if not r["metric"] and r["prefsrc"] == t["address"] and not r["gateway"]
        }
        for prefix in t["routes"]:
            if prefix not in good and prefix not in on_backup:
                argv = ["route", "replace", prefix, "dev", name, "src", t["address"]]
                adds.append(Action(name, "update", argv))

    return removes + route_dels + addr_dels + adds, removed


def _route_key(route):
    try:
        return (0, ipaddress.IPv4Network(route["dst"]), route["metric"] or 0, "")
    except ValueError:
        return (1, ipaddress.IPv4Network("0.0.0.0/0"), route["metric"] or 0, route["dst"])


def _route_argv(dev, route):
    """``route replace`` argv that puts a parsed route back as it was."""
    argv = ["route", "replace", route["dst"]]
    if route["gateway"]:
        argv += ["via", route["gateway"]]
    argv += ["dev", dev]
    if route["prefsrc"]:
        argv += ["src", route["prefsrc"]]
    if route["metric"]:
        argv += ["metric", str(route["metric"])]
    if route["protocol"] not in (None, "boot", "kernel"):
        argv += ["proto", str(route["protocol"])]
    return argv


def snapshot_argvs(live, name):
    """ip argv lists that rebuild owned tunnel ``name`` exactly as ``live`` has it.

    Like ``create_argvs`` (and equal to it for a tunnel shaped like a desired one),
    but from the live state: every IPv4 address with its prefix length, every route
    with its gateway, source and metric, the alias as it is, and the link state.
    """
    lk = live.links[name]
    alias = lk["alias"]
    if _BAD_DESC_RE.search(alias) or len(alias.encode("utf-8")) > _MAX_ALIAS:
        alias = MARKER  # set by hand with what ip -batch cannot quote: keep ownership only
    add = ["link", "add", "name", name, "type", "ipip"]
    add += ["local", lk["local"] or "any", "remote", lk["remote"] or "any"]
    if lk["ttl"] is not None:
        add += ["ttl", str(lk["ttl"])]
    link_set = ["link", "set", "dev", name]
    if lk["mtu"]:
        link_set += ["mtu", str(lk["mtu"])]
    link_set += ["alias", alias] + (["up"] if lk["up"] else [])
    argvs = [add, link_set]
    for address in sorted(live.addrs.get(name, []), key=_address_key):
        argvs.append(["address", "add", address, "dev", name])
    routes = [r for r in live.routes.get(name, []) if r["protocol"] != "kernel"]
    for route in sorted(routes, key=_route_key):
        argvs.append(_route_argv(name, route))
    return argvs


def _address_key(address):
    try:
        return (0, ipaddress.IPv4Interface(address))
    except ValueError:
        return (1, address)


def rollback_argvs(actions, live):
    """Pure: ip argv lists that take the live tunnels back from ``actions`` to ``live``.

    ``actions`` is what ``plan`` returned against ``live``. Every tunnel they touch is
    deleted (unless the change itself deletes it) and, if it existed in ``live``,
    rebuilt from its snapshot; then routes on other devices that a ``route replace``
    of the change would take over (same prefix, metric 0) are put back. All deletions
    come first, so a tunnel renamed by the change frees its endpoints before the old
    one is rebuilt. Tunnels the change does not touch, and links without the
    collection's marker, are never named. Meant for ``ip -force -batch`` (which goes on
    past a line that fails, e.g. when the change was applied only in part).
    """
    touched = []
    kinds = {}
    for action in actions:
        if action.tunnel not in kinds:
            touched.append(action.tunnel)
        kinds.setdefault(action.tunnel, set()).add(action.kind)
    argvs = []
    for name in sorted(touched):
        if kinds[name] != {"remove"}:  # created, recreated or updated: there after the change
            argvs.append(["link", "del", "dev", name])
    for name in sorted(touched):
        if name in live.links and live.links[name]["owned"]:
            argvs += snapshot_argvs(live, name)
    taken = {
        a.argv[2] for a in actions if a.argv[:2] == ["route", "replace"] and "metric" not in a.argv
    }
    for dev in sorted(live.routes):
        if dev in kinds:
            continue
        for route in sorted(live.routes[dev], key=_route_key):
            if route["protocol"] != "kernel" and route["dst"] in taken and not route["metric"]:
                argvs.append(_route_argv(dev, route))
    return argvs


def render_rollback(argvs):
    """The ``ip -force -batch`` file the rollback runs."""
    lines = [
        "# Written by sitelink.gateway: the rollback of an unconfirmed ipip_tunnel change.",
        "# Run with: ip -force -batch FILE",
    ]
    lines += [format_cmd(a) for a in argvs]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------
# rendering


def _quote_batch(word):
    # ip -batch splits on whitespace and honours "..." (no escapes); the
    # validator keeps quotes and '#' out of every word.
    return f'"{word}"' if (not word or re.search(r"\s", word)) else word


def format_cmd(argv):
    return " ".join(_quote_batch(str(a)) for a in argv)


def render_persist(desired, path=None):
    """Deterministic ``ip -batch`` file that rebuilds ``desired`` on a tunnel-less boot.

    With no tunnels it is just the header: ``ip -batch`` of a comment-only file
    exits 0, so the boot unit keeps succeeding.
    """
    lines = [PERSIST_HEADER]
    lines.append("# Applied at boot with: ip -batch %s" % (path or "FILE"))
    for t in sorted(desired, key=lambda t: t["name"]):
        lines.append("")
        lines.append("# {} -> {}".format(t["name"], t["remote"]))
        lines.extend(format_cmd(a) for a in create_argvs(t))
    return "\n".join(lines) + "\n"


def render_state(tunnels):
    """Readable text of tunnels for --diff, one block per tunnel."""
    blocks = []
    for t in sorted(tunnels, key=lambda t: t["name"]):
        address = t.get("address") or "-"
        if address != "-" and "/" not in address:
            address += "/32"
        lines = [
            "tunnel {}".format(t["name"]),
            "  local: {}".format(t.get("local")),
            "  remote: {}".format(t.get("remote")),
            "  ttl: {}".format(t.get("ttl")),
            "  mtu: {}".format(t.get("mtu")),
            f"  address: {address}",
            "  routes: %s" % (", ".join(t.get("routes") or []) or "-"),
            "  description: %s" % (t.get("description") or ""),
        ]
        if t.get("up") is False:
            lines.append("  state: down")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + ("\n" if blocks else "")


# --------------------------------------------------------------------------
# side effects


class IpRunner:
    """Runs ip through AnsibleModule.run_command; tests inject a fake instead."""

    def __init__(self, module):
        self.module = module
        self.ip = module.get_bin_path("ip", required=True)

    def run(self, argv, data=None):
        """Return (rc, stdout, stderr); never raises on rc != 0. ``data`` goes to stdin."""
        return self.module.run_command([self.ip] + list(argv), data=data, check_rc=False)


def read_live(runner):
    out = []
    for argv in (
        ["-j", "-d", "link", "show"],
        ["-j", "address", "show"],
        ["-j", "route", "show", "table", "main"],
    ):
        rc, stdout, stderr = runner.run(argv)
        if rc != 0:
            raise CommandError(["ip"] + argv, rc, stdout, stderr, [])
        out.append(stdout)
    return LiveState.from_json(*out)


def apply(actions, runner):
    """Run actions in order, in one ``ip -batch`` process; stop at the first failure.

    One process for the whole change: 200 tunnels are about 1000 ip commands,
    and starting ip for each costs far more than the work itself. ip stops at
    the first failing line (later steps depend on earlier ones) and names it
    ("Command failed -:N"), so what ran before it is known.
    """
    if not actions:
        return []
    text = "".join(format_cmd(a.argv) + "\n" for a in actions)
    rc, stdout, stderr = runner.run(["-batch", "-"], data=text)
    commands = [format_cmd(["ip"] + a.argv) for a in actions]
    if rc == 0:
        return commands
    failed = _BATCH_FAILED.search(stderr or "")
    line = int(failed.group(1)) if failed else 0
    if not 1 <= line <= len(actions):
        # Not a line ip named: which lines ran is unknown, so claim none of them.
        raise CommandError(["ip", "-batch", "-"], rc, stdout, stderr, [])
    # ip prints the failing command's own error before the line number.
    message = _BATCH_FAILED.sub("", stderr).strip()
    raise CommandError(["ip"] + actions[line - 1].argv, rc, stdout, message, commands[: line - 1])


def _apply_or_fail(module, actions, runner, result):
    """Apply ``actions``; on failure, fail the module saying what already ran."""
    try:
        result["commands"] = apply(actions, runner)
    except CommandError as e:
        result["commands"] = e.done
        result["changed"] = bool(e.done)
        module.fail_json(
            msg="{}; commands already run: {}{}".format(
                e, ", ".join(e.done) or "none", _rollback_note(result)
            ),
            failed_command=format_cmd(e.argv),
            rc=e.rc,
            stderr=e.stderr,
            **result,
        )


def render_boot_unit(persist_path):
    """systemd oneshot that replays the persistence file at boot."""
    return (
        "# Managed by sitelink.gateway: do not edit.\n"
        "[Unit]\n"
        "Description=sitelink.gateway IPIP tunnels to the other offices\n"
        "DefaultDependencies=no\n"
        "# Before the network is up: nothing routes through a tunnel that is not there.\n"
        "After=systemd-modules-load.service local-fs.target\n"
        "Before=network.target shutdown.target\n"
        "Conflicts=shutdown.target\n"
        f"ConditionPathExists={persist_path}\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        "# Boot only: at run time the ipip_tunnel module changes the live tunnels itself.\n"
        f"ExecStart=ip -batch {persist_path}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


ROLLBACK_KEY = "tunnels"


def _rollback_key(checkpoint):
    """The key to arm: "tunnels", or "tunnels #N" after N-1 unconfirmed tunnel changes.

    Unlike a whole nftables table, the tunnels are saved as the inverse of one change
    (only the tunnels it touches): a second change before the confirm must add its
    own inverse, which the restore runs first (reverse arm order), not be dropped.
    """
    pending = checkpoint.pending() or {"resources": []}
    ours = [k for k in pending["resources"] if k.split(" #")[0] == ROLLBACK_KEY]
    return ROLLBACK_KEY if not ours else f"{ROLLBACK_KEY} #{len(ours) + 1}"


def arm_rollback(module, checkpoint, actions, live, persist_path, boot_unit, ip, systemctl):
    """Arm the rollback of this change (before it is applied); returns what arm() does.

    Saves the boot file, the failover hook's configuration, the unit and its
    enablement link as they are, and an ``ip -force -batch`` file with the inverse
    of ``actions`` (``rollback_argvs``).
    """
    timeout = module.params.get("rollback_timeout") or 0
    files, commands = [], []
    if persist_path:
        files += [persist_path, failover.CONFIG_PATH]
    if boot_unit:
        files += [unit_path(boot_unit), unit_path("multi-user.target.wants/" + boot_unit)]
        commands.append([systemctl, "daemon-reload"])
    blobs = {}
    inverse = rollback_argvs(actions, live)
    if inverse:
        blobs["tunnels.rollback"] = render_rollback(inverse)
        commands.insert(0, [ip, "-force", "-batch", "{dir}/tunnels.rollback"])
    armed = checkpoint.arm(_rollback_key(checkpoint), files, commands, timeout, blobs)
    return armed


def _arm_or_fail(
    module, checkpoint, actions, live, persist_path, boot_unit, runner, systemd, result
):
    try:
        armed = arm_rollback(
            module,
            checkpoint,
            actions,
            live,
            persist_path,
            boot_unit,
            getattr(runner, "ip", "ip"),
            getattr(systemd, "systemctl", "systemctl"),
        )
    except (CheckpointError, OSError) as e:
        module.fail_json(msg=f"arming the rollback: {e}; nothing changed", **result)
    result["rollback"] = armed
    result["ansible_facts"] = rollback_fact(armed)


def _rollback_note(result):
    """Said in a failure after arming: the host goes back by itself."""
    if "rollback" not in result:
        return ""
    return "; the gateway restores its previous tunnels by itself at {} ({})".format(
        format_time(result["rollback"]["deadline"]), result["rollback"]["unit"]
    )


def run_module(module, runner=None, systemd=None, checkpoint=None):
    """Entry point used by the thin module; ``runner``, ``systemd`` and ``checkpoint``
    are injectable for tests."""
    params = module.params
    persist_path = params.get("persist_path") or None
    boot_unit = (params.get("boot_unit") or None) if persist_path else None
    result = {"changed": False, "commands": [], "removed": [], "persist_path": persist_path}
    timeout = params.get("rollback_timeout") or 0
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        module.fail_json(msg=f"rollback_timeout: {timeout!r} must be 0 (no rollback) or seconds")
    if timeout and not module.check_mode and checkpoint is None:
        # Before the read: a rollback that runs meanwhile makes arm() refuse.
        checkpoint = Checkpoint(module, systemd=systemd)
    if params.get("state") == "absent":
        return retire(module, runner, systemd, persist_path, boot_unit, result, checkpoint)
    try:
        desired = validate_tunnels(params.get("tunnels"))
    except TunnelError as e:
        module.fail_json(msg=str(e), **result)
    result["tunnels"] = desired

    runner = runner or IpRunner(module)
    try:
        live = read_live(runner)
        actions, removed = plan(desired, live, purge=params.get("purge", True))
    except TunnelError as e:
        module.fail_json(msg=str(e), **result)
    except CommandError as e:
        module.fail_json(msg=f"reading state: {e}", stderr=e.stderr, rc=e.rc, **result)
    except ValueError as e:  # undecodable JSON from ip
        module.fail_json(msg=f"cannot parse ip -j output: {e}", **result)

    result["removed"] = removed
    result["commands"] = [format_cmd(["ip"] + a.argv) for a in actions]
    result["changed"] = bool(actions)

    old_file = new_file = None
    if persist_path:
        old_file = read_file(persist_path)
        new_file = render_persist(desired, persist_path)
        result["persist_changed"] = old_file != new_file
        result["changed"] = result["changed"] or result["persist_changed"]

    failover_files = _failover_files(desired) if persist_path else []
    if persist_path:
        result["failover_changed"] = any(old != new for _p, old, new, _m in failover_files)
        result["changed"] = result["changed"] or result["failover_changed"]

    if module._diff:
        before = [live.describe(n) for n in live.owned()]
        # Without purge, owned tunnels that are not desired stay as they are.
        names = {t["name"] for t in desired}
        kept = [b for b in before if b["name"] not in names and b["name"] not in removed]
        diff = [
            {
                "before_header": "ipip tunnels (owned by sitelink.gateway)",
                "after_header": "ipip tunnels (owned by sitelink.gateway)",
                "before": render_state(before),
                "after": render_state(desired + kept),
            }
        ]
        if persist_path:
            diff.append(
                {
                    "before_header": persist_path,
                    "after_header": persist_path,
                    "before": old_file or "",
                    "after": new_file,
                }
            )
        diff.extend(_failover_diff(failover_files))
        result["diff"] = diff

    if module.check_mode:
        if boot_unit:
            _ensure_unit(module, systemd, boot_unit, persist_path, result)
        module.exit_json(**result)

    if timeout:
        systemd = systemd or Systemd(module)
        if result["changed"] or (boot_unit and _unit_due(module, systemd, boot_unit, persist_path)):
            _arm_or_fail(
                module, checkpoint, actions, live, persist_path, boot_unit, runner, systemd, result
            )
    _apply_or_fail(module, actions, runner, result)
    # File last: it should describe a state that was actually applied.
    if persist_path and result.get("persist_changed"):
        try:
            write_atomic(module, persist_path, new_file)
        except OSError as e:
            module.fail_json(msg=f"writing {persist_path}: {e}{_rollback_note(result)}", **result)
    try:
        said = _write_failover(module, failover_files, result["changed"])
        if said:
            result["failover"] = said
    except (OSError, ValueError) as e:
        module.fail_json(
            msg=f"writing the failover configuration: {e}{_rollback_note(result)}", **result
        )
    if boot_unit:
        _ensure_unit(module, systemd, boot_unit, persist_path, result)
    module.exit_json(**result)


def _failover_files(desired):
    """``(path, old, new, mode)`` of the failover hook's configuration; ``new`` None:
    the file goes (no tunnel has a backup)."""
    conf = failover.config(desired)
    new = json.dumps(conf, indent=2, sort_keys=True) + "\n" if conf else None
    return [(failover.CONFIG_PATH, read_file(failover.CONFIG_PATH), new, 0o644)]


def _failover_diff(files):
    """Diff entries of the failover files that change."""
    return [
        {"before_header": path, "after_header": path, "before": old or "", "after": new or ""}
        for path, old, new, _mode in files
        if old != new
    ]


def _write_failover(module, files, changed):
    """Write (or delete) the failover configuration if it changes; then, if this call
    changed anything, put every failover route where the links' state wants it (the
    hook acts only on events, and routes just made sit on their own tunnel)."""
    for path, old, new, mode in files:
        put_file(module, path, old, new, mode)
    if changed and any(new for _path, _old, new, _mode in files):
        return failover.sync()
    return None


def _unit_due(module, systemd, unit, persist_path):
    """Whether the boot unit would be written or enabled (reads only)."""
    try:
        return ensure_boot_unit(module, systemd, unit, render_boot_unit(persist_path), True)[0]
    except (SystemdError, OSError):
        return True  # arm anyway: _ensure_unit reports the error after applying


def _ensure_unit(module, systemd, unit, persist_path, result):
    try:
        changed, old, steps = ensure_boot_unit(
            module,
            systemd or Systemd(module),
            unit,
            render_boot_unit(persist_path),
            module.check_mode,
        )
    except (SystemdError, OSError) as e:
        module.fail_json(msg=f"installing {unit}: {e}{_rollback_note(result)}", **result)
    result["boot_unit_changed"] = changed
    result["changed"] = result["changed"] or changed
    if module._diff and changed:
        result["diff"].append(
            {
                "before_header": unit_path(unit),
                "after_header": unit_path(unit),
                "before": old or "",
                "after": render_boot_unit(persist_path),
            }
        )


def retire(module, runner, systemd, persist_path, boot_unit, result, checkpoint=None):
    """state=absent: take off every tunnel the collection owns, and its boot persistence.

    Deletes every owned tunnel (the kernel drops its addresses and routes with
    it), then the boot file (only if it carries our header), the boot unit, and
    the file's directory if that is left empty. Foreign links are never touched.
    """
    if module.params.get("tunnels"):
        module.fail_json(
            msg="tunnels: must be empty with state=absent, which removes every tunnel "
            "sitelink.gateway owns",
            **result,
        )
    result["tunnels"] = []
    runner = runner or IpRunner(module)
    try:
        live = read_live(runner)
    except CommandError as e:
        module.fail_json(msg=f"reading state: {e}", stderr=e.stderr, rc=e.rc, **result)
    except ValueError as e:  # undecodable JSON from ip
        module.fail_json(msg=f"cannot parse ip -j output: {e}", **result)
    # An empty desired set needs nothing of the host: plan only lists deletions.
    actions, removed = plan([], live, purge=True)
    result["removed"] = removed
    result["commands"] = [format_cmd(["ip"] + a.argv) for a in actions]
    result["removed_paths"] = []
    check_mode = module.check_mode

    old_file = read_file(persist_path) if persist_path else None
    drop_file = old_file is not None and old_file.startswith(PERSIST_HEADER)
    if old_file is not None and not drop_file:
        result["warnings"] = [
            f"{persist_path} kept: it does not start with {PERSIST_HEADER!r}, so "
            "sitelink.gateway did not write it"
        ]
    old_unit = read_file(unit_path(boot_unit)) if boot_unit else None
    if module._diff:
        result["diff"] = [
            {
                "before_header": "ipip tunnels (owned by sitelink.gateway)",
                "after_header": "ipip tunnels (owned by sitelink.gateway)",
                "before": render_state([live.describe(n) for n in live.owned()]),
                "after": "",
            }
        ]
        for path, old, dropped in (
            (persist_path, old_file, drop_file),
            (boot_unit and unit_path(boot_unit), old_unit, old_unit is not None),
        ):
            if dropped:
                diff = {"before_header": path, "after_header": path, "before": old, "after": ""}
                result["diff"].append(diff)

    if not check_mode and checkpoint is not None:
        unit_there = bool(boot_unit) and (
            os.path.exists(unit_path(boot_unit))
            or os.path.lexists(unit_path("multi-user.target.wants/" + boot_unit))
        )
        if actions or drop_file or unit_there:
            systemd = systemd or Systemd(module)
            _arm_or_fail(
                module, checkpoint, actions, live, persist_path, boot_unit, runner, systemd, result
            )
    if not check_mode:
        _apply_or_fail(module, actions, runner, result)
    # The tunnels first: the boot file and unit go only once the tunnels are gone.
    try:
        if persist_path and remove_file(failover.CONFIG_PATH, check_mode):
            result["removed_paths"].append(failover.CONFIG_PATH)
        if drop_file and remove_file(persist_path, check_mode):
            result["removed_paths"].append(persist_path)
        if boot_unit:
            unit_changed, _steps = remove_boot_unit(
                module, systemd or Systemd(module), boot_unit, check_mode
            )
            result["boot_unit_changed"] = unit_changed
            if unit_changed:
                result["removed_paths"].append(unit_path(boot_unit))
        if persist_path:
            # The collection's directory (/etc/sitelink) goes once nothing is left in it;
            # the other roles' retire steps run before this one for that reason.
            directory = os.path.dirname(persist_path)
            leaving = [
                os.path.basename(p)
                for p in result["removed_paths"]
                if check_mode and os.path.dirname(p) == directory
            ]
            if remove_dir_if_empty(directory, check_mode, leaving):
                result["removed_paths"].append(directory)
    except (SystemdError, OSError) as e:
        module.fail_json(
            msg=f"removing the boot persistence: {e}{_rollback_note(result)}", **result
        )
    result["persist_changed"] = drop_file
    result["changed"] = bool(actions or result["removed_paths"])
    module.exit_json(**result)
