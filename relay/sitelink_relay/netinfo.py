"""What the network namespace looks like: local addresses, interfaces."""

from __future__ import annotations

import socket
import struct

from . import contract

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DONT = getattr(socket, "IP_PMTUDISC_DONT", 0)
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)
SIOCGIFADDR = 0x8915

# struct in_pktinfo { int ipi_ifindex; struct in_addr ipi_spec_dst; struct in_addr ipi_addr; }
PKTINFO = struct.Struct("=i4s4s")
ANC_BUFSIZE = socket.CMSG_SPACE(PKTINFO.size)
IFNAME_CACHE_MAX = 1024  # ifindex -> name entries kept before the cache starts over
IFNAMSIZ = contract.IFNAME_MAX + 1  # Linux interface names: at most 15 bytes + NUL


class IfNames:
    """Arrival ifindex -> interface name, for checking ``peer_interfaces``.

    The hot path reads ``names`` (one dict lookup) and calls ``resolve`` only on a
    miss.  Names are matched rather than ifindexes resolved once, because a tunnel
    may not exist yet when the relay starts, and may be deleted and recreated (same
    name, new ifindex) while it runs: the new ifindex is a miss, resolved with one
    if_indextoname() call.  Linux does not hand out an ifindex again soon, so an entry
    for a deleted interface is harmless.  An unknown ifindex (interface already gone,
    0 = no IP_PKTINFO) is cached as "" (matches no name), so a flood costs one
    syscall per arrival interface, not per datagram.  The relay empties the cache on
    every refresh and SIGHUP (a renamed interface is seen within REFRESH_INTERVAL), and
    it starts over at IFNAME_CACHE_MAX entries, so it stays small.
    """

    __slots__ = ("names", "lookups")

    def __init__(self) -> None:
        self.names: dict[int, str] = {}  # only ever mutated in place: classifiers hold it
        self.lookups = 0  # if_indextoname() calls, for tests and curiosity

    def resolve(self, ifindex: int) -> str:
        names = self.names
        if len(names) >= IFNAME_CACHE_MAX:
            names.clear()
        self.lookups += 1
        try:
            name = socket.if_indextoname(ifindex)
        except (OSError, OverflowError, ValueError):
            name = ""
        names[ifindex] = name
        return name

    def clear(self) -> None:
        self.names.clear()


def ip_to_int(addr: str) -> int:
    return int.from_bytes(socket.inet_aton(addr), "big")


def parse_fib_trie(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """Return (local addresses, broadcast addresses) from /proc/net/fib_trie text."""
    local = set()
    bcast = set()
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            current = stripped[3:].strip()
        elif current and stripped.startswith("/32 "):
            if stripped.endswith(" LOCAL"):
                local.add(current)
            elif stripped.endswith(" BROADCAST"):
                bcast.add(current)
    return frozenset(local), frozenset(bcast)


def local_ipv4() -> tuple[frozenset[str], frozenset[str]]:
    """Local IPv4 addresses and broadcast addresses of this network namespace."""
    try:
        with open("/proc/net/fib_trie", encoding="ascii") as fh:
            local, bcast = parse_fib_trie(fh.read())
        if local:
            return local, bcast
    except OSError:
        pass
    # Fallback: primary address of each interface via SIOCGIFADDR.
    import fcntl

    local = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _index, name in socket.if_nameindex():
            try:
                res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            local.add(socket.inet_ntoa(res[20:24]))
    return frozenset(local), frozenset()


def if_index(name: str) -> int:
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0
