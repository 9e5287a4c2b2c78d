"""Batched UDP receive and send: libc's recvmmsg/sendmmsg through ctypes.

Python's standard library has no recvmmsg/sendmmsg; one system call per datagram
caps a relay at about 80k datagrams/s here, a 64-datagram batch more than doubles
that.  Two backends share one interface:

* ``MmsgReceiver``/``MmsgSender``: libc's recvmmsg/sendmmsg via ctypes, with every
  array (mmsghdr, iovec, sockaddr_in, control buffers) allocated once.  The hot
  path reads the kernel's answers through strided memoryviews (``tolist()`` runs in
  C) and caches address conversions, so a datagram costs a memoryview slice and a
  few list entries, no per-datagram struct unpacking.
* ``PyReceiver``/``PySender``: ``recvmsg_into``/``sendmsg`` loops, for platforms
  where ctypes or the libc symbols are missing (or ``SITELINK_RELAY_NO_MMSG=1``).

``Receiver`` and ``Sender`` are the best available backend.  Both read/write one
AF_INET UDP socket; its options (IP_PKTINFO, SO_BROADCAST, non-blocking) are the
caller's business.

Receiver: after ``n = r.recv()`` (``r.recv(limit)``: at most ``limit`` datagrams
this time), for ``i in range(n)``: ``r.payloads[i]`` (a
memoryview of exactly the datagram, valid until the next ``recv()``),
``r.sources[i]`` ((ip, port)), ``r.ifindex[i]`` and ``r.dests[i]`` (arrival
interface and header destination address from IP_PKTINFO; 0 and b"" when absent),
``r.truncated[i]`` (MSG_TRUNC).

Sender: ``s.add(parts, addr, pktinfo)`` queues one datagram made of ``parts``
(scatter-gather, nothing copied: the parts must stay unchanged until the flush;
parts are bytes, bytearrays or byte-format memoryviews such as ``payloads[i]``),
``s.flush(sock)`` sends the queue with as few sendmmsg calls as the errors allow
and returns ``[(addr, OSError), ...]`` for the datagrams that failed.  Use one
Sender per socket: ``add()`` flushes by itself when ``batch`` datagrams are queued
(to the socket given to the constructor or to the last ``flush()``), and the
errors of such a flush are returned by the next ``flush()``.

Fan-out: ``s.send_fans(sock, fans, dests, names)`` sends, at once, one datagram
``header + tags[i] + payload`` to each ``dests[i]`` for every ``(header, tags,
payload)`` in ``fans`` (a hub sealing each LAN broadcast for each of its peers);
``names`` is ``sockaddr_names(dests)``, made once per set of peers.  What ``add()``
queued goes first; the failures are returned as by ``flush()``.  The mmsg backend
lays the datagrams into its arrays with whole-list operations, nothing per datagram
but the tag's address.
"""

# The send path tests ``type(x) is bytes`` on purpose: only exact bytes objects have
# their data at a fixed offset from id(); a subclass may not.
# pylint: disable=unidiomatic-typecheck

from __future__ import annotations

import array
import errno
import mmap
import os
import socket
import struct
import sys
from itertools import accumulate, chain, repeat
from operator import add as _add
from typing import Any, Optional

IPPROTO_IP = socket.IPPROTO_IP
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)
MSG_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0x40)
PKTINFO = struct.Struct("=i4s4s")  # struct in_pktinfo {int ifindex; in_addr spec_dst, addr}
ANC_BUFSIZE = socket.CMSG_SPACE(PKTINFO.size)
MAX_PARTS = 8  # iovecs per datagram; more parts than this are joined (copied) into the last
CACHE_MAX = 4096  # address conversions remembered before a cache starts over
FEW = 4  # a flush of at most this many datagrams fills the arrays item by item
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)
_NO_PKTINFO = (0, b"")


# --------------------------------------------------------------------------- ctypes

try:
    import ctypes
except (ImportError, MemoryError, OSError):  # e.g. hardened hosts refusing libffi's memory
    ctypes = None  # type: ignore[assignment]

_NATIVE = sys.byteorder
_LEVEL_TYPE = struct.Struct("=ii")
RECV_CONTROL = 64  # per datagram: room for IP_PKTINFO and another small option, 8-aligned
_BYTES_OFFSET = -1  # where a bytes object's data is, relative to id() (see below)

