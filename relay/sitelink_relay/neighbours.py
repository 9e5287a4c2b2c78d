"""Is a LAN source a real neighbour?  The kernel's neighbour (ARP) table says.

Anyone on a LAN can put any source address on a UDP datagram.  Storm control gives
each source its own budget, so forged addresses would each get one too.  A host
that really has an address answers ARP for it, and the kernel keeps the answer in
its neighbour table (/proc/net/arp: readable without privileges or netlink).  A
source is verified when the table has a complete entry for it on the LAN
interface, and that entry's MAC does not claim more than MAX_ADDRESSES_PER_MAC
addresses (one host forging many addresses and answering ARP for them).

A source not in the table is probed once: an empty UDP datagram to its discard
port (9) makes the kernel ask for its MAC (a real host answers ARP; its UDP stack
discards the datagram or answers "port unreachable").  Probes are bounded
(PROBE_RATE per second, each address at most once per PROBE_AGAIN seconds), and
the table is read at most every READ_INTERVAL seconds, so a flood of forged
sources costs a few table reads and probes a second, not one per datagram.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from typing import Callable, Optional

from . import PROG

log = logging.getLogger(PROG)

ARP_TABLE = "/proc/net/arp"
ATF_COM = 0x02  # the entry is complete (the MAC is known)
MAX_ADDRESSES_PER_MAC = 4
READ_INTERVAL = 0.25
PROBE_PORT = 9  # discard
PROBE_RATE = 20.0  # probes per second, all sources together
PROBE_AGAIN = 30.0
MAX_PROBED = 4096


def parse_arp(text: str, interface: str) -> dict[str, str]:
    """Complete entries of ``interface``: address -> MAC, from /proc/net/arp text."""
    table: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 6 or fields[5] != interface:
            continue
        try:
            flags = int(fields[2], 16)
        except ValueError:
            continue
        if flags & ATF_COM and fields[3] != "00:00:00:00:00:00":
            table[fields[0]] = fields[3].lower()
    return table


def verified_addresses(table: dict[str, str]) -> frozenset[str]:
    """The addresses whose MAC claims at most MAX_ADDRESSES_PER_MAC of them."""
    per_mac: dict[str, int] = {}
    for mac in table.values():
        per_mac[mac] = per_mac.get(mac, 0) + 1
    return frozenset(a for a, mac in table.items() if per_mac[mac] <= MAX_ADDRESSES_PER_MAC)


def _read_table() -> str:
    with open(ARP_TABLE, encoding="ascii", errors="replace") as fh:
        return fh.read(1 << 22)


class Neighbours:
    """``verified(src, now)``: storm control's answer to "is this source real?"."""

    __slots__ = (
        "interface",
        "network",
        "verified_set",
        "read_table",
        "send_probe",
        "probes",
        "reads",
        "_next_read",
        "_probed",
        "_probe_tat",
        "_sock",
        "_error",
    )

    def __init__(
        self,
        interface: str,
        network: ipaddress.IPv4Network,
        read_table: Optional[Callable[[], str]] = None,
        send_probe: Optional[Callable[[str], None]] = None,
    ):
        self.interface = interface
        self.network = network
        self.verified_set: frozenset[str] = frozenset()
        self.read_table = read_table or _read_table
        self.send_probe = send_probe or self._probe
        self.probes = 0
        self.reads = 0
        self._next_read = 0.0
        self._probed: dict[str, float] = {}  # address -> when it may be probed again
        self._probe_tat = 0.0
        self._sock: Optional[socket.socket] = None
        self._error: Optional[str] = None

    def verified(self, src: str, now: float) -> bool:
        if src in self.verified_set:
            return True
        try:
            inside = ipaddress.IPv4Address(src) in self.network
        except ValueError:
            return False
        if not inside:
            return False  # routed to us: no neighbour entry can vouch for it
        if now >= self._next_read:
            self._next_read = now + READ_INTERVAL
            self.refresh()
            if src in self.verified_set:
                return True
        self._maybe_probe(src, now)
        return False

    def refresh(self) -> None:
        self.reads += 1
        try:
            table = parse_arp(self.read_table(), self.interface)
        except OSError as exc:
            if self._error is None:
                log.warning("cannot read %s (%s): no LAN source counts as verified", ARP_TABLE, exc)
            self._error = str(exc)
            table = {}
        else:
            self._error = None
        self.verified_set = verified_addresses(table)

    def _maybe_probe(self, src: str, now: float) -> None:
        probed = self._probed
        again = probed.get(src)
        if again is not None and now < again:
            return
        # one token bucket (GCRA) for all probes: a burst of PROBE_RATE, then PROBE_RATE/s
        tat = max(self._probe_tat, now) + 1.0 / PROBE_RATE
        if tat > now + 1.0:
            return
        self._probe_tat = tat
        if len(probed) >= MAX_PROBED:
            probed.clear()
        probed[src] = now + PROBE_AGAIN
        self.probes += 1
        self.send_probe(src)

    def _probe(self, src: str) -> None:
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(b"", (src, PROBE_PORT))
        except OSError:
            pass  # unreachable, no buffer space: it stays unverified; nothing to report

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None
