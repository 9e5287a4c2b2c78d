"""sitelink lab controller: QEMU gateway VMs wired through network namespaces.

  labctl.py up   SPEC.json STATE_DIR     build/reuse image, create lab, wait for SSH
  labctl.py down STATE_DIR               tear down exactly what state.json records
  labctl.py info STATE_DIR               print state.json
  labctl.py ns   STATE_DIR HOST -- CMD   run CMD in a LAN host namespace ("lab" = router ns)
  labctl.py ssh  STATE_DIR VM [-- CMD]   ssh to a gateway VM as root

Topology: one lab namespace holds a bridge per segment; a segment's optional
"router" address sits on its bridge, and forwarding in the lab namespace makes
it the "Internet" between WAN segments. LAN hosts are namespaces on veths.
Gateway VMs get one tap per nic (eth0, eth1, ... in spec order) plus a
restricted user-mode NIC last for SSH via 127.0.0.1:<ssh_port>; 768 MB and one
vCPU each unless the gateway's spec says "memory" (MB) or "smp".

Every resource is written to state.json *before* it is created, so a crash at
any point leaves enough for `down` to clean up; `down` touches nothing else.
Stdlib only; must run as root.
"""

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time

LAB_DIR = os.path.dirname(os.path.abspath(__file__))
BUILD_IMAGE = os.path.join(LAB_DIR, "build-image")
BOOT_TIMEOUT = int(os.environ.get("SITELINK_LAB_BOOT_TIMEOUT", "300"))
MGMT_ADDR = "10.0.2.15/24"  # QEMU user-net default guest address
SSH_OPTS = [
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "BatchMode=yes",
]


class LabError(Exception):
    pass


def log(msg):
    print(f"labctl: {msg}", file=sys.stderr, flush=True)


def run(cmd, check=True, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, **kw, check=False)
    if check and res.returncode != 0:
        raise LabError(f"command failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr.strip()}")
    return res


# ---------------------------------------------------------------- state file


class State:
    def __init__(self, state_dir):
        self.dir = os.path.abspath(state_dir)
        self.path = os.path.join(self.dir, "state.json")
        self.data = {}

    def load(self):
        try:
            with open(self.path) as f:
                self.data = json.load(f)
        except FileNotFoundError:
            self.data = {}
        return self.data

    def save(self):
        # Atomic replace: a reader (or a crash) never sees half a file.
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.path)

    def add(self, key, value):
        self.data.setdefault(key, []).append(value)
        self.save()

    def file(self, name):
        path = os.path.join(self.dir, name)
        if path not in self.data.setdefault("files", []):
            self.add("files", path)
        return path


# ---------------------------------------------------------------- helpers


def attach(lab, dev, bridge):
    """Enslave a device of the lab namespace to a segment's bridge and bring it up."""
    run(["ip", "-n", lab, "link", "set", dev, "master", bridge, "up"])


def ns_exists(ns):
    return os.path.exists(f"/run/netns/{ns}")


def is_tap(name):
    # Only tun/tap devices have tun_flags; guards against deleting a
    # same-named device that is not ours.
    return os.path.exists(f"/sys/class/net/{name}/tun_flags")


def qemu_pid(vm):
    """PID of this VM's QEMU if it is still running, verified via its pidfile arg."""
    pid = vm.get("pid")
    if not pid:
        try:
            with open(vm["pidfile"]) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError, KeyError):
            return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    return pid if vm["pidfile"].encode() in cmdline else None


def console_tail(vm, lines=25):
    try:
        with open(vm["console"], errors="replace") as f:
            text = f.read().replace("\r", "")
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])
    except (OSError, KeyError):
        return "(no console output)"


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def ssh_cmd(st, vm_name, cmd, timeout_opt=None):
    vm = st["vms"][vm_name]
    extra = ["-o", f"ConnectTimeout={timeout_opt}"] if timeout_opt else []
    return (
        ["ssh"]
        + SSH_OPTS
        + extra
        + ["-i", st["ssh_key"], "-p", str(vm["ssh_port"]), "root@127.0.0.1"]
        + list(cmd)
    )


