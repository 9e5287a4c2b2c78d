"""The event loop: sockets, signals, reload, and the hot path."""

from __future__ import annotations

import contextlib
import errno
import hmac
import ipaddress
import json
import logging
import os
import selectors
import signal
import socket
import struct
import time
from collections.abc import Iterable
from typing import Any, Optional

from . import PROG, __version__, files, mmsg, ports, sockfilter, status, storm, wire
from .classify import (
    DROP_OWN,
    FORWARDED,
    LIMITED_BROADCAST,
    MARKER_SOURCE,
    REBROADCAST,
    REBROADCAST_TRANSIT,
    SIBLING,
    TRANSIT,
    Classifier,
    CompatClassifier,
)
from .config import (
    STORM_DEFAULTS,
    WIRE_SITELINK1,
    Config,
    ConfigError,
    Rule,
    load_config,
)
from .neighbours import Neighbours
from .netinfo import (
    IP_PKTINFO,
    PKTINFO,
    IfNames,
    if_index,
    local_ipv4,
)
from .notify import Notifier
from .ports import PeerState, PortState, open_socket
from .status import STATUS_INTERVAL, write_json_atomic

log = logging.getLogger(PROG)

BATCHES = 8  # batches read from one socket before looking at the others
REPLAY_FILE = "replay.json"  # in state_dir: the replay windows (leased ahead, wire.py)
EPOCH_FILE = "epoch"
FORGET_FILE = "forget"  # in state_dir: {"senders": [...] or "all"}, written by root
LAN_CHECK_INTERVAL = 1.0  # seconds between checks that the LAN interface is the same one
REFRESH_INTERVAL = 10.0  # seconds between full re-reads of local addresses
# A source over its rate for this long is cut off.  Short, because until then every
# one of its datagrams still costs the relay a little; after, the kernel drops them.
STORM_TRIP_SECONDS = 0.25
ERROR_LOG_INTERVAL = 60.0  # at most one log line per (port, error) per this many seconds
IP_ADD_MEMBERSHIP = getattr(socket, "IP_ADD_MEMBERSHIP", 35)
IP_MREQN = struct.Struct("=4s4si")  # struct ip_mreqn { imr_multiaddr, imr_address, imr_ifindex }

# The hot path's constants, bound once (a module attribute costs a lookup each time).
_unpack_header = wire.HEADER.unpack_from
_compare_digest = hmac.compare_digest
_MAGIC, _VERSION = wire.MAGIC, wire.VERSION
_HEADER_SIZE, _OVERHEAD, _MAX_PAYLOAD = wire.HEADER_SIZE, wire.OVERHEAD, wire.MAX_PAYLOAD
_NO_GROUP, _KIND_BROADCAST = wire.NO_GROUP, wire.KIND_BROADCAST
_LEASE = wire.LEASE
_EPOCH_DROPS = frozenset((wire.DROP_STALE, wire.DROP_FUTURE))

# UDP segmentation offload for re-broadcast runs (Linux 4.18+): SOL_UDP, UDP_SEGMENT.
_SOL_UDP = 17
_UDP_SEGMENT = 103
_GSO_SIZE = struct.Struct("=H")
GSO_MAX_SEGMENT = 1400  # a segment must fit the LAN's MTU; 1400 leaves room everywhere
GSO_MAX_SEGMENTS = 64  # the kernel's limit (UDP_MAX_SEGMENTS) on Debian 12's 6.1
GSO_MAX_BYTES = 60000  # one send stays one (unfragmented-size) IPv4 payload
_GSO_UNSUPPORTED = (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EMSGSIZE)

_PEER_VERDICTS = frozenset((REBROADCAST, TRANSIT, REBROADCAST_TRANSIT))
# The marker a relay sends itself before re-broadcasts (classify.RepeatMemory): a
# random token of this relay's, and the marker's number.
_MARKER_TOKEN = 16
_MARKER_NUMBER = struct.Struct("!Q")
_MARKER_SIZE = _MARKER_TOKEN + _MARKER_NUMBER.size
LAN_QUIET = 30.0  # a port whose LAN forwarded nothing for this long tracks no repeats
# Redundant gateways: relays of one office on one LAN ("siblings") send each other a
# heartbeat; one of them relays, the others stand by.
HEARTBEAT_INTERVAL = 0.5
SIBLING_TIMEOUT = 1.5  # a sibling not heard from for this long is gone
DROP_STANDBY = "standby"  # another relay of this office relays it
DROP_TOO_BIG = "too_big"  # a LAN datagram too big for the envelope (over 65467 bytes)
DROP_GROUP = "group"  # a peer's multicast datagram for a group this port does not relay


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, f"E{exc.errno}") if exc.errno else type(exc).__name__


def _kind(dst: bytes) -> tuple[int, bytes]:
    """Envelope kind and group of a LAN datagram, from its header destination."""
    if dst == LIMITED_BROADCAST:
        return wire.KIND_LIMITED, wire.NO_GROUP
    if dst[:1] >= b"\xe0":
        return wire.KIND_MULTICAST, dst
    return wire.KIND_BROADCAST, wire.NO_GROUP


def _peer_addresses(config: Config) -> set[str]:
    addresses: set[str] = set()
    for rule in config.rules:
        addresses.update(rule.forward_to, rule.accept_from, rule.transit)
        for targets in rule.transit.values():
            addresses.update(targets)
    return addresses


