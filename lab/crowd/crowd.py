"""The crowd: many simulated branch gateways in one lab VM (lab/scale.py, `make scale`).

Each simulated branch speaks the wire a real branch gateway speaks to its hub, from
its own public address: IKEv2 with its link's key, ESP in transport mode around an
IPIP tunnel, a LAN address that answers through that tunnel, and a relay receiver
that checks each datagram's sitelink1 envelope with its link's key and counts it
once per branch. It is lab code, configured by one JSON file that lab/scale.py makes
from the planner's own output (plan_network, gateway_secrets, ipsec.render):

  crowd.py setup CONFIG      addresses, tunnels, policy routing, swanctl, receiver
  crowd.py tally             the receiver's counts so far (JSON)
  crowd.py offline CONFIG NAME...  take simulated branches off the network: close
                             their IKE_SAs, then remove their public addresses
  crowd.py receive CONFIG    the receiver itself (run by `setup` as a systemd unit)

and, for LAN hosts of the lab (network namespaces on the controller):

  crowd.py send DEST PORT TEST COUNT RATE   COUNT datagrams "sitelink-scale TEST K",
                             RATE per second, from one socket; prints {"sent": COUNT}
  crowd.py listen PORT SECONDS   counts those datagrams (a real branch's LAN host)

Standard library only, Python 3.9+ (Debian 11's): it runs inside the lab VM. The
counting (``Tally``) is pure, so that a test feeds it envelopes made by the relay's
own wire code (tests/integration/test_crowd.py): a wrong key is a failure, a
branch that got nothing is named.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Any, Optional

# The sitelink1 envelope (relay/sitelink_relay/wire.py), read independently here:
# 24 header bytes (magic, version, kind, origin office id, sender, epoch, sequence,
# group), a 16-byte HMAC-SHA256 tag over the header and the payload, the payload.
HEADER = struct.Struct("!2sBB4s4sII4s")
TAG_SIZE = 16
OVERHEAD = HEADER.size + TAG_SIZE
MAGIC = b"SL"
VERSION = 1
PAYLOAD_PREFIX = b"sitelink-scale "
TALLY_FILE = "/run/crowd/tally.json"
TALLY_STALE = 10.0  # s: the longest the tally file lags while datagrams keep coming
RECEIVE_BUFFER = 16 << 20  # bytes per relay port socket (also the crowd's rmem_max)
SWANCTL_FILE = "/etc/swanctl/conf.d/crowd.conf"
# One charon answers for every simulated branch, but each real branch would count
# its half-open IKE_SAs alone: one from its hub at a time. charon's DoS limits are
# per daemon (cookies beyond 10 half-open, and at most 5 half-open per peer address,
# the hub's): left at their defaults, a hub that initiates all its links at once is
# refused by the crowd as no real branch would refuse it.
CHARON_FILE = "/etc/strongswan.d/crowd.conf"
CHARON_LIMITS = "".join(
    f"{daemon} {{\n  cookie_threshold = 1000000\n  block_threshold = 1000000\n}}\n"
    for daemon in ("charon", "charon-systemd")  # the latter falls back to the former
)
RECEIVER_UNIT = "crowd-receiver"
DUMMY = "crowdlan"
TABLE_BASE = 1000  # branch i's replies leave by its own tunnel: table TABLE_BASE + i


def test_payload(test: str, k: int) -> bytes:
    return PAYLOAD_PREFIX + f"{test} {k}".encode()


def parse_payload(payload: bytes) -> Optional[tuple[str, int]]:
    """("TEST", K) of a test datagram's payload, None for anything else."""
    if not payload.startswith(PAYLOAD_PREFIX):
        return None
    try:
        test, k = bytes(payload[len(PAYLOAD_PREFIX) :]).decode("ascii").split(" ")
        return test, int(k)
    except (UnicodeDecodeError, ValueError):
        return None


def tag(key: bytes, header: bytes, payload: bytes) -> bytes:
    return hmac.new(key, header + payload, hashlib.sha256).digest()[:TAG_SIZE]


