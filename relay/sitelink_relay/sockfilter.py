"""Drop cut-off sources in the kernel: a classic BPF filter on the relay's sockets.

A host flooding at full speed can fill a socket's receive queue faster than any
user-space loop empties it, and then the kernel drops the other hosts' datagrams
too.  Once storm control cuts a source off, its datagrams are dropped by a socket
filter instead, before they are queued.  Attaching a classic BPF filter to one's
own socket needs no privilege (SO_ATTACH_FILTER).

The program loads the IPv4 source address (through the network-header offset, as
the filter of a UDP socket sees the datagram from its UDP header on) and returns 0
(drop) for a listed address, "everything" otherwise.  A peer's address can be
listed with its interface: forged copies from anywhere else are dropped, the
peer's own datagrams (from its tunnel) still come in.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterable, Mapping
from typing import Optional

try:  # a hardened Python may lack ctypes: then the relay drops these in user space
    import ctypes
except ImportError:  # pragma: no cover
    ctypes = None  # type: ignore[assignment]

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
SKF_NET_OFF = -0x100000
SKF_AD_IFINDEX = -0x1000 + 8  # ancillary load: the arrival interface's index
MAX_SOURCES = 250  # a jump offset is one byte: at most 255 comparisons
MAX_KEPT = 60  # addresses kept on one interface: 4 instructions each, past the list

_INSN = struct.Struct("=HBBI")  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06
_ACCEPT = 0xFFFFFFFF


def _addr(a: str) -> int:
    return struct.unpack("!I", socket.inet_aton(a))[0]


def program(sources: Iterable[str], keep: Optional[Mapping[str, int]] = None) -> bytes:
    """The filter's instructions: drop ``sources``, and ``keep``'s addresses except when
    they arrive on the interface (ifindex) given for them.

    Layout: load the source; one compare per address (a plain one jumps to "drop", a
    kept one to its own block); "accept"; "drop"; then per kept address: load the
    arrival ifindex, accept if it is that address's interface, else drop.
    """
    keep = dict(keep or {})
    plain = sorted({_addr(a) for a in sources if a not in keep})
    kept = sorted((_addr(a), ifindex) for a, ifindex in keep.items())
    if len(kept) > MAX_KEPT or len(plain) + len(kept) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} sources, {MAX_KEPT} of them kept")
    n = len(plain) + len(kept)
    code = [_INSN.pack(_LD_W_ABS, 0, 0, (SKF_NET_OFF + 12) & 0xFFFFFFFF)]
    for i, addr in enumerate(plain):
        code.append(_INSN.pack(_JEQ_K, n - i, 0, addr))  # to "drop"
    for j, (addr, _ifindex) in enumerate(kept):
        i = len(plain) + j
        code.append(_INSN.pack(_JEQ_K, n - i + 1 + 4 * j, 0, addr))  # to block j
    code.append(_INSN.pack(_RET_K, 0, 0, _ACCEPT))
    code.append(_INSN.pack(_RET_K, 0, 0, 0))
    for _addr_unused, ifindex in kept:
        code.append(_INSN.pack(_LD_W_ABS, 0, 0, SKF_AD_IFINDEX & 0xFFFFFFFF))
        code.append(_INSN.pack(_JEQ_K, 0, 1, ifindex & 0xFFFFFFFF))
        code.append(_INSN.pack(_RET_K, 0, 0, _ACCEPT))
        code.append(_INSN.pack(_RET_K, 0, 0, 0))
    return b"".join(code)


def drop_sources(
    sock: socket.socket, sources: Iterable[str], keep: Optional[Mapping[str, int]] = None
) -> None:
    """Make ``sock`` drop datagrams from ``sources`` in the kernel, and from ``keep``'s
    addresses unless they arrive on their interface (none at all: no filter)."""
    sources = list(sources)
    if not sources and not keep:
        with contextlib.suppress(OSError):  # ENOENT: no filter attached
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        return
    if ctypes is None:
        raise OSError("no ctypes: cannot build a socket filter")
    code = program(sources, keep)
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native layout)
    fprog = struct.pack("@HP", len(code) // _INSN.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
