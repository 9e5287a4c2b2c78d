"""The relay's configuration: JSON in, a validated ``Config`` out."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable
from typing import Any, Optional

from . import contract
from .files import FileProblem, no_duplicate_keys, read_regular
from .netinfo import IFNAMSIZ

# Shared with the planner and the roles (contract.py, the collection's own file):
# version 2 is what the planner writes and --help documents; version 1 files (raw
# wire only) still load.
CONFIG_VERSIONS = contract.RELAY_CONFIG_VERSIONS
CONFIG_VERSION = contract.RELAY_CONFIG_VERSION
WIRE_RAW = contract.WIRE_RAW
WIRE_SITELINK1 = contract.WIRE_SITELINK1
WIRE_FORMATS = contract.WIRE_FORMATS
DEFAULT_STATUS_FILE = contract.RELAY_STATUS_FILE
# Storm control defaults (datagrams/s and datagrams; seconds): see storm.py.
STORM_DEFAULTS = {
    "per_source_rate": 1000.0,
    "per_source_burst": 2000.0,
    "global_rate": 20000.0,
    "global_burst": 40000.0,
    "cutoff_seconds": 10.0,
}
OFFICE_NAME_MAX = contract.OFFICE_NAME_MAX


class ConfigError(Exception):
    """Invalid configuration; ``errors`` holds one "field: problem" line per error."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class Rule:
    """One port: ``forward_to`` peers get LAN broadcasts, ``accept_from`` peers' datagrams
    are re-broadcast, ``transit`` maps a peer to the peers its datagrams are passed on to."""

    __slots__ = ("port", "forward_to", "accept_from", "transit", "multicast_groups")

    def __init__(
        self,
        port: int,
        forward_to: tuple[str, ...],
        accept_from: frozenset[str],
        transit: Optional[dict[str, tuple[str, ...]]] = None,
        multicast_groups: tuple[str, ...] = (),
    ):
        self.port = port
        self.forward_to = forward_to
        self.accept_from = accept_from
        self.transit: dict[str, tuple[str, ...]] = dict(transit) if transit else {}
        # multicast groups relayed on this port besides the broadcasts (e.g. SSDP)
        self.multicast_groups = tuple(multicast_groups)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rule) and (
            (self.port, self.forward_to, self.accept_from, self.transit, self.multicast_groups)
            == (
                other.port,
                other.forward_to,
                other.accept_from,
                other.transit,
                other.multicast_groups,
            )
        )

    def __repr__(self) -> str:
        transit = {k: list(v) for k, v in self.transit.items()}
        return (
            f"Rule(port={self.port}, forward_to={list(self.forward_to)!r},"
            f" accept_from={sorted(self.accept_from)!r}, transit={transit!r})"
        )


def transit_targets(transit: dict[str, Iterable[str]]) -> dict[str, tuple[str, ...]]:
    """The transit map the hot path uses: never a target equal to its source.

    parse_config refuses such configs already; this is the defence in depth for a Rule
    built some other way.  Sources left without any target are dropped altogether.
    """
    result = {}
    for src, targets in transit.items():
        kept = tuple(t for t in targets if t != src)
        if kept:
            result[src] = kept
    return result


class Peer:
    """A peer relay (version 2 ``peers``): its office, tunnel interface and wire."""

    __slots__ = ("office", "interface", "wire")

    def __init__(self, office: Optional[str], interface: Optional[str], wire: str):
        self.office = office
        self.interface = interface
        self.wire = wire

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Peer) and (self.office, self.interface, self.wire) == (
            other.office,
            other.interface,
            other.wire,
        )

    def __repr__(self) -> str:
        return f"Peer(office={self.office!r}, interface={self.interface!r}, wire={self.wire!r})"


