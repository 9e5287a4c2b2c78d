"""The relays' namespace lab: namespaces, LAN hosts, "tunnels", relay processes.

Shared by the relay's integration tests.  Everything it creates carries a unique
suffix and is removed by ``Lab.teardown`` (namespaces by the names it made, relay
processes by PID).  Test traffic never leaves these namespaces.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

# The program as shipped; SITELINK_RELAY_PROGRAM tries another build of it.
RELAY = Path(
    os.environ.get("SITELINK_RELAY_PROGRAM")
    or Path(__file__).resolve().parents[2] / "roles" / "relay" / "files" / "sitelink-relay"
)
PYTHON = os.environ.get("SITELINK_RELAY_PYTHON") or (
    "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
)
PORT = 6799  # service mode relays
COMPAT_PORT = 6800  # compat mode relays (run alongside, on their own port)
NOBODY = 65534
CLONE_NEWNET = 0x40000000
TIMEOUT = 10.0  # upper bound of every wait
QUIET = 0.8  # after the expected datagrams arrived, wait this long for duplicates

APP, MON, WS, WS2, EVIL = (
    "192.168.1.10",
    "192.168.1.11",
    "192.168.2.20",
    "192.168.2.21",
    "10.99.0.2",
)
GW_A, GW_B = "192.168.1.126", "192.168.2.126"
BCAST_A, BCAST_B = "192.168.1.255", "192.168.2.255"
# hub topology: site -> (LAN host, gateway LAN address, LAN)
HUB_SITES = {
    "A": ("192.168.11.10", "192.168.11.126", "192.168.11.0/24"),
    "H": ("192.168.13.10", "192.168.13.126", "192.168.13.0/24"),
    "B": ("192.168.12.10", "192.168.12.126", "192.168.12.0/24"),
}
HUB_GW = {site: gw for site, (_unused, gw, _unused) in HUB_SITES.items()}
HUB_HOST = {site: host for site, (host, _unused, _unused) in HUB_SITES.items()}


# The authenticated-wire pair: gwA (manhattan) and gwB (brooklyn) across tun0.
OFFICE = {"gwA": "manhattan", "gwB": "brooklyn"}
PEER = {"gwA": GW_B, "gwB": GW_A}
LAN = {"gwA": f"{GW_A}/24", "gwB": f"{GW_B}/24"}


def wire_config(name, status_file, state_dir, keys_file, **extra):
    """Gateway `name`'s version 2 config on the authenticated wire, one rule on PORT
    (``extra`` replaces or adds keys, e.g. more rules)."""
    peer = PEER[name]
    other = "gwB" if name == "gwA" else "gwA"
    data = {
        "version": 2,
        "office": OFFICE[name],
        "lan": {"interface": "lan0", "address": LAN[name]},
        "wire": "sitelink1",
        "keys_file": keys_file,
        "state_dir": state_dir,
        "peers": {peer: {"office": OFFICE[other], "interface": "tun0"}},
        "rules": [{"port": PORT, "forward_to": [peer], "accept_from": [peer]}],
        "status_file": status_file,
    }
    data.update(extra)
    return data


def _prereqs():
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if sys.platform != "linux" or shutil.which("ip") is None:
        return "needs Linux with iproute2 (ip)"
    try:
        res = subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"ip netns unavailable: {exc}"
    if res.returncode != 0:
        return "ip netns unavailable: " + res.stderr.decode(errors="replace").strip()
    return None


# ----------------------------------------------------------------------------- lab


def run(*cmd, check=True):
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns, fn):
    """Run fn() in a thread that joined namespace ns; sockets it makes stay in ns."""
    box = {}

    def target():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    if "error" in box:
        raise box["error"]
    if "value" not in box:
        raise TimeoutError(f"in_netns({ns}) did not finish")
    return box["value"]


def udp_socket(ns, port=0):
    def make():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        s.bind(("0.0.0.0", port))  # noqa: S104 - inside a test namespace
        return s

    return in_netns(ns, make)


def collect(sock, expected=None, timeout=TIMEOUT, quiet=QUIET):
    """Datagrams (payload, src) until `expected` arrived (then `quiet` more) or timeout."""
    got = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    if expected == 0:
        quiet_until = time.monotonic() + quiet
    while True:
        now = time.monotonic()
        end = min(deadline, quiet_until) if quiet_until else deadline
        if now >= end:
            return got
        sock.settimeout(end - now)
        try:
            data, addr = sock.recvfrom(65535)
        except socket.timeout:
            continue
        got.append((data, addr[0]))
        if expected is not None and quiet_until is None and len(got) >= expected:
            quiet_until = time.monotonic() + quiet


def drain(*socks):
    for s in socks:
        s.setblocking(False)
        try:
            while True:
                s.recv(65535)
        except BlockingIOError:
            pass
        finally:
            s.setblocking(True)


class NotifyCollector:
    """The systemd side of sd_notify: one datagram socket per relay, read by a thread."""

    def __init__(self):
        self.messages = {}
        self.cond = threading.Condition()
        self.selector = selectors.DefaultSelector()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def add(self, name, path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        os.chmod(path, 0o666)  # noqa: S103 - the relay runs as nobody
        sock.setblocking(False)
        with self.cond:
            self.messages[name] = []
        self.selector.register(sock, selectors.EVENT_READ, name)

    def _loop(self):
        while not self.stop.is_set():
            for key, _unused in self.selector.select(0.2):
                try:
                    data = key.fileobj.recv(4096)
                except OSError:
                    continue
                with self.cond:
                    self.messages[key.data].append(data.decode())
                    self.cond.notify_all()

    def count(self, name, line):
        with self.cond:
            return sum(line in m.split("\n") for m in self.messages[name])

    def wait(self, name, line, count=1, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(line in m.split("\n") for m in self.messages[name]) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


class RelayProc:
    def __init__(self, lab, name, ns, args, status_path):
        self.lab, self.name, self.ns, self.status_path = lab, name, ns, status_path
        self.log_path = os.path.join(lab.workdir, f"{name}.log")
        notify = os.path.join(lab.workdir, f"{name}.notify")
        lab.notify.add(name, notify)
        env = dict(os.environ, NOTIFY_SOCKET=notify, WATCHDOG_USEC="1000000")
        env.pop("WATCHDOG_PID", None)
        env.pop("JOURNAL_STREAM", None)
        cmd = ["ip", "netns", "exec", ns]
        if lab.drop_privileges:
            cmd += [
                "setpriv",
                f"--reuid={NOBODY}",
                f"--regid={NOBODY}",
                "--clear-groups",
                "--inh-caps=-all",
            ]
        cmd += [PYTHON, str(RELAY), *args]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        lab.pids.append(self.proc.pid)
        lab.relays.append(self)
        if not lab.notify.wait(name, "READY=1"):
            raise AssertionError(f"{name} never sent READY=1:\n{self.log()}")

    def log(self):
        try:
            return Path(self.log_path).read_text()
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def status(self):
        """Ask for a fresh status file (SIGUSR1) and return it."""
        assert self.alive(), f"{self.name} died:\n{self.log()}"
        before = time.time()
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            try:
                data = json.loads(Path(self.status_path).read_text())
                if data.get("updated", 0) >= before:
                    return data
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no fresh status in {self.status_path}\n{self.log()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(TIMEOUT)
        return self.proc.returncode


class Lab:
    def __init__(self):
        self.suffix = f"{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.namespaces = []  # only names this lab created, in creation order
        self.pids = []  # every relay process this lab started
        self.relays = []
        self.workdir = tempfile.mkdtemp(prefix="sitelink-relay-it-")
        os.chmod(self.workdir, 0o755)  # noqa: S103 - readable by the relay (nobody)
        self.notify = NotifyCollector()
        self.drop_privileges = shutil.which("setpriv") is not None and not os.environ.get(
            "SITELINK_RELAY_AS_ROOT"
        )
        self.sockets = []

    def add_ns(self, role):
        name = f"slr{self.suffix}{role}"
        if os.path.exists(f"/run/netns/{name}"):
            raise RuntimeError(f"namespace {name} already exists; not touching it")
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def sock(self, ns, port=0):
        s = udp_socket(ns, port)
        self.sockets.append(s)
        return s

    def host_sockets(self, **ports):
        """Each LAN host's sockets: ``host`` listening on PORT, ``host_tx`` to send, and
        ``host_<name>`` listening on each of ``ports`` (name=port)."""
        h = {}
        for host in ("app", "mon", "ws", "ws2"):
            h[host] = self.sock(self.ns[host], PORT)
            h[host + "_tx"] = self.sock(self.ns[host])
            for name, port in ports.items():
                h[f"{host}_{name}"] = self.sock(self.ns[host], port)
        return h

    @staticmethod
    def add_gateway_lan(gw, lan_addr):
        """The gateway's LAN: a bridge lan0 carrying its LAN address/prefix."""
        run("ip", "-n", gw, "link", "add", "lan0", "type", "bridge")
        run("ip", "-n", gw, "addr", "add", lan_addr, "dev", "lan0")
        run("ip", "-n", gw, "link", "set", "lan0", "up")

    @staticmethod
    def add_lan_host(host, gw, port, addr, gwaddr):
        """A LAN host: eth0 in namespace host, its veth peer `port` on gw's lan0."""
        run("ip", "-n", host, "link", "add", "eth0", "type", "veth", "peer", "name", port,
            "netns", gw)  # fmt: skip
        run("ip", "-n", gw, "link", "set", port, "master", "lan0", "up")
        run("ip", "-n", host, "addr", "add", f"{addr}/24", "dev", "eth0")
        run("ip", "-n", host, "link", "set", "eth0", "up")
        run("ip", "-n", host, "route", "add", "default", "via", gwaddr)

    @staticmethod
    def add_tunnel(end1, end2):
        """The "tunnel": a routed link whose ends carry the LAN addresses as /32.

        Each end is (namespace, device, its gateway's LAN address, its LAN); each side
        routes the other side's LAN through the tunnel.
        """
        run("ip", "-n", end1[0], "link", "add", end1[1], "type", "veth", "peer", "name", end2[1],
            "netns", end2[0])  # fmt: skip
        for (gw, dev, own, _unused), (_unused, _unused, peer, other_lan) in (
            (end1, end2),
            (end2, end1),
        ):
            run("ip", "-n", gw, "addr", "add", f"{own}/32", "peer", f"{peer}/32", "dev", dev)
            run("ip", "-n", gw, "link", "set", dev, "up")
            run("ip", "-n", gw, "route", "add", other_lan, "via", peer, "dev", dev, "src", own)

    def build(self):
        ns = {r: self.add_ns(r) for r in ("app", "mon", "gwA", "gwB", "ws", "ws2", "evil")}
        self.ns = ns
        for gw, lan in (("gwA", f"{GW_A}/24"), ("gwB", f"{GW_B}/24")):
            self.add_gateway_lan(ns[gw], lan)
        for host, gw, addr, gwaddr in (
            ("app", "gwA", APP, GW_A),
            ("mon", "gwA", MON, GW_A),
            ("ws", "gwB", WS, GW_B),
            ("ws2", "gwB", WS2, GW_B),
        ):
            self.add_lan_host(ns[host], ns[gw], "p" + host, addr, gwaddr)
        self.add_tunnel(
            (ns["gwA"], "tun0", GW_A, "192.168.1.0/24"),
            (ns["gwB"], "tun0", GW_B, "192.168.2.0/24"),
        )
        # an outsider routed to gwB, not a configured peer
        run("ip", "-n", ns["evil"], "link", "add", "eth0", "type", "veth", "peer", "name", "ev0",
            "netns", ns["gwB"])  # fmt: skip
        run("ip", "-n", ns["gwB"], "addr", "add", "10.99.0.1/24", "dev", "ev0")
        run("ip", "-n", ns["gwB"], "link", "set", "ev0", "up")
        run("ip", "-n", ns["evil"], "addr", "add", f"{EVIL}/24", "dev", "eth0")
        run("ip", "-n", ns["evil"], "link", "set", "eth0", "up")
        run("ip", "-n", ns["evil"], "route", "add", "default", "via", "10.99.0.1")

    def build_hub(self):
        """Gateways hubA, hubH, hubB, each with one LAN host; tunnels A-H and H-B only."""
        ns = {}
        for site, (host, gw, _lan) in HUB_SITES.items():
            ns["gw" + site] = self.add_ns("hub" + site)
            ns["host" + site] = self.add_ns("host" + site)
            self.add_gateway_lan(ns["gw" + site], f"{gw}/24")
            self.add_lan_host(ns["host" + site], ns["gw" + site], "phost", host, gw)
        for site in ("A", "B"):
            self.add_tunnel(
                (ns["gw" + site], "tunH", HUB_GW[site], HUB_SITES[site][2]),
                (ns["gwH"], "tun" + site, HUB_GW["H"], HUB_SITES["H"][2]),
            )
        return ns

    def write(self, name, content, mode=0o644):
        path = os.path.join(self.workdir, name)
        with open(path, "w") as fh:
            fh.write(content)
        os.chmod(path, mode)
        return path

    def status_dir(self, name):
        path = os.path.join(self.workdir, name)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)  # noqa: S103 - the relay runs as nobody
        return path

    def teardown(self):
        for relay in self.relays:  # only processes this lab started, by pid
            if relay.proc.poll() is None:
                relay.stop()
        for s in self.sockets:
            s.close()
        self.notify.close()
        for name in reversed(self.namespaces):  # only namespaces this lab created
            run("ip", "netns", "del", name, check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)


def lab_for_module():
    """Build the lab, hand it out, tear it down and check nothing is left: a fixture's body.

    Each test module wraps it in its own module-scoped ``lab`` fixture.
    """
    reason = _prereqs()
    if reason:
        pytest.skip(reason)
    lab = Lab()
    try:
        lab.build()
        yield lab
    finally:
        lab.teardown()
        leftovers = [n for n in lab.namespaces if os.path.exists(f"/run/netns/{n}")]
        assert not leftovers, f"namespaces left behind: {leftovers}"