if ctypes is not None:

    class iovec(ctypes.Structure):  # C names, as in <sys/socket.h>
        _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]

    class msghdr(ctypes.Structure):
        _fields_ = [
            ("msg_name", ctypes.c_void_p),
            ("msg_namelen", ctypes.c_uint32),  # socklen_t
            ("msg_iov", ctypes.c_void_p),
            ("msg_iovlen", ctypes.c_size_t),
            ("msg_control", ctypes.c_void_p),
            ("msg_controllen", ctypes.c_size_t),
            ("msg_flags", ctypes.c_int),
        ]

    class mmsghdr(ctypes.Structure):
        _fields_ = [("msg_hdr", msghdr), ("msg_len", ctypes.c_uint)]

    class sockaddr_in(ctypes.Structure):
        _fields_ = [
            ("sin_family", ctypes.c_uint16),
            ("sin_port", ctypes.c_uint16),  # network byte order
            ("sin_addr", ctypes.c_uint8 * 4),
            ("sin_zero", ctypes.c_uint8 * 8),
        ]

    class cmsghdr(ctypes.Structure):
        _fields_ = [
            ("cmsg_len", ctypes.c_size_t),
            ("cmsg_level", ctypes.c_int),
            ("cmsg_type", ctypes.c_int),
        ]

    class in_pktinfo(ctypes.Structure):
        _fields_ = [
            ("ipi_ifindex", ctypes.c_int),
            ("ipi_spec_dst", ctypes.c_uint8 * 4),
            ("ipi_addr", ctypes.c_uint8 * 4),
        ]

    SIZE_T = ctypes.sizeof(ctypes.c_size_t)
    MMSG_SIZE = ctypes.sizeof(mmsghdr)
    SOCKADDR_SIZE = ctypes.sizeof(sockaddr_in)
    IOV_SIZE = ctypes.sizeof(iovec)
    CMSG_HDR = ctypes.sizeof(cmsghdr)
    _DATA = (CMSG_HDR + SIZE_T - 1) & ~(SIZE_T - 1)  # CMSG_ALIGN(header): the pktinfo
    CMSG_PKTINFO_LEN = _DATA + ctypes.sizeof(in_pktinfo)  # CMSG_LEN
    CMSG_PKTINFO_SPACE = (CMSG_PKTINFO_LEN + SIZE_T - 1) & ~(SIZE_T - 1)  # CMSG_SPACE
    _SIZE_FMT = {4: "I", 8: "Q"}.get(SIZE_T, "N")

    # Offsets in units of the views' item sizes (LP64: x86_64, aarch64; elsewhere the
    # Python backend is used).
    _OFF_IOV = msghdr.msg_iov.offset // SIZE_T
    _OFF_IOVLEN = msghdr.msg_iovlen.offset // SIZE_T
    _OFF_CONTROLLEN = msghdr.msg_controllen.offset // SIZE_T
    _OFF_FLAGS = msghdr.msg_flags.offset // 4
    _OFF_MSGLEN = mmsghdr.msg_len.offset // 4
    _OFF_LEVEL = cmsghdr.cmsg_level.offset // 4
    _OFF_IFINDEX = (_DATA + in_pktinfo.ipi_ifindex.offset) // 4
    _OFF_ADDR = (_DATA + in_pktinfo.ipi_addr.offset) // 4
    _HDR_STEP = MMSG_SIZE // SIZE_T  # size_t items per mmsghdr

    _addressof = ctypes.addressof
    _char_from_buffer = ctypes.c_char.from_buffer

    # CPython keeps a bytes object's data inline after its header: id(b) + offset,
    # checked once here; elsewhere a (slower) ctypes conversion.
    if sys.implementation.name == "cpython":
        _probe = b"sitelink-relay bytes probe"
        _guess = bytes.__basicsize__ - 1
        if ctypes.string_at(id(_probe) + _guess, len(_probe)) == _probe:
            _BYTES_OFFSET = _guess
        del _probe, _guess


def _load_libc() -> Optional[Any]:
    """libc with recvmmsg and sendmmsg, or None (then the pure-Python backend is used)."""
    if ctypes is None or os.environ.get("SITELINK_RELAY_NO_MMSG"):
        return None
    if not sys.platform.startswith("linux") or SIZE_T != 8:  # the views assume LP64
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg = libc.recvmmsg
        sendmmsg = libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    ]
    recvmmsg.restype = ctypes.c_int
    sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
    sendmmsg.restype = ctypes.c_int
    # The kernel must have them too (not ENOSYS, not refused by a seccomp filter): on
    # an invalid descriptor, working system calls fail with EBADF.
    for probe in (lambda: recvmmsg(-1, None, 0, 0, None), lambda: sendmmsg(-1, None, 0, 0)):
        ctypes.set_errno(0)
        if probe() != -1 or ctypes.get_errno() != errno.EBADF:
            return None
    return libc


_libc = _load_libc()
HAVE_MMSG = _libc is not None


def _buffer(size: int) -> bytearray:
    return bytearray(max(size, 8))


def _address(obj: Any) -> int:
    """Address of a writable buffer's first byte (the buffer must not be empty)."""
    return _addressof(_char_from_buffer(obj))


def _bytes_address(data: bytes) -> int:
    if _BYTES_OFFSET >= 0:
        return id(data) + _BYTES_OFFSET
    return ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0


