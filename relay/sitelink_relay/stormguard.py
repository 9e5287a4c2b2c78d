"""Storm control at work: built from the config, its events logged, and the sources
it cuts off dropped by the kernel (sockfilter) along with our own addresses."""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterable
from typing import Any, Optional

from . import PROG, sockfilter, storm
from .classify import MARKER_SOURCE
from .config import STORM_DEFAULTS, Config
from .localnet import LocalNetwork
from .neighbours import Neighbours
from .netinfo import if_index
from .ports import PortState

log = logging.getLogger(PROG)

# A source over its rate for this long is cut off.  Short, because until then every
# one of its datagrams still costs the relay a little; after, the kernel drops them.
STORM_TRIP_SECONDS = 0.25


class StormGuard:
    """The relay's StormControl (None: off), and the kernel's share of dropping."""

    def __init__(
        self, ports: dict[int, PortState], network: LocalNetwork, config: Optional[Config]
    ):
        self.ports = ports  # the relay's (one dict, updated in place)
        self.network = network  # our own addresses
        self.storm: Optional[storm.StormControl] = None
        self._settings: Optional[tuple[float, ...]] = None
        self.kernel_drops: Any = None  # what the kernel drops now (sources, kept peers)
        # who is really on the LAN (storm control gives forged sources no budget)
        self.neighbours = Neighbours(
            config.lan_interface if config is not None else "",
            config.lan.network if config is not None else ipaddress.IPv4Network("0.0.0.0/32"),
        )

    def adopt(self, config: Config) -> None:
        """Storm control as ``config`` sets it; kept (with its state) if unchanged."""
        neighbours = self.neighbours
        if (neighbours.interface, neighbours.network) != (config.lan_interface, config.lan.network):
            neighbours.interface, neighbours.network = config.lan_interface, config.lan.network
            neighbours.verified_set = frozenset()
            neighbours._next_read = 0.0
        sc = config.storm_control
        settings = None if sc is None else tuple(sc[k] for k in STORM_DEFAULTS)
        if settings is None:
            self.storm = None
        elif self.storm is None or settings != self._settings:
            self.storm = storm.StormControl(
                **sc,
                trip_seconds=STORM_TRIP_SECONDS,
                on_event=self._storm_event,
                verify=self.neighbours.verified,
            )
            self.kernel_drops = None
        self._settings = settings

    def _storm_event(self, kind: str, src: str) -> None:
        self.update_kernel_drops(also=(src,) if kind == storm.EVENT_CUT_OFF else ())
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

    def expire(self) -> None:
        """Let in again the cut-off sources whose time is up (the kernel hid them)."""
        if self.storm is not None:
            self.storm.expire(time.monotonic())
            self.update_kernel_drops()

    def update_kernel_drops(self, also: Iterable[str] = ()) -> None:
        """Socket filters that drop, before they are even queued, the datagrams the relay
        would drop first thing: from our own addresses (every broadcast we send comes
        back to us) and from cut-off sources.  A flood from one host then cannot crowd
        the others out of the queue, and an echo costs no system call.  A cut-off
        source that is a peer's address (forged, arriving elsewhere) is dropped except
        on that peer's own interface: a forger cannot get the real peer cut off."""
        config = self.network.config
        own = self.network.local | (config.own_addresses if config is not None else frozenset())
        own -= {MARKER_SOURCE}  # our markers must come in (loopback cannot be forged)
        cut = set(also)
        if self.storm is not None:
            cut.update(self.storm.cut_off(time.monotonic()))
        cut -= own
        peer_if = (config.peer_interfaces if config is not None else None) or {}
        keep = {a: if_index(peer_if[a]) for a in sorted(cut) if a in peer_if}
        keep = dict(list(keep.items())[: sockfilter.MAX_KEPT])
        plain = (sorted(own) + sorted(cut.difference(peer_if)))[
            : sockfilter.MAX_SOURCES - len(keep)
        ]
        key = (frozenset(plain), frozenset(keep.items()))
        if key == self.kernel_drops or not self.ports:
            return
        self.kernel_drops = key
        for ps in self.ports.values():
            if ps.sock is None:
                continue
            try:
                sockfilter.drop_sources(ps.sock, plain, keep)
            except (OSError, ValueError) as exc:  # user space still drops them, at a cost
                log.warning("udp/%d: cannot filter in the kernel: %s", ps.port, exc)
