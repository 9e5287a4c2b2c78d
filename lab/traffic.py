"""Test traffic, run inside a lab LAN host namespace (Molecule verifier, make demo).

  traffic.py tcp-server PORT MODE       MODE=sink: read all, report peer + sha256
                                        MODE=source:BYTES: send BYTES, report peer + sha256
  traffic.py tcp-client HOST PORT MODE  MODE=source:BYTES or sink (the other end)
  traffic.py udp-listen PORT SECONDS [--token T]... [--count N]
                                        report every datagram (source, sha256, size);
                                        with --token: which tokens each payload holds
                                        and "seen" {T: datagrams}; --count N: stop
                                        after N datagrams
  traffic.py udp-send DEST PORT COUNT SIZE [BIG]
                                        COUNT broadcasts of SIZE bytes, then one of BIG

A stream, for as long as a change takes (both stop on SIGTERM, then report):

  traffic.py stream-send DEST PORT INTERVAL
                                        numbered datagrams "sitelink-stream N", one
                                        every INTERVAL seconds: {"sent": N}
  traffic.py stream-receive PORT        counts them: {"sent_seen": highest N + 1,
                                        "received", "missing": [N...], "duplicates"}
  traffic.py ping DEST INTERVAL         pings: {"sent", "answered", "lost": [seq...],
                                        "unanswered_at_stop", "gaps"}: lost, those before
                                        the last answered; the ones after it (1 is in
                                        flight); gaps, each run of lost ones: {"after_seq",
                                        "resumed_seq", "last_answer_at", "resumed_at"}
                                        (Unix times the replies arrived, ping -D)

Forging, from a "stranger" namespace (raw socket, IP_HDRINCL, needs CAP_NET_RAW):

  traffic.py forge-udp SRC DST PORT COUNT [options]
                                        COUNT UDP datagrams SRC:SPORT -> DST:PORT, SRC forged
  traffic.py forge-ipip OUTER_SRC OUTER_DST INNER_SRC INNER_DST PORT COUNT [options]
                                        COUNT IPv4-in-IPv4 (protocol 4) packets, outer
                                        source forged, inner UDP INNER_SRC -> INNER_DST:PORT
      options: --token T (default: random "sitelink-forge-<hex>"), --size N (UDP payload
               bytes, token first, random after; default 64), --sport N (default 40000),
               --df (set Don't Fragment), --interval S (default 0.01)
      result:  {"sent": COUNT, "token": T, "marker": hex(T), "packet_bytes": outer size}
               Routing is by destination: an off-link DST needs a route in the sender.

Capture, in the lab (router) namespace, on a segment's bridge:

  traffic.py capture IFACE SECONDS [--host A]... [--marker HEX]...
      An AF_PACKET socket on IFACE, in promiscuous mode so that frames bridged between
      two ports are seen too. Prints {"ready": true}, captures SECONDS (or until
      SIGTERM/SIGINT), then one summary. No frame is kept. Counted IPv4 packets:
      all, or with one --host those from or to it, with several --host those whose
      source and destination are both listed. Summary:
        frames             every frame seen on IFACE
        ipv4               counted IPv4 packets
        protocols          {"<IP protocol>": n}: 1 icmp, 4 ipip, 6 tcp, 17 udp, 50 esp
        udp_ports          {"<destination port>": n} (500/4500: IKE), first fragments only
        tcp_payload_bytes  TCP payload bytes in counted packets
        ipip_inner         {"<inner protocol>": n} of counted protocol-4 packets
        markers            {"<hex>": frames holding it}, searched in EVERY frame,
                           whatever --host says (a negative is then the stronger proof)
        marker_seen, marker_frames  any marker seen; in how many frames
        kernel_drops       frames the kernel dropped (socket buffer full): if non-zero,
                           a negative result proves nothing
      Frames are skbs: with GSO/GRO one "frame" may carry several wire packets.
      A marker split across two frames (e.g. IP fragments) is not found.

Every result is one JSON line on stdout. A server prints {"ready": true} first.
Payloads are random, so nothing can match by accident.
"""

import argparse
import ctypes
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import time

CHUNK = 65536


def emit(**fields):
    print(json.dumps(fields), flush=True)