# ---------------------------------------------------------------- up


def build_image():
    res = subprocess.run([BUILD_IMAGE], stdout=subprocess.PIPE, text=True, check=False)
    if res.returncode != 0:
        raise LabError("image build failed (see build-image output above)")
    return res.stdout.strip().splitlines()[-1]


def create(st, spec):
    d = st.data
    tok = d["token"]
    lab = f"sllab-{tok}"

    # Check ports up front: a clash would otherwise surface as a QEMU error
    # after half the lab exists.
    for name, g in spec["gateways"].items():
        if not port_free(g["ssh_port"]):
            raise LabError(f"{name}: 127.0.0.1:{g['ssh_port']} is already in use")

    t0 = time.monotonic()
    d["image_dir"] = build_image()
    d["timings"]["image_s"] = round(time.monotonic() - t0, 1)
    st.save()

    # Lab (router) namespace and one bridge per segment.
    d["lab_ns"] = lab
    st.add("namespaces", lab)
    run(["ip", "netns", "add", lab])
    run(["ip", "-n", lab, "link", "set", "lo", "up"])
    # Forwarding only inside the lab namespace: it is the ISP between WANs.
    run(["ip", "netns", "exec", lab, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
    for i, (seg, sdef) in enumerate(spec["segments"].items()):
        br = f"slbr{i}"
        d["segments"][seg] = {"bridge": br, "router": (sdef or {}).get("router")}
        st.save()
        run(["ip", "-n", lab, "link", "add", br, "type", "bridge"])
        if d["segments"][seg]["router"]:
            run(["ip", "-n", lab, "addr", "add", d["segments"][seg]["router"], "dev", br])
        run(["ip", "-n", lab, "link", "set", br, "up"])

    # LAN hosts: a namespace each, eth0 on a veth whose peer is on the bridge.
    for i, (host, h) in enumerate(spec.get("hosts", {}).items()):
        hns, veth = f"slh-{tok}-{host}", f"slv{tok}{i:x}"
        d["hosts"][host] = {
            "netns": hns,
            "veth": veth,
            "segment": h["segment"],
            "address": h["address"],
            "routes": h.get("routes", []),
        }
        st.add("namespaces", hns)
        run(["ip", "netns", "add", hns])
        run(
            [
                "ip",
                "-n",
                lab,
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                hns,
            ]
        )
        attach(lab, veth, d["segments"][h["segment"]]["bridge"])
        run(["ip", "-n", hns, "link", "set", "lo", "up"])
        run(["ip", "-n", hns, "addr", "add", h["address"], "dev", "eth0"])
        run(["ip", "-n", hns, "link", "set", "eth0", "up"])
        for r in h.get("routes", []):
            run(["ip", "-n", hns, "route", "add", r["to"], "via", r["via"]])
        if h.get("gateway"):
            run(["ip", "-n", hns, "route", "add", "default", "via", h["gateway"]])

    # SSH key for root; the public half travels on each VM's kernel command line.
    key = create_key(st)

    ssh_config = st.file("ssh_config")
    with open(ssh_config, "w") as f:
        for name, g in spec["gateways"].items():
            f.write(
                f"Host {name}\n  HostName 127.0.0.1\n  Port {g['ssh_port']}\n  User root\n"
                f"  IdentityFile {key}\n  StrictHostKeyChecking no\n"
                f"  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n\n"
            )
    d["ssh_config"] = ssh_config
    st.save()

    boot_start = time.monotonic()
    for vi, (name, g) in enumerate(spec["gateways"].items()):
        start_vm(st, vi, name, g)
    d["timings"]["vms_started_s"] = round(time.monotonic() - boot_start, 1)
    st.save()

    wait_ssh(st, list(spec["gateways"]), boot_start)


def start_vm(st, vi, name, g):
    d = st.data
    tok, lab, img = d["token"], d["lab_ns"], d["image_dir"]
    vm = d["vms"][name] = {
        "ssh_port": g["ssh_port"],
        "overlay": st.file(f"{name}.qcow2"),
        "pidfile": st.file(f"{name}.pid"),
        "console": st.file(f"{name}.console"),
        "pid": None,
        "nics": [],
    }
    st.save()
    run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            os.path.join(img, "rootfs.qcow2"),
            vm["overlay"],
        ]
    )

    # Unique, stable MACs: QEMU's default MAC would be identical across VMs.
    def mac(ni):
        return f"52:54:{tok[0:2]}:{tok[2:4]}:{vi:02x}:{ni:02x}"

    addrs, netdevs = [], []
    for ni, nic in enumerate(g["nics"]):
        tap = f"slt{tok}{vi:x}{ni:x}"
        vm["nics"].append(
            {
                "guest_if": f"eth{ni}",
                "segment": nic["segment"],
                "address": nic["address"],
                "tap": tap,
                "mac": mac(ni),
            }
        )
        st.add("taps", tap)
        # Created in the host namespace (left down, so the host never talks
        # on it); moved into the lab namespace once QEMU holds it open.
        run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"])
        addrs.append(f"eth{ni}={nic['address']}")
        netdevs += [
            "-netdev",
            f"tap,id=n{ni},ifname={tap},script=no,downscript=no",
            "-device",
            f"virtio-net-pci,netdev=n{ni},mac={mac(ni)},addr=0x{0x10 + ni:x}",
        ]
    mi = len(g["nics"])
    vm["mgmt"] = {"guest_if": f"eth{mi}", "address": MGMT_ADDR, "mac": mac(mi)}
    addrs.append(f"eth{mi}={MGMT_ADDR}")
    # restrict=on: the guest can reach nothing outside; ipv6=off: no RA default route.
    netdevs += [
        "-netdev",
        f"user,id=mgmt,restrict=on,ipv6=off,net=10.0.2.0/24,"
        f"hostfwd=tcp:127.0.0.1:{g['ssh_port']}-10.0.2.15:22",
        "-device",
        f"virtio-net-pci,netdev=mgmt,mac={mac(mi)},addr=0x{0x10 + mi:x}",
    ]

    cmdline = [
        "root=/dev/vda",
        "rw",
        "console=ttyS0",
        "net.ifnames=0",
        f"sitelink.hostname={name}",
        f"sitelink.addr={','.join(addrs)}",
        f"sitelink.sshkey={st.data['ssh_pubkey_b64']}",
    ]
    if g.get("gateway"):
        cmdline.append(f"sitelink.gw={g['gateway']}")
    vm["cmdline"] = " ".join(cmdline)

    # TCG only: guests crash under KVM on this class of host.
    cmd = [
        "qemu-system-x86_64",
        "-name",
        f"sitelink-lab-{tok}-{name}",
        "-accel",
        "tcg",
        "-m",
        str(g.get("memory", 768)),
        "-smp",
        str(g.get("smp", 1)),
        "-nodefaults",
        "-display",
        "none",
        "-vga",
        "none",
        "-kernel",
        os.path.join(img, "vmlinuz"),
        "-initrd",
        os.path.join(img, "initrd.img"),
        "-append",
        vm["cmdline"],
        "-drive",
        f"file={vm['overlay']},format=qcow2,if=none,id=disk0,cache=unsafe",
        "-device",
        "virtio-blk-pci,drive=disk0,addr=0x4",
        "-device",
        "virtio-rng-pci,addr=0x5",
        *netdevs,
        "-serial",
        f"file:{vm['console']}",
        "-pidfile",
        vm["pidfile"],
        "-daemonize",
    ]
    vm["qemu_cmd"] = cmd
    st.save()
    run(cmd)
    with open(vm["pidfile"]) as f:
        vm["pid"] = int(f.read().strip())
    st.save()
    log(f"{name}: QEMU pid {vm['pid']}")

    for nic in vm["nics"]:
        run(["ip", "link", "set", nic["tap"], "netns", lab])
        attach(lab, nic["tap"], d["segments"][nic["segment"]]["bridge"])