def missing_keys(config: Config, keys: dict[str, wire.PeerKeys]) -> list[str]:
    """Problems of ``keys`` for ``config``: every authenticated peer needs its key."""
    problems = [f"keys: no key for sibling {addr}" for addr in config.siblings if addr not in keys]
    for addr in sorted(_peer_addresses(config)):
        if config.peer_wire(addr) == WIRE_SITELINK1 and addr not in keys:
            office = config.peers[addr].office if addr in config.peers else None
            problems.append(f"keys: no key for peer {addr}" + (f" ({office})" if office else ""))
    return problems


def load_keys_for(config: Config, keys_path: Optional[str] = None) -> dict[str, wire.PeerKeys]:
    """The keys ``config`` needs (none for the raw wire), from ``keys_path`` (--keys) or
    the config's keys_file; raise ConfigError if they are unusable."""
    if not config.authenticated:
        return {}
    path = keys_path or config.keys_file
    if not path:
        raise ConfigError(["keys_file: missing (the authenticated wire needs keys; or --keys)"])
    try:
        keys = wire.load_keys(path)
    except wire.KeysError as exc:
        raise ConfigError(exc.errors) from None
    problems = missing_keys(config, keys)
    if problems:
        raise ConfigError(problems)
    return keys


def start_check(config: Config, keys_path: Optional[str] = None) -> list[str]:
    """What a start would refuse, short of binding the ports (--check-config): the keys
    (readable, one per authenticated peer) and the state_dir.  Raises ConfigError;
    returns notes (e.g. a state_dir that will be created)."""
    load_keys_for(config, keys_path)
    notes = []
    if config.authenticated and config.state_dir:
        problem = files.writable_dir(config.state_dir)
        if problem:
            raise ConfigError([f"state_dir: {problem}"])
        if not os.path.isdir(config.state_dir):
            notes.append(f"state_dir {config.state_dir} will be created")
    return notes


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
        keys_path: Optional[str] = None,
        keys: Optional[dict[str, wire.PeerKeys]] = None,
    ):
        self.config = config
        self.config_path = config_path
        self.compat = compat
        self.status_file = config.status_file if config is not None else status_file
        self.metrics_file = config.metrics_file if config is not None else None
        self.debug = debug
        self.notifier = notifier if notifier is not None else Notifier()
        self.selector = selectors.DefaultSelector()
        self.ports: dict[int, PortState] = {}
        self.peers: dict[str, PeerState] = {}
        self.lan_ifindex = 0
        self.local: frozenset[str] = frozenset()
        self.broadcasts: frozenset[str] = frozenset()
        self.ifnames = IfNames()  # shared by the classifiers (peer_interfaces)
        # --keys FILE; else the config's keys_file, read again from each new config
        self.keys_path = keys_path
        self.keys: dict[str, wire.PeerKeys] = dict(keys) if keys else {}
        self.replay = wire.ReplayState()
        self._windows = self.replay.windows  # the hot path's shortcut (same dict)
        self.sealer: Optional[wire.Sealer] = None
        self.office_id: Optional[bytes] = None
        self.sender_id = b"\0\0\0\0"
        self.storm: Optional[storm.StormControl] = None
        # who is really on the LAN (storm control gives forged sources no budget)
        self.neighbours = Neighbours(
            config.lan_interface if config is not None else "",
            config.lan.network if config is not None else ipaddress.IPv4Network("0.0.0.0/32"),
        )
        self._storm_settings: Optional[tuple[float, ...]] = None
        self._kernel_drops: Any = None  # what the kernel drops now (sources, kept peers)
        self.standby = False
        self._hold_until = 0.0  # a starting relay with siblings listens before relaying
        self.sibling_seen: dict[str, float] = {}
        self.sibling_active: dict[str, bool] = {}
        self._lan_pktinfo: tuple[int, bytes] = (0, b"\0\0\0\0")
        self._lan_dest = ""
        self._lan_ip = b"\0\0\0\0"
        self._error_log: dict[tuple[int, str], tuple[float, int]] = {}
        self._status_error: Optional[str] = None
        self._replay_error: Optional[str] = None
        self._stop = False
        self._marker = os.urandom(_MARKER_TOKEN)  # what this relay sends itself (markers)
        self.started = time.time()
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        if config is not None:
            self._apply_wire(config)

    # -- setup ----------------------------------------------------------------

    def own_set(self) -> frozenset[str]:
        if self.config is not None:
            return (
                self.config.own_addresses
                | self.local
                | frozenset(self.config.siblings)
                | {MARKER_SOURCE}  # our markers (repeat memory) come from there
            )
        return self.local

    def _apply_wire(self, config: Config) -> None:
        """Office id, sender id, storm control and peer states for ``config``."""
        self.office_id = wire.office_id(config.office) if config.office else None
        self.sender_id = config.lan.ip.packed
        self._lan_ip = config.lan.ip.packed
        if self.sealer is not None:
            self.sealer.office = self.office_id or b"\0\0\0\0"
            self.sealer.sender = self.sender_id
        neighbours = self.neighbours
        if (neighbours.interface, neighbours.network) != (config.lan_interface, config.lan.network):
            neighbours.interface, neighbours.network = config.lan_interface, config.lan.network
            neighbours.verified_set = frozenset()
            neighbours._next_read = 0.0
        sc = config.storm_control
        settings = None if sc is None else tuple(sc[k] for k in STORM_DEFAULTS)
        if settings is None:
            self.storm = None
        elif self.storm is None or settings != self._storm_settings:
            self.storm = storm.StormControl(
                **sc,
                trip_seconds=STORM_TRIP_SECONDS,
                on_event=self._storm_event,
                verify=self.neighbours.verified,
            )
            self._kernel_drops = None
        self._storm_settings = settings
        old = self.peers
        self.peers = {}
        addresses: set[str] = set(config.peers)
        for rule in config.rules:
            addresses.update(rule.forward_to, rule.accept_from, rule.transit)
            for targets in rule.transit.values():
                addresses.update(targets)
        for addr in sorted(addresses):
            peer = config.peers.get(addr)
            authenticated = config.peer_wire(addr) == WIRE_SITELINK1
            keys = None
            if authenticated:
                # load_keys() refuses a config with a key missing; should one be missing
                # anyway, the peer is not spoken to in clear: NO_KEYS verifies nothing.
                keys = self.keys.get(addr, wire.NO_KEYS)
            state = PeerState(addr, peer.office if peer is not None else None, keys)
            previous = old.get(addr)
            if previous is not None:
                state.received, state.accepted, state.sent = (
                    previous.received,
                    previous.accepted,
                    previous.sent,
                )
                state.dropped = previous.dropped
            self.peers[addr] = state

    def _storm_event(self, kind: str, src: str) -> None:
        self._update_kernel_drops(also=(src,) if kind == storm.EVENT_CUT_OFF else ())
        if kind == storm.EVENT_CUT_OFF:
            log.warning(
                "storm control: %s cut off for %ds (over %d datagrams/s for %ss)",
                src,
                self.storm.cutoff_seconds if self.storm else 0,
                self.storm.per_source_rate if self.storm else 0,
                self.storm.trip_seconds if self.storm else 0,
                extra={"fields": {"SITELINK_EVENT": "cut_off", "SITELINK_SOURCE": src}},
            )
        else:
            log.info(
                "storm control: %s released",
                src,
                extra={"fields": {"SITELINK_EVENT": "released", "SITELINK_SOURCE": src}},
            )

    def _update_kernel_drops(self, also: Iterable[str] = ()) -> None:
        """Socket filters that drop, before they are even queued, the datagrams the relay
        would drop first thing: from our own addresses (every broadcast we send comes
        back to us) and from cut-off sources.  A flood from one host then cannot crowd
        the others out of the queue, and an echo costs no system call.  A cut-off
        source that is a peer's address (forged, arriving elsewhere) is dropped except
        on that peer's own interface: a forger cannot get the real peer cut off."""
        own = self.local | (self.config.own_addresses if self.config is not None else frozenset())
        own -= {MARKER_SOURCE}  # our markers must come in (loopback cannot be forged)
        cut = set(also)
        if self.storm is not None:
            cut.update(self.storm.cut_off(time.monotonic()))
        cut -= own
        peer_if = (self.config.peer_interfaces if self.config is not None else None) or {}
        keep = {a: if_index(peer_if[a]) for a in sorted(cut) if a in peer_if}
        keep = dict(list(keep.items())[: sockfilter.MAX_KEPT])
        plain = (sorted(own) + sorted(cut.difference(peer_if)))[
            : sockfilter.MAX_SOURCES - len(keep)
        ]
        key = (frozenset(plain), frozenset(keep.items()))
        if key == self._kernel_drops or not self.ports:
            return
        self._kernel_drops = key
        for ps in self.ports.values():
            if ps.sock is None:
                continue
            try:
                sockfilter.drop_sources(ps.sock, plain, keep)
            except (OSError, ValueError) as exc:  # user space still drops them, at a cost
                log.warning("udp/%d: cannot filter in the kernel: %s", ps.port, exc)

    def load_keys(self, config: Config) -> dict[str, wire.PeerKeys]:
        """The keys ``config`` needs (none for the raw wire); raise ConfigError if unusable."""
        return load_keys_for(config, self.keys_path)

    def _state_path(self, name: str) -> Optional[str]:
        state_dir = self.config.state_dir if self.config is not None else None
        return os.path.join(state_dir, name) if state_dir else None

    def _start_epoch(self, starting: bool = True) -> int:
        """Our epoch: one more than the last one saved (or the clock, if later).

        Saved before it is used.  At start a failed save refuses the start (a relay
        that cannot keep its epoch or replay windows would take replays after every
        restart); later (sequence numbers used up) it is logged and the clock used.
        """
        path = self._state_path(EPOCH_FILE)
        if path is None:
            return wire.next_epoch(None)
        previous = wire.read_int_file(path)
        epoch = wire.next_epoch(previous)
        if previous is not None and epoch <= previous:
            log.warning(
                "the saved epoch %d is more than %d s ahead of the clock: ignored",
                previous,
                wire.MAX_EPOCH_SKEW // 2,
            )
        try:
            wire.write_file_atomic(path, b"%d\n" % epoch)
        except OSError as exc:
            if starting:
                raise ConfigError(
                    [f"state_dir: cannot save the epoch in {path}: {exc.strerror or exc}"]
                ) from None
            log.warning("cannot save the epoch in %s (%s); using the clock", path, exc)
        return epoch

    def _bump_epoch(self) -> int:
        log.info("sequence numbers used up: new epoch")
        return self._start_epoch(starting=False)

    def _prepare_state_dir(self) -> None:
        """Make state_dir if it is missing; refuse to start if it cannot hold our state."""
        state_dir = self.config.state_dir if self.config is not None else None
        if not state_dir:
            return
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError([f"state_dir: cannot create {state_dir}: {exc.strerror}"]) from None
        problem = files.writable_dir(state_dir)
        if problem:
            raise ConfigError([f"state_dir: {problem}"])

    def _load_replay(self) -> None:
        path = self._state_path(REPLAY_FILE)
        self.replay.path = path
        if path is None:
            return
        try:
            data = json.loads(files.read_regular(path, 1 << 24).decode("utf-8"))
        except files.FileProblem as exc:
            if os.path.lexists(path):
                log.warning("ignoring %s", exc)
            return
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            log.warning("ignoring %s: %s", path, exc)
            return
        count = self.replay.load(data)
        if count:
            log.info("replay windows of %d senders restored from %s", count, path)

    def forget_requested(self) -> None:
        """Forget the senders that ``state_dir/forget`` names (written by root, e.g. by
        the relay role), at start and on SIGHUP, then remove the request."""
        path = self._state_path(FORGET_FILE)
        if path is None or not os.path.lexists(path):
            return
        try:
            data = json.loads(files.read_regular(path, 1 << 20).decode("utf-8"))
            senders = data["senders"] if isinstance(data, dict) else None
            if senders != "all" and not (
                isinstance(senders, list) and all(isinstance(a, str) for a in senders)
            ):
                raise ValueError('must be {"senders": [address, ...]} or {"senders": "all"}')
        except (files.FileProblem, ValueError, KeyError, UnicodeDecodeError) as exc:
            log.error("ignoring the forget request %s: %s", path, exc)
            senders = None
        if senders is not None:
            gone = self.replay.forget(senders)
            log.warning(
                "replay windows forgotten on request: %s",
                ", ".join(gone) or "none of " + json.dumps(senders),
                extra={"fields": {"SITELINK_EVENT": "forgotten"}},
            )
            self.save_replay(exact=True)
        try:
            os.unlink(path)
        except OSError as exc:
            log.error("cannot remove the forget request %s: %s", path, exc)

    def lease_replay(self) -> None:
        """Save the windows a block ahead, before the datagram that needed it is used."""
        self._saved(self.replay.lease(time.monotonic()))

    def save_replay(self, exact: bool = False) -> None:
        """Save the replay windows; ``exact`` at stop (the marks of the next start)."""
        if self.replay.path is None or not self.replay.windows:
            return
        self._saved(self.replay.save(exact))

    def _saved(self, error: Optional[str]) -> None:
        """A WARNING at the first failed save of a streak, INFO when saving works again."""
        if error is not None:
            if self._replay_error is None:
                log.warning(
                    "cannot save the replay windows (%s): after a restart, replays of what"
                    " arrived since the last save would be accepted",
                    error,
                    extra={"fields": {"SITELINK_EVENT": "replay_save_failed"}},
                )
            self._replay_error = error
        elif self._replay_error is not None:
            log.info("replay windows saved again")
            self._replay_error = None

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
                self._join_groups()
            self._lan_pktinfo = (self.lan_ifindex, cfg.lan.ip.packed)
            self._lan_dest = str(cfg.lan_broadcast)
            for ps in self.ports.values():
                ps.classifier.lan_ifindex = self.lan_ifindex
                ps.classifier.own = own
        else:
            for ps in self.ports.values():
                ps.classifier.own = own
                ps.classifier.dest_is_broadcast = self._compat_dest_is_broadcast()
                ps.classifier.broadcasts = frozenset(
                    socket.inet_aton(b) for b in bcast
                ) | frozenset((LIMITED_BROADCAST,))
        if changed_addrs and not initial:
            log.info("local addresses changed: %s", ", ".join(sorted(local)))
        self._update_kernel_drops()

    def check_lan(self) -> None:
        """Cheap checks, every second: a LAN interface recreated gets a new ifindex;
        cut-off sources whose time is up are let in again (the kernel hid them)."""
        if self.config is not None and if_index(self.config.lan_interface) != self.lan_ifindex:
            self.refresh()
        if self.storm is not None:
            self.storm.expire(time.monotonic())
            self._update_kernel_drops()

    def _join_groups(self, ports: Optional[Iterable[PortState]] = None) -> None:
        """Join each port's multicast groups on the LAN interface (again, if it changed)."""
        if not self.lan_ifindex:
            return
        for ps in ports if ports is not None else self.ports.values():
            if ps.sock is None or ps.rule is None:
                continue
            for group in ps.rule.multicast_groups:
                mreq = IP_MREQN.pack(socket.inet_aton(group), b"\0\0\0\0", self.lan_ifindex)
                try:
                    ps.sock.setsockopt(socket.IPPROTO_IP, IP_ADD_MEMBERSHIP, mreq)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:  # already a member
                        log.warning("udp/%d: cannot join %s: %s", ps.port, group, exc)

    def _compat_dest_is_broadcast(self) -> bool:
        dest = self.compat[1] if self.compat is not None else ""
        return dest == "255.255.255.255" or dest in self.broadcasts

    def _make_port(self, config: Config, rule: Rule, sock: Optional[socket.socket]) -> PortState:
        classifier = Classifier.for_rule(
            config, rule, self.lan_ifindex, self.own_set(), self.ifnames
        )
        ps = PortState(rule.port, sock, classifier, rule.forward_to, rule.transit)
        ps.repeat = classifier.repeat
        ps.marker = self._marker
        ps.rule = rule
        ps.groups = frozenset(socket.inet_aton(g) for g in rule.multicast_groups)
        ps.lan_dests = frozenset(
            ("255.255.255.255", str(config.lan_broadcast), *rule.multicast_groups)
        )
        self._link_peers(ps)
        return ps

    def _link_peers(self, ps: PortState) -> None:
        peers = self.peers
        for addr in (*ps.forward_to, *ps.transit):
            if addr not in peers:  # a Rule built by hand (tests): a raw peer
                peers[addr] = PeerState(addr, None, None)
        for targets in ps.transit.values():
            for addr in targets:
                if addr not in peers:
                    peers[addr] = PeerState(addr, None, None)
        ps.fwd_peers = tuple(peers[a] for a in ps.forward_to)
        # (peer, destination, its send key; None: raw) for the hot path; no key: never
        ps.fwd = tuple(
            (p, (p.addr, ps.port), None if p.keys is None else p.keys.send)
            for p in ps.fwd_peers
            if p.keys is not wire.NO_KEYS
        )
        ps.transit_peers = {
            src: tuple(peers[a] for a in targets) for src, targets in ps.transit.items()
        }

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
        if self.config is not None:
            self.keys = self.load_keys(self.config) if not self.keys else self.keys
            if self.config.authenticated:
                self._prepare_state_dir()
            self._apply_wire(self.config)
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
            self._join_groups()
            if self.config.authenticated:  # after the binds: a refused start changes nothing
                try:
                    epoch = self._start_epoch()
                except ConfigError:
                    self.close_ports()
                    raise
                self.sealer = wire.Sealer(
                    self.office_id or b"\0\0\0\0", self.sender_id, epoch, self._bump_epoch
                )
                self._load_replay()
                self.forget_requested()
            if self.config.siblings:
                self.standby = True
                self._hold_until = time.monotonic() + SIBLING_TIMEOUT
            log.info("config %s: %s", self.config_path, self.config.summary())
            if self.sealer is not None:
                log.info(
                    "authenticated wire: office %s, epoch %d, keys %s",
                    self.config.office,
                    self.sealer.epoch,
                    ", ".join(
                        f"{a} {p.keys.send.fingerprint}"
                        for a, p in sorted(self.peers.items())
                        if p.keys is not None
                    )
                    or "none",
                )
            self.check_peer_interfaces()
        elif self.compat is not None:
            port, dest = self.compat
            classifier = CompatClassifier(
                self.own_set(), dest, self._compat_dest_is_broadcast(), broadcasts=self.broadcasts
            )
            ps = PortState(port, open_socket(port), classifier, (dest,))
            ps.lan_dests = frozenset()  # compat mode knows no LAN: DEST as routed
            self.ports[port] = ps
            self._link_peers(ps)
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
        self._update_kernel_drops()

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
            try:  # checked before they replace the running keys
                keys = self.load_keys(new)
            except ConfigError as exc:
                log.error(
                    "reload: the keys (%s) are refused, keeping the running config and keys:\n%s",
                    self.keys_path or new.keys_file,
                    exc,
                )
                return False
            if new.state_dir != self.config.state_dir and self.sealer is not None:
                log.error(
                    "reload: a new state_dir (%s) needs a restart; keeping the running config",
                    new.state_dir,
                )
                return False
            if new.authenticated and self.sealer is None:
                log.error(
                    "reload: turning the authenticated wire on needs a restart;"
                    " keeping the running config"
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
            wire_changed = (new.peers, new.office, new.wire) != (
                self.config.peers,
                self.config.office,
                self.config.wire,
            ) or keys is not self.keys
            self.config = new
            self.keys = keys
            self.status_file = new.status_file
            self.metrics_file = new.metrics_file
            self._apply_wire(new)
            for ps in self.ports.values():
                self._link_peers(ps)  # the new peer states (their counters carried over)
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
                    self._join_groups([ps])
                    log.info("reload: opened udp/%d", port)
                elif lan_changed or peers_changed or wire_changed or old.rule != rule:
                    fresh = self._make_port(new, rule, old.sock)
                    fresh.rx, fresh.tx = old.rx, old.tx
                    if not lan_changed:  # what was re-broadcast is still on that LAN
                        fresh.classifier.repeat = fresh.repeat = old.classifier.repeat
                    for name in PortState.COUNTERS:
                        setattr(fresh, name, getattr(old, name))
                    fresh.forwarded_seen, fresh.lan_until = old.forwarded_seen, old.lan_until
                    self.selector.modify(old.sock, selectors.EVENT_READ, fresh)
                    self.ports[port] = fresh
                    self._join_groups([fresh])
            self.refresh(initial=lan_changed)
            self._kernel_drops = None  # new sockets get the filter too
            self._update_kernel_drops()
            log.info("reloaded %s: %s", self.config_path, new.summary())
            self.forget_requested()
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

    def handle_readable(self, ps: PortState) -> None:
        """Read what the socket has (a few batches), act on each datagram, send in batches."""
        rx = ps.rx
        for _unused in range(BATCHES):
            try:
                n = rx.recv()
            except OSError as exc:
                # e.g. a queued ICMP error; never fatal
                name = "recv_" + _errname(exc)
                ps.send_errors[name] = ps.send_errors.get(name, 0) + 1
                continue
            if not n:
                break
            self._handle_batch(ps, n)
            if ps.out:
                if ps.repeat is not None:
                    self._mark_rebroadcasts(ps)
                self._send_out(ps)
            for addr, exc in ps.tx.flush(ps.sock):
                self._send_error(ps, addr[0], exc)
            if n < rx.batch:
                break

    def _mark_rebroadcasts(self, ps: PortState) -> None:
        """Remember this batch's re-broadcasts (classify.RepeatMemory), and send the
        marker that numbers them into our own queue, just before they leave: what we
        read before it was there before they left (not their echo); a repeater's echo
        can only come after it.

        Only while the LAN broadcasts on this port (something was forwarded in the
        last LAN_QUIET seconds): an echo is a LAN broadcast, so on a quiet LAN a
        repeater's first echo wakes the memory up (one extra copy), and a one-way port
        pays nothing for it."""
        now = time.monotonic()
        if ps.forwarded != ps.forwarded_seen:
            ps.forwarded_seen = ps.forwarded
            ps.lan_until = now + LAN_QUIET
        elif now >= ps.lan_until:
            return
        lan = ps.lan_dests
        bodies = [
            parts[0] for dest, items in ps.out.items() if dest[0] in lan for parts, _unused in items
        ]
        if not bodies:
            return
        repeat = ps.repeat
        repeat.remember(bodies, now)
        marker = ps.marker + _MARKER_NUMBER.pack(repeat.mark())
        with contextlib.suppress(OSError):  # lost: they count after PENDING_MAX
            ps.sock.sendto(marker, (MARKER_SOURCE, ps.port))  # type: ignore[union-attr]

    def _send_out(self, ps: PortState) -> None:
        """Send this batch's datagrams, destination by destination.

        A run of datagrams of one size to one destination (a burst of announcements,
        or a blast) goes out in ONE system call with UDP segmentation offload
        (UDP_SEGMENT): the kernel routes it once and cuts it into the datagrams, at
        about a quarter of the cost of separate sends.  Where the kernel or the path
        cannot (EIO, EINVAL...), that destination falls back to one datagram each.
        Order is kept per destination (across destinations it does not matter).
        """
        out = ps.out
        ps.out = {}
        add = ps.tx.add
        for dest, items in out.items():
            pktinfo = self._lan_pktinfo if dest[0] in ps.lan_dests else None
            count = len(items)
            gso = dest not in ps.no_gso
            i = 0
            while i < count:
                size = items[i][1]
                j = i + 1
                if gso and 0 < size <= GSO_MAX_SEGMENT:
                    limit = min(count, i + GSO_MAX_SEGMENTS, i + GSO_MAX_BYTES // size)
                    while j < limit and items[j][1] == size:
                        j += 1
                if j - i > 1 and self._send_gso(ps, dest, size, items[i:j], pktinfo):
                    i = j
                    continue
                for k in range(i, j):
                    add(items[k][0], dest, pktinfo)
                i = j

    def _send_gso(
        self,
        ps: PortState,
        dest: tuple[str, int],
        size: int,
        items: list[tuple[tuple[Any, ...], int]],
        pktinfo: Optional[tuple[int, bytes]],
    ) -> bool:
        """One UDP_SEGMENT send of ``items`` (``size`` bytes each); False: send them singly."""
        anc = [(_SOL_UDP, _UDP_SEGMENT, _GSO_SIZE.pack(size))]
        if pktinfo is not None:
            anc.append(
                (socket.IPPROTO_IP, IP_PKTINFO, PKTINFO.pack(pktinfo[0], pktinfo[1], bytes(4)))
            )
        try:
            ps.sock.sendmsg(  # type: ignore[union-attr]
                [b"".join([part for parts, _unused in items for part in parts])], anc, 0, dest
            )
        except OSError as exc:
            if exc.errno in _GSO_UNSUPPORTED:
                ps.no_gso.add(dest)
                log.info(
                    "udp/%d: no UDP segmentation offload to %s (%s): one send each",
                    ps.port,
                    dest[0],
                    exc,
                )
                return False
            for _unused in items:
                self._send_error(ps, dest[0], exc)
        return True

    def _handle_batch(self, ps: PortState, n: int) -> None:
        rx = ps.rx
        payloads, sources, ifindexes, dests, truncs = (
            rx.payloads,
            rx.sources,
            rx.ifindex,
            rx.dests,
            rx.truncated,
        )
        classify = ps.classifier.classify
        check = self.storm.check if self.storm is not None else None
        charge = self.storm.charge if self.storm is not None else None
        dropped = ps.dropped
        now = time.monotonic()
        debug = self.debug
        ps.received += n
        for i in range(n):
            payload = payloads[i]
            src = sources[i][0]
            dst = dests[i]
            verdict = classify(payload, src, ifindexes[i], dst, truncs[i], now)
            if debug:
                self._log_datagram(ps, src, dst, ifindexes[i], len(payload), verdict)
            if verdict == FORWARDED:
                if self.standby:
                    dropped[DROP_STANDBY] = dropped.get(DROP_STANDBY, 0) + 1
                    continue
                if check is not None:
                    why = check(src, now)
                    if why is not None:
                        dropped[why] = dropped.get(why, 0) + 1
                        continue
                self._forward(ps, payload, dst)
            elif verdict in _PEER_VERDICTS:
                self._from_peer(ps, verdict, payload, src, now)
            elif verdict == SIBLING:
                self._from_sibling(ps, payload, src, now)
            else:
                if verdict == DROP_OWN:
                    if (
                        src == MARKER_SOURCE
                        and ps.repeat is not None
                        and len(payload) == _MARKER_SIZE
                        and payload[:_MARKER_TOKEN] == ps.marker
                    ):
                        ps.repeat.activate(
                            now, _MARKER_NUMBER.unpack_from(payload, _MARKER_TOKEN)[0]
                        )
                        ps.received -= 1  # ours: not a datagram of the port's
                        continue
                # Every datagram read counts against its source (our own excepted: the
                # kernel drops those), so that a flood of anything gets cut off.
                elif charge is not None:
                    why = charge(src, now)
                    if why is not None:
                        verdict = why
                dropped[verdict] = dropped.get(verdict, 0) + 1

    def _log_datagram(
        self, ps: PortState, src: str, dst: bytes, ifindex: int, size: int, verdict: str
    ) -> None:
        log.debug(
            "udp/%d: %s -> %s if %d, %d bytes: %s",
            ps.port,
            src,
            socket.inet_ntoa(dst) if len(dst) == 4 else "?",
            ifindex,
            size,
            verdict,
        )

    def _forward(self, ps: PortState, payload: Any, dst: bytes) -> None:
        """A LAN broadcast (or compat datagram) to the forward_to peers."""
        ps.forwarded += 1
        out = ps.out
        header = None
        size = len(payload)
        for peer, dest, key in ps.fwd:
            queue = out.get(dest)
            if queue is None:
                queue = out[dest] = []
            if key is None:
                queue.append(((payload,), size))
            else:
                if header is None:
                    if size > _MAX_PAYLOAD:
                        ps.dropped[DROP_TOO_BIG] = ps.dropped.get(DROP_TOO_BIG, 0) + 1
                        continue
                    header = self.sealer.header(*_kind(dst))  # type: ignore[union-attr]
                queue.append(((header, key.tag(header, payload), payload), size + _OVERHEAD))
            peer.sent += 1

    @staticmethod
    def _queue(ps: PortState, dest: tuple[str, int], parts: tuple[Any, ...], size: int) -> None:
        queue = ps.out.get(dest)
        if queue is None:
            queue = ps.out[dest] = []
        queue.append((parts, size))

    def _peer_drop(self, ps: PortState, peer: PeerState, why: str) -> None:
        ps.dropped[why] = ps.dropped.get(why, 0) + 1
        peer.dropped[why] = peer.dropped.get(why, 0) + 1
        if why in _EPOCH_DROPS:
            peer.refused_epoch()

    def _from_peer(self, ps: PortState, verdict: str, payload: Any, src: str, now: float) -> None:
        """A peer relay's datagram: check its envelope, re-broadcast and/or pass it on."""
        peer = self.peers.get(src)
        if peer is None:  # not in the config's peers (v1 raw config): raw
            peer = self.peers[src] = PeerState(src, None, None)
        peer.received += 1
        keys = peer.keys
        group = _NO_GROUP
        kind = _KIND_BROADCAST
        if keys is not None:
            if len(payload) < _OVERHEAD:
                return self._peer_drop(ps, peer, wire.DROP_MALFORMED)
            magic, version, kind, office, sender, epoch, seq, group = _unpack_header(payload)
            if magic != _MAGIC or version != _VERSION:
                return self._peer_drop(ps, peer, wire.DROP_MALFORMED)
            header = payload[:_HEADER_SIZE]
            body = payload[_OVERHEAD:]
            tag = payload[_HEADER_SIZE:_OVERHEAD]
            accept = keys.accept
            if not (
                (accept and _compare_digest(accept[0].tag(header, body), tag))
                or (len(accept) > 1 and keys.verify(header, body, tag))
            ):
                return self._peer_drop(ps, peer, wire.DROP_AUTH)
            if office == self.office_id or sender == self.sender_id:
                return self._peer_drop(ps, peer, wire.DROP_OWN_ORIGIN)
            window = self._windows.get(sender)
            if window is None:
                window = self.replay.window(sender)
            why = window.check(epoch, seq)
            if why is not None:
                if why is not _LEASE:
                    return self._peer_drop(ps, peer, why)
                self.lease_replay()  # saved before it is used: a crash cannot reopen it
        else:
            header = None
            body = payload
            office = peer.office_id
        peer.accepted += 1
        if self.standby:  # checked (so the replay window is current), not relayed
            return self._peer_drop(ps, peer, DROP_STANDBY)
        if verdict != TRANSIT:
            if kind == _KIND_BROADCAST:
                dest = self._lan_dest
            elif kind == wire.KIND_LIMITED:
                dest = "255.255.255.255"
            elif group in ps.groups:
                dest = socket.inet_ntoa(group)
            else:
                self._peer_drop(ps, peer, DROP_GROUP)
                dest = ""
            if dest:
                ps.rebroadcast += 1
                self._queue(ps, (dest, ps.port), (body,), len(body))
        if verdict != REBROADCAST:
            ps.transited += 1
            port = ps.port
            size = len(body)
            for target in ps.transit_peers.get(src, ()):  # never src itself
                if office is not None and target.office_id == office:
                    continue  # never back to the office it came from
                tkeys = target.keys
                if tkeys is None:
                    self._queue(ps, (target.addr, port), (body,), size)
                elif tkeys is wire.NO_KEYS:
                    continue
                else:
                    if header is None:  # a raw peer's datagram onto the authenticated wire
                        if len(body) > wire.MAX_PAYLOAD:
                            self._peer_drop(ps, peer, DROP_TOO_BIG)
                            continue
                        header = self.sealer.header(kind, group, office)  # type: ignore[union-attr]
                    self._queue(
                        ps,
                        (target.addr, port),
                        (header, tkeys.send.tag(header, body), body),
                        size + _OVERHEAD,
                    )
                target.sent += 1
        return None

    # -- siblings (redundant gateways) -----------------------------------------

    def _from_sibling(self, ps: PortState, payload: Any, src: str, now: float) -> None:
        keys = self.keys.get(src)
        why = None
        if keys is None or len(payload) != wire.OVERHEAD + 1 or payload[:3] != wire.PREFIX:
            why = wire.DROP_MALFORMED
        elif not keys.verify(
            payload[: wire.HEADER_SIZE],
            payload[wire.OVERHEAD :],
            payload[wire.HEADER_SIZE : wire.OVERHEAD],
        ):
            why = wire.DROP_AUTH
        else:
            fields = wire.HEADER.unpack(payload[: wire.HEADER_SIZE])
            if fields[2] != wire.KIND_HEARTBEAT or fields[3] != self.office_id:
                why = wire.DROP_MALFORMED
            else:
                why = self.replay.window(fields[4]).check(fields[5], fields[6])
                if why is wire.LEASE:
                    self.lease_replay()
                    why = None
        if why is not None:
            ps.dropped[why] = ps.dropped.get(why, 0) + 1
            return
        self.sibling_seen[src] = now
        self.sibling_active[src] = payload[wire.OVERHEAD] == 1

    def heartbeat(self, now: float) -> None:
        """Decide who relays, and tell the siblings (every HEARTBEAT_INTERVAL)."""
        cfg = self.config
        if cfg is None or not cfg.siblings or self.sealer is None or not self.ports:
            return
        live = {a for a, seen in self.sibling_seen.items() if now - seen < SIBLING_TIMEOUT}
        active = sorted((a for a in live if self.sibling_active.get(a)), key=socket.inet_aton)
        own = cfg.lan.ip.packed
        if now < self._hold_until:
            standby = True
        elif self.standby:
            standby = bool(active)  # take over only when nobody relays
        else:  # two relays active at once (both started together): the lower one stays
            standby = any(socket.inet_aton(a) < own for a in active)
        if standby != self.standby:
            self.standby = standby
            if standby:
                log.info("standby: sibling %s relays for this office", ", ".join(active) or "?")
            else:
                log.warning(
                    "active: relaying for this office (no active sibling among %s)",
                    ", ".join(cfg.siblings),
                    extra={"fields": {"SITELINK_EVENT": "active"}},
                )
        ps = self.ports[min(self.ports)]
        body = b"\0" if self.standby else b"\1"
        for addr in cfg.siblings:
            keys = self.keys.get(addr)
            if keys is None:
                continue
            header = self.sealer.header(wire.KIND_HEARTBEAT)
            ps.tx.add((header, keys.send.tag(header, body), body), (addr, ps.port))
        for addr, exc in ps.tx.flush(ps.sock):
            self._send_error(ps, addr[0], exc)

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "relay_version": __version__,
            "pid": os.getpid(),
            "mode": "service" if self.config is not None else "compat",
            "started": self.started,
            "updated": time.time(),
            "interval": STATUS_INTERVAL,
            # "mmsg": batched system calls; "python": one per datagram (no ctypes/libc)
            "io": "mmsg" if ports.Receiver is mmsg.MmsgReceiver else "python",
            "ports": {str(p): ps.counters() for p, ps in sorted(self.ports.items())},
        }
        if self.config is not None:
            cfg = self.config
            data["config"] = self.config_path
            data["wire"] = cfg.wire
            if cfg.office:
                data["office"] = cfg.office
            if self.sealer is not None:
                data["epoch"] = self.sealer.epoch
                data["sequence"] = self.sealer.seq
                replay = self.replay
                data["replay"] = {
                    "state_dir": cfg.state_dir,
                    "senders": len(replay.windows),
                    "block": replay.block,
                    "leases": replay.leases,
                    "save_failures": replay.save_failures,
                    "save_error": self._replay_error,
                    "forgotten_total": replay.forgotten,
                    "stuck": replay.stuck(),
                }
            data["lan"] = {
                "interface": cfg.lan_interface,
                "ifindex": self.lan_ifindex,
                "address": cfg.lan.with_prefixlen,
                "broadcast": str(cfg.lan_broadcast),
            }
            if cfg.peer_interfaces is not None:
                data["peer_interfaces"] = dict(sorted(cfg.peer_interfaces.items()))
            data["peers"] = {a: p.counters() for a, p in sorted(self.peers.items())}
            if cfg.siblings:
                now = time.monotonic()
                data["standby"] = self.standby
                data["siblings"] = {
                    a: {
                        "seen": round(now - self.sibling_seen[a], 1)
                        if a in self.sibling_seen
                        else None,
                        "active": self.sibling_active.get(a, False),
                    }
                    for a in cfg.siblings
                }
            if self.storm is not None:
                data["storm"] = self.storm.status(time.monotonic())
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
        if self.replay.path is not None:
            error = self.replay.relax(time.monotonic())
            if error is not None:
                self._saved(error)
        if not self.status_file and not self.metrics_file:
            return
        data = self.status()
        path = self.status_file
        try:
            if self.status_file:
                write_json_atomic(self.status_file, data)
            if self.metrics_file:
                path = self.metrics_file
                status.write_text_atomic(self.metrics_file, status.prometheus_text(data))
        except OSError as exc:
            message = f"{path}: {exc.strerror or exc}"
            if message != self._status_error:
                log.warning("cannot write status file %s", message)
                self._status_error = message
        else:
            if self._status_error:
                log.info("status files writable again")
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
        next_lan_check = now + LAN_CHECK_INTERVAL
        next_heartbeat = now
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
                if now >= next_lan_check:
                    self.check_lan()
                    next_lan_check = now + LAN_CHECK_INTERVAL
                if now >= next_heartbeat:
                    self.heartbeat(now)
                    next_heartbeat = now + HEARTBEAT_INTERVAL
                timeout = max(
                    0.0,
                    min(next_watchdog, next_status, next_refresh, next_lan_check, next_heartbeat)
                    - now,
                )
                for key, _mask in select(timeout):
                    if key.data is None:
                        self._handle_signals()
                    else:
                        self.handle_readable(key.data)
        finally:
            self.notifier.notify("STOPPING=1")
            self.save_replay(exact=True)
            self.write_status()
            self.close()
        log.info("stopped")
        return 0

    def close_ports(self) -> None:
        for ps in self.ports.values():
            if ps.sock is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(ps.sock)
                ps.sock.close()
        self.ports.clear()

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self.close_ports()
        if self._wake_r is not None:
            self.selector.unregister(self._wake_r)
            self._wake_r.close()
        if self._wake_w is not None:
            self._wake_w.close()
        self.selector.close()
        self.notifier.close()