class Tally:
    """What each simulated branch received, by its LAN address (the datagram's
    destination): test datagrams by test and number (each counted once, a second
    copy is a duplicate), and every failure: a tag that its link's key does not
    verify (``auth``), not an envelope (``malformed``), an origin other than the
    hub's (``origin``), a destination that is no branch of ours (``unknown``)."""

    def __init__(self, keys: dict[str, bytes], names: dict[str, str], origin: bytes):
        self.keys = keys  # branch LAN address -> its link's relay key
        self.names = names  # branch LAN address -> office name
        self.origin = origin  # the hub office's id on the wire
        self.seen: dict[str, dict[str, dict[int, int]]] = {a: {} for a in keys}
        self.failures: dict[str, dict[str, int]] = {a: {} for a in keys}
        self.unknown = 0
        self.other = 0

    def _fail(self, dst: str, why: str) -> str:
        self.failures[dst][why] = self.failures[dst].get(why, 0) + 1
        return why

    def feed(self, dst: str, datagram: bytes) -> str:
        """Count one datagram that arrived for ``dst``; what it was: "ok",
        "duplicate", "other" (an envelope that verifies, not a test datagram), or a
        failure ("auth", "malformed", "origin", "unknown")."""
        key = self.keys.get(dst)
        if key is None:
            self.unknown += 1
            return "unknown"
        if len(datagram) < OVERHEAD:
            return self._fail(dst, "malformed")
        header, mac, payload = (
            datagram[: HEADER.size],
            datagram[HEADER.size : OVERHEAD],
            datagram[OVERHEAD:],
        )
        magic, version, _kind, origin, _sender, _epoch, _seq, _group = HEADER.unpack(header)
        if magic != MAGIC or version != VERSION:
            return self._fail(dst, "malformed")
        if not hmac.compare_digest(tag(key, header, payload), mac):
            return self._fail(dst, "auth")
        if origin != self.origin:
            return self._fail(dst, "origin")
        found = parse_payload(payload)
        if found is None:
            self.other += 1
            return "other"
        test, k = found
        counts = self.seen[dst].setdefault(test, {})
        counts[k] = counts.get(k, 0) + 1
        return "ok" if counts[k] == 1 else "duplicate"

    def report(self, test: Optional[str] = None, expected: int = 0) -> dict[str, Any]:
        """Per branch (office name): datagrams of ``test`` received (each once),
        duplicates, missing ones (of ``expected``, numbered 0..expected-1), and its
        failures; ``silent``: the branches that received none of them."""
        branches = {}
        for dst, name in sorted(self.names.items(), key=lambda kv: kv[1]):
            counts = self.seen[dst].get(test, {}) if test is not None else {}
            received = len(counts)
            branches[name] = {
                "received": received,
                "duplicates": sum(c - 1 for c in counts.values()),
                "missing": max(0, expected - len([k for k in counts if 0 <= k < expected])),
                "failures": dict(self.failures[dst]),
            }
        return {
            "test": test,
            "expected": expected,
            "branches": branches,
            "silent": [n for n, b in branches.items() if b["received"] == 0],
            "auth_failures": sum(b["failures"].get("auth", 0) for b in branches.values()),
            "failures": sum(sum(b["failures"].values()) for b in branches.values()),
            "unknown": self.unknown,
            "other": self.other,
        }

    def dump(self) -> dict[str, Any]:
        return {
            "seen": {
                self.names[d]: {t: {str(k): c for k, c in ks.items()} for t, ks in tests.items()}
                for d, tests in self.seen.items()
                if tests
            },
            "failures": {self.names[d]: f for d, f in self.failures.items() if f},
            "unknown": self.unknown,
            "other": self.other,
        }

    @classmethod
    def load(cls, data: dict[str, Any], branches: list[dict[str, Any]]) -> Tally:
        """A tally from ``dump()`` output, for ``report`` on the controller (no keys)."""
        names = {b["lan"]: b["name"] for b in branches}
        tally = cls(dict.fromkeys(names, b""), names, b"")
        by_name = {n: a for a, n in names.items()}
        for name, tests in data.get("seen", {}).items():
            tally.seen[by_name[name]] = {
                t: {int(k): c for k, c in ks.items()} for t, ks in tests.items()
            }
        for name, failures in data.get("failures", {}).items():
            tally.failures[by_name[name]] = dict(failures)
        tally.unknown, tally.other = data.get("unknown", 0), data.get("other", 0)
        return tally


# ----------------------------------------------------------------------------- VM side