def wait_ssh(st, names, t0):
    d = st.data
    pending = set(names)
    deadline = t0 + BOOT_TIMEOUT
    while pending:
        for name in sorted(pending):
            vm = d["vms"][name]
            if not qemu_pid(vm):
                raise LabError(f"{name}: QEMU exited during boot", name)
            try:
                res = subprocess.run(
                    ssh_cmd(d, name, ["true"], timeout_opt=5),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=20,
                    check=False,
                )
                ok = res.returncode == 0
            except subprocess.TimeoutExpired:
                ok = False
            if ok:
                pending.discard(name)
                d["timings"][f"{name}_ssh_s"] = round(time.monotonic() - t0, 1)
                st.save()
                log(f"{name}: SSH ready after {d['timings'][f'{name}_ssh_s']}s")
        if pending:
            if time.monotonic() > deadline:
                raise LabError(
                    f"timed out after {BOOT_TIMEOUT}s waiting for SSH on "
                    f"{', '.join(sorted(pending))}",
                    *sorted(pending),
                )
            time.sleep(2)


def _raise_terminated(signum, frame):
    raise LabError(f"terminated by signal {signum}")


def cmd_up(args):
    with open(args.spec) as f:
        spec = json.load(f)
    os.makedirs(args.state_dir, exist_ok=True)
    st = State(args.state_dir)
    old = st.load()
    if old and old.get("status") != "down":
        raise LabError(
            f"{st.path} describes a lab in status {old.get('status')!r}; run `labctl.py down` first"
        )
    st.data = {
        "version": 1,
        "status": "creating",
        "token": secrets.token_hex(3),
        "state_dir": st.dir,
        "spec_file": os.path.abspath(args.spec),
        "spec": spec,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "namespaces": [],
        "taps": [],
        "files": [],
        "segments": {},
        "hosts": {},
        "vms": {},
        "timings": {},
    }
    st.save()

    # Let SIGTERM (e.g. a cancelled CI job) unwind through the cleanup below.
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        create(st, spec)
    except (LabError, KeyboardInterrupt, OSError, subprocess.SubprocessError) as e:
        st.data["status"] = "failed"
        st.data["error"] = str(e.args[0] if e.args else e)
        st.save()
        log(f"ERROR: {st.data['error']}")
        failed = e.args[1:] if isinstance(e, LabError) and len(e.args) > 1 else st.data["vms"]
        for name in failed:
            if name in st.data["vms"]:
                log(f"--- tail of {name} console ---\n{console_tail(st.data['vms'][name])}")
        if args.keep_on_failure:
            log(f"leaving the lab up for inspection; run: {sys.argv[0]} down {st.dir}")
        else:
            log("tearing down partial lab")
            teardown(st)
        return 1
    st.data["status"] = "up"
    st.save()
    log(f"lab {st.data['lab_ns']} up; state in {st.path}")
    return 0