class Config:
    __slots__ = (
        "lan_interface",
        "lan",
        "own_addresses",
        "wire",
        "rules",
        "status_file",
        "peer_interfaces",
        "version",
        "office",
        "peers",
        "keys_file",
        "state_dir",
        "storm_control",
        "metrics_file",
        "siblings",
    )

    def __init__(
        self,
        lan_interface: str,
        lan: ipaddress.IPv4Interface,
        own_addresses: frozenset[str],
        wire: str,
        rules: tuple[Rule, ...],
        status_file: Optional[str],
        peer_interfaces: Optional[dict[str, str]] = None,
        *,
        version: int = 1,
        office: Optional[str] = None,
        peers: Optional[dict[str, Peer]] = None,
        keys_file: Optional[str] = None,
        state_dir: Optional[str] = None,
        storm_control: Optional[dict[str, float]] = None,
        metrics_file: Optional[str] = None,
        siblings: tuple[str, ...] = (),
    ):
        self.version = version
        self.office = office  # name of our office (version 2; required for sitelink1)
        self.peers: dict[str, Peer] = dict(peers) if peers else {}
        self.keys_file = keys_file
        self.state_dir = state_dir  # epoch and replay windows survive restarts here
        self.storm_control = storm_control  # None: off
        self.metrics_file = metrics_file
        # other relays of this office on this LAN (redundant gateways): one of them relays
        self.siblings = tuple(siblings)
        self.lan_interface = lan_interface
        self.lan = lan
        self.own_addresses = own_addresses  # always includes the LAN address
        self.wire = wire
        self.rules = rules
        self.status_file = status_file
        # peer address -> the interface its datagrams must arrive on; None: any interface
        self.peer_interfaces = peer_interfaces

    def peer_wire(self, addr: str) -> str:
        peer = self.peers.get(addr)
        return peer.wire if peer is not None else self.wire

    @property
    def authenticated(self) -> bool:
        """Whether any peer speaks the authenticated wire (then keys are needed)."""
        return self.wire == WIRE_SITELINK1 or any(
            p.wire == WIRE_SITELINK1 for p in self.peers.values()
        )

    @property
    def lan_network(self) -> ipaddress.IPv4Network:
        return self.lan.network

    @property
    def lan_broadcast(self) -> ipaddress.IPv4Address:
        return self.lan.network.broadcast_address

    def summary(self) -> str:
        parts = []
        for r in self.rules:
            part = "port {} -> [{}] <- [{}]".format(
                r.port, ", ".join(r.forward_to), ", ".join(sorted(r.accept_from))
            )
            if r.transit:
                part += " transit [{}]".format(
                    ", ".join(f"{src} -> {' '.join(dst)}" for src, dst in r.transit.items())
                )
            if r.multicast_groups:
                part += " groups [{}]".format(", ".join(r.multicast_groups))
            parts.append(part)
        raw = sorted(a for a, p in self.peers.items() if p.wire != self.wire)
        if raw:
            parts.append("wire {} with [{}]".format(self.peers[raw[0]].wire, ", ".join(raw)))
        if self.peer_interfaces is not None:
            parts.append(
                "peers only via [{}]".format(
                    ", ".join(f"{p} {i}" for p, i in sorted(self.peer_interfaces.items()))
                )
            )
        return "{}LAN {} {} (broadcast {}), wire {}; {}".format(
            f"office {self.office}, " if self.office else "",
            self.lan_interface,
            self.lan.with_prefixlen,
            self.lan_broadcast,
            self.wire,
            "; ".join(parts),
        )


# "_comment": JSON has no comments; Ansible writes its "managed" banner there.
_TOP_KEYS = (
    "_comment",
    "version",
    "lan",
    "own_addresses",
    "wire",
    "rules",
    "status_file",
    "peer_interfaces",
)
_TOP_KEYS_V2 = (
    "_comment",
    "version",
    "office",
    "lan",
    "own_addresses",
    "wire",
    "keys_file",
    "state_dir",
    "peers",
    "rules",
    "storm_control",
    "status_file",
    "metrics_file",
    "siblings",
)
_LAN_KEYS = ("interface", "address")
_RULE_KEYS = ("port", "forward_to", "accept_from", "transit")
_RULE_KEYS_V2 = (*_RULE_KEYS, "multicast_groups")
_PEER_KEYS = ("office", "interface", "wire")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(obj: dict, allowed: Iterable[str], where: str, errors: list[str]) -> None:
    allowed = tuple(allowed)
    for key in obj:
        if key not in allowed:
            errors.append(
                "{}{}: unknown key (allowed: {})".format(
                    where + "." if where else "", key, ", ".join(allowed)
                )
            )


