"""Port and peer states from a config: each peer's wire and keys, each port's
classifier, the peers it forwards to, and which peers pass on to which."""

from __future__ import annotations

import socket
from typing import Optional

from . import wire
from .classify import Classifier, CompatClassifier
from .config import WIRE_SITELINK1, Config, Rule
from .localnet import LocalNetwork
from .peerkeys import rule_peers
from .ports import NO_FANOUT, Fanout, PeerState, PortState


def peer_states(
    config: Config, keys: dict[str, wire.PeerKeys], old: dict[str, PeerState]
) -> dict[str, PeerState]:
    """A state for every peer of ``config``; the counters of ``old`` ones carried over."""
    peers = {}
    for addr in sorted(set(config.peers) | rule_peers(config)):
        peer = config.peers.get(addr)
        peer_keys = None
        if config.peer_wire(addr) == WIRE_SITELINK1:
            # load_keys() refuses a config with a key missing; should one be missing
            # anyway, the peer is not spoken to in clear: NO_KEYS verifies nothing.
            peer_keys = keys.get(addr, wire.NO_KEYS)
        state = PeerState(addr, peer.office if peer is not None else None, peer_keys)
        previous = old.get(addr)
        if previous is not None:
            state.received, state.accepted, state.sent = (
                previous.received,
                previous.accepted,
                previous.sent,
            )
            state.dropped = previous.dropped
        peers[addr] = state
    return peers


def service_port(
    config: Config,
    rule: Rule,
    sock: Optional[socket.socket],
    network: LocalNetwork,
    marker: bytes,
    peers: dict[str, PeerState],
) -> PortState:
    """The state of ``rule``'s port (service mode), linked to ``peers``."""
    classifier = Classifier.for_rule(
        config, rule, network.lan_ifindex, network.own_set(), network.ifnames
    )
    ps = PortState(rule.port, sock, classifier, rule.forward_to, rule.transit)
    ps.repeat = classifier.repeat
    ps.marker = marker
    ps.rule = rule
    ps.groups = frozenset(socket.inet_aton(g) for g in rule.multicast_groups)
    ps.lan_dests = frozenset(("255.255.255.255", str(config.lan_broadcast), *rule.multicast_groups))
    link_peers(ps, peers)
    return ps


def compat_port(
    port: int,
    dest: str,
    sock: Optional[socket.socket],
    network: LocalNetwork,
    peers: dict[str, PeerState],
) -> PortState:
    """The one port of compat mode: every datagram on it goes to DEST."""
    classifier = CompatClassifier(
        network.own_set(), dest, network.compat_dest_is_broadcast(), broadcasts=network.broadcasts
    )
    ps = PortState(port, sock, classifier, (dest,))
    ps.lan_dests = frozenset()  # compat mode knows no LAN: DEST as routed
    link_peers(ps, peers)
    return ps


def key_fingerprints(peers: dict[str, PeerState]) -> str:
    """Each authenticated peer's address and send key's fingerprint (for the log)."""
    return ", ".join(
        f"{a} {p.keys.send.fingerprint}" for a, p in sorted(peers.items()) if p.keys is not None
    )


def link_peers(ps: PortState, peers: dict[str, PeerState]) -> None:
    """Point ``ps`` at the states in ``peers`` of its forward_to and transit peers."""
    for addr in (*ps.forward_to, *ps.transit):
        if addr not in peers:  # a Rule built by hand (tests): a raw peer
            peers[addr] = PeerState(addr, None, None)
    for targets in ps.transit.values():
        for addr in targets:
            if addr not in peers:
                peers[addr] = PeerState(addr, None, None)
    ps.fwd_peers = tuple(peers[a] for a in ps.forward_to)
    # for the hot path: raw peers, and those with a key (a peer without: never)
    ps.fwd_raw = tuple((p, (p.addr, ps.port)) for p in ps.fwd_peers if p.keys is None)
    keyed = tuple(p for p in ps.fwd_peers if p.keys is not None and p.keys is not wire.NO_KEYS)
    ps.fanout = Fanout(keyed, ps.port) if keyed else NO_FANOUT
    ps.transit_peers = {
        src: tuple(peers[a] for a in targets) for src, targets in ps.transit.items()
    }
