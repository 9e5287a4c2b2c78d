"""What the authenticated wire keeps in ``state_dir``: our epoch and the replay windows.

Both survive restarts, so that a restarted relay neither reuses its own sequence
numbers nor accepts again what it accepted before.  Also what a start refuses short
of binding the ports (--check-config).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Optional

from . import PROG, contract, files, wire
from .config import Config, ConfigError
from .peerkeys import load_keys_for

log = logging.getLogger(PROG)

REPLAY_FILE = "replay.json"  # the replay windows (leased ahead, wire.py)
EPOCH_FILE = "epoch"
# {"senders": [...] or "all"}, written by root (relay_service), named in the contract
FORGET_FILE = contract.RELAY_FORGET_FILE


def start_check(config: Config, keys_path: Optional[str] = None) -> list[str]:
    """What a start would refuse, short of binding the ports (--check-config): the keys
    (readable, one per authenticated peer) and the state_dir.  Raises ConfigError;
    returns notes (e.g. a state_dir that will be created)."""
    load_keys_for(config, keys_path, live=False)
    notes = []
    if config.authenticated and config.state_dir:
        problem = files.writable_dir(config.state_dir)
        if problem:
            raise ConfigError([f"state_dir: {problem}"])
        if not os.path.isdir(config.state_dir):
            notes.append(f"state_dir {config.state_dir} will be created")
    return notes


class StateDir:
    """The epoch file, the replay windows and forget requests in one state_dir."""

    def __init__(self) -> None:
        self.state_dir: Optional[str] = None  # the config's; None: nothing is kept
        self.replay = wire.ReplayState()
        self.save_error: Optional[str] = None  # the current streak of failed saves'

    def path(self, name: str) -> Optional[str]:
        return os.path.join(self.state_dir, name) if self.state_dir else None

    def prepare(self) -> None:
        """Make state_dir if it is missing; refuse to start if it cannot hold our state."""
        state_dir = self.state_dir
        if not state_dir:
            return
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError([f"state_dir: cannot create {state_dir}: {exc.strerror}"]) from None
        problem = files.writable_dir(state_dir)
        if problem:
            raise ConfigError([f"state_dir: {problem}"])

    def start(self, office: bytes, sender: bytes) -> wire.Sealer:
        """The sealer of our datagrams, in a new epoch; the saved windows restored.
        Raises ConfigError if the epoch cannot be saved."""
        sealer = wire.Sealer(office, sender, self.start_epoch(), self._bump_epoch)
        self.load_replay()
        self.forget_requested()
        return sealer

    def start_epoch(self, starting: bool = True) -> int:
        """Our epoch: one more than the last one saved (or the clock, if later).

        Saved before it is used.  At start a failed save refuses the start (a relay
        that cannot keep its epoch or replay windows would take replays after every
        restart); later (sequence numbers used up) it is logged and the clock used.
        """
        path = self.path(EPOCH_FILE)
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
        return self.start_epoch(starting=False)

    def load_replay(self) -> None:
        path = self.path(REPLAY_FILE)
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
        path = self.path(FORGET_FILE)
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

    def relax(self) -> None:
        """Bring the saved marks back towards the tops once leases are rare (wire.py)."""
        if self.replay.path is not None:
            error = self.replay.relax(time.monotonic())
            if error is not None:
                self._saved(error)

    def _saved(self, error: Optional[str]) -> None:
        """A WARNING at the first failed save of a streak, INFO when saving works again."""
        if error is not None:
            if self.save_error is None:
                log.warning(
                    "cannot save the replay windows (%s): after a restart, replays of what"
                    " arrived since the last save would be accepted",
                    error,
                    extra={"fields": {"SITELINK_EVENT": "replay_save_failed"}},
                )
            self.save_error = error
        elif self.save_error is not None:
            log.info("replay windows saved again")
            self.save_error = None

    def status(self) -> dict[str, Any]:
        replay = self.replay
        return {
            "state_dir": self.state_dir,
            "senders": len(replay.windows),
            "block": replay.block,
            "leases": replay.leases,
            "save_failures": replay.save_failures,
            "save_error": self.save_error,
            "forgotten_total": replay.forgotten,
            "stuck": replay.stuck(),
        }
