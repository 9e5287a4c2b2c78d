"""The keys a config needs: one per authenticated peer and per sibling."""

from __future__ import annotations

from typing import Optional

from . import wire
from .config import WIRE_SITELINK1, Config, ConfigError


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
