#!/usr/bin/python3
"""sitelink-relay: carry UDP broadcasts between office LANs over a site-to-site link.

Routers never forward broadcasts, so an application that announces itself with UDP
broadcasts (e.g. to 192.168.1.255:6799) is invisible at the other office.  This relay
runs on each gateway: it forwards broadcasts heard on its LAN as unicast to the peer
gateway(s) through the tunnel, and re-broadcasts on its LAN what a peer sent it.

A relay can also be a hub ("transit"): a rule's ``transit`` maps a peer to the peers
that get that peer's datagrams passed on unchanged (unicast, same payload), so branch
A's broadcasts reach branches B and C through hub H.  H re-broadcasts them on its own
LAN only if A is also in its ``accept_from``.  A peer's datagram is never sent on to
any other peer unless ``transit`` says so, and never back to the peer it came from.

It replaces the C ``udp-proxy [-d] PORT DEST`` of the original article, whose loop
filter was imperfect.  Every datagram is classified (see ``Classifier``) so that each
broadcast reaches the other LAN exactly once and nothing echoes back: datagrams from
our own addresses, broadcasts from outside the LAN or from the wrong interface,
peer datagrams sent to a broadcast address, and payloads we have just re-broadcast
are dropped and counted.  Python 3.9+ standard library only; no privileges needed
for ports above 1023.  The config lives in /etc/sitelink/relay.json (see ``--help``).

A peer relay is known by its source address, which anyone can forge: a datagram sent
from the Internet to the gateway's public address with a peer's address as source
would otherwise be re-broadcast on the LAN (or passed on to other branches).  The
config's optional ``peer_interfaces`` names the tunnel interface each peer's datagrams
must arrive on (IP_PKTINFO gives the arrival interface); a peer datagram arriving on
any other interface is dropped and counted as ``peer_interface``.  Without
``peer_interfaces`` (hand-written configs in the article's style, and compat mode)
peer datagrams are accepted on any interface, as before.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import ipaddress
import json
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterable
from typing import Any, Optional

__version__ = "1.0.0"

PROG = "sitelink-relay"
CONFIG_VERSION = 1
WIRE_FORMATS = ("raw",)
DEFAULT_STATUS_FILE = "/run/sitelink-relay/status.json"

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)
SIOCGIFADDR = 0x8915

# struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst; struct in_addr ipi_addr; }
PKTINFO = struct.Struct("=i4s4s")
ANC_BUFSIZE = socket.CMSG_SPACE(PKTINFO.size)
RECV_BUFSIZE = 65535  # > 65507, the largest IPv4 UDP payload, so MSG_TRUNC means trouble
SOCKET_RCVBUF = 1 << 20  # ask for 1 MiB; the kernel caps it at net.core.rmem_max
BURST = 64  # datagrams read from one socket before looking at the others

ECHO_WINDOW = 2.0  # seconds a re-broadcast payload is remembered for echo suppression
ECHO_MAX_ENTRIES = 4096
STATUS_INTERVAL = 5.0  # seconds between status file writes
REFRESH_INTERVAL = 10.0  # seconds between LAN ifindex / local address re-resolution
IFNAME_CACHE_MAX = 1024  # ifindex -> name entries kept before the cache starts over
IFNAMSIZ = 16  # Linux interface names: at most 15 bytes + NUL
ERROR_LOG_INTERVAL = 60.0  # at most one log line per (port, error) per this many seconds

LIMITED_BROADCAST = b"\xff\xff\xff\xff"

# Verdicts.  FORWARDED, REBROADCAST, TRANSIT and REBROADCAST_TRANSIT are actions;
# everything else is a drop reason.
FORWARDED = "forwarded"
REBROADCAST = "rebroadcast"
TRANSIT = "transit"  # peer datagram passed on to the rule's transit peers for that source
REBROADCAST_TRANSIT = "rebroadcast+transit"  # both of the above
DROP_OWN = "own"  # sent by this gateway (incl. our own re-broadcasts looping back)
DROP_FOREIGN = "foreign"  # neither a LAN broadcast nor a unicast from an accepted/transit peer
DROP_WRONG_INTERFACE = "wrong_interface"  # broadcast that did not arrive on the LAN interface
DROP_PEER_INTERFACE = "peer_interface"  # peer unicast not on that peer's tunnel interface
DROP_ECHO = "echo"  # payload identical to one we re-broadcast moments ago
DROP_TRUNCATED = "truncated"  # larger than the receive buffer (cannot happen for IPv4)
DROP_PEER_BROADCAST = "peer_broadcast"  # peer datagram addressed to a broadcast/multicast
DROP_NO_FORWARD_TO = "no_forward_to"  # LAN broadcast on a port with no forward_to peers
DROP_SAME_DESTINATION = "same_destination"  # compat: already addressed to DEST
DROP_REASONS = (
    DROP_OWN,
    DROP_FOREIGN,
    DROP_WRONG_INTERFACE,
    DROP_PEER_INTERFACE,
    DROP_ECHO,
    DROP_TRUNCATED,
    DROP_PEER_BROADCAST,
    DROP_NO_FORWARD_TO,
    DROP_SAME_DESTINATION,
)

log = logging.getLogger(PROG)


# --------------------------------------------------------------------------- config


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


# ----------------------------------------------------------------------- classifier


class EchoMemory:
    """Digests of payloads we re-broadcast recently, each remembered for ``window`` s.

    ``seen`` costs nothing (no hashing) when nothing was re-broadcast within the window.
    """

    __slots__ = ("window", "_entries", "_until")

    def __init__(self, window: float = ECHO_WINDOW):
        self.window = window
        self._entries: dict[bytes, float] = {}
        self._until = 0.0  # expiry of the newest entry

    @staticmethod
    def digest(payload: Any) -> bytes:
        return hashlib.blake2b(payload, digest_size=16).digest()

    def remember(self, payload: Any, now: float) -> None:
        entries = self._entries
        if len(entries) >= ECHO_MAX_ENTRIES:
            self._prune(now)
        key = self.digest(payload)
        entries.pop(key, None)  # keep insertion order == expiry order
        self._until = entries[key] = now + self.window

    def active(self, now: float) -> bool:
        if not self._until:
            return False
        if now >= self._until:
            self._entries.clear()
            self._until = 0.0
            return False
        return True

    def seen(self, payload: Any, now: float) -> bool:
        if not self.active(now):
            return False
        expiry = self._entries.get(self.digest(payload))
        return expiry is not None and expiry > now

    def _prune(self, now: float) -> None:
        entries = self._entries
        for key in list(entries):
            if entries[key] > now and len(entries) < ECHO_MAX_ENTRIES:
                break
            del entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class IfNames:
    """Arrival ifindex -> interface name, for checking ``peer_interfaces``.

    The hot path reads ``names`` (one dict lookup) and calls ``resolve`` only on a
    miss.  Names are matched rather than ifindexes resolved once, because a tunnel
    may not exist yet when the relay starts, and may be deleted and recreated (same
    name, new ifindex) while it runs: the new ifindex is a miss, resolved with one
    if_indextoname() call.  Linux does not hand out an ifindex again soon, so an entry
    for a deleted interface is harmless.  An unknown ifindex (interface already gone,
    0 = no IP_PKTINFO) is cached as "" (matches no name), so a flood costs one
    syscall per arrival interface, not per datagram.  The relay empties the cache on
    every refresh and SIGHUP (a renamed interface is seen within REFRESH_INTERVAL), and
    it starts over at IFNAME_CACHE_MAX entries, so it stays small.
    """

    __slots__ = ("names", "lookups")

    def __init__(self) -> None:
        self.names: dict[int, str] = {}  # only ever mutated in place: classifiers hold it
        self.lookups = 0  # if_indextoname() calls, for tests and curiosity

    def resolve(self, ifindex: int) -> str:
        names = self.names
        if len(names) >= IFNAME_CACHE_MAX:
            names.clear()
        self.lookups += 1
        try:
            name = socket.if_indextoname(ifindex)
        except (OSError, OverflowError, ValueError):
            name = ""
        names[ifindex] = name
        return name

    def clear(self) -> None:
        self.names.clear()


def _ip_to_int(addr: str) -> int:
    return int.from_bytes(socket.inet_aton(addr), "big")


class Classifier:
    """Decide what to do with one datagram received on one rule's port.

    Inputs are what recvmsg/IP_PKTINFO report: source address (str), arrival ifindex,
    header destination address (4 packed bytes).  Returns FORWARDED, REBROADCAST,
    TRANSIT, REBROADCAST_TRANSIT or a drop reason.  A peer unicast is re-broadcast if
    its source is in ``accept_from`` and passed on (by the relay, to the targets of
    ``transit_targets(transit)``) if its source is a transit source.  The only state
    is the echo memory (filled when the verdict includes a re-broadcast) and
    ``own``/``lan_ifindex``, which the relay refreshes.

    With ``peer_interfaces`` (peer -> interface name), a peer unicast that did not
    arrive on its peer's interface is dropped as DROP_PEER_INTERFACE; ``ifnames``
    (shared by the relay's classifiers) turns the arrival ifindex into a name.
    """

    __slots__ = (
        "lan_ifindex",
        "own",
        "accept_from",
        "transit_from",
        "has_forward_to",
        "echo",
        "ifnames",
        "_peers",
        "_peer_if",
        "_ifn",
        "_net",
        "_mask",
        "_bcast",
    )

    def __init__(
        self,
        lan: ipaddress.IPv4Interface,
        lan_ifindex: int,
        own: frozenset[str],
        accept_from: frozenset[str],
        has_forward_to: bool,
        echo_window: float = ECHO_WINDOW,
        transit: Optional[dict[str, Iterable[str]]] = None,
        peer_interfaces: Optional[dict[str, str]] = None,
        ifnames: Optional[IfNames] = None,
    ):
        self.lan_ifindex = lan_ifindex
        self.own = own
        self.accept_from = accept_from
        # sources the relay passes on; same filtering as PortState.transit
        self.transit_from = frozenset(transit_targets(transit or {}))
        self.has_forward_to = has_forward_to
        self.echo = EchoMemory(echo_window)
        # peer source -> verdict for its unicasts: one dict lookup in the hot path
        self._peers: dict[str, str] = {}
        for src in accept_from:
            self._peers[src] = REBROADCAST_TRANSIT if src in self.transit_from else REBROADCAST
        for src in self.transit_from.difference(accept_from):
            self._peers[src] = TRANSIT
        self.ifnames = ifnames if ifnames is not None else IfNames()
        self._ifn = self.ifnames.names
        # peer source -> the name its arrival interface must have (None, for a source
        # missing from peer_interfaces, matches no name); no dict: no interface check
        self._peer_if: Optional[dict[str, Optional[str]]] = None
        if peer_interfaces is not None:
            self._peer_if = {src: peer_interfaces.get(src) for src in self._peers}
        self._net = int(lan.network.network_address)
        self._mask = int(lan.network.netmask)
        self._bcast = lan.network.broadcast_address.packed

    @classmethod
    def for_rule(
        cls,
        config: Config,
        rule: Rule,
        lan_ifindex: int,
        own: Optional[frozenset[str]] = None,
        ifnames: Optional[IfNames] = None,
    ) -> Classifier:
        return cls(
            config.lan,
            lan_ifindex,
            config.own_addresses if own is None else own,
            rule.accept_from,
            bool(rule.forward_to),
            transit=rule.transit,
            peer_interfaces=config.peer_interfaces,
            ifnames=ifnames,
        )

    def in_lan(self, src: str) -> bool:
        try:
            return (_ip_to_int(src) & self._mask) == self._net
        except OSError:
            return False

    def classify(
        self,
        payload: Any,
        src: str,
        ifindex: int,
        dst: bytes,
        truncated: bool = False,
        now: Optional[float] = None,
    ) -> str:
        if truncated:
            return DROP_TRUNCATED
        if src in self.own:
            return DROP_OWN
        peer = self._peers.get(src)
        if dst == self._bcast or dst == LIMITED_BROADCAST:
            if peer is not None:
                return DROP_PEER_BROADCAST
            if ifindex != self.lan_ifindex:
                return DROP_WRONG_INTERFACE
            if not self.in_lan(src):
                return DROP_FOREIGN
            if not self.has_forward_to:
                return DROP_NO_FORWARD_TO
            if self.echo._until:
                if now is None:
                    now = time.monotonic()
                if self.echo.seen(payload, now):
                    return DROP_ECHO
            return FORWARDED
        if peer is not None:
            if dst[:1] >= b"\xe0":  # multicast or class E: not a unicast to us
                return DROP_PEER_BROADCAST
            peer_if = self._peer_if
            if peer_if is not None:
                name = self._ifn.get(ifindex)
                if name is None:
                    name = self.ifnames.resolve(ifindex)
                if name != peer_if[src]:  # e.g. forged source, arrived from the WAN
                    return DROP_PEER_INTERFACE
            if peer != TRANSIT:  # re-broadcast on our LAN: remember it for echoes
                self.echo.remember(payload, time.monotonic() if now is None else now)
            return peer
        return DROP_FOREIGN


class CompatClassifier:
    """The article's ``udp-proxy PORT DEST`` rule, with a working loop filter.

    Everything received is forwarded to DEST, except datagrams from our own addresses,
    datagrams already addressed to DEST, and (when DEST is a broadcast address) echoes
    of payloads we just sent.
    """

    __slots__ = ("own", "dest", "dest_is_broadcast", "echo")

    def __init__(
        self,
        own: frozenset[str],
        dest: str,
        dest_is_broadcast: bool,
        echo_window: float = ECHO_WINDOW,
    ):
        self.own = own
        self.dest = socket.inet_aton(dest)
        self.dest_is_broadcast = dest_is_broadcast
        self.echo = EchoMemory(echo_window)

    def classify(
        self,
        payload: Any,
        src: str,
        ifindex: int,
        dst: bytes,
        truncated: bool = False,
        now: Optional[float] = None,
    ) -> str:
        if truncated:
            return DROP_TRUNCATED
        if src in self.own:
            return DROP_OWN
        if dst == self.dest:
            return DROP_SAME_DESTINATION
        if self.dest_is_broadcast:
            if now is None:
                now = time.monotonic()
            if self.echo.seen(payload, now):
                return DROP_ECHO
            self.echo.remember(payload, now)
        return FORWARDED


# ---------------------------------------------------------------- local addresses


def parse_fib_trie(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """Return (local addresses, broadcast addresses) from /proc/net/fib_trie text."""
    local = set()
    bcast = set()
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            current = stripped[3:].strip()
        elif current and stripped.startswith("/32 "):
            if stripped.endswith(" LOCAL"):
                local.add(current)
            elif stripped.endswith(" BROADCAST"):
                bcast.add(current)
    return frozenset(local), frozenset(bcast)


def local_ipv4() -> tuple[frozenset[str], frozenset[str]]:
    """Local IPv4 addresses and broadcast addresses of this network namespace."""
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as fh:
            local, bcast = parse_fib_trie(fh.read())
        if local:
            return local, bcast
    except OSError:
        pass
    # Fallback: primary address of each interface via SIOCGIFADDR.
    import fcntl

    local = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            try:
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            local.add(socket.inet_ntoa(res[20:24]))
    return frozenset(local), frozenset()


def if_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


# ----------------------------------------------------------------------- sd_notify


class Notifier:
    """Minimal sd_notify(3): datagrams to $NOTIFY_SOCKET (path or '@abstract')."""

    def __init__(self, environ: Optional[dict[str, str]] = None):
        env = os.environ if environ is None else environ
        self.address: Optional[str] = None
        self.watchdog_interval: Optional[float] = None
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            self.address = "\0" + addr[1:]
        elif addr.startswith("/"):
            self.address = addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 2e6  # half the timeout, in seconds
        self._sock: Optional[socket.socket] = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, message: str) -> bool:
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)  # never let a stuck manager stall the relay
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
            return True
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def sd_notify(message: str, environ: Optional[dict[str, str]] = None) -> bool:
    notifier = Notifier(environ)
    try:
        return notifier.notify(message)
    finally:
        notifier.close()


# -------------------------------------------------------------------------- status


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


# --------------------------------------------------------------------------- relay


class PortState:
    """One listening socket, its classifier, peers and counters.

    ``forwarded`` counts LAN broadcasts sent to the forward_to peers, ``rebroadcast``
    peer datagrams re-broadcast on the LAN, ``transited`` peer datagrams passed on to
    transit peers (one per datagram, like ``forwarded``, whatever the number of
    targets; a datagram both re-broadcast and passed on counts in both).
    """

    __slots__ = (
        "port",
        "sock",
        "classifier",
        "forward_to",
        "transit",
        "rule",
        "received",
        "forwarded",
        "rebroadcast",
        "transited",
        "dropped",
        "send_errors",
    )

    COUNTERS = ("received", "forwarded", "rebroadcast", "transited", "dropped", "send_errors")

    def __init__(
        self,
        port: int,
        sock: Optional[socket.socket],
        classifier: Any,
        forward_to,
        transit: Optional[dict[str, Iterable[str]]] = None,
    ):
        self.port = port
        self.sock = sock
        self.classifier = classifier
        self.forward_to = tuple(forward_to)
        self.transit = transit_targets(transit or {})  # never back to the source
        self.rule: Optional[Rule] = None
        self.received = 0
        self.forwarded = 0
        self.rebroadcast = 0
        self.transited = 0
        self.dropped: dict[str, int] = {}
        self.send_errors: dict[str, int] = {}

    def counters(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "received": self.received,
            "forwarded": self.forwarded,
            "rebroadcast": self.rebroadcast,
            "transited": self.transited,
            "dropped": dict(self.dropped),
            "send_errors": dict(self.send_errors),
            "forward_to": list(self.forward_to),
        }
        if self.rule is not None:
            data["accept_from"] = sorted(self.rule.accept_from)
            data["transit"] = {src: list(dst) for src, dst in self.transit.items()}
        return data


def open_socket(port: int) -> socket.socket:
    """UDP socket on 0.0.0.0:port that can broadcast and reports IP_PKTINFO."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        with contextlib.suppress(OSError):
            # Let the kernel fragment big datagrams instead of failing with EMSGSIZE.
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        sock.bind(("0.0.0.0", port))  # noqa: S104 - broadcasts only reach wildcard sockets
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, f"E{exc.errno}") if exc.errno else type(exc).__name__


