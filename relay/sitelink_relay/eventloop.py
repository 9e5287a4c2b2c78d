"""The event loop: readable sockets, timers, and signals, one thing at a time.

Signals come in through the wakeup fd (signal.set_wakeup_fd) as one more readable
socket, so that their handlers run between batches, never in the middle of one.
"""

from __future__ import annotations

import selectors
import signal
import socket
import time
from typing import Any, Callable, Optional

Timer = Callable[[float], None]  # called with the loop's monotonic time


class EventLoop:
    """select() over the registered sockets; timers; signal handlers."""

    def __init__(self, selector: selectors.BaseSelector, on_readable: Callable[[Any], None]):
        self.selector = selector
        self.on_readable = on_readable  # given the data a socket was registered with
        self._timers: list[list[Any]] = []  # [due, interval, callback], run in this order
        self._signals: dict[int, Callable[[int], None]] = {}
        self._wake_r: Optional[socket.socket] = None
        self._wake_w: Optional[socket.socket] = None
        self.stopped = False

    def every(self, interval: float, callback: Timer, first: Optional[float] = None) -> None:
        """Call ``callback`` every ``interval`` seconds, the first time at ``first``."""
        due = time.monotonic() + interval if first is None else first
        self._timers.append([due, interval, callback])

    def on_signals(self, handlers: dict[int, Callable[[int], None]]) -> None:
        """Handle these signals in the loop (the handler is given the signal number)."""
        self._wake_r, self._wake_w = socket.socketpair()
        for s in (self._wake_r, self._wake_w):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        self._signals.update(handlers)
        for signum in handlers:
            signal.signal(signum, self._on_signal)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)

    def _on_signal(self, signum: int, frame: Any) -> None:
        pass  # the wakeup fd carries the signal number into the event loop

    def _handle_signals(self) -> None:
        if self._wake_r is None:
            return
        try:
            data = self._wake_r.recv(64)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signals.get(signum)
            if handler is not None:
                handler(signum)

    def stop(self) -> None:
        self.stopped = True

    def run(self) -> None:
        """Until stop(): due timers first, then whatever is readable."""
        select = self.selector.select
        on_readable = self.on_readable
        timers = self._timers
        next_due = 0.0
        while not self.stopped:
            now = time.monotonic()
            if now >= next_due:
                for timer in timers:
                    if now >= timer[0]:
                        timer[2](now)
                        timer[0] = now + timer[1]
                next_due = min((timer[0] for timer in timers), default=now + 3600.0)
            for key, _mask in select(max(0.0, next_due - now)):
                if key.data is None:
                    self._handle_signals()
                else:
                    on_readable(key.data)

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        if self._wake_r is not None:
            self.selector.unregister(self._wake_r)
            self._wake_r.close()
        if self._wake_w is not None:
            self._wake_w.close()