def create_key(st):
    key = st.file("id_ed25519")
    st.file("id_ed25519.pub")
    for p in (key, key + ".pub"):
        if os.path.exists(p):
            os.unlink(p)
    st.data["ssh_key"] = key
    st.save()
    run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            f"sitelink-lab-{st.data['token']}",
            "-f",
            key,
        ]
    )
    with open(key + ".pub") as f:
        st.data["ssh_pubkey_b64"] = base64.b64encode(f.read().strip().encode()).decode()
    st.save()
    return key


# ---------------------------------------------------------------- down


def stop_qemu(name, vm):
    pid = qemu_pid(vm)
    if not pid:
        return
    log(f"{name}: stopping QEMU pid {pid}")
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if not qemu_pid(vm):
                return
            time.sleep(0.2)
    log(f"{name}: WARNING: QEMU pid {pid} did not exit")


def teardown(st):
    d = st.data
    for name, vm in d.get("vms", {}).items():
        stop_qemu(name, vm)
    lab = d.get("lab_ns")
    for tap in d.get("taps", []):
        if lab and ns_exists(lab):
            run(["ip", "-n", lab, "link", "del", tap], check=False)
        if is_tap(tap):
            run(["ip", "link", "del", tap], check=False)
    # LAN host namespaces first, the lab namespace (with bridges) last.
    for ns in reversed(d.get("namespaces", [])):
        if not ns_exists(ns):
            continue
        # Leftover processes (e.g. a test's ping started via `ns`) would keep
        # the namespace alive after its name is gone.
        pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
        for p in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(p), signal.SIGKILL)
        run(["ip", "netns", "del", ns], check=False)
    # A tap could fall back to the host namespace if its netns died first.
    for tap in d.get("taps", []):
        if is_tap(tap):
            run(["ip", "link", "del", tap], check=False)
    for vm in d.get("vms", {}).values():
        for key in ("overlay", "pidfile"):
            with contextlib.suppress(OSError, KeyError):
                os.unlink(vm[key])
    leftovers = [ns for ns in d.get("namespaces", []) if ns_exists(ns)]
    leftovers += [t for t in d.get("taps", []) if is_tap(t)]
    leftovers += [n for n, vm in d.get("vms", {}).items() if qemu_pid(vm)]
    d["status"] = "down" if not leftovers else "down-incomplete"
    st.save()
    if leftovers:
        log(f"WARNING: could not remove: {', '.join(leftovers)}")
    return not leftovers


