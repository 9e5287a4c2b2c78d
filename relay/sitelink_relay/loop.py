"""The relay: its parts put together, configured (start, SIGHUP) and run.

``Relay`` owns the config, the ports and the peers, and keeps its parts in step
with them: ``datapath`` (the hot path: receive, act on each verdict, queue),
``egress`` (sending), ``siblings`` (redundant gateways), ``localnet`` (addresses,
the LAN interface), ``stormguard`` (storm control, kernel filters), ``statedir``
(epoch and replay windows on disk), ``topology`` (port and peer states from a
config), ``report`` (status files) and ``eventloop`` (timers, signals, select).
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import time
from typing import Any, Optional

from . import PROG, __version__, configure, wire
from .config import Config, ConfigError, Rule
from .datapath import Datapath
from .egress import Egress
from .eventloop import EventLoop
from .localnet import LAN_CHECK_INTERVAL, REFRESH_INTERVAL, LocalNetwork
from .notify import Notifier
from .peerkeys import load_keys_for
from .ports import PeerState, PortState
from .report import StatusFiles, relay_status, status_line
from .siblings import HEARTBEAT_INTERVAL, Siblings
from .statedir import StateDir, start_check
from .status import STATUS_INTERVAL
from .stormguard import StormGuard
from .topology import key_fingerprints, peer_states, service_port

__all__ = ["Relay", "start_check"]

log = logging.getLogger(PROG)


def _part_attribute(part: str, name: str) -> property:
    """The attribute ``name`` of the relay's part ``part``, read and set as the relay's."""
    return property(
        lambda self: getattr(getattr(self, part), name),
        lambda self, value: setattr(getattr(self, part), name, value),
    )


class Relay:
    """One relay, in service mode (config file) or compat mode (PORT DEST)."""

    # What the parts own, for status() and tests: one owner each, no copies to sync.
    standby = _part_attribute("datapath", "standby")
    sealer = _part_attribute("datapath", "sealer")
    office_id = _part_attribute("datapath", "office_id")
    sender_id = _part_attribute("datapath", "sender_id")
    storm = _part_attribute("storm_guard", "storm")
    neighbours = _part_attribute("storm_guard", "neighbours")
    replay = _part_attribute("state", "replay")
    lan_ifindex = _part_attribute("network", "lan_ifindex")
    local = _part_attribute("network", "local")
    ifnames = _part_attribute("network", "ifnames")
    status_file = _part_attribute("status_files", "status_file")

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
        self.notifier = notifier if notifier is not None else Notifier()
        self.selector = selectors.DefaultSelector()
        # one dict each, shared with the parts: changed in place, never replaced
        self.ports: dict[int, PortState] = {}
        self.peers: dict[str, PeerState] = {}
        # --keys FILE; else the config's keys_file, read again from each new config
        self.keys_path = keys_path
        self.keys: dict[str, wire.PeerKeys] = dict(keys) if keys else {}
        self.started = time.time()
        self.events: Optional[EventLoop] = None  # while run() runs
        self.status_files = StatusFiles(
            config.status_file if config is not None else status_file,
            config.metrics_file if config is not None else None,
        )
        self.state = StateDir()
        self.network = LocalNetwork(self.ports, config, compat[1] if compat is not None else "")
        self.storm_guard = StormGuard(self.ports, self.network, config)
        self.egress = Egress()
        self.datapath = Datapath(self.peers, self.state, self.egress, self.storm_guard, debug)
        self.siblings = Siblings(self.ports, self.datapath, self.egress, self.state)
        self.datapath.from_sibling = self.siblings.receive
        if config is not None:
            self._adopt(config)

    def _adopt(self, config: Config) -> None:
        """Give ``config`` (and ``self.keys``) to the parts; peer states anew, counters kept."""
        dp = self.datapath
        dp.office_id = wire.office_id(config.office) if config.office else None
        dp.sender_id = config.lan.ip.packed
        if dp.sealer is not None:
            dp.sealer.office = dp.office_id or b"\0\0\0\0"
            dp.sealer.sender = dp.sender_id
        self.network.config = config
        self.state.state_dir = config.state_dir
        self.siblings.adopt(config, self.keys)
        self.storm_guard.adopt(config)
        peers = peer_states(config, self.keys, self.peers)
        self.peers.clear()
        self.peers.update(peers)

    def load_keys(self, config: Config) -> dict[str, wire.PeerKeys]:
        """The keys ``config`` needs (none for the raw wire); raise ConfigError if unusable."""
        return load_keys_for(config, self.keys_path)

    def _make_port(self, config: Config, rule: Rule, sock: Optional[socket.socket]) -> PortState:
        return service_port(config, rule, sock, self.network, self.egress.marker, self.peers)

    # -- start ----------------------------------------------------------------

    def setup(self) -> None:
        """Bind the ports; raises ConfigError or OSError, and then leaves none open."""
        cfg = self.config
        if cfg is not None:
            self.keys = self.keys or self.load_keys(cfg)
            if cfg.authenticated:
                self.state.prepare()
            self._adopt(cfg)
        self.refresh(initial=True)
        if cfg is not None:
            self._start_service(cfg)
        elif self.compat is not None:
            port, dest = self.compat
            self.ports[port] = configure.open_compat_port(port, dest, self.network, self.peers)
        for ps in self.ports.values():
            self.selector.register(ps.sock, selectors.EVENT_READ, ps)
        self.storm_guard.update_kernel_drops()

    def _start_service(self, cfg: Config) -> None:
        configure.open_ports(cfg, self._make_port, self.ports)
        self.network.join_groups()
        if cfg.authenticated:  # after the binds: a refused start changes nothing
            try:
                self.sealer = self.state.start(self.office_id or b"\0\0\0\0", self.sender_id)
            except ConfigError:
                self.close_ports()
                raise
        self.siblings.hold()
        log.info("config %s: %s", self.config_path, cfg.summary())
        if self.sealer is not None:
            log.info(
                "authenticated wire: office %s, epoch %d, keys %s",
                cfg.office,
                self.sealer.epoch,
                key_fingerprints(self.peers) or "none",
            )
        self.network.check_peer_interfaces()

    # -- reload ---------------------------------------------------------------

    def reload(self) -> bool:
        """SIGHUP: the config and keys again (configure.py); False: refused, and the
        running config kept."""
        if self.config is None or self.config_path is None:
            log.info("SIGHUP: nothing to reload in compat mode; addresses re-read")
            self.refresh()
            return True
        self.notifier.notify(
            f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
        )
        self.ifnames.clear()  # rebuilt lazily, whether or not the new config is good
        try:
            new = configure.accept(
                self.config, self.config_path, self.keys_path, self.sealer is not None, self.ports
            )
            if new is None:
                return False
            change = configure.Change.between(self.config, new.config, new.keys is not self.keys)
            self.config, self.keys = new.config, new.keys
            self.status_files.adopt(new.config)
            self._adopt(new.config)
            made = configure.rebuild_ports(
                self.ports, self.selector, new, change, self._make_port, self.peers
            )
            self.network.join_groups(made)
            self.refresh(initial=change.lan)
            self.storm_guard.kernel_drops = None  # new sockets get the filter too
            self.storm_guard.update_kernel_drops()
            log.info("reloaded %s: %s", self.config_path, new.config.summary())
            self.state.forget_requested()
            if change.peer_interfaces:
                self.network.check_peer_interfaces()
            return True
        finally:
            self.notifier.notify(f"READY=1\nSTATUS={self.status_line()}")

    # -- housekeeping (timers) --------------------------------------------------

    def refresh(self, initial: bool = False) -> None:
        """Re-resolve the LAN ifindex and local addresses (interfaces come and go)."""
        self.network.refresh(initial)
        if self.config is not None:
            self.egress.lan_pktinfo = (self.network.lan_ifindex, self.config.lan.ip.packed)
            self.datapath.lan_dest = str(self.config.lan_broadcast)
        self.storm_guard.update_kernel_drops()

    def check_lan(self) -> None:
        """Cheap checks, every second: a LAN interface recreated gets a new ifindex;
        cut-off sources whose time is up are let in again (the kernel hid them)."""
        if self.network.lan_moved():
            self.refresh()
        self.storm_guard.expire()

    def heartbeat(self, now: float) -> None:
        self.siblings.heartbeat(now)

    def forget_requested(self) -> None:
        self.state.forget_requested()

    def handle_readable(self, ps: PortState) -> None:
        self.datapath.handle_readable(ps)

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return relay_status(
            config=self.config,
            config_path=self.config_path,
            started=self.started,
            ports_by_number=self.ports,
            peers=self.peers,
            datapath=self.datapath,
            network=self.network,
            state=self.state,
            siblings=self.siblings,
            storm=self.storm,
        )

    def status_line(self) -> str:
        return status_line(self.ports)

    def write_status(self) -> None:
        if self.notifier.enabled:
            self.notifier.notify("STATUS=" + self.status_line())
        self.state.relax()
        if self.status_files.wanted():
            self.status_files.write(self.status())

    # -- run ------------------------------------------------------------------

    def run(self) -> int:
        events = self.events = EventLoop(self.selector, self.datapath.handle_readable)
        events.on_signals(
            {
                signal.SIGTERM: self._stop,
                signal.SIGINT: self._stop,
                signal.SIGHUP: lambda _signum: self.reload(),
                signal.SIGUSR1: lambda _signum: self.write_status(),
            }
        )
        self.write_status()
        self.notifier.notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={self.status_line()}")
        log.info(
            "%s %s ready on udp/%s", PROG, __version__, ",".join(str(p) for p in sorted(self.ports))
        )
        now = time.monotonic()
        wd_interval = self.notifier.watchdog_interval
        if wd_interval:
            events.every(wd_interval, lambda _now: self.notifier.notify("WATCHDOG=1"), now)
        events.every(STATUS_INTERVAL, lambda _now: self.write_status())
        events.every(REFRESH_INTERVAL, lambda _now: self.refresh())
        events.every(LAN_CHECK_INTERVAL, lambda _now: self.check_lan())
        events.every(HEARTBEAT_INTERVAL, self.heartbeat, now)
        try:
            events.run()
        finally:
            self.notifier.notify("STOPPING=1")
            self.state.save_replay(exact=True)
            self.write_status()
            self.close()
        log.info("stopped")
        return 0

    def _stop(self, signum: int) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        self.events.stop()  # type: ignore[union-attr]

    def close_ports(self) -> None:
        configure.close_ports(self.ports, self.selector)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
        self.close_ports()
        self.selector.close()
        self.notifier.close()