class Relay:
    """Event loop shared by service mode (config file) and compat mode (PORT DEST)."""

    def __init__(
        self,
        config: Optional[Config] = None,
        config_path: Optional[str] = None,
        compat: Optional[tuple[int, str]] = None,
        status_file: Optional[str] = None,
        debug: bool = False,
        notifier: Optional[Notifier] = None,
    ):
        self.config = config
        self.config_path = config_path
        self.compat = compat
        self.status_file = config.status_file if config is not None else status_file
        self.debug = debug
        self.notifier = notifier if notifier is not None else Notifier()
        self.selector = selectors.DefaultSelector()
        self.ports: dict[int, PortState] = {}
        self.lan_ifindex = 0
        self.local: frozenset[str] = frozenset()
        self.broadcasts: frozenset[str] = frozenset()
        self.ifnames = IfNames()  # shared by the classifiers (peer_interfaces)
        self._lan_anc: list[tuple[int, int, bytes]] = []
        self._lan_dest = ""
        self._buf = bytearray(RECV_BUFSIZE)
        self._bufs = [self._buf]
        self._mv = memoryview(self._buf)
        self._error_log: dict[tuple[int, str], tuple[float, int]] = {}
        self._status_error: Optional[str] = None
        self._stop = False
        self.started = time.time()
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None

    # -- setup ----------------------------------------------------------------

    def own_set(self) -> frozenset[str]:
        if self.config is not None:
            return self.config.own_addresses | self.local
        return self.local

    def refresh(self, initial: bool = False) -> None:
        """Re-resolve the LAN ifindex and local addresses (interfaces come and go)."""
        try:
            local, bcast = local_ipv4()
        except OSError as exc:
            log.warning("cannot enumerate local addresses: %s", exc)
            local, bcast = self.local, self.broadcasts
        changed_addrs = local != self.local
        self.local, self.broadcasts = local, bcast
        self.ifnames.clear()  # re-learnt lazily (see IfNames)
        own = self.own_set()
        if self.config is not None:
            cfg = self.config
            index = if_index(cfg.lan_interface)
            if index != self.lan_ifindex or initial:
                if index:
                    log.info("LAN interface %s has ifindex %d", cfg.lan_interface, index)
                else:
                    log.warning(
                        "LAN interface %s not found; LAN broadcasts are not relayed until it"
                        " appears",
                        cfg.lan_interface,
                    )
                self.lan_ifindex = index
            self._lan_anc = [
                (
                    socket.IPPROTO_IP,
                    IP_PKTINFO,
                    PKTINFO.pack(self.lan_ifindex, cfg.lan.ip.packed, b"\0\0\0\0"),
                )
            ]
            self._lan_dest = str(cfg.lan_broadcast)
            for ps in self.ports.values():
                ps.classifier.lan_ifindex = self.lan_ifindex
                ps.classifier.own = own
        else:
            for ps in self.ports.values():
                ps.classifier.own = own
                ps.classifier.dest_is_broadcast = self._compat_dest_is_broadcast()
        if changed_addrs and not initial:
            log.info("local addresses changed: %s", ", ".join(sorted(local)))

    def _compat_dest_is_broadcast(self) -> bool:
        dest = self.compat[1] if self.compat is not None else ""
        return dest == "255.255.255.255" or dest in self.broadcasts

    def _make_port(self, config: Config, rule: Rule, sock: Optional[socket.socket]) -> PortState:
        classifier = Classifier.for_rule(
            config, rule, self.lan_ifindex, self.own_set(), self.ifnames
        )
        ps = PortState(rule.port, sock, classifier, rule.forward_to, rule.transit)
        ps.rule = rule
        return ps

    def check_peer_interfaces(self) -> None:
        """Log the peer interfaces that do not exist (yet); nothing else depends on it."""
        if self.config is None or self.config.peer_interfaces is None:
            return
        peers_by_if: dict[str, list[str]] = {}
        for peer, name in self.config.peer_interfaces.items():
            peers_by_if.setdefault(name, []).append(peer)
        for name, peers in sorted(peers_by_if.items()):
            if not if_index(name):
                log.warning(
                    "peer interface %s not found; datagrams from %s are dropped until it appears",
                    name,
                    ", ".join(sorted(peers)),
                )

    def setup(self) -> None:
        self.refresh(initial=True)
        if self.config is not None:
            opened: list[socket.socket] = []
            try:
                for rule in self.config.rules:
                    sock = open_socket(rule.port)
                    opened.append(sock)
                    self.ports[rule.port] = self._make_port(self.config, rule, sock)
            except OSError:
                for s in opened:
                    s.close()
                self.ports.clear()
                raise
            log.info("config %s: %s", self.config_path, self.config.summary())
            self.check_peer_interfaces()
        elif self.compat is not None:
            port, dest = self.compat
            classifier = CompatClassifier(self.own_set(), dest, self._compat_dest_is_broadcast())
            self.ports[port] = PortState(port, open_socket(port), classifier, (dest,))
            log.info(
                "compat mode: every datagram on udp/%d goes to %s:%d%s (own: %s)",
                port,
                dest,
                port,
                " (broadcast)" if classifier.dest_is_broadcast else "",
                ", ".join(sorted(self.local)),
            )
        for ps in self.ports.values():
            self.selector.register(ps.sock, selectors.EVENT_READ, ps)

    # -- reload ---------------------------------------------------------------

    def reload(self) -> bool:
        if self.config is None or self.config_path is None:
            log.info("SIGHUP: nothing to reload in compat mode; addresses re-read")
            self.refresh()
            return True
        self.notifier.notify(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        self.ifnames.clear()  # rebuilt lazily, whether or not the new config is good
        try:
            try:
                new = load_config(self.config_path)
            except ConfigError as exc:
                log.error(
                    "reload: %s is invalid, keeping the running config:\n%s",
                    self.config_path,
                    exc,
                )
                return False
            new_rules = {r.port: r for r in new.rules}
            added = [p for p in new_rules if p not in self.ports]
            opened: dict[int, socket.socket] = {}
            try:
                for port in added:
                    opened[port] = open_socket(port)
            except OSError as exc:
                for s in opened.values():
                    s.close()
                log.error("reload: cannot bind udp/%d (%s); keeping the running config", port, exc)
                return False
            lan_changed = (new.lan, new.lan_interface, new.own_addresses) != (
                self.config.lan,
                self.config.lan_interface,
                self.config.own_addresses,
            )
            peers_changed = new.peer_interfaces != self.config.peer_interfaces
            self.config = new
            self.status_file = new.status_file
            for port in [p for p in self.ports if p not in new_rules]:
                ps = self.ports.pop(port)
                self.selector.unregister(ps.sock)
                ps.sock.close()
                log.info("reload: closed udp/%d", port)
            for port, rule in new_rules.items():
                old = self.ports.get(port)
                if old is None:
                    ps = self._make_port(new, rule, opened[port])
                    self.ports[port] = ps
                    self.selector.register(ps.sock, selectors.EVENT_READ, ps)
                    log.info("reload: opened udp/%d", port)
                elif lan_changed or peers_changed or old.rule != rule:
                    fresh = self._make_port(new, rule, old.sock)
                    if not lan_changed:
                        fresh.classifier.echo = old.classifier.echo
                    for name in PortState.COUNTERS:
                        setattr(fresh, name, getattr(old, name))
                    self.selector.modify(old.sock, selectors.EVENT_READ, fresh)
                    self.ports[port] = fresh
            self.refresh(initial=lan_changed)
            log.info("reloaded %s: %s", self.config_path, new.summary())
            if peers_changed:
                self.check_peer_interfaces()
            return True
        finally:
            self.notifier.notify(f"READY=1\nSTATUS={self.status_line()}")

    # -- hot path -------------------------------------------------------------

    def _send_error(self, ps: PortState, dest: str, exc: OSError) -> None:
        name = _errname(exc)
        ps.send_errors[name] = ps.send_errors.get(name, 0) + 1
        key = (ps.port, name)
        now = time.monotonic()
        last, suppressed = self._error_log.get(key, (0.0, 0))
        if last and now - last < ERROR_LOG_INTERVAL:
            self._error_log[key] = (last, suppressed + 1)
            return
        self._error_log[key] = (now, 0)
        log.warning(
            "udp/%d: sending to %s failed: %s%s",
            ps.port,
            dest,
            exc,
            f" ({suppressed} more since last report)" if suppressed else "",
        )

    def _pass_on(self, ps: PortState, payload: Any, src: str) -> None:
        """Send a peer's datagram to the transit peers for its source (never to src)."""
        ps.transited += 1
        sock = ps.sock
        port = ps.port
        for peer in ps.transit.get(src, ()):  # transit_targets(): never src itself
            try:
                sock.sendto(payload, (peer, port))
            except OSError as exc:
                self._send_error(ps, peer, exc)

    def handle_readable(self, ps: PortState) -> None:
        sock = ps.sock
        bufs = self._bufs
        mv = self._mv
        classify = ps.classifier.classify
        port = ps.port
        debug = self.debug
        for _ in range(BURST):
            try:
                n, ancdata, flags, addr = sock.recvmsg_into(bufs, ANC_BUFSIZE)
            except BlockingIOError:
                return
            except OSError as exc:
                # e.g. a queued ICMP error; never fatal
                name = "recv_" + _errname(exc)
                ps.send_errors[name] = ps.send_errors.get(name, 0) + 1
                continue
            ifindex = 0
            dst = b""
            for level, kind, data in ancdata:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    ifindex, _spec, dst = PKTINFO.unpack_from(data)
            payload = mv[:n]
            src = addr[0]
            ps.received += 1
            verdict = classify(payload, src, ifindex, dst, bool(flags & MSG_TRUNC))
            if debug:
                log.debug(
                    "udp/%d: %s -> %s if %d, %d bytes: %s",
                    port,
                    src,
                    socket.inet_ntoa(dst) if len(dst) == 4 else "?",
                    ifindex,
                    n,
                    verdict,
                )
            if verdict == FORWARDED:
                ps.forwarded += 1
                for peer in ps.forward_to:
                    try:
                        sock.sendto(payload, (peer, port))
                    except OSError as exc:
                        self._send_error(ps, peer, exc)
            elif verdict in (REBROADCAST, REBROADCAST_TRANSIT):
                ps.rebroadcast += 1
                try:
                    sock.sendmsg([payload], self._lan_anc, 0, (self._lan_dest, port))
                except OSError as exc:
                    self._send_error(ps, self._lan_dest, exc)
                if verdict == REBROADCAST_TRANSIT:
                    self._pass_on(ps, payload, src)
            elif verdict == TRANSIT:
                self._pass_on(ps, payload, src)
            else:
                ps.dropped[verdict] = ps.dropped.get(verdict, 0) + 1

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "relay_version": __version__,
            "pid": os.getpid(),
            "mode": "service" if self.config is not None else "compat",
            "started": self.started,
            "updated": time.time(),
            "interval": STATUS_INTERVAL,
            "ports": {str(p): ps.counters() for p, ps in sorted(self.ports.items())},
        }
        if self.config is not None:
            cfg = self.config
            data["config"] = self.config_path
            data["wire"] = cfg.wire
            data["lan"] = {
                "interface": cfg.lan_interface,
                "ifindex": self.lan_ifindex,
                "address": cfg.lan.with_prefixlen,
                "broadcast": str(cfg.lan_broadcast),
            }
            if cfg.peer_interfaces is not None:
                data["peer_interfaces"] = dict(sorted(cfg.peer_interfaces.items()))
        return data

    def status_line(self) -> str:
        fwd = sum(ps.forwarded for ps in self.ports.values())
        reb = sum(ps.rebroadcast for ps in self.ports.values())
        tra = sum(ps.transited for ps in self.ports.values())
        drop = sum(sum(ps.dropped.values()) for ps in self.ports.values())
        ports = ",".join(str(p) for p in sorted(self.ports))
        return f"udp/{ports}: {fwd} forwarded, {reb} rebroadcast, {tra} transited, {drop} dropped"

    def write_status(self) -> None:
        if self.notifier.enabled:
            self.notifier.notify("STATUS=" + self.status_line())
        if not self.status_file:
            return
        try:
            write_json_atomic(self.status_file, self.status())
        except OSError as exc:
            message = f"{self.status_file}: {exc.strerror or exc}"
            if message != self._status_error:
                log.warning("cannot write status file %s", message)
                self._status_error = message
        else:
            if self._status_error:
                log.info("status file %s writable again", self.status_file)
                self._status_error = None

    # -- loop -----------------------------------------------------------------

    def _on_signal(self, signum: int, frame: Any) -> None:
        pass  # the wakeup fd carries the signal number into the event loop

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self._on_signal)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)

    def _handle_signals(self) -> None:
        if self._wake_r is None:
            return
        try:
            data = self._wake_r.recv(64)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                log.info("%s received, stopping", signal.Signals(signum).name)
                self._stop = True
            elif signum == signal.SIGHUP:
                self.reload()
            elif signum == signal.SIGUSR1:
                self.write_status()

    def run(self) -> int:
        self._install_signals()
        self.write_status()
        self.notifier.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={self.status_line()}")
        log.info(
            "%s %s ready on udp/%s", PROG, __version__, ",".join(str(p) for p in sorted(self.ports))
        )
        now = time.monotonic()
        next_status = now + STATUS_INTERVAL
        next_refresh = now + REFRESH_INTERVAL
        wd_interval = self.notifier.watchdog_interval
        next_watchdog = now if wd_interval else float("inf")
        select = self.selector.select
        try:
            while not self._stop:
                now = time.monotonic()
                if now >= next_watchdog:
                    self.notifier.notify("WATCHDOG=1")
                    next_watchdog = now + wd_interval  # type: ignore[operator]
                if now >= next_status:
                    self.write_status()
                    next_status = now + STATUS_INTERVAL
                if now >= next_refresh:
                    self.refresh()
                    next_refresh = now + REFRESH_INTERVAL
                timeout = max(0.0, min(next_watchdog, next_status, next_refresh) - now)
                for key, _mask in select(timeout):
                    if key.data is None:
                        self._handle_signals()
                    else:
                        self.handle_readable(key.data)
        finally:
            self.notifier.notify("STOPPING=1")
            self.write_status()
            self.close()
        log.info("stopped")
        return 0

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        for ps in self.ports.values():
            if ps.sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(ps.sock)
                ps.sock.close()
        if self._wake_r is not None:
            self.selector.unregister(self._wake_r)
            self._wake_r.close()
        if self._wake_w is not None:
            self._wake_w.close()
        self.selector.close()
        self.notifier.close()