def transfer(conn, mode):
    digest = hashlib.sha256()
    total = 0
    if mode == "sink":
        while True:
            data = conn.recv(CHUNK)
            if not data:
                break
            digest.update(data)
            total += len(data)
    else:
        remaining = int(mode.split(":", 1)[1])
        while remaining:
            data = os.urandom(min(CHUNK, remaining))
            conn.sendall(data)
            digest.update(data)
            total += len(data)
            remaining -= len(data)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # wait for the peer to close: everything was read
    return {"bytes": total, "sha256": digest.hexdigest()}


def tcp_server(port, mode):
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", int(port)))  # noqa: S104 - inside a lab namespace
        server.listen(1)
        server.settimeout(60)
        emit(ready=True)
        conn, peer = server.accept()
        with conn:
            conn.settimeout(120)
            emit(peer=peer[0], **transfer(conn, mode))


def tcp_client(host, port, mode):
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.settimeout(120)
        emit(local=conn.getsockname()[0], **transfer(conn, mode))


def _until(sock, seconds, receive):
    """What ``receive()`` returns, over and over, until ``seconds`` have passed."""
    deadline = time.monotonic() + float(seconds)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        sock.settimeout(left)
        try:
            yield receive()
        except socket.timeout:
            return


def udp_listen(port, seconds, tokens=(), count=0):
    tokens = list(tokens)
    seen = {token: 0 for token in tokens}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("", int(port)))
        emit(ready=True)
        got = []
        for data, source in _until(sock, seconds, lambda: sock.recvfrom(65535)):
            entry = {"source": source[0], "size": len(data), "sha256": _sha(data)}
            if tokens:
                entry["tokens"] = [token for token in tokens if token.encode() in data]
                for token in entry["tokens"]:
                    seen[token] += 1
            got.append(entry)
            if count and len(got) >= int(count):
                break
        if tokens:
            emit(datagrams=got, seen=seen)
        else:
            emit(datagrams=got)


def udp_send(dest, port, count, size, big=0):
    sent = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sizes = [int(size)] * int(count) + ([int(big)] if int(big) else [])
        for index, length in enumerate(sizes):
            data = (f"sitelink {index} ".encode() + os.urandom(length))[:length]
            sock.sendto(data, (dest, int(port)))
            sent.append({"size": len(data), "sha256": _sha(data)})
            time.sleep(0.02)  # a realistic pace: an application, not a flood
    emit(sent=sent)


class _Stop(Exception):
    pass


def _stop_on_term():
    def stop(signum, frame):
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def stream_send(dest, port, interval):
    _stop_on_term()
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        emit(ready=True)
        try:
            while True:
                sock.sendto(f"sitelink-stream {sent}".encode(), (dest, int(port)))
                sent += 1
                time.sleep(float(interval))
        except _Stop:
            pass
    emit(sent=sent)


def stream_receive(port):
    _stop_on_term()
    counts = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("", int(port)))
        emit(ready=True)
        try:
            while True:
                data = sock.recv(65535)
                if data.startswith(b"sitelink-stream "):
                    number = int(data.split()[1])
                    counts[number] = counts.get(number, 0) + 1
        except _Stop:
            pass
    top = max(counts, default=-1) + 1
    emit(
        sent_seen=top,
        received=sum(counts.values()),
        missing=[n for n in range(top) if n not in counts],
        duplicates=sum(c - 1 for c in counts.values()),
    )


