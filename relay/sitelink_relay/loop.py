"""The event loop: sockets, signals, reload, and the hot path."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Iterable
from typing import Any, Optional

from . import PROG, __version__
from .classify import (
    FORWARDED,
    REBROADCAST,
    REBROADCAST_TRANSIT,
    TRANSIT,
    Classifier,
    CompatClassifier,
)
from .config import Config, ConfigError, Rule, load_config, transit_targets
from .netinfo import (
    ANC_BUFSIZE,
    IP_MTU_DISCOVER,
    IP_PKTINFO,
    IP_PMTUDISC_DONT,
    MSG_TRUNC,
    PKTINFO,
    IfNames,
    if_index,
    local_ipv4,
)
from .notify import Notifier
from .status import STATUS_INTERVAL, write_json_atomic

log = logging.getLogger(PROG)

RECV_BUFSIZE = 65535  # > 65507, the largest IPv4 UDP payload, so MSG_TRUNC means trouble
SOCKET_RCVBUF = 1 << 20  # ask for 1 MiB; the kernel caps it at net.core.rmem_max
BURST = 64  # datagrams read from one socket before looking at the others
REFRESH_INTERVAL = 10.0  # seconds between LAN ifindex / local address re-resolution
ERROR_LOG_INTERVAL = 60.0  # at most one log line per (port, error) per this many seconds


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