def _part_address(part: Any) -> tuple[int, Any]:
    """(address, the bytes it points at) for one part; len() of the latter is the size.

    The second item is ``part`` itself, a byte-format view of it, or a copy when it
    cannot be pointed at (read-only but not bytes, or not contiguous).
    """
    if type(part) is bytes:
        return _bytes_address(part), part
    view = memoryview(part)
    if view.format != "B" or view.ndim != 1:
        try:
            view = view.cast("B")
        except TypeError:  # not contiguous
            view = memoryview(view.tobytes())
    if not view.nbytes:
        return 0, view
    try:
        return _addressof(_char_from_buffer(view)), view
    except (TypeError, ValueError, BufferError):  # read-only: copy
        copy = view.tobytes()
        return _bytes_address(copy), copy


def _ip_port(key: int) -> tuple[str, int]:
    """(ip, port) from the first 8 bytes of a sockaddr_in read as one native integer."""
    raw = key.to_bytes(8, _NATIVE)
    return socket.inet_ntoa(raw[4:8]), int.from_bytes(raw[2:4], "big")


def _sockaddr8(addr: tuple[str, int]) -> bytes:
    """The first 8 bytes of a sockaddr_in (family, port, address) for addr."""
    ip, port = addr
    try:
        packed = socket.inet_aton(ip)
    except OSError:
        packed = socket.inet_aton(socket.gethostbyname(ip))
    return socket.AF_INET.to_bytes(2, _NATIVE) + port.to_bytes(2, "big") + packed


def sockaddr_names(addrs: Any) -> array.array:
    """The sendmmsg form of each (ip, port) in addrs: send_fans' ``names``."""
    return array.array("Q", [int.from_bytes(_sockaddr8(a), _NATIVE) for a in addrs])


def _pktinfo_data(pktinfo: tuple[int, bytes]) -> bytes:
    """struct in_pktinfo for (ifindex, spec_dst): what IP_PKTINFO carries when sending."""
    ifindex, spec_dst = pktinfo
    return PKTINFO.pack(ifindex, spec_dst, b"\0\0\0\0")


def _pktinfo_cmsg(pktinfo: tuple[int, bytes]) -> bytes:
    data = _pktinfo_data(pktinfo)
    head = CMSG_PKTINFO_LEN.to_bytes(SIZE_T, _NATIVE) + _LEVEL_TYPE.pack(IPPROTO_IP, IP_PKTINFO)
    head = head.ljust(_DATA, b"\0")
    return (head + data).ljust(CMSG_PKTINFO_SPACE, b"\0")


class _ReceiverBase:
    """The results of the last recv(); see the module docstring."""

    __slots__ = ("sock", "batch", "bufsize", "payloads", "sources", "ifindex", "dests", "truncated")

    def __init__(self, sock: socket.socket, batch: int, bufsize: int):
        if batch < 1 or bufsize < 1:
            raise ValueError("batch and bufsize must be positive")
        self.sock = sock
        self.batch = batch
        self.bufsize = bufsize
        self.payloads: list = []
        self.sources: list = []
        self.ifindex: list = []
        self.dests: list = []
        self.truncated: list = []

    def _empty(self) -> int:
        self.payloads = []
        self.sources = []
        self.ifindex = []
        self.dests = []
        self.truncated = []
        return 0


# ------------------------------------------------------------------------- receivers


