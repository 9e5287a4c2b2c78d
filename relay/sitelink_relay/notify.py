"""Minimal sd_notify(3), so the relay runs as a Type=notify service with watchdog."""

from __future__ import annotations

import logging
import os
import socket
from typing import Optional

log = logging.getLogger("sitelink-relay")


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
