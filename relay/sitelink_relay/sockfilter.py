"""Drop cut-off sources in the kernel: a classic BPF filter on the relay's sockets.

A host flooding at full speed can fill a socket's receive queue faster than any
user-space loop empties it, and then the kernel drops the other hosts' datagrams
too.  Once storm control cuts a source off, its datagrams are dropped by a socket
filter instead, before they are queued.  Attaching a classic BPF filter to one's
own socket needs no privilege (SO_ATTACH_FILTER).

The program loads the IPv4 source address (through the network-header offset, as
the filter of a UDP socket sees the datagram from its UDP header on) and returns 0
(drop) for a listed address, "everything" otherwise.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterable

try:  # a hardened Python may lack ctypes: then the relay drops these in user space
    import ctypes
except ImportError:  # pragma: no cover
    ctypes = None  # type: ignore[assignment]

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
SKF_NET_OFF = -0x100000
MAX_SOURCES = 250  # a jump offset is one byte: at most 255 comparisons

_INSN = struct.Struct("=HBBI")  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_RET_K = 0x06
_ACCEPT = 0xFFFFFFFF


def program(sources: Iterable[str]) -> bytes:
    """The filter's instructions for dropping ``sources`` (at most MAX_SOURCES)."""
    addrs = sorted({struct.unpack("!I", socket.inet_aton(a))[0] for a in sources})
    if len(addrs) > MAX_SOURCES:
        raise ValueError(f"at most {MAX_SOURCES} sources")
    n = len(addrs)
    code = [_INSN.pack(_LD_W_ABS, 0, 0, (SKF_NET_OFF + 12) & 0xFFFFFFFF)]
    for i, addr in enumerate(addrs):
        # jump to the final "drop" when equal: skip the rest of the list and "accept"
        code.append(_INSN.pack(_JEQ_K, n - i, 0, addr))
    code.append(_INSN.pack(_RET_K, 0, 0, _ACCEPT))
    code.append(_INSN.pack(_RET_K, 0, 0, 0))
    return b"".join(code)


def drop_sources(sock: socket.socket, sources: Iterable[str]) -> None:
    """Make ``sock`` drop datagrams from ``sources`` in the kernel (none: no filter)."""
    sources = list(sources)[:MAX_SOURCES]
    if not sources:
        with contextlib.suppress(OSError):  # ENOENT: no filter attached
            sock.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0)
        return
    if ctypes is None:
        raise OSError("no ctypes: cannot build a socket filter")
    code = program(sources)
    buf = ctypes.create_string_buffer(code, len(code))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (native layout)
    fprog = struct.pack("@HP", len(code) // _INSN.size, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