def _ifname_problem(name: str) -> Optional[str]:
    """Why ``name`` cannot be a Linux interface name (dev_valid_name()), or None."""
    if not name:
        return "is empty"
    try:
        size = len(os.fsencode(name))  # how socket.if_nametoindex() passes it on
    except UnicodeError:
        return "cannot be encoded"
    if size >= IFNAMSIZ:
        return f"is longer than {IFNAMSIZ - 1} bytes"
    if name in (".", ".."):
        return "is reserved"
    if any(c in "/:\0" or c.isspace() for c in name):
        return "contains '/', ':', NUL or whitespace"
    return None


def _parse_unicast(value: Any, where: str, errors: list[str]) -> Optional[str]:
    if not isinstance(value, str):
        errors.append(f"{where}: {json.dumps(value)} is not an IPv4 address string")
        return None
    try:
        addr = ipaddress.IPv4Address(value)
    except ValueError:
        errors.append(f"{where}: {value!r} is not an IPv4 address")
        return None
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback or addr.is_reserved:
        errors.append(f"{where}: {addr} is not a usable unicast address")
        return None
    return str(addr)


def _parse_peer(
    value: Any,
    where: str,
    own: dict[str, str],
    lan_iface: Optional[ipaddress.IPv4Interface],
    seen: Iterable[str],
    errors: list[str],
) -> Optional[str]:
    """A peer gateway address: unicast, not ours, not in our LAN, not in ``seen``."""
    addr = _parse_unicast(value, where, errors)
    if addr is None:
        return None
    if addr in own:
        errors.append(f"{where}: {addr} is an address of this gateway ({own[addr]})")
    elif lan_iface is not None and ipaddress.IPv4Address(addr) in lan_iface.network:
        errors.append(
            f"{where}: {addr} is inside the LAN {lan_iface.network};"
            " peers must be gateways at other sites"
        )
    elif addr in seen:
        errors.append(f"{where}: {addr} is listed twice")
    else:
        return addr
    return None


def _parse_transit(
    value: Any,
    where: str,
    own: dict[str, str],
    lan_iface: Optional[ipaddress.IPv4Interface],
    errors: list[str],
) -> Optional[dict[str, tuple[str, ...]]]:
    """``{"peer": ["peer", ...]}``: whose datagrams this relay passes on, and to whom."""
    if not isinstance(value, dict):
        errors.append(
            f"{where}: must be an object mapping a peer address to a list of peer addresses"
        )
        return None
    ok = True
    transit: dict[str, tuple[str, ...]] = {}
    for key, targets in value.items():
        w = f"{where}[{json.dumps(key)}]"
        src = _parse_peer(key, w, own, lan_iface, transit, errors)
        if src is None:
            ok = False
        if not isinstance(targets, list):
            errors.append(f"{w}: must be a list of IPv4 addresses")
            ok = False
            continue
        if not targets:
            errors.append(f"{w}: is empty (list the peers that get this peer's datagrams)")
            ok = False
            continue
        kept: list[str] = []
        for j, target in enumerate(targets):
            wt = f"{w}[{j}]"
            addr = _parse_peer(target, wt, own, lan_iface, kept, errors)
            if addr is None:
                ok = False
            elif addr == src:
                errors.append(
                    f"{wt}: {addr} is the source itself (its datagrams would go back to it)"
                )
                ok = False
            else:
                kept.append(addr)
        if src is not None:
            transit[src] = tuple(kept)
    return transit if ok else None


def _parse_peer_interfaces(
    value: Any,
    own: dict[str, str],
    lan_iface: Optional[ipaddress.IPv4Interface],
    lan_name: str,
    listed: set[str],
    errors: list[str],
) -> Optional[dict[str, str]]:
    """``{"peer": "ifname"}``: the interface each peer's datagrams must arrive on.

    Adds every valid peer address among the keys to ``listed``, even when its
    interface name is wrong (one error for it, not a second "no interface").
    """
    if not isinstance(value, dict):
        errors.append(
            "peer_interfaces: must be an object mapping a peer address to an interface name"
            ' (e.g. {"192.168.2.126": "sl-brooklyn"})'
        )
        return None
    result: dict[str, str] = {}
    for key, name in value.items():
        where = f"peer_interfaces[{json.dumps(key)}]"
        addr = _parse_peer(key, where, own, lan_iface, listed, errors)
        if addr is not None:
            listed.add(addr)
        name = _parse_peer_ifname(name, where, lan_name, errors)
        if name is not None and addr is not None:
            result[addr] = name
    return result