# ---------------------------------------------------------------------------- CLI

DESCRIPTION = """\
Relay UDP broadcasts between office LANs joined by a site-to-site tunnel.

Service mode (what the sitelink.gateway role installs):
  %(prog)s --config /etc/sitelink/relay.json
For each rule port, broadcasts heard on the LAN interface (to the LAN broadcast
address or 255.255.255.255, from a LAN host) are sent as unicast to every
forward_to peer gateway; unicast datagrams from an accept_from peer are
re-broadcast on the LAN.  On a hub, a unicast datagram from a peer that is a
key of transit is sent on, unchanged, to the peers listed for it (never back to
that peer), and re-broadcast on the hub's LAN only if that peer is in
accept_from too.  Our own datagrams, broadcasts from other interfaces or sources,
peers' datagrams that neither accept_from nor transit names, and echoes of what
we just re-broadcast are dropped and counted, so each broadcast arrives exactly
once and nothing loops.  With peer_interfaces in the config, a peer's datagram
is taken only if it arrived on that peer's tunnel interface (a forged source
address arriving from the Internet or the LAN is dropped as "peer_interface");
without it, peers' datagrams are taken from any interface, as in the article.

Compat mode (command line of the original udp-proxy):
  %(prog)s [-d] PORT DEST
Every datagram received on udp/PORT (any interface) is sent to DEST:PORT, except
datagrams from this host's own addresses and echoes of what it just sent.  DEST is
the peer gateway (192.168.2.126) or a broadcast address (192.168.2.255).
"""

