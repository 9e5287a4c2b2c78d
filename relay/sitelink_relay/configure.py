"""A config put to work on ports: at start all of them bound, or none; on SIGHUP a
new config refused as a whole, or taken with the ports it drops closed, those it
adds opened, and those it changes rebuilt on their own sockets (counters kept, so a
reload loses no datagram and no statistic)."""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
from collections.abc import Iterable
from typing import Callable, NamedTuple, Optional

from . import PROG, wire
from .config import Config, ConfigError, Rule, load_config
from .localnet import LocalNetwork
from .peerkeys import keys_source, load_keys_for
from .ports import PeerState, PortState, open_socket
from .topology import compat_port, link_peers

log = logging.getLogger(PROG)

PortMaker = Callable[[Config, Rule, Optional[socket.socket]], PortState]


def open_ports(config: Config, make_port: PortMaker, ports: dict[int, PortState]) -> None:
    """Bind every rule's port into ``ports``; if one cannot be bound, none stays open."""
    opened: list[socket.socket] = []
    try:
        for rule in config.rules:
            sock = open_socket(rule.port)
            opened.append(sock)
            ports[rule.port] = make_port(config, rule, sock)
    except OSError:
        for s in opened:
            s.close()
        ports.clear()
        raise


def open_compat_port(
    port: int, dest: str, network: LocalNetwork, peers: dict[str, PeerState]
) -> PortState:
    ps = compat_port(port, dest, open_socket(port), network, peers)
    log.info(
        "compat mode: every datagram on udp/%d goes to %s:%d%s (own: %s)",
        port,
        dest,
        port,
        " (broadcast)" if ps.classifier.dest_is_broadcast else "",
        ", ".join(sorted(network.local)),
    )
    return ps


def close_ports(ports: dict[int, PortState], selector: selectors.BaseSelector) -> None:
    for ps in ports.values():
        if ps.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(ps.sock)
            ps.sock.close()
    ports.clear()


class Accepted(NamedTuple):
    """A new config that passed: its keys, and the sockets of the ports it adds."""

    config: Config
    keys: dict[str, wire.PeerKeys]
    opened: dict[int, socket.socket]


class Change(NamedTuple):
    """What differs between the running config and a new one, as far as ports care."""

    lan: bool  # the LAN (address, interface) or our own addresses
    peer_interfaces: bool
    wire: bool  # peers, office, wire or keys

    @classmethod
    def between(cls, old: Config, new: Config, keys_changed: bool) -> Change:
        return cls(
            lan=(new.lan, new.lan_interface, new.own_addresses)
            != (old.lan, old.lan_interface, old.own_addresses),
            peer_interfaces=new.peer_interfaces != old.peer_interfaces,
            wire=(new.peers, new.office, new.wire) != (old.peers, old.office, old.wire)
            or keys_changed,
        )


def accept(
    running: Config, path: str, keys_path: Optional[str], sealed: bool, bound: Iterable[int]
) -> Optional[Accepted]:
    """The config in ``path`` if it can replace ``running`` (``sealed``: the relay has
    an epoch and windows of its own; ``bound``: the ports open now); None: refused,
    and the reason logged."""
    try:
        new = load_config(path)
    except ConfigError as exc:
        log.error("reload: %s is invalid, keeping the running config:\n%s", path, exc)
        return None
    try:  # checked before they replace the running keys
        keys = load_keys_for(new, keys_path)
    except ConfigError as exc:
        log.error(
            "reload: the keys (%s) are refused, keeping the running config and keys:\n%s",
            keys_source(new, keys_path),
            exc,
        )
        return None
    if new.state_dir != running.state_dir and sealed:
        log.error(
            "reload: a new state_dir (%s) needs a restart; keeping the running config",
            new.state_dir,
        )
        return None
    if new.authenticated and not sealed:
        log.error(
            "reload: turning the authenticated wire on needs a restart; keeping the running config"
        )
        return None
    bound_now = set(bound)
    opened: dict[int, socket.socket] = {}
    try:
        for port in (r.port for r in new.rules if r.port not in bound_now):
            opened[port] = open_socket(port)
    except OSError as exc:
        for s in opened.values():
            s.close()
        log.error("reload: cannot bind udp/%d (%s); keeping the running config", port, exc)
        return None
    return Accepted(new, keys, opened)


def rebuild_ports(
    ports: dict[int, PortState],
    selector: selectors.BaseSelector,
    new: Accepted,
    change: Change,
    make_port: PortMaker,
    peers: dict[str, PeerState],
) -> list[PortState]:
    """Close the ports ``new`` drops, open those it adds, and rebuild those whose rule
    changed (all of them if anything they share did) on their sockets; ``peers``: the
    new peer states, their counters carried over.  Returns the ports made anew (they
    have multicast groups to join)."""
    for ps in ports.values():
        link_peers(ps, peers)
    rules = {r.port: r for r in new.config.rules}
    for port in [p for p in ports if p not in rules]:
        ps = ports.pop(port)
        selector.unregister(ps.sock)
        ps.sock.close()
        log.info("reload: closed udp/%d", port)
    everything = change.lan or change.peer_interfaces or change.wire
    made = []
    for port, rule in rules.items():
        old = ports.get(port)
        if old is None:
            ps = ports[port] = make_port(new.config, rule, new.opened[port])
            selector.register(ps.sock, selectors.EVENT_READ, ps)
            made.append(ps)
            log.info("reload: opened udp/%d", port)
        elif everything or old.rule != rule:
            fresh = make_port(new.config, rule, old.sock)
            fresh.rx, fresh.tx = old.rx, old.tx
            if not change.lan:  # what was re-broadcast is still on that LAN
                fresh.classifier.repeat = fresh.repeat = old.classifier.repeat
            for name in PortState.COUNTERS:
                setattr(fresh, name, getattr(old, name))
            fresh.forwarded_seen, fresh.lan_until = old.forwarded_seen, old.lan_until
            selector.modify(old.sock, selectors.EVENT_READ, fresh)
            ports[port] = fresh
            made.append(fresh)
    return made