def _parse_peer_ifname(name: Any, where: str, lan_name: str, errors: list[str]) -> Optional[str]:
    """The tunnel interface a peer's datagrams must arrive on, or None (one error added)."""
    if not isinstance(name, str):
        errors.append(f"{where}: {_show(name)} is not an interface name string")
    elif _ifname_problem(name):
        errors.append(f"{where}: {name!r} is not a valid interface name ({_ifname_problem(name)})")
    elif lan_name and name == lan_name:
        errors.append(f"{where}: {name!r} is the LAN interface; name the tunnel to that peer")
    else:
        return name
    return None


def parse_config(data: Any) -> Config:
    """Validate a decoded JSON config; raise ConfigError listing every problem found."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a JSON object"])
    version = data.get("version")
    if "version" not in data:
        errors.append("version: missing (this relay understands versions 1 and 2)")
        version = CONFIG_VERSION
    elif not _is_int(version) or version not in CONFIG_VERSIONS:
        errors.append(
            f"version: {_show(version)} is not supported (this relay understands versions 1 and 2)"
        )
        version = CONFIG_VERSION
    if version == 1:
        for key in data:
            if key in _TOP_KEYS_V2 and key not in _TOP_KEYS:
                errors.append(f"{key}: needs version 2")
        _check_keys(data, (*_TOP_KEYS, *_TOP_KEYS_V2), "", errors)
    else:
        if "peer_interfaces" in data:
            errors.append(
                'peer_interfaces: version 2 names them in peers (e.g. {"interface": "sl-x"})'
            )
        _check_keys(data, (*_TOP_KEYS_V2, "peer_interfaces"), "", errors)

    wire = data.get("wire", WIRE_RAW)
    if wire not in WIRE_FORMATS or (version == 1 and wire != WIRE_RAW):
        errors.append(
            "wire: {} is not supported{} (supported: {})".format(
                _show(wire),
                " by version 1" if version == 1 else "",
                WIRE_RAW if version == 1 else ", ".join(WIRE_FORMATS),
            )
        )
        wire = WIRE_RAW

    lan_iface: Optional[ipaddress.IPv4Interface] = None
    lan_name = ""
    lan = data.get("lan")
    if "lan" not in data:
        errors.append('lan: missing (e.g. {"interface": "eth0", "address": "192.168.1.126/24"})')
    elif not isinstance(lan, dict):
        errors.append("lan: must be an object with interface and address")
    else:
        _check_keys(lan, _LAN_KEYS, "lan", errors)
        name = lan.get("interface")
        if not isinstance(name, str) or not name:
            errors.append('lan.interface: missing or not a string (e.g. "eth0")')
        elif _ifname_problem(name):
            errors.append(
                f"lan.interface: {name!r} is not a valid interface name ({_ifname_problem(name)})"
            )
        else:
            lan_name = name
        address = lan.get("address")
        if not isinstance(address, str) or "/" not in address:
            errors.append(
                f"lan.address: {json.dumps(address)} must be the gateway's LAN address"
                ' with prefix, e.g. "192.168.1.126/24"'
            )
        else:
            try:
                iface = ipaddress.IPv4Interface(address)
            except ValueError:
                errors.append(f"lan.address: {address!r} is not an IPv4 address/prefix")
            else:
                net = iface.network
                if net.prefixlen > 30:
                    errors.append(
                        f"lan.address: /{net.prefixlen} leaves no broadcast address"
                        " (use the LAN prefix, at most /30)"
                    )
                elif iface.ip in (net.network_address, net.broadcast_address):
                    errors.append(
                        f"lan.address: {iface.ip} is the network or broadcast address"
                        f" of {net}, not a host"
                    )
                elif iface.ip.is_multicast or iface.ip.is_loopback or iface.ip.is_unspecified:
                    errors.append(f"lan.address: {iface.ip} is not a usable unicast address")
                else:
                    lan_iface = iface

    own: dict[str, str] = {}
    if lan_iface is not None:
        own[str(lan_iface.ip)] = "lan.address"
    own_list = data.get("own_addresses", [])
    if not isinstance(own_list, list):
        errors.append("own_addresses: must be a list of IPv4 addresses")
    else:
        for i, value in enumerate(own_list):
            where = f"own_addresses[{i}]"
            addr = _parse_unicast(value, where, errors)
            if addr is None:
                continue
            if addr in own:
                errors.append(f"{where}: {addr} is listed twice (also {own[addr]})")
                continue
            own[addr] = where

    rules: list[Rule] = []
    used: dict[str, str] = {}  # every peer address a rule names -> where (version 2 checks)
    sources: dict[str, str] = {}  # peer whose datagrams some rule takes -> where first named
    rules_data = data.get("rules")
    if "rules" not in data:
        errors.append("rules: missing (at least one rule is needed)")
    elif not isinstance(rules_data, list):
        errors.append("rules: must be a list of rule objects")
    elif not rules_data:
        errors.append("rules: is empty (at least one rule is needed)")
    else:
        ports: dict[int, str] = {}
        for i, rule in enumerate(rules_data):
            where = f"rules[{i}]"
            if not isinstance(rule, dict):
                errors.append(
                    f"{where}: must be an object with port, forward_to, accept_from, transit"
                )
                continue
            ok = True
            _check_keys(rule, _RULE_KEYS if version == 1 else _RULE_KEYS_V2, where, errors)
            port = rule.get("port")
            if "port" not in rule:
                errors.append(f"{where}.port: missing")
                ok = False
            elif not _is_int(port) or not 1 <= port <= 65535:
                errors.append(f"{where}.port: {json.dumps(port)} is not a port number (1-65535)")
                ok = False
            elif port in ports:
                errors.append(f"{where}.port: {port} is already used by {ports[port]}")
                ok = False
            else:
                ports[port] = where
            lists: dict[str, list[str]] = {}
            for key in ("forward_to", "accept_from"):
                values = rule.get(key, [])
                lists[key] = []
                if not isinstance(values, list):
                    errors.append(f"{where}.{key}: must be a list of IPv4 addresses")
                    ok = False
                    continue
                for j, value in enumerate(values):
                    w = f"{where}.{key}[{j}]"
                    addr = _parse_peer(value, w, own, lan_iface, lists[key], errors)
                    if addr is None:
                        ok = False
                    else:
                        lists[key].append(addr)
            transit = _parse_transit(
                rule.get("transit", {}), f"{where}.transit", own, lan_iface, errors
            )
            if transit is None:
                ok = False
            elif ok and not lists["forward_to"] and not lists["accept_from"] and not transit:
                errors.append(
                    f"{where}: needs at least one address in forward_to, accept_from or transit"
                )
                ok = False
            for j, addr in enumerate(lists["accept_from"]):
                sources.setdefault(addr, f"{where}.accept_from[{j}]")
            for addr in transit or ():
                sources.setdefault(addr, f"{where}.transit")
            groups = _parse_groups(
                rule.get("multicast_groups", []), f"{where}.multicast_groups", errors
            )
            if groups is None:
                ok = False
            if ok:
                rules.append(
                    Rule(
                        port,
                        tuple(lists["forward_to"]),
                        frozenset(lists["accept_from"]),
                        transit,
                        groups or (),
                    )
                )
                for addr in (*lists["forward_to"], *(transit or {})):
                    used.setdefault(addr, f"{where}")
                for targets in (transit or {}).values():
                    for addr in targets:
                        used.setdefault(addr, f"{where}.transit")

    # Absent: peers' datagrams are accepted on any interface (the article's behaviour).
    # Present: every peer source needs its interface.  Entries for addresses that no
    # rule takes datagrams from (forward_to-only peers, transit targets, peers of
    # other tunnels) are valid and unused: they never widen what is accepted.
    peer_interfaces: Optional[dict[str, str]] = None
    if "peer_interfaces" in data:
        listed: set[str] = set()
        peer_interfaces = _parse_peer_interfaces(
            data["peer_interfaces"], own, lan_iface, lan_name, listed, errors
        )
        if peer_interfaces is not None:
            for addr, where in sources.items():
                if addr not in listed:
                    errors.append(
                        f"peer_interfaces: no interface for {addr} ({where}); every peer"
                        " whose datagrams are accepted or passed on needs its tunnel interface"
                    )

    for addr, where in sources.items():
        used.setdefault(addr, where)
    v2: dict[str, Any] = {}
    if version == 2:
        v2 = _parse_v2(data, wire, own, lan_iface, lan_name, used, errors)
        peer_interfaces = {a: p.interface for a, p in v2["peers"].items() if p.interface} or None
        if peer_interfaces is not None:
            for addr, where in sources.items():
                if addr not in peer_interfaces:
                    errors.append(
                        f"peers[{json.dumps(addr)}].interface: missing ({where}); with"
                        " interfaces named, every peer whose datagrams are taken needs one"
                    )

    status_file = _parse_path(data, "status_file", DEFAULT_STATUS_FILE, errors)

    if errors:
        raise ConfigError(errors)
    if lan_iface is None:  # pragma: no cover - an error was recorded above
        raise ConfigError(["lan.address: missing"])
    return Config(
        lan_name,
        lan_iface,
        frozenset(own),
        wire,
        tuple(rules),
        status_file,
        peer_interfaces,
        version=version,
        **v2,
    )


def _show(value: Any) -> str:
    """A value for an error message: JSON, cut short (configs can hold anything)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        text = type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_path(data: dict, key: str, default: Optional[str], errors: list[str]) -> Optional[str]:
    value = data.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        errors.append(f"{key}: {_show(value)} must be an absolute path or null")
        return None
    return value