EPILOG = """\
config file (JSON, version 1):
  {"version": 1,
   "lan": {"interface": "eth0", "address": "192.168.1.126/24"},
   "own_addresses": ["172.16.1.12"],      (optional: other addresses of this gateway)
   "wire": "raw",                         (optional; only "raw" = payload as-is)
   "rules": [{"port": 6799, "forward_to": ["192.168.2.126"],
              "accept_from": ["192.168.2.126"]}],
   "status_file": "/run/sitelink-relay/status.json"}   (optional; null = none)
  a rule of hub H that passes branch A's (192.168.3.126) datagrams on to
  branches B and C without re-broadcasting them on its own LAN:
   {"port": 6799, "forward_to": ["192.168.2.126"], "accept_from": [],
    "transit": {"192.168.3.126": ["192.168.2.126", "192.168.4.126"]}}
  transit (optional, default {}): peer -> non-empty list of other peers; counted
  as "transited" in --status.
  peer_interfaces (optional): the tunnel interface each peer's datagrams must
  arrive on, e.g. "peer_interfaces": {"192.168.2.126": "sl-brooklyn"}; a peer's
  datagram arriving on any other interface is dropped ("peer_interface" in
  --status).  When present, every accept_from and transit peer needs an entry;
  entries for addresses no rule takes datagrams from are allowed and unused.
  An interface may be missing at start or recreated while the relay runs.
  Absent: peers' datagrams are accepted on any interface (as in the article).

signals: SIGHUP reloads the config (a bad one is logged and the old one kept),
SIGUSR1 writes the status file now, SIGTERM/SIGINT stop.  Runs as a systemd
Type=notify service with watchdog; needs no privileges for ports above 1023.

examples:
  Manhattan: %(prog)s 6799 192.168.2.126      Brooklyn: %(prog)s 6799 192.168.2.255
  %(prog)s --check-config /etc/sitelink/relay.json
  %(prog)s --status

exit status: 0 ok, 1 runtime error (e.g. port in use), 2 bad config or usage.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("port", nargs="?", metavar="PORT", help="compat mode: UDP port to relay")
    parser.add_argument(
        "dest", nargs="?", metavar="DEST", help="compat mode: peer or broadcast address"
    )
    parser.add_argument("--config", metavar="FILE", help="run as a service with this JSON config")
    parser.add_argument(
        "--check-config",
        metavar="FILE",
        help="validate FILE and exit (0 = valid, 2 = invalid, reason on stderr)",
    )
    parser.add_argument(
        "--status",
        nargs="?",
        const=DEFAULT_STATUS_FILE,
        metavar="FILE",
        help=f"print the counters of a running relay (default {DEFAULT_STATUS_FILE})",
    )
    parser.add_argument(
        "--status-file",
        metavar="FILE",
        help="compat mode: write counters to FILE (service mode: status_file in the config)",
    )
    parser.add_argument(
        "-d", "--debug", action="store_true", help="log every datagram and its verdict to stderr"
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return parser


class _JournalFormatter(logging.Formatter):
    """Prefix lines with <N> syslog priorities when stderr goes to journald."""

    LEVELS = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}

    def __init__(self, journal: bool):
        super().__init__("%(message)s" if journal else PROG + ": %(levelname)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            level = self.LEVELS.get(record.levelno, 2)
            return f"<{level}>" + text.replace("\n", " | ")
        return text


def setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JournalFormatter(bool(os.environ.get("JOURNAL_STREAM"))))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


def _parse_compat(parser: argparse.ArgumentParser, port: str, dest: str) -> tuple[int, str]:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        parser.error(f"PORT: {port!r} is not a port number (1-65535)")
    try:
        addr = ipaddress.IPv4Address(dest)
    except ValueError:
        parser.error(f"DEST: {dest!r} is not an IPv4 address")
    if addr.is_unspecified or addr.is_multicast:
        parser.error(f"DEST: {addr} is not a unicast or broadcast address")
    return int(port), str(addr)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = [
        m
        for m, on in (
            ("--config", args.config is not None),
            ("--check-config", args.check_config is not None),
            ("--status", args.status is not None),
            ("PORT DEST", args.port is not None),
        )
        if on
    ]
    if len(modes) != 1:
        parser.error(
            "choose exactly one of --config FILE, --check-config FILE, --status [FILE],"
            " PORT DEST (got %s)" % (", ".join(modes) or "none")
        )
    if args.check_config is not None:
        try:
            cfg = load_config(args.check_config)
        except ConfigError as exc:
            print(f"{args.check_config}: invalid config:", file=sys.stderr)
            for line in exc.errors:
                print("  " + line, file=sys.stderr)
            return 2
        print(f"{args.check_config}: OK: {cfg.summary()}")
        return 0
    if args.status is not None:
        try:
            with open(args.status, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            print(f"{args.status}: cannot read status: {exc}", file=sys.stderr)
            return 1
        print(format_status(data))
        return 0

    compat = None
    if args.config is not None:
        if args.status_file is not None:
            parser.error("--status-file is for compat mode; set status_file in the config")
    else:
        if args.dest is None:
            parser.error("compat mode needs PORT and DEST")
        compat = _parse_compat(parser, args.port, args.dest)
    setup_logging(args.debug)
    if compat is None:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            log.error("invalid config %s:\n%s", args.config, exc)
            return 2
        relay = Relay(config=cfg, config_path=args.config, debug=args.debug)
    else:
        relay = Relay(compat=compat, status_file=args.status_file, debug=args.debug)
    try:
        relay.setup()
    except OSError as exc:
        log.error("cannot open UDP socket: %s", exc)
        return 1
    return relay.run()


if __name__ == "__main__":
    sys.exit(main())
