"""What the loop keeps per port (socket, batches, counters) and per peer relay."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable
from typing import Any, Optional

from . import mmsg, wire
from .config import WIRE_SITELINK1, Rule, transit_targets
from .netinfo import IP_MTU_DISCOVER, IP_PKTINFO, IP_PMTUDISC_DONT

RECV_BUFSIZE = 65535  # > 65507, the largest IPv4 UDP payload, so MSG_TRUNC means trouble
SOCKET_RCVBUF = 1 << 21  # ask for 2 MiB; the kernel caps it at net.core.rmem_max
# A hub's fan-out leaves in bursts (one LAN broadcast: an envelope per peer, about
# 1 KiB of kernel memory each until the NIC has sent it): room for a few thousand,
# where the default (about 200 KiB) makes a burst to 1000 peers fail with EAGAIN.
# The kernel caps it at net.core.wmem_max.
SOCKET_SNDBUF = 1 << 22
BATCH = 64  # datagrams per recvmmsg/sendmmsg
IP_MULTICAST_LOOP = getattr(socket, "IP_MULTICAST_LOOP", 34)

# The batching backends (recvmmsg/sendmmsg, or plain Python where libc lacks them).
Receiver: Any = mmsg.Receiver
Sender: Any = mmsg.Sender


class PeerState:
    """One peer relay: how to talk to it, and what it sent us and we sent it."""

    __slots__ = (
        "addr",
        "office",
        "office_id",
        "keys",
        "received",
        "accepted",
        "sent",
        "dropped",
        "stale_streak",
        "_streak_at",
    )

    def __init__(self, addr: str, office: Optional[str], keys: Optional[wire.PeerKeys]):
        self.addr = addr
        self.office = office
        self.office_id = wire.office_id(office) if office else None
        self.keys = keys  # None: raw wire
        self.received = 0  # datagrams from it that a rule takes (before the wire checks)
        self.accepted = 0  # ... that passed them
        self.sent = 0
        self.dropped: dict[str, int] = {}
        # datagrams refused as stale or future in a row; counts only while
        # ``accepted`` stays where it was when the streak began (the hot path that
        # accepts does not reset it)
        self.stale_streak = 0
        self._streak_at = -1

    def refused_epoch(self) -> None:
        if self._streak_at != self.accepted:
            self._streak_at = self.accepted
            self.stale_streak = 0
        self.stale_streak += 1

    def counters(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "received": self.received,
            "accepted": self.accepted,
            "sent": self.sent,
            "dropped": dict(self.dropped),
            "stale_streak": self.stale_streak if self._streak_at == self.accepted else 0,
            "wire": WIRE_SITELINK1 if self.keys is not None else "raw",
        }
        if self.office:
            data["office"] = self.office
        if self.keys is not None:
            data["keys"] = [k.fingerprint for k in self.keys.accept]
        return data


class Fanout:
    """A port's authenticated forward_to peers, as the hot path sends to them: their
    states, destinations, sockaddrs (the sender's form) and send keys, in one order.

    A LAN broadcast is sealed once (one header, one sequence number: a branch that
    gets it by two paths takes it once) and tagged for each peer with that link's key.
    """

    __slots__ = ("peers", "dests", "names", "keys")

    def __init__(self, peers: tuple[PeerState, ...], port: int):
        self.peers = peers
        self.dests = tuple((p.addr, port) for p in peers)
        self.names = mmsg.sockaddr_names(self.dests)
        self.keys = wire.FanoutKeys(p.keys.send for p in peers)  # type: ignore[union-attr]


NO_FANOUT = Fanout((), 0)


class PortState:
    """One listening socket, its classifier, peers and counters.

    ``forwarded`` counts LAN broadcasts sent to the forward_to peers, ``rebroadcast``
    peer datagrams re-broadcast on the LAN, ``transited`` peer datagrams passed on to
    transit peers (one per datagram, like ``forwarded``, whatever the number of
    targets; a datagram both re-broadcast and passed on counts in both).
    """

    __slots__ = (
        "port",
        "sock",
        "classifier",
        "forward_to",
        "transit",
        "rule",
        "groups",
        "rx",
        "tx",
        "fwd_peers",
        "fwd_raw",
        "fanout",
        "out",
        "fans",
        "lan_dests",
        "no_gso",
        "transit_peers",
        "repeat",
        "marker",
        "forwarded_seen",
        "lan_until",
        "received",
        "forwarded",
        "rebroadcast",
        "transited",
        "dropped",
        "send_errors",
    )

    COUNTERS = ("received", "forwarded", "rebroadcast", "transited", "dropped", "send_errors")

    def __init__(
        self,
        port: int,
        sock: Optional[socket.socket],
        classifier: Any,
        forward_to: Iterable[str],
        transit: Optional[dict[str, Iterable[str]]] = None,
    ):
        self.port = port
        self.sock = sock
        self.classifier = classifier
        self.forward_to = tuple(forward_to)
        self.transit = transit_targets(transit or {})  # never back to the source
        self.rule: Optional[Rule] = None
        self.groups: frozenset[bytes] = frozenset()  # packed multicast groups relayed
        self.rx: Any = Receiver(sock, BATCH, RECV_BUFSIZE) if sock is not None else None
        self.tx: Any = Sender(BATCH, sock)
        self.fwd_peers: tuple[PeerState, ...] = ()
        # the forward_to peers on the raw wire, (peer, destination) each; those on the
        # authenticated wire (a key each) in fanout
        self.fwd_raw: tuple[tuple[PeerState, tuple[str, int]], ...] = ()
        self.fanout = NO_FANOUT
        # this batch's datagrams by destination, (parts, size) each: sent in runs (egress)
        self.out: dict[tuple[str, int], list[tuple[tuple[Any, ...], int]]] = {}
        # this batch's LAN broadcasts for the fanout peers: (header, payload, envelope size)
        self.fans: list[tuple[bytes, Any, int]] = []
        # destinations that are this LAN (re-broadcasts leave by its interface)
        self.lan_dests: frozenset[str] = frozenset(("255.255.255.255",))
        self.no_gso: set[tuple[str, int]] = set()  # where segmentation offload failed
        self.transit_peers: dict[str, tuple[PeerState, ...]] = {}
        self.repeat: Any = None  # the classifier's repeat memory (service mode)
        self.marker = b""  # the relay's marker (datapath.Datapath.handle_readable)
        self.forwarded_seen = 0  # ``forwarded`` when the LAN last forwarded something
        self.lan_until = 0.0  # repeats are tracked until then (egress.Egress._mark_rebroadcasts)
        self.received = 0
        self.forwarded = 0
        self.rebroadcast = 0
        self.transited = 0
        self.dropped: dict[str, int] = {}
        self.send_errors: dict[str, int] = {}

    def counters(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "received": self.received,
            "forwarded": self.forwarded,
            "rebroadcast": self.rebroadcast,
            "transited": self.transited,
            "dropped": dict(self.dropped),
            "send_errors": dict(self.send_errors),
            "forward_to": list(self.forward_to),
        }
        if self.rule is not None:
            data["accept_from"] = sorted(self.rule.accept_from)
            data["transit"] = {src: list(dst) for src, dst in self.transit.items()}
            if self.rule.multicast_groups:
                data["multicast_groups"] = list(self.rule.multicast_groups)
        return data


class PortInUse(OSError):
    """The port is bound already: most likely another relay, which would double everything."""


def open_socket(port: int) -> socket.socket:
    """UDP socket on 0.0.0.0:port that can broadcast and reports IP_PKTINFO.

    No SO_REUSEADDR: a second relay on the same port (which would double every
    datagram) fails to bind instead of starting silently.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_SNDBUF)
        with contextlib.suppress(OSError):
            # Let the kernel fragment big datagrams instead of failing with EMSGSIZE.
            sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
        with contextlib.suppress(OSError):
            # Our multicast re-sends come back anyway (dropped as "own"); fewer is better.
            sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_LOOP, 0)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - broadcasts only reach wildcard sockets
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(
                    exc.errno, f"udp/{port} is already in use (another sitelink-relay?)"
                ) from None
            raise
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
