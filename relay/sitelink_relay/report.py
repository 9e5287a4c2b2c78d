"""What the relay reports: its status (the status file, the metrics file, --status
read them) and a one-line summary of its counters (systemd's STATUS=)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Optional

from . import PROG, __version__, mmsg, ports, status
from .config import Config
from .datapath import Datapath
from .localnet import LocalNetwork
from .ports import PeerState, PortState
from .siblings import Siblings
from .statedir import StateDir
from .storm import StormControl

log = logging.getLogger(PROG)


def relay_status(
    *,
    config: Optional[Config],
    config_path: Optional[str],
    started: float,
    ports_by_number: dict[int, PortState],
    peers: dict[str, PeerState],
    datapath: Datapath,
    network: LocalNetwork,
    state: StateDir,
    siblings: Siblings,
    storm: Optional[StormControl],
) -> dict[str, Any]:
    """The status document (status.py formats and exports it)."""
    data: dict[str, Any] = {
        "relay_version": __version__,
        "pid": os.getpid(),
        "mode": "service" if config is not None else "compat",
        "started": started,
        "updated": time.time(),
        "interval": status.STATUS_INTERVAL,
        # "mmsg": batched system calls; "python": one per datagram (no ctypes/libc)
        "io": "mmsg" if ports.Receiver is mmsg.MmsgReceiver else "python",
        "ports": {str(p): ps.counters() for p, ps in sorted(ports_by_number.items())},
    }
    if config is None:
        return data
    data["config"] = config_path
    data["wire"] = config.wire
    if config.office:
        data["office"] = config.office
    if datapath.sealer is not None:
        data["epoch"] = datapath.sealer.epoch
        data["sequence"] = datapath.sealer.seq
        data["replay"] = state.status()
    data["lan"] = network.lan_status()
    if config.peer_interfaces is not None:
        data["peer_interfaces"] = dict(sorted(config.peer_interfaces.items()))
    data["peers"] = {a: p.counters() for a, p in sorted(peers.items())}
    if config.siblings:
        data["standby"] = datapath.standby
        data["siblings"] = siblings.status(time.monotonic())
    if storm is not None:
        data["storm"] = storm.status(time.monotonic())
    return data


def status_line(ports: dict[int, PortState]) -> str:
    """The counters of all ports in one line (systemd's STATUS=)."""
    fwd = sum(ps.forwarded for ps in ports.values())
    reb = sum(ps.rebroadcast for ps in ports.values())
    tra = sum(ps.transited for ps in ports.values())
    drop = sum(sum(ps.dropped.values()) for ps in ports.values())
    names = ",".join(str(p) for p in sorted(ports))
    return f"udp/{names}: {fwd} forwarded, {reb} rebroadcast, {tra} transited, {drop} dropped"


class StatusFiles:
    """The status file (JSON) and the metrics file (Prometheus text), either optional."""

    def __init__(self, status_file: Optional[str], metrics_file: Optional[str]):
        self.status_file = status_file
        self.metrics_file = metrics_file
        self._error: Optional[str] = None  # the current streak of failed writes'

    def adopt(self, config: Config) -> None:
        self.status_file, self.metrics_file = config.status_file, config.metrics_file

    def wanted(self) -> bool:
        return bool(self.status_file or self.metrics_file)

    def write(self, data: dict[str, Any]) -> None:
        """Write both (atomically); a failure is logged once per streak, never raised."""
        path = self.status_file
        try:
            if self.status_file:
                status.write_json_atomic(self.status_file, data)
            if self.metrics_file:
                path = self.metrics_file
                status.write_text_atomic(self.metrics_file, status.prometheus_text(data))
        except OSError as exc:
            message = f"{path}: {exc.strerror or exc}"
            if message != self._error:
                log.warning("cannot write status file %s", message)
                self._error = message
        else:
            if self._error:
                log.info("status files writable again")
                self._error = None