def sh(argv: list[str], input: Optional[str] = None, check: bool = True) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        sys.exit(f"{' '.join(argv[:4])}: failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def load_config(path: str) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def setup(config: dict[str, Any], path: str) -> None:
    """Addresses, tunnels, policy routing, then IKE, then the receiver: one call."""
    wan = config["wan_interface"]
    for name, value in (
        # The tunnels share one route to the hub's LAN: replies choose their tunnel
        # by source (the rules below), and no reverse-path check may drop what
        # arrives by the others.
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
        (f"net.ipv4.conf.{wan}.rp_filter", "0"),
        # Removing one branch's public address (offline) must not remove the others.
        (f"net.ipv4.conf.{wan}.promote_secondaries", "1"),
        # The receiver's buffer (RECEIVE_BUFFER): the default cap, 208 KiB, is a fifth
        # of a second of a 200-branch hub's broadcasts at 10/s on this one TCG CPU.
        ("net.core.rmem_max", str(RECEIVE_BUFFER)),
    ):
        sh(["sysctl", "-qw", f"{name}={value}"])
    sh(["modprobe", "-a", "ipip", "dummy", "esp4", "xfrm_user"], check=False)
    batch = [f"link add {DUMMY} type dummy", f"link set {DUMMY} up"]
    for i, b in enumerate(config["branches"]):
        table = TABLE_BASE + i
        batch += [
            f"addr add {b['wan']}/{config['wan_prefix']} dev {wan}",
            f"addr add {b['lan']}/32 dev {DUMMY}",
            f"tunnel add {b['tunnel']} mode ipip local {b['wan']} remote {config['hub_wan']}",
            f"link set {b['tunnel']} mtu {config['tunnel_mtu']} up",
            f"route add default dev {b['tunnel']} table {table}",
            f"rule add from {b['lan']} lookup {table} pref {table}",
        ]
    sh(["ip", "-batch", "-"], input="\n".join(batch) + "\n")
    os.umask(0o077)
    with open(SWANCTL_FILE, "w") as fh:
        fh.write(config["swanctl"])
    with open(CHARON_FILE, "w") as fh:
        fh.write(CHARON_LIMITS)
    sh(["systemctl", "restart", "strongswan.service"])
    # charon-systemd's unit loads the files after start; again, to see the count.
    for _attempt in range(30):
        if sh(["swanctl", "--load-all", "--noprompt"], check=False):
            break
        time.sleep(1)
    loaded = sh(["swanctl", "--list-conns"]).count(": IKEv2")
    sh(
        [
            "systemd-run",
            f"--unit={RECEIVER_UNIT}",
            "--property=RuntimeDirectory=crowd",
            "--property=RuntimeDirectoryPreserve=yes",
            sys.executable,
            os.path.abspath(__file__),
            "receive",
            path,
        ]
    )
    print(json.dumps({"branches": len(config["branches"]), "connections": loaded}))


def receive(config: dict[str, Any]) -> None:
    """Count every datagram to a branch's relay port. The tally file is written once
    nothing has arrived for half a second (at most TALLY_STALE s old while traffic
    goes on): writing it takes long enough on this VM to overflow the socket."""
    names = {b["lan"]: b["name"] for b in config["branches"]}
    keys = {b["lan"]: bytes.fromhex(b["relay_key"]) for b in config["branches"]}
    tally = Tally(keys, names, bytes.fromhex(config["hub_office_id"]))
    pktinfo = getattr(socket, "IP_PKTINFO", 8)
    sel = selectors.DefaultSelector()
    for port in config["relay_ports"]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_IP, pktinfo, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        s.bind(("", port))  # every branch LAN address of the crowd
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    written, changed = 0.0, True
    while not stop:
        events = sel.select(0.5)
        for ready, _events in events:
            while True:
                try:
                    data, anc, _flags, _addr = ready.fileobj.recvmsg(65535, 256)
                except BlockingIOError:
                    break
                dst = next((socket.inet_ntoa(d[8:12]) for _l, t, d in anc if t == pktinfo), "")
                tally.feed(dst, data)
                changed = True
        now = time.monotonic()
        if changed and (not events or now - written >= TALLY_STALE):
            tmp = TALLY_FILE + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(tally.dump(), fh)
            os.replace(tmp, TALLY_FILE)
            written, changed = now, False


def offline(config: dict[str, Any], names: list[str]) -> None:
    """Branches gone from the network: IKE_SAs closed (the hub hears of it), then
    their public addresses removed (nothing answers from there any more)."""
    by_name = {b["name"]: b for b in config["branches"]}
    for name in names:
        sh(["swanctl", "--terminate", "--ike", by_name[name]["tunnel"], "--force"], check=False)
    batch = [
        f"addr del {by_name[n]['wan']}/{config['wan_prefix']} dev {config['wan_interface']}"
        for n in names
    ]
    sh(["ip", "-batch", "-"], input="\n".join(batch) + "\n")
    print(json.dumps({"offline": len(names)}))


# ----------------------------------------------------------------------------- LAN hosts


def send(dest: str, port: int, test: str, count: int, rate: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    start = time.monotonic()
    for k in range(count):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s.sendto(test_payload(test, k), (dest, port))
    print(json.dumps({"sent": count, "seconds": round(time.monotonic() - start, 2)}))


def listen(port: int, seconds: float) -> None:
    """Test datagrams on a real branch's LAN (the relay took the envelope off):
    {test: {"received": distinct, "duplicates": n}}. Prints {"ready": true} first."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("", port))
    print(json.dumps({"ready": True}), flush=True)
    end = time.monotonic() + seconds
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    counts: dict[str, dict[int, int]] = {}
    while not stop and time.monotonic() < end:
        s.settimeout(max(0.01, min(0.5, end - time.monotonic())))
        try:
            data = s.recv(65535)
        except socket.timeout:
            continue
        found = parse_payload(data)
        if found:
            ks = counts.setdefault(found[0], {})
            ks[found[1]] = ks.get(found[1], 0) + 1
    print(
        json.dumps(
            {
                t: {"received": len(ks), "duplicates": sum(c - 1 for c in ks.values())}
                for t, ks in counts.items()
            }
        )
    )


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit(__doc__)
    action, args = argv[0], argv[1:]
    if action == "setup":
        setup(load_config(args[0]), args[0])
    elif action == "receive":
        receive(load_config(args[0]))
    elif action == "tally":
        try:
            with open(TALLY_FILE) as fh:
                sys.stdout.write(fh.read())
        except FileNotFoundError:
            print("{}")
    elif action == "offline":
        offline(load_config(args[0]), args[1:])
    elif action == "send":
        send(args[0], int(args[1]), args[2], int(args[3]), float(args[4]))
    elif action == "listen":
        listen(int(args[0]), float(args[1]))
    else:
        sys.exit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
