"""Redundant gateways: the relays of one office on one LAN ("siblings") send each other
a heartbeat; one of them relays, the others stand by.

A heartbeat is an envelope of kind KIND_HEARTBEAT from our office, tagged with the
sibling link's key, whose one-byte body says whether its sender relays.
"""

from __future__ import annotations

import logging
import socket
import time
from typing import Any, Optional

from . import PROG, wire
from .config import Config
from .datapath import Datapath
from .egress import Egress
from .ports import PortState
from .statedir import StateDir

log = logging.getLogger(PROG)

HEARTBEAT_INTERVAL = 0.5
SIBLING_TIMEOUT = 1.5  # a sibling not heard from for this long is gone


class Siblings:
    """Who of the office's relays relays: heard from them, decided, told them."""

    def __init__(
        self,
        ports: dict[int, PortState],
        datapath: Datapath,
        egress: Egress,
        state: StateDir,
    ):
        self.ports = ports  # the relay's (one dict, updated in place)
        self.datapath = datapath  # our standby flag and wire identity
        self.egress = egress
        self.state = state  # the replay windows (heartbeats are never replayed)
        self.config: Optional[Config] = None
        self.keys: dict[str, wire.PeerKeys] = {}
        self.seen: dict[str, float] = {}  # monotonic time of each one's last heartbeat
        self.active: dict[str, bool] = {}  # whether it said it relays
        self.hold_until = 0.0  # a starting relay with siblings listens before relaying

    def adopt(self, config: Config, keys: dict[str, wire.PeerKeys]) -> None:
        self.config, self.keys = config, keys

    def hold(self) -> None:
        """At start: stand by until the siblings have had their say."""
        if self.config is not None and self.config.siblings:
            self.datapath.standby = True
            self.hold_until = time.monotonic() + SIBLING_TIMEOUT

    def receive(self, ps: PortState, payload: Any, src: str, now: float) -> None:
        """A sibling's heartbeat (the classifier's SIBLING verdict)."""
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
            if fields[2] != wire.KIND_HEARTBEAT or fields[3] != self.datapath.office_id:
                why = wire.DROP_MALFORMED
            else:
                why = self.state.replay.window(fields[4]).check(fields[5], fields[6])
                if why is wire.LEASE:
                    self.state.lease_replay()
                    why = None
        if why is not None:
            ps.dropped[why] = ps.dropped.get(why, 0) + 1
            return
        self.seen[src] = now
        self.active[src] = payload[wire.OVERHEAD] == 1

    def heartbeat(self, now: float) -> None:
        """Decide who relays, and tell the siblings (every HEARTBEAT_INTERVAL)."""
        cfg = self.config
        dp = self.datapath
        sealer = dp.sealer
        if cfg is None or not cfg.siblings or sealer is None or not self.ports:
            return
        live = {a for a, seen in self.seen.items() if now - seen < SIBLING_TIMEOUT}
        active = sorted((a for a in live if self.active.get(a)), key=socket.inet_aton)
        own = cfg.lan.ip.packed
        if now < self.hold_until:
            standby = True
        elif dp.standby:
            standby = bool(active)  # take over only when nobody relays
        else:  # two relays active at once (both started together): the lower one stays
            standby = any(socket.inet_aton(a) < own for a in active)
        if standby != dp.standby:
            dp.standby = standby
            if standby:
                log.info("standby: sibling %s relays for this office", ", ".join(active) or "?")
            else:
                log.warning(
                    "active: relaying for this office (no active sibling among %s)",
                    ", ".join(cfg.siblings),
                    extra={"fields": {"SITELINK_EVENT": "active"}},
                )
        ps = self.ports[min(self.ports)]
        body = b"\0" if dp.standby else b"\1"
        for addr in cfg.siblings:
            keys = self.keys.get(addr)
            if keys is None:
                continue
            header = sealer.header(wire.KIND_HEARTBEAT)
            ps.tx.add((header, keys.send.tag(header, body), body), (addr, ps.port))
        self.egress.flush(ps)

    def status(self, now: float) -> dict[str, Any]:
        siblings = self.config.siblings if self.config is not None else ()
        return {
            a: {
                "seen": round(now - self.seen[a], 1) if a in self.seen else None,
                "active": self.active.get(a, False),
            }
            for a in siblings
        }
