"""The keys a config needs: one per authenticated peer and per sibling."""

from __future__ import annotations

import os
from typing import Optional

from . import contract, wire
from .config import WIRE_SITELINK1, Config, ConfigError


def live_keys_path(config: Config) -> Optional[str]:
    """Where root puts the keys a running relay takes on SIGHUP (contract.py)."""
    return (
        os.path.join(config.state_dir, contract.RELAY_LIVE_KEYS_FILE) if config.state_dir else None
    )


def keys_source(
    config: Config, keys_path: Optional[str] = None, live: bool = True
) -> Optional[str]:
    """The file ``load_keys_for`` reads."""
    copy = live_keys_path(config) if live else None
    return copy if copy and os.path.exists(copy) else keys_path or config.keys_file


def rule_peers(config: Config) -> set[str]:
    """Every peer address the rules name (forward_to, accept_from, transit both ways)."""
    addresses: set[str] = set()
    for rule in config.rules:
        addresses.update(rule.forward_to, rule.accept_from, rule.transit)
        for targets in rule.transit.values():
            addresses.update(targets)
    return addresses


def missing_keys(config: Config, keys: dict[str, wire.PeerKeys]) -> list[str]:
    """Problems of ``keys`` for ``config``: every authenticated peer needs its key."""
    problems = [f"keys: no key for sibling {addr}" for addr in config.siblings if addr not in keys]
    for addr in sorted(rule_peers(config)):
        if config.peer_wire(addr) == WIRE_SITELINK1 and addr not in keys:
            office = config.peers[addr].office if addr in config.peers else None
            problems.append(f"keys: no key for peer {addr}" + (f" ({office})" if office else ""))
    return problems


def load_keys_for(
    config: Config, keys_path: Optional[str] = None, live: bool = True
) -> dict[str, wire.PeerKeys]:
    """The keys ``config`` needs (none for the raw wire): from the live copy in the
    state_dir when there is one (root updates it with the keys file, and a running
    relay reads it on SIGHUP), else from ``keys_path`` (--keys: the credential systemd
    copied at start) or the config's keys_file; raise ConfigError if they are unusable.
    ``live`` False: never the live copy (--check-config checks a config with the keys
    it is given, those it will have, not those of the running relay)."""
    if not config.authenticated:
        return {}
    path = keys_source(config, keys_path, live)
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
