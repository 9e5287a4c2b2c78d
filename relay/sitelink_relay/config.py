"""The relay's configuration: JSON in, a validated ``Config`` out."""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable
from typing import Any, Optional

from .netinfo import IFNAMSIZ

CONFIG_VERSION = 1
WIRE_FORMATS = ("raw",)
DEFAULT_STATUS_FILE = "/run/sitelink-relay/status.json"


class ConfigError(Exception):
    """Invalid configuration; ``errors`` holds one "field: problem" line per error."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class Rule:
    """One port: ``forward_to`` peers get LAN broadcasts, ``accept_from`` peers' datagrams
    are re-broadcast, ``transit`` maps a peer to the peers its datagrams are passed on to."""

    __slots__ = ("port", "forward_to", "accept_from", "transit")

    def __init__(
        self,
        port: int,
        forward_to: tuple[str, ...],
        accept_from: frozenset[str],
        transit: Optional[dict[str, tuple[str, ...]]] = None,
    ):
        self.port = port
        self.forward_to = forward_to
        self.accept_from = accept_from
        self.transit: dict[str, tuple[str, ...]] = dict(transit) if transit else {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rule) and (
            (self.port, self.forward_to, self.accept_from, self.transit)
            == (other.port, other.forward_to, other.accept_from, other.transit)
        )

    def __repr__(self) -> str:
        return (
            f"Rule(port={self.port}, forward_to={list(self.forward_to)!r},"
            f" accept_from={sorted(self.accept_from)!r},"
            f" transit={ {k: list(v) for k, v in self.transit.items()}!r})"
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


class Config:
    __slots__ = (
        "lan_interface",
        "lan",
        "own_addresses",
        "wire",
        "rules",
        "status_file",
        "peer_interfaces",
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
    ):
        self.lan_interface = lan_interface
        self.lan = lan
        self.own_addresses = own_addresses  # always includes the LAN address
        self.wire = wire
        self.rules = rules
        self.status_file = status_file
        # peer address -> the interface its datagrams must arrive on; None: any interface
        self.peer_interfaces = peer_interfaces

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
            parts.append(part)
        if self.peer_interfaces is not None:
            parts.append(
                "peers only via [{}]".format(
                    ", ".join(f"{p} {i}" for p, i in sorted(self.peer_interfaces.items()))
                )
            )
        return "LAN {} {} (broadcast {}), wire {}; {}".format(
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
_LAN_KEYS = ("interface", "address")
_RULE_KEYS = ("port", "forward_to", "accept_from", "transit")


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
        if not isinstance(name, str):
            errors.append(f"{where}: {json.dumps(name)} is not an interface name string")
        elif _ifname_problem(name):
            errors.append(
                f"{where}: {name!r} is not a valid interface name ({_ifname_problem(name)})"
            )
        elif lan_name and name == lan_name:
            errors.append(f"{where}: {name!r} is the LAN interface; name the tunnel to that peer")
        elif addr is not None:
            result[addr] = name
    return result


def parse_config(data: Any) -> Config:
    """Validate a decoded JSON config; raise ConfigError listing every problem found."""
    errors: list[str] = []
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a JSON object"])
    _check_keys(data, _TOP_KEYS, "", errors)

    version = data.get("version")
    if "version" not in data:
        errors.append(f"version: missing (this relay understands version {CONFIG_VERSION})")
    elif not _is_int(version) or version != CONFIG_VERSION:
        errors.append(
            f"version: {json.dumps(version)} is not supported"
            f" (this relay understands version {CONFIG_VERSION})"
        )

    wire = data.get("wire", "raw")
    if wire not in WIRE_FORMATS:
        errors.append(
            "wire: {} is not supported by this relay version (supported: {}; the"
            " authenticated envelope needs a newer relay)".format(
                json.dumps(wire), ", ".join(WIRE_FORMATS)
            )
        )

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
            _check_keys(rule, _RULE_KEYS, where, errors)
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
            if ok:
                rules.append(
                    Rule(
                        port,
                        tuple(lists["forward_to"]),
                        frozenset(lists["accept_from"]),
                        transit,
                    )
                )

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

    status_file = data.get("status_file", DEFAULT_STATUS_FILE)
    if status_file is not None and (
        not isinstance(status_file, str) or not status_file.startswith("/")
    ):
        errors.append(f"status_file: {json.dumps(status_file)} must be an absolute path or null")

    if errors:
        raise ConfigError(errors)
    if lan_iface is None:  # pragma: no cover - an error was recorded above
        raise ConfigError(["lan.address: missing"])
    return Config(
        lan_name, lan_iface, frozenset(own), wire, tuple(rules), status_file, peer_interfaces
    )


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def load_config(path: str) -> Config:
    """Read and validate a config file; ConfigError messages are prefixed with the path."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]
        ) from None
    except ValueError as exc:
        raise ConfigError([f"{path}: invalid JSON: {exc}"]) from None
    return parse_config(data)