class MmsgReceiver(_ReceiverBase):
    """Reads up to ``batch`` datagrams with one recvmmsg call."""

    __slots__ = (
        "_fd",
        "_recvmmsg",
        "_hdrs",
        "_template",
        "_hdr_ptr",
        "_dirty",
        "_data",
        "_mv",
        "_offsets",
        "_names",
        "_ctl",
        "_v_len",
        "_v_flags",
        "_v_name",
        "_v_clen",
        "_v_lt",
        "_v_ifindex",
        "_v_addr",
        "_good_clen",
        "_good_lt",
        "_falses",
        "_src_cache",
        "_dst_cache",
        "_keepalive",
    )

    def __init__(self, sock: socket.socket, batch: int = 64, bufsize: int = 65535):
        super().__init__(sock, batch, bufsize)
        if _libc is None:
            raise OSError(errno.ENOSYS, "recvmmsg is not available")
        self._fd = sock.fileno()
        self._recvmmsg = _libc.recvmmsg
        # Datagram buffers: one bufsize slot each, in one anonymous mapping (pages that
        # small datagrams never reach are never touched); 8-aligned slots.
        slot = (bufsize + 7) & ~7
        self._data = mmap.mmap(-1, slot * batch)
        data_addr = _address(self._data)
        self._mv = memoryview(self._data)
        self._offsets = list(range(0, slot * batch, slot))
        self._names = _buffer(SOCKADDR_SIZE * batch)
        self._ctl = _buffer(RECV_CONTROL * batch)
        iovs = (iovec * batch)()
        hdrs = _buffer(MMSG_SIZE * batch)
        harr = (mmsghdr * batch).from_buffer(hdrs)
        names_addr = _address(self._names)
        ctl_addr = _address(self._ctl)
        for i in range(batch):
            iovs[i].iov_base = data_addr + i * slot
            iovs[i].iov_len = bufsize
            h = harr[i].msg_hdr
            h.msg_name = names_addr + i * SOCKADDR_SIZE
            h.msg_namelen = SOCKADDR_SIZE
            h.msg_iov = ctypes.addressof(iovs[i])
            h.msg_iovlen = 1
            h.msg_control = ctl_addr + i * RECV_CONTROL
            h.msg_controllen = RECV_CONTROL
        del h, harr  # no exports left on hdrs but the views below
        self._keepalive = iovs
        self._hdrs = memoryview(hdrs)
        # restored before each call (the kernel writes lengths and flags back)
        self._template = memoryview(bytes(hdrs))
        self._hdr_ptr = ctypes.c_void_p(_address(hdrs))
        self._dirty = 0
        u32 = self._hdrs.cast("I")
        per = MMSG_SIZE // 4
        self._v_len = u32[_OFF_MSGLEN::per]
        self._v_flags = u32[_OFF_FLAGS::per]
        self._v_clen = self._hdrs.cast(_SIZE_FMT)[_OFF_CONTROLLEN :: MMSG_SIZE // SIZE_T]
        self._v_name = memoryview(self._names).cast("Q")[:: SOCKADDR_SIZE // 8]
        c32 = memoryview(self._ctl).cast("I")
        per = RECV_CONTROL // 4
        self._v_lt = memoryview(self._ctl).cast("Q")[_OFF_LEVEL // 2 :: RECV_CONTROL // 8]
        self._v_ifindex = c32[_OFF_IFINDEX::per]
        self._v_addr = c32[_OFF_ADDR::per]
        self._good_clen = [CMSG_PKTINFO_SPACE] * batch
        self._good_lt = [int.from_bytes(_LEVEL_TYPE.pack(IPPROTO_IP, IP_PKTINFO), _NATIVE)] * batch
        self._falses = [False] * batch
        self._src_cache: dict[int, tuple[str, int]] = {}
        self._dst_cache: dict[int, bytes] = {}

    def recv(self, limit: Optional[int] = None) -> int:
        dirty = self._dirty
        if dirty:
            self._hdrs[:dirty] = self._template[:dirty]
            self._dirty = 0
        count = self.batch if limit is None else max(1, min(limit, self.batch))
        n = self._recvmmsg(self._fd, self._hdr_ptr, count, MSG_DONTWAIT, None)
        if n <= 0:
            err = ctypes.get_errno() if n < 0 else errno.EAGAIN
            if err in _AGAIN:
                return self._empty()
            raise OSError(err, os.strerror(err))
        self._dirty = n * MMSG_SIZE
        mv = self._mv
        lens = self._v_len[:n].tolist()
        self.payloads = [mv[o : o + ln] for o, ln in zip(self._offsets, lens)]
        keys = self._v_name[:n].tolist()
        cache = self._src_cache
        sources = list(map(cache.get, keys))
        if None in sources:
            if len(cache) >= CACHE_MAX:
                cache.clear()
            for i, key in enumerate(keys):
                if sources[i] is None:
                    sources[i] = cache[key] = _ip_port(key)
        self.sources = sources
        flags = self._v_flags[:n].tolist()
        if any(flags):
            self.truncated = [bool(f & MSG_TRUNC) for f in flags]
        else:
            self.truncated = self._falses[:n]
        if (
            self._v_clen[:n].tolist() == self._good_clen[:n]
            and self._v_lt[:n].tolist() == self._good_lt[:n]
        ):
            self.ifindex = self._v_ifindex[:n].tolist()
            addrs = self._v_addr[:n].tolist()
            dcache = self._dst_cache
            dests = list(map(dcache.get, addrs))
            if None in dests:
                if len(dcache) >= CACHE_MAX:
                    dcache.clear()
                for i, a in enumerate(addrs):
                    if dests[i] is None:
                        dests[i] = dcache[a] = a.to_bytes(4, _NATIVE)
            self.dests = dests
        else:
            self._parse_control(n)
        return n

    def _parse_control(self, n: int) -> None:
        """IP_PKTINFO the slow way: walk each datagram's control messages."""
        ifindex = []
        dests = []
        clens = self._v_clen[:n].tolist()
        ctl = self._ctl
        for i in range(n):
            found = _NO_PKTINFO
            base = i * RECV_CONTROL
            end = base + min(clens[i], RECV_CONTROL)
            pos = base
            while pos + CMSG_HDR <= end:
                clen = int.from_bytes(ctl[pos : pos + SIZE_T], _NATIVE)
                if clen < CMSG_HDR:
                    break
                level, kind = _LEVEL_TYPE.unpack_from(ctl, pos + SIZE_T)
                if level == IPPROTO_IP and kind == IP_PKTINFO and clen >= CMSG_PKTINFO_LEN:
                    idx, _spec, dst = PKTINFO.unpack_from(ctl, pos + _DATA)
                    found = (idx, dst)
                    break
                pos += (clen + SIZE_T - 1) & ~(SIZE_T - 1)  # CMSG_NXTHDR
            ifindex.append(found[0])
            dests.append(found[1])
        self.ifindex = ifindex
        self.dests = dests


class PyReceiver(_ReceiverBase):
    """The same interface with one recvmsg_into call per datagram."""

    __slots__ = ("_data", "_slots", "_recv", "_error")

    def __init__(self, sock: socket.socket, batch: int = 64, bufsize: int = 65535):
        super().__init__(sock, batch, bufsize)
        self._data = mmap.mmap(-1, bufsize * batch)
        mv = memoryview(self._data)
        self._slots = [[mv[i * bufsize : (i + 1) * bufsize]] for i in range(batch)]
        self._recv = sock.recvmsg_into
        self._error: Optional[OSError] = None

    def recv(self, limit: Optional[int] = None) -> int:
        if self._error is not None:
            exc, self._error = self._error, None
            self._empty()
            raise exc
        payloads = []
        sources = []
        ifindexes = []
        dests = []
        truncated = []
        recv = self._recv
        slots = self._slots if limit is None else self._slots[: max(1, limit)]
        for bufs in slots:
            try:
                n, ancdata, flags, addr = recv(bufs, ANC_BUFSIZE, MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if not payloads:
                    self._empty()
                    raise
                self._error = exc  # reported by the next call, as recvmmsg does
                break
            ifindex, dst = _NO_PKTINFO
            for level, kind, data in ancdata:
                if level == IPPROTO_IP and kind == IP_PKTINFO and len(data) >= PKTINFO.size:
                    ifindex, _spec, dst = PKTINFO.unpack_from(data)
            payloads.append(bufs[0][:n])
            sources.append(addr)
            ifindexes.append(ifindex)
            dests.append(dst)
            truncated.append(bool(flags & MSG_TRUNC))
        self.payloads = payloads
        self.sources = sources
        self.ifindex = ifindexes
        self.dests = dests
        self.truncated = truncated
        return len(payloads)


# --------------------------------------------------------------------------- senders


class _SenderBase:
    """What both senders share: the queue, the socket to flush to, the errors kept.

    ``flush`` does the common part, then hands the taken queue to ``_send_batch``
    (once per flush, not per datagram), which sends it and appends the failures.
    """

    __slots__ = ("batch", "sock", "_errors", "_queue")

    def __init__(self, batch: int, sock: Optional[socket.socket]):
        if batch < 1:
            raise ValueError("batch must be positive")
        self.batch = batch
        self.sock = sock  # where add() flushes a full queue; flush(sock) sets it too
        self._errors: list[tuple[Any, OSError]] = []  # from automatic flushes
        self._queue: list = []  # (parts, addr, backend's pktinfo form) per datagram

    def __len__(self) -> int:
        return len(self._queue)

    def _full(self) -> None:
        if self.sock is None:
            raise ValueError(f"{self.batch} datagrams queued and no socket to flush them to")
        self._errors = self.flush(self.sock)  # carries the earlier errors too

    def flush(self, sock: Optional[socket.socket] = None) -> list[tuple[Any, OSError]]:
        if sock is None:
            sock = self.sock
        else:
            self.sock = sock
        errors = self._errors
        self._errors = []
        queue = self._queue
        if not queue:
            return errors
        if sock is None:
            raise ValueError("no socket to flush to")
        self._queue = []
        self._send_batch(sock, queue, errors)
        return errors

    def _send_batch(self, sock: socket.socket, queue: list, errors: list) -> None:
        """Send every queued datagram; append (addr, OSError) to errors for each failure."""
        raise NotImplementedError

    def send_fans(
        self, sock: socket.socket, fans: list, dests: Any, names: array.array
    ) -> list[tuple[Any, OSError]]:
        """``header + tags[i] + payload`` to ``dests[i]``, for each (header, tags,
        payload) of ``fans``, now (after what add() queued); the failures (see the
        module docstring)."""
        raise NotImplementedError

    @staticmethod
    def _check_fans(fans: list, count: int) -> None:
        for fan in fans:
            if len(fan[1]) != count:
                raise ValueError(f"{len(fan[1])} tags for {count} destinations")


class MmsgSender(_SenderBase):
    """Queues datagrams; one sendmmsg call per flush (more only when a datagram fails).

    ``add`` only queues (parts, addr, pktinfo); ``flush`` fills the preallocated
    mmsghdr, iovec and sockaddr_in arrays with a handful of whole-batch operations
    (map/zip/array assignments that run in C), so a datagram costs little more than
    the address lookup of its parts.
    """

    __slots__ = (
        "_sendmmsg",
        "_keep",
        "_ptrs",
        "_iq",
        "_iov_addr",
        "_single_iov",
        "_triple_iov",
        "_threes",
        "_v_iov",
        "_v_iovlen",
        "_v_clen",
        "_v_name",
        "_ctl",
        "_ctl_slots",
        "_zeros",
        "_ones",
        "_multi",
        "_clen_dirty",
        "_sa_cache",
        "_cmsg_cache",
    )

    def __init__(self, batch: int = 64, sock: Optional[socket.socket] = None):
        super().__init__(batch, sock)
        if _libc is None:
            raise OSError(errno.ENOSYS, "sendmmsg is not available")
        self._sendmmsg = _libc.sendmmsg
        hdrs = _buffer(MMSG_SIZE * batch)
        names = _buffer(SOCKADDR_SIZE * batch)
        iovs = _buffer(IOV_SIZE * MAX_PARTS * batch)
        ctl = _buffer(CMSG_PKTINFO_SPACE * batch)
        harr = (mmsghdr * batch).from_buffer(hdrs)
        hdrs_addr = _address(hdrs)
        names_addr = _address(names)
        ctl_addr = _address(ctl)
        for i in range(batch):
            h = harr[i].msg_hdr
            h.msg_name = names_addr + i * SOCKADDR_SIZE
            h.msg_namelen = SOCKADDR_SIZE
            h.msg_control = ctl_addr + i * CMSG_PKTINFO_SPACE
        del h, harr
        self._keep = (hdrs, names, iovs, ctl)
        self._ptrs = [ctypes.c_void_p(hdrs_addr + i * MMSG_SIZE) for i in range(batch)]
        hq = memoryview(hdrs).cast(_SIZE_FMT)
        self._v_iov = hq[_OFF_IOV::_HDR_STEP]
        self._v_iovlen = hq[_OFF_IOVLEN::_HDR_STEP]
        self._v_clen = hq[_OFF_CONTROLLEN::_HDR_STEP]
        self._v_name = memoryview(names).cast("Q")[:: SOCKADDR_SIZE // 8]
        # iovecs are packed one after the other; with one part per datagram, datagram
        # i's are at slot i (the common case needs no pointer arithmetic)
        self._iq = memoryview(iovs).cast(_SIZE_FMT)
        self._iov_addr = _address(iovs)
        self._single_iov = array.array(
            _SIZE_FMT, range(self._iov_addr, self._iov_addr + batch * IOV_SIZE, IOV_SIZE)
        )
        # send_fans: three parts each (header, tag, payload), datagram i's at slot 3i
        step = 3 * IOV_SIZE
        self._triple_iov = array.array(
            _SIZE_FMT, range(self._iov_addr, self._iov_addr + batch * step, step)
        )
        self._threes = array.array(_SIZE_FMT, [3] * batch)
        self._ctl = memoryview(ctl)
        self._ctl_slots: list = [None] * batch  # which cmsg each control slot holds
        self._zeros = array.array(_SIZE_FMT, bytes(SIZE_T * batch))
        self._ones = array.array(_SIZE_FMT, [1] * batch)
        self._multi = True  # iovec pointers and counts not (yet) the one-part layout
        self._clen_dirty = False
        self._sa_cache: dict[Any, int] = {}
        self._cmsg_cache: dict[Any, bytes] = {}

    def add(self, parts: Any, addr: tuple[str, int], pktinfo: Optional[tuple] = None) -> None:
        queue = self._queue
        if len(parts) > MAX_PARTS:
            parts = [*parts[: MAX_PARTS - 1], b"".join(parts[MAX_PARTS - 1 :])]
        queue.append((parts, addr, pktinfo))
        if len(queue) >= self.batch:
            if self.sock is None:
                if len(queue) > self.batch:
                    queue.pop()
                    raise ValueError(f"{self.batch} datagrams queued and no socket to flush to")
                return
            self._errors = self.flush(self.sock)  # carries the earlier errors too

    def _fill(self, queue: list) -> list:
        """Write the queue into the arrays; returns what must stay alive until sent."""
        n = len(queue)
        partss, addrs, pktinfos = zip(*queue)
        flat = list(chain.from_iterable(partss))
        keep: list = [partss]
        try:  # the forwarding case: views of a receive buffer (writable), all in C
            bases = list(map(_addressof, map(_char_from_buffer, flat)))
        except (TypeError, ValueError, BufferError):
            bases = self._addresses(flat, keep)
        sizes = list(map(len, flat))
        total = len(flat)
        pairs = [0] * (2 * total)
        pairs[::2] = bases
        pairs[1::2] = sizes
        self._iq[: 2 * total] = array.array(_SIZE_FMT, pairs)
        if total == n:  # one part each: datagram i's iovec is slot i
            if self._multi:
                self._v_iov[:] = self._single_iov
                self._v_iovlen[:] = self._ones
                self._multi = False
        else:
            counts = list(map(len, partss))
            starts = [0, *accumulate(counts)][:n]
            self._v_iov[:n] = array.array(
                _SIZE_FMT, [self._iov_addr + IOV_SIZE * s for s in starts]
            )
            self._v_iovlen[:n] = array.array(_SIZE_FMT, counts)
            self._multi = True
        cache = self._sa_cache
        keys = list(map(cache.get, addrs))
        if None in keys:
            if len(cache) >= CACHE_MAX:
                cache.clear()
            for i, key in enumerate(keys):
                if key is None:
                    keys[i] = cache[addrs[i]] = int.from_bytes(_sockaddr8(addrs[i]), _NATIVE)
        self._v_name[:n] = array.array("Q", keys)
        if pktinfos.count(None) == n:
            if self._clen_dirty:
                self._v_clen[:] = self._zeros
                self._clen_dirty = False
        else:
            self._pktinfo(pktinfos)
        return keep

    def _fill_few(self, queue: list) -> list:
        """_fill for a handful of datagrams (low rates): item by item, no bulk set-up."""
        keep: list = [queue]
        iq = self._iq
        v_iov = self._v_iov
        v_iovlen = self._v_iovlen
        v_name = self._v_name
        v_clen = self._v_clen
        iov_addr = self._iov_addr
        cache = self._sa_cache
        k = 0
        for i, (parts, addr, pktinfo) in enumerate(queue):
            v_iov[i] = iov_addr + k * IOV_SIZE
            v_iovlen[i] = len(parts)
            for part in parts:
                if type(part) is bytes and _BYTES_OFFSET >= 0:
                    base = id(part) + _BYTES_OFFSET
                    size = len(part)
                else:
                    base, obj = _part_address(part)
                    size = len(obj)
                    if obj is not part:
                        keep.append(obj)
                iq[2 * k] = base
                iq[2 * k + 1] = size
                k += 1
            key = cache.get(addr)
            if key is None:
                if len(cache) >= CACHE_MAX:
                    cache.clear()
                key = cache[addr] = int.from_bytes(_sockaddr8(addr), _NATIVE)
            v_name[i] = key
            if pktinfo is None:
                v_clen[i] = 0
            else:
                self._pktinfo_slot(i, pktinfo)
                v_clen[i] = CMSG_PKTINFO_SPACE
                self._clen_dirty = True
        self._multi = True  # iovec pointers and counts written one by one
        return keep

    def _pktinfo_slot(self, i: int, pktinfo: tuple) -> None:
        """Control slot i holds the IP_PKTINFO message for pktinfo."""
        ccache = self._cmsg_cache
        cmsg = ccache.get(pktinfo)
        if cmsg is None:
            if len(ccache) >= CACHE_MAX:
                ccache.clear()
            cmsg = ccache[pktinfo] = _pktinfo_cmsg(pktinfo)
        if self._ctl_slots[i] is not cmsg:
            o = i * CMSG_PKTINFO_SPACE
            self._ctl[o : o + CMSG_PKTINFO_SPACE] = cmsg
            self._ctl_slots[i] = cmsg

    @classmethod
    def _bases(cls, parts: list, keep: list) -> list:
        """Each part's address, in bulk (the common kinds in C: all bytes, or all
        writable buffers); a part that needs a copy is replaced by it in ``parts``."""
        if _BYTES_OFFSET >= 0 and set(map(type, parts)) == {bytes}:
            return list(map(_add, map(id, parts), repeat(_BYTES_OFFSET)))
        try:
            return list(map(_addressof, map(_char_from_buffer, parts)))
        except (TypeError, ValueError, BufferError):
            return cls._addresses(parts, keep)

    @staticmethod
    def _addresses(flat: list, keep: list) -> list:
        """Addresses of parts that are not all writable: bytes, read-only or empty views."""
        if _BYTES_OFFSET >= 0:
            try:
                return [
                    id(p) + _BYTES_OFFSET if type(p) is bytes else _addressof(_char_from_buffer(p))
                    for p in flat
                ]
            except (TypeError, ValueError, BufferError):
                pass
        bases = []
        for i, p in enumerate(flat):
            base, obj = _part_address(p)
            bases.append(base)
            if obj is not p:
                keep.append(obj)
                flat[i] = obj
        return bases

    def _send_one(self, sock: socket.socket, entry: tuple, errors: list) -> None:
        parts, addr, pktinfo = entry
        anc = [] if pktinfo is None else [(IPPROTO_IP, IP_PKTINFO, _pktinfo_data(pktinfo))]
        try:
            try:
                sock.sendmsg(parts, anc, 0, addr)
            except (BufferError, TypeError):  # e.g. a non-contiguous view: copy it
                sock.sendmsg([memoryview(p).tobytes() for p in parts], anc, 0, addr)
        except OSError as exc:
            errors.append((addr, exc))

    def _pktinfo(self, pktinfos: tuple) -> None:
        clens = []
        for i, pktinfo in enumerate(pktinfos):
            if pktinfo is None:
                clens.append(0)
            else:
                self._pktinfo_slot(i, pktinfo)
                clens.append(CMSG_PKTINFO_SPACE)
        self._v_clen[: len(clens)] = array.array(_SIZE_FMT, clens)
        self._clen_dirty = True

    def _send_batch(self, sock: socket.socket, queue: list, errors: list) -> None:
        n = len(queue)
        if n == 1:  # one datagram: the socket's own sendmsg costs less than setting up
            self._send_one(sock, queue[0], errors)
            return
        # what must stay alive until sent: the parts (and copies of odd ones)
        keep = self._fill(queue) if n > FEW else self._fill_few(queue)  # noqa: F841
        self._send_filled(sock.fileno(), n, lambda i: queue[i][1], errors)

    def _send_filled(self, fd: int, n: int, addr_of: Any, errors: list) -> None:
        """sendmmsg the first n datagrams of the arrays; addr_of(i): datagram i's address."""
        ptrs = self._ptrs
        send = self._sendmmsg
        start = 0
        while start < n:
            sent = send(fd, ptrs[start], n - start, 0)
            if sent > 0:
                start += sent
                continue
            err = ctypes.get_errno() if sent < 0 else errno.EIO
            if err == errno.EINTR:
                continue
            # sendmmsg stopped at this datagram: record it, go on with the rest
            errors.append((addr_of(start), OSError(err, os.strerror(err))))
            start += 1

    def send_fans(
        self, sock: socket.socket, fans: list, dests: Any, names: array.array
    ) -> list[tuple[Any, OSError]]:
        errors = self.flush(sock)
        k = len(dests)
        if not fans or not k:
            return errors
        self._check_fans(fans, k)
        if len(names) != k:
            raise ValueError(f"{len(names)} names for {k} destinations")
        if k * len(fans) <= FEW:  # a few (a branch's broadcast to its hub): as add() would
            queue = [
                ((header, tag, payload), addr, None)
                for header, tags, payload in fans
                for tag, addr in zip(tags, dests)
            ]
            self._send_batch(sock, queue, errors)
            return errors
        # iovecs, six words a datagram: header, tag and payload (address, length); the
        # addresses in bulk, a broadcast's header and payload repeated for its k tags
        headers, tag_lists, payloads = (list(column) for column in zip(*fans))
        tags = list(chain.from_iterable(tag_lists))
        keep = [headers, payloads, tags]  # what must stay alive until sent (and copies)
        head_bases = self._bases(headers, keep)
        body_bases = self._bases(payloads, keep)

        def each(values: Any) -> Any:
            return values if k == 1 else chain.from_iterable(map(repeat, values, repeat(k)))

        pairs = [0] * (6 * k * len(fans))
        pairs[0::6] = each(head_bases)
        pairs[1::6] = each(map(len, headers))
        pairs[2::6] = self._bases(tags, keep)
        pairs[3::6] = map(len, tags)
        pairs[4::6] = each(body_bases)
        pairs[5::6] = each(map(len, payloads))
        words = array.array(_SIZE_FMT, pairs)
        every_name = names * len(fans)
        if self._clen_dirty:
            self._v_clen[:] = self._zeros
            self._clen_dirty = False
        self._v_iov[:] = self._triple_iov
        self._v_iovlen[:] = self._threes
        self._multi = True
        fd = sock.fileno()
        total = k * len(fans)
        start = 0
        while start < total:
            m = min(self.batch, total - start)
            self._iq[: 6 * m] = words[6 * start : 6 * (start + m)]
            self._v_name[:m] = every_name[start : start + m]
            self._send_filled(fd, m, lambda i, first=start: dests[(first + i) % k], errors)
            start += m
        del keep
        return errors


class PySender(_SenderBase):
    """The same interface with one sendmsg call per datagram."""

    __slots__ = ("_anc_cache",)

    def __init__(self, batch: int = 64, sock: Optional[socket.socket] = None):
        super().__init__(batch, sock)
        self._anc_cache: dict[Any, list] = {}

    def add(self, parts: Any, addr: tuple[str, int], pktinfo: Optional[tuple] = None) -> None:
        queue = self._queue
        if len(queue) >= self.batch:
            self._full()
        if pktinfo is None:
            anc: list = []
        else:
            anc = self._anc_cache.get(pktinfo)  # type: ignore[assignment]
            if anc is None:
                if len(self._anc_cache) >= CACHE_MAX:
                    self._anc_cache.clear()
                anc = self._anc_cache[pktinfo] = [(IPPROTO_IP, IP_PKTINFO, _pktinfo_data(pktinfo))]
        queue.append((parts, addr, anc))
        if len(queue) >= self.batch and self.sock is not None:
            self._full()

    def send_fans(
        self, sock: socket.socket, fans: list, dests: Any, names: array.array
    ) -> list[tuple[Any, OSError]]:
        errors = self.flush(sock)
        self._check_fans(fans, len(dests))
        queue = [
            ((header, tag, payload), addr, [])
            for header, tags, payload in fans
            for tag, addr in zip(tags, dests)
        ]
        self._send_batch(sock, queue, errors)
        return errors

    def _send_batch(self, sock: socket.socket, queue: list, errors: list) -> None:
        sendmsg = sock.sendmsg
        for parts, addr, anc in queue:
            try:
                try:
                    sendmsg(parts, anc, 0, addr)
                except (BufferError, TypeError):  # e.g. a non-contiguous view: copy it
                    sendmsg([memoryview(p).tobytes() for p in parts], anc, 0, addr)
            except OSError as exc:
                errors.append((addr, exc))


BACKEND = "mmsg" if _libc is not None else "python"
Receiver: Any = MmsgReceiver if _libc is not None else PyReceiver
Sender: Any = MmsgSender if _libc is not None else PySender
BACKENDS = {"mmsg": (MmsgReceiver, MmsgSender), "python": (PyReceiver, PySender)}