def _parse_groups(value: Any, where: str, errors: list[str]) -> Optional[tuple[str, ...]]:
    if not isinstance(value, list):
        errors.append(f"{where}: must be a list of IPv4 multicast groups")
        return None
    groups: list[str] = []
    ok = True
    for i, item in enumerate(value):
        try:
            addr = ipaddress.IPv4Address(item) if isinstance(item, str) else None
        except ValueError:
            addr = None
        if addr is None or not addr.is_multicast:
            errors.append(f"{where}[{i}]: {_show(item)} is not an IPv4 multicast group")
            ok = False
        elif str(addr) in groups:
            errors.append(f"{where}[{i}]: {addr} is listed twice")
            ok = False
        else:
            groups.append(str(addr))
    return tuple(groups) if ok else None


def _parse_office(value: Any, where: str, errors: list[str]) -> Optional[str]:
    if not isinstance(value, str) or not 0 < len(value) <= OFFICE_NAME_MAX:
        errors.append(f"{where}: {_show(value)} must be an office name (1-{OFFICE_NAME_MAX} chars)")
        return None
    if any(not c.isprintable() for c in value):
        errors.append(f"{where}: {_show(value)} contains control characters")
        return None
    return value


def _parse_v2(
    data: dict,
    wire: str,
    own: dict[str, str],
    lan_iface: Optional[ipaddress.IPv4Interface],
    lan_name: str,
    used: dict[str, str],
    errors: list[str],
) -> dict[str, Any]:
    """The version 2 keys: office, peers, keys_file, state_dir, storm_control, metrics_file."""
    office = None
    if "office" in data:
        office = _parse_office(data["office"], "office", errors)
    peers: dict[str, Peer] = {}
    peers_data = data.get("peers", {})
    if not isinstance(peers_data, dict):
        errors.append('peers: must be an object mapping a peer address to {"office": ...}')
        peers_data = {}
    for key, entry in peers_data.items():
        where = f"peers[{json.dumps(key)}]"
        addr = _parse_peer(key, where, own, lan_iface, peers, errors)
        if not isinstance(entry, dict):
            errors.append(f"{where}: must be an object with office, interface, wire")
            continue
        _check_keys(entry, _PEER_KEYS, where, errors)
        peer_office = None
        if "office" in entry:
            peer_office = _parse_office(entry["office"], f"{where}.office", errors)
            if peer_office is not None and peer_office == office:
                errors.append(f"{where}.office: {peer_office!r} is this relay's own office")
        interface = entry.get("interface")
        if interface is not None:
            interface = _parse_peer_ifname(interface, f"{where}.interface", lan_name, errors)
        peer_wire = entry.get("wire", wire)
        if peer_wire not in WIRE_FORMATS:
            errors.append(
                f"{where}.wire: {_show(peer_wire)} is not one of {', '.join(WIRE_FORMATS)}"
            )
            peer_wire = wire
        if peer_wire == WIRE_SITELINK1 and peer_office is None and "office" not in entry:
            errors.append(f"{where}.office: missing (the authenticated wire needs it)")
        if addr is not None:
            peers[addr] = Peer(peer_office, interface, peer_wire)
    for addr, where in used.items():
        if addr not in peers:
            errors.append(f"peers: no entry for {addr} ({where})")
    authenticated = wire == WIRE_SITELINK1 or any(p.wire == WIRE_SITELINK1 for p in peers.values())
    if authenticated and office is None and "office" not in data:
        errors.append("office: missing (the authenticated wire names the origin office)")
    storm: Optional[dict[str, float]] = dict(STORM_DEFAULTS)
    if "storm_control" in data:
        storm = _parse_storm(data["storm_control"], errors)
    siblings = _parse_siblings(data.get("siblings", []), own, lan_iface, peers, errors)
    if siblings and (office is None or wire != WIRE_SITELINK1):
        errors.append(
            'siblings: need "office" and "wire": "sitelink1" (their heartbeats are authenticated)'
        )
    state_dir = _parse_path(data, "state_dir", None, errors)
    if authenticated and state_dir is None and data.get("state_dir") is None:
        # Without it, every restart forgets the replay windows and replays get in again.
        errors.append(
            "state_dir: missing (the authenticated wire keeps its epoch and replay windows"
            " there; e.g. /var/lib/sitelink-relay)"
        )
    return {
        "office": office,
        "peers": peers,
        "keys_file": _parse_path(data, "keys_file", None, errors),
        "state_dir": state_dir,
        "storm_control": storm,
        "metrics_file": _parse_path(data, "metrics_file", None, errors),
        "siblings": siblings,
    }


