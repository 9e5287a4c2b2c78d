#!/usr/bin/env python3
"""Test traffic, run inside a lab LAN host namespace (Molecule verifier, make demo).

  traffic.py tcp-server PORT MODE       MODE=sink: read all, report peer + sha256
                                        MODE=source:BYTES: send BYTES, report peer + sha256
  traffic.py tcp-client HOST PORT MODE  MODE=source:BYTES or sink (the other end)
  traffic.py udp-listen PORT SECONDS    report every datagram (source, sha256, size)
  traffic.py udp-send DEST PORT COUNT SIZE [BIG]
                                        COUNT broadcasts of SIZE bytes, then one of BIG

Every result is one JSON line on stdout. A server prints {"ready": true} first.
Payloads are random, so nothing can match by accident.
"""

import hashlib
import json
import os
import socket
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


def udp_listen(port, seconds):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("", int(port)))
        emit(ready=True)
        deadline = time.monotonic() + float(seconds)
        got = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                data, source = sock.recvfrom(65535)
            except socket.timeout:
                break
            got.append({"source": source[0], "size": len(data), "sha256": _sha(data)})
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


def _sha(data):
    return hashlib.sha256(data).hexdigest()


if __name__ == "__main__":
    actions = {
        "tcp-server": tcp_server,
        "tcp-client": tcp_client,
        "udp-listen": udp_listen,
        "udp-send": udp_send,
    }
    actions[sys.argv[1]](*sys.argv[2:])