def _die_with_parent():
    """In a child, before exec: SIGKILL when its parent dies (prctl PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def ping(dest, interval):
    """ICMP echo through the kernel's ping (unprivileged datagram socket not assumed):
    every reply's sequence number, read from ping's own lines."""
    proc = subprocess.Popen(
        ["ping", "-n", "-D", "-i", str(interval), dest],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent,  # a killed traffic.py leaves no ping running
    )
    _stop_on_term()
    answered, sent = {}, [0]  # answered: {seq: Unix time the reply arrived}

    def read(line):
        reply = re.search(r"^\[(\d+\.\d+)\] .* bytes from .*icmp_seq=(\d+) ", line)
        if reply:
            answered.setdefault(int(reply.group(2)), float(reply.group(1)))
        summary = re.match(r"(\d+) packets transmitted", line)
        if summary:
            sent[0] = int(summary.group(1))

    emit(ready=True)
    try:
        for line in proc.stdout:
            read(line)
    except _Stop:
        pass
    proc.send_signal(signal.SIGINT)  # ping's summary: how many it sent
    for line in proc.stdout:
        read(line)
    proc.wait()
    sent = sent[0]
    top = max(answered, default=0)
    order = sorted(answered)
    emit(
        sent=sent,
        answered=len(answered),
        lost=[n for n in range(1, top + 1) if n not in answered],
        unanswered_at_stop=max(0, sent - top),
        # An outage, as the LAN host saw it: the last reply before, the first after.
        gaps=[
            {
                "after_seq": before,
                "resumed_seq": after,
                "last_answer_at": answered[before],
                "resumed_at": answered[after],
            }
            for before, after in zip(order, order[1:])
            if after > before + 1
        ],
    )


def _sha(data):
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- forging

IPPROTO_IPIP = 4
IPPROTO_UDP = 17


def checksum(data):
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(src, dst, proto, payload, df=False, ttl=64, ident=None):
    """An IPv4 header (no options, checksum filled in) followed by payload."""
    if ident is None:
        ident = secrets.randbits(16)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        ident,
        0x4000 if df else 0,
        ttl,
        proto,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + payload


def udp_datagram(src, dst, sport, dport, payload):
    """A UDP header with its checksum over the IPv4 pseudo-header, followed by payload."""
    length = 8 + len(payload)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 17, length)
    header = struct.pack("!HHHH", sport, dport, length, 0)
    # A computed 0 is sent as 0xFFFF: 0 on the wire means "no checksum".
    csum = checksum(pseudo + header + payload) or 0xFFFF
    return header[:6] + struct.pack("!H", csum) + payload


def _forge_payload(token, size):
    data = token.encode() + b" " + os.urandom(max(0, size))
    return data[: max(size, len(token))]


def _send_raw(dest, packets, interval):
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
        # IPPROTO_RAW implies IP_HDRINCL; set it anyway, to say what is meant.
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        for packet in packets:
            sock.sendto(packet, (dest, 0))
            sent += 1
            time.sleep(interval)
    return sent


def _forge_options(argv, positional):
    parser = argparse.ArgumentParser(prog=positional[0])
    for name in positional[1:]:
        parser.add_argument(name)
    parser.add_argument("--token", default=None)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sport", type=int, default=40000)
    parser.add_argument("--df", action="store_true")
    parser.add_argument("--interval", type=float, default=0.01)
    args = parser.parse_args(argv)
    if args.token is None:
        args.token = "sitelink-forge-" + secrets.token_hex(8)
    return args


def forge_udp(argv):
    a = _forge_options(argv, ["forge-udp", "src", "dst", "port", "count"])
    packets = []
    for _unused in range(int(a.count)):
        udp = udp_datagram(a.src, a.dst, a.sport, int(a.port), _forge_payload(a.token, a.size))
        packets.append(ipv4_packet(a.src, a.dst, IPPROTO_UDP, udp, df=a.df))
    sent = _send_raw(a.dst, packets, a.interval)
    size = len(packets[0]) if packets else 0
    emit(sent=sent, token=a.token, marker=a.token.encode().hex(), packet_bytes=size)


def forge_ipip(argv):
    a = _forge_options(
        argv,
        ["forge-ipip", "outer_src", "outer_dst", "inner_src", "inner_dst", "port", "count"],
    )
    packets = []
    for _unused in range(int(a.count)):
        payload = _forge_payload(a.token, a.size)
        udp = udp_datagram(a.inner_src, a.inner_dst, a.sport, int(a.port), payload)
        inner = ipv4_packet(a.inner_src, a.inner_dst, IPPROTO_UDP, udp)
        packets.append(ipv4_packet(a.outer_src, a.outer_dst, IPPROTO_IPIP, inner, df=a.df))
    sent = _send_raw(a.outer_dst, packets, a.interval)
    size = len(packets[0]) if packets else 0
    emit(sent=sent, token=a.token, marker=a.token.encode().hex(), packet_bytes=size)


# --------------------------------------------------------------------------- capture

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_STATISTICS = 6
FRAME_BUFFER = 1 << 18  # larger than any GSO skb


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop


def _counted(hosts, src, dst):
    if not hosts:
        return True
    if len(hosts) == 1:
        return src in hosts or dst in hosts
    return src in hosts and dst in hosts


def capture(argv):
    parser = argparse.ArgumentParser(prog="capture")
    parser.add_argument("iface")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--host", action="append", default=[])
    parser.add_argument("--marker", action="append", default=[])
    a = parser.parse_args(argv)
    hosts = {socket.inet_aton(h) for h in a.host}
    markers = [(m.lower(), bytes.fromhex(m)) for m in a.marker]

    frames = ipv4 = tcp_payload = marker_frames = 0
    protocols, udp_ports, ipip_inner = {}, {}, {}
    marker_counts = {hexed: 0 for hexed, _unused in markers}
    buf = bytearray(FRAME_BUFFER)

    # Protocol 0 until bound: the socket must not see other interfaces' frames.
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 23)
        sock.bind((a.iface, ETH_P_ALL))
        # Promiscuous: a bridge passes frames forwarded between its ports up to its
        # own device (and so to this socket) only while the device is promiscuous.
        # The membership ends when the socket closes.
        mreq = struct.pack("iHH8s", socket.if_nametoindex(a.iface), PACKET_MR_PROMISC, 0, b"")
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)  # reset the counters
        try:
            signal.signal(signal.SIGTERM, _raise_stop)
            signal.signal(signal.SIGINT, _raise_stop)
            emit(ready=True)
            for n in _until(sock, a.seconds, lambda: sock.recv_into(buf)):
                frames += 1
                hit = False
                for hexed, marker in markers:
                    if buf.find(marker, 0, n) >= 0:
                        marker_counts[hexed] += 1
                        hit = True
                marker_frames += hit
                if n < 34 or buf[12] != 0x08 or buf[13] != 0x00 or buf[14] >> 4 != 4:
                    continue
                ihl = (buf[14] & 0x0F) * 4
                total = (buf[16] << 8) | buf[17]
                first = ((buf[20] & 0x1F) << 8 | buf[21]) == 0
                proto = buf[23]
                if not _counted(hosts, bytes(buf[26:30]), bytes(buf[30:34])):
                    continue
                ipv4 += 1
                protocols[str(proto)] = protocols.get(str(proto), 0) + 1
                l4 = 14 + ihl
                if proto == IPPROTO_UDP and first and n >= l4 + 4:
                    port = str((buf[l4 + 2] << 8) | buf[l4 + 3])
                    udp_ports[port] = udp_ports.get(port, 0) + 1
                elif proto == 6 and first and n >= l4 + 13:
                    tcp_payload += max(0, total - ihl - (buf[l4 + 12] >> 4) * 4)
                elif proto == IPPROTO_IPIP and first and n >= l4 + 10:
                    inner = str(buf[l4 + 9])
                    ipip_inner[inner] = ipip_inner.get(inner, 0) + 1
        except _Stop:
            pass
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _unused, drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    emit(
        iface=a.iface,
        seconds=a.seconds,
        hosts=a.host,
        frames=frames,
        ipv4=ipv4,
        protocols=protocols,
        udp_ports=udp_ports,
        tcp_payload_bytes=tcp_payload,
        ipip_inner=ipip_inner,
        markers=marker_counts,
        marker_seen=marker_frames > 0,
        marker_frames=marker_frames,
        kernel_drops=drops,
    )


def _udp_listen(argv):
    parser = argparse.ArgumentParser(prog="udp-listen")
    parser.add_argument("port")
    parser.add_argument("seconds")
    parser.add_argument("--token", action="append", default=[])
    parser.add_argument("--count", type=int, default=0)
    a = parser.parse_args(argv)
    udp_listen(a.port, a.seconds, tokens=a.token, count=a.count)


if __name__ == "__main__":
    positional = {
        "tcp-server": tcp_server,
        "tcp-client": tcp_client,
        "udp-send": udp_send,
        "stream-send": stream_send,
        "stream-receive": stream_receive,
        "ping": ping,
    }
    with_options = {
        "udp-listen": _udp_listen,
        "forge-udp": forge_udp,
        "forge-ipip": forge_ipip,
        "capture": capture,
    }
    if sys.argv[1] in with_options:
        with_options[sys.argv[1]](sys.argv[2:])
    else:
        positional[sys.argv[1]](*sys.argv[2:])