def _parse_siblings(
    value: Any,
    own: dict[str, str],
    lan_iface: Optional[ipaddress.IPv4Interface],
    peers: dict[str, Any],
    errors: list[str],
) -> tuple[str, ...]:
    """Other gateways' LAN addresses, for relays of one office on one LAN."""
    if not isinstance(value, list):
        errors.append("siblings: must be a list of the other gateways' LAN addresses")
        return ()
    result: list[str] = []
    for i, item in enumerate(value):
        where = f"siblings[{i}]"
        addr = _parse_unicast(item, where, errors)
        if addr is None:
            continue
        if addr in own:
            errors.append(f"{where}: {addr} is an address of this gateway")
        elif lan_iface is None or ipaddress.IPv4Address(addr) not in lan_iface.network:
            errors.append(f"{where}: {addr} is not in the LAN (siblings share this LAN)")
        elif addr in peers:
            errors.append(f"{where}: {addr} is also a peer")
        elif addr in result:
            errors.append(f"{where}: {addr} is listed twice")
        else:
            result.append(addr)
    return tuple(result)


def _parse_storm(value: Any, errors: list[str]) -> Optional[dict[str, float]]:
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.append("storm_control: must be an object (or null to turn it off)")
        return None
    _check_keys(value, STORM_DEFAULTS, "storm_control", errors)
    result = dict(STORM_DEFAULTS)
    for key in STORM_DEFAULTS:
        if key not in value:
            continue
        number = value[key]
        if (
            isinstance(number, bool)
            or not isinstance(number, (int, float))
            or not (0 < number <= 1e9)
        ):
            errors.append(f"storm_control.{key}: {_show(number)} must be a positive number")
        else:
            result[key] = float(number)
    return result


CONFIG_MAX_BYTES = 1 << 22  # a config is a few KiB; refuse anything absurd


def load_config(path: str) -> Config:
    """Read and validate a config file; ConfigError messages are prefixed with the path.

    Whatever the file holds (not UTF-8, NUL bytes, JSON nested 200000 deep, gigabytes),
    the answer is a ConfigError, never another exception: on SIGHUP the running relay
    logs it and keeps its config.
    """
    try:
        raw = read_regular(path, CONFIG_MAX_BYTES)
    except FileProblem as exc:
        raise ConfigError([str(exc)]) from None
    if len(raw) > CONFIG_MAX_BYTES:
        raise ConfigError([f"{path}: larger than {CONFIG_MAX_BYTES} bytes"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 (byte {exc.start})"]) from None
    try:
        data = json.loads(text, object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    except RecursionError:
        raise ConfigError([f"{path}: invalid JSON: nested too deep"]) from None
    except ValueError as exc:
        raise ConfigError([f"{path}: invalid JSON: {exc}"]) from None
    try:
        return parse_config(data)
    except RecursionError:  # pragma: no cover - parse_config does not recurse
        raise ConfigError([f"{path}: nested too deep"]) from None