def cmd_down(args):
    st = State(args.state_dir)
    if not st.load():
        log(f"no {st.path}; nothing to tear down")
        return 0
    teardown(st)
    log(f"lab {st.data.get('lab_ns')} down")
    return 0


# ---------------------------------------------------------------- ns / ssh / info


def load_up(state_dir):
    st = State(state_dir)
    if not st.load():
        raise LabError(f"no lab state in {st.path}")
    return st.data


def strip_dashdash(cmd):
    return cmd[1:] if cmd and cmd[0] == "--" else cmd


def cmd_ns(args):
    d = load_up(args.state_dir)
    if args.host in d.get("hosts", {}):
        ns = d["hosts"][args.host]["netns"]
    elif args.host == "lab":
        ns = d["lab_ns"]
    else:
        raise LabError(f"unknown host {args.host!r}; known: {', '.join(d.get('hosts', {}))}, lab")
    cmd = strip_dashdash(args.cmd) or ["sh"]
    os.execvp("ip", ["ip", "netns", "exec", ns] + cmd)


def cmd_ssh(args):
    d = load_up(args.state_dir)
    if args.vm not in d.get("vms", {}):
        raise LabError(f"unknown VM {args.vm!r}; known: {', '.join(d.get('vms', {}))}")
    cmd = ssh_cmd(d, args.vm, strip_dashdash(args.cmd))
    os.execvp(cmd[0], cmd)


def cmd_info(args):
    json.dump(load_up(args.state_dir), sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


def main():
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="action", required=True)
    p = sub.add_parser("up")
    p.add_argument("spec")
    p.add_argument("state_dir")
    p.add_argument(
        "--keep-on-failure", action="store_true", help="leave a failed lab running for debugging"
    )
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down")
    p.add_argument("state_dir")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("info")
    p.add_argument("state_dir")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("ns")
    p.add_argument("state_dir")
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_ns)
    p = sub.add_parser("ssh")
    p.add_argument("state_dir")
    p.add_argument("vm")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_ssh)
    args = ap.parse_args()
    if os.geteuid() != 0 and args.action in ("up", "down", "ns"):
        log("must run as root")
        return 2
    try:
        return args.func(args)
    except LabError as e:
        log(f"ERROR: {e.args[0]}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
