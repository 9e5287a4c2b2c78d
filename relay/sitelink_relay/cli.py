"""The command line: service mode, compat mode, --check-config, --status."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from typing import Optional

from . import PROG, __version__, wire
from .config import DEFAULT_STATUS_FILE, ConfigError, load_config
from .journal import setup_logging
from .loop import Relay, start_check
from .ports import PortInUse
from .status import format_status, read_status

log = logging.getLogger(PROG)

DESCRIPTION = """\
Relay UDP broadcasts between office LANs joined by a site-to-site tunnel.

Service mode (what the sitelink.gateway role installs):
  %(prog)s --config /etc/sitelink/relay.json
For each rule port, broadcasts heard on the LAN interface (to the LAN broadcast
address or 255.255.255.255, from a LAN host) are sent as unicast to every
forward_to peer gateway; unicast datagrams from an accept_from peer are
re-broadcast on the LAN.  On a hub, a unicast datagram from a peer that is a
key of transit is sent on, unchanged, to the peers listed for it (never back to
that peer), and re-broadcast on the hub's LAN only if that peer is in
accept_from too.  Our own datagrams (told by their source address: one of ours),
broadcasts from other interfaces or sources, and peers' datagrams that neither
accept_from nor transit names are dropped and counted.  A LAN broadcast carrying
the very bytes we re-broadcast on that LAN less than 0.25 s ago is a repeater's echo
(a host or bridge re-sending what it hears), dropped as "repeated", unless its
source had sent those bytes itself before we re-broadcast them (the same beacon
at two offices): so each broadcast arrives once and repeaters make no loop.  A
LAN host's own repeated beacon is always relayed.  A peer's datagram is taken
only if it arrived on that peer's tunnel interface, when the config names one (a
forged source address arriving from the Internet or the LAN is dropped as
"peer_interface").

The authenticated wire ("wire": "sitelink1") puts a 40-byte envelope in front of
each datagram between relays: origin office, sender, epoch, sequence number and
an HMAC-SHA256 tag with the link's key (from --keys FILE).  Forged, replayed and
stale datagrams are dropped and counted (auth, replay, stale), a datagram that
reaches an office twice (two paths) is re-broadcast once, and one never goes back
to its origin office.  An epoch more than a day ahead of this host's clock is
refused ("future").  It needs a writable state_dir: epoch and replay windows are
saved there ahead of use, so neither a restart nor a crash lets a replay in.
Multicast groups a rule names (e.g. SSDP 239.255.255.250) are relayed like
broadcasts and sent again to the same group at the far end.
Storm control counts every datagram the relay reads against its source: each
source may send 1000 datagrams/s (burst 2000; all forwarded ones together
20000/s); a source over its limit for 0.25 s is cut off for 10 s, in the kernel.
A source that is not a verified neighbour (in the LAN's ARP table, its MAC
claiming at most 4 addresses) shares one such budget with all the others.  A
second relay on a port already in use refuses to start.

Compat mode (command line of the original udp-proxy):
  %(prog)s [-d] PORT DEST
Every datagram received on udp/PORT (any interface) is sent to DEST:PORT, except
datagrams from this host's own addresses (our own sends coming back: a peer's
repeated payload is always relayed) and datagrams already sent to DEST.  DEST is
the peer gateway (192.168.2.126) or a broadcast address (192.168.2.255); with a
broadcast DEST only unicasts are relayed (a broadcast is already on some LAN).
"""

EPILOG = """\
config file (JSON, version 2):
  {"version": 2,
   "office": "manhattan",                 (this relay's office: the wire names it)
   "lan": {"interface": "eth0", "address": "192.168.1.126/24"},
   "own_addresses": ["172.16.1.12"],      (optional: other addresses of this gateway)
   "wire": "sitelink1",                   (or "raw" = payload as-is, like udp-proxy)
   "keys_file": "/etc/sitelink/relay-keys.json",  (or --keys FILE)
   "state_dir": "/var/lib/sitelink-relay",   (epoch, replay windows; sitelink1 needs it)
   "peers": {"192.168.2.126": {"office": "brooklyn", "interface": "sl-brooklyn"}},
   "rules": [{"port": 6799, "forward_to": ["192.168.2.126"],
              "accept_from": ["192.168.2.126"],
              "multicast_groups": ["239.255.255.250"]}],      (optional)
   "storm_control": {"per_source_rate": 1000, "per_source_burst": 2000,
                     "global_rate": 20000, "global_burst": 40000,
                     "cutoff_seconds": 10},       (optional; null = off)
   "status_file": "/run/sitelink-relay/status.json",  (optional; null = none)
   "metrics_file": "/run/sitelink-relay/metrics.prom"}  (optional: Prometheus text)
  Every peer a rule names needs an entry in peers; a peer entry may say
  "wire": "raw" for a peer running the article's udp-proxy.
  keys file (JSON, keep it 0600): {"version": 1, "peers": {"192.168.2.126":
   {"send": "<64 hex>", "accept": ["<64 hex>", "<64 hex, during a rotation>"]}}}
  Version 1 files (raw wire, "peer_interfaces": {"addr": "ifname"}) still load.
  a rule of hub H that passes branch A's (192.168.3.126) datagrams on to
  branches B and C without re-broadcasting them on its own LAN:
   {"port": 6799, "forward_to": ["192.168.2.126"], "accept_from": [],
    "transit": {"192.168.3.126": ["192.168.2.126", "192.168.4.126"]}}
  transit (optional, default {}): peer -> non-empty list of other peers; counted
  as "transited" in --status.
  A peer's interface may be missing at start or recreated while the relay runs.

state_dir/forget, {"senders": ["192.168.1.126"]} or {"senders": "all"}, read at
  start and on SIGHUP, makes the relay forget those senders' replay windows (a
  peer whose epoch went back is refused as stale until then), then is removed.

signals: SIGHUP reloads the config and keys (a bad one is logged, the old kept),
SIGUSR1 writes the status file now, SIGTERM/SIGINT stop.  Runs as a systemd
Type=notify service with watchdog; needs no privileges for ports above 1023.

examples:
  Manhattan: %(prog)s 6799 192.168.2.126      Brooklyn: %(prog)s 6799 192.168.2.255
  %(prog)s --check-config /etc/sitelink/relay.json
  %(prog)s --check-keys /etc/sitelink/relay-keys.json
  %(prog)s --status

exit status: 0 ok, 1 runtime error (e.g. port in use), 2 bad config or usage.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("port", nargs="?", metavar="PORT", help="compat mode: UDP port to relay")
    parser.add_argument(
        "dest", nargs="?", metavar="DEST", help="compat mode: peer or broadcast address"
    )
    parser.add_argument("--config", metavar="FILE", help="run as a service with this JSON config")
    parser.add_argument(
        "--check-config",
        metavar="FILE",
        help="check FILE as a start would (config, keys, state_dir) and exit"
        " (0 = valid, 2 = invalid, reason on stderr)",
    )
    parser.add_argument(
        "--keys",
        metavar="FILE",
        help="the link keys (overrides keys_file; e.g. a systemd credential);"
        " with --config or --check-config",
    )
    parser.add_argument(
        "--check-keys",
        metavar="FILE",
        help="validate a keys file and exit (0 = valid, 2 = invalid; keys never printed)",
    )
    parser.add_argument(
        "--status",
        nargs="?",
        const=DEFAULT_STATUS_FILE,
        metavar="FILE",
        help=f"print the counters of a running relay (default {DEFAULT_STATUS_FILE})",
    )
    parser.add_argument(
        "--status-file",
        metavar="FILE",
        help="compat mode: write counters to FILE (service mode: status_file in the config)",
    )
    parser.add_argument(
        "-d", "--debug", action="store_true", help="log every datagram and its verdict to stderr"
    )
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    return parser


def _parse_compat(parser: argparse.ArgumentParser, port: str, dest: str) -> tuple[int, str]:
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        parser.error(f"PORT: {port!r} is not a port number (1-65535)")
    try:
        addr = ipaddress.IPv4Address(dest)
    except ValueError:
        parser.error(f"DEST: {dest!r} is not an IPv4 address")
    if addr.is_unspecified or addr.is_multicast:
        parser.error(f"DEST: {addr} is not a unicast or broadcast address")
    return int(port), str(addr)


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = [
        m
        for m, on in (
            ("--config", args.config is not None),
            ("--check-config", args.check_config is not None),
            ("--check-keys", args.check_keys is not None),
            ("--status", args.status is not None),
            ("PORT DEST", args.port is not None),
        )
        if on
    ]
    if len(modes) != 1:
        parser.error(
            "choose exactly one of --config FILE, --check-config FILE, --check-keys FILE,"
            " --status [FILE],"
            " PORT DEST (got %s)" % (", ".join(modes) or "none")
        )
    if args.check_config is not None:
        # What a start checks short of binding: the config, the keys, the state_dir.
        try:
            cfg = load_config(args.check_config)
            notes = start_check(cfg, args.keys)
        except ConfigError as exc:
            print(f"{args.check_config}: invalid config:", file=sys.stderr)
            for line in exc.errors:
                print("  " + line, file=sys.stderr)
            return 2
        print(f"{args.check_config}: OK: {cfg.summary()}" + "".join(f"; {n}" for n in notes))
        return 0
    if args.check_keys is not None:
        try:
            keys = wire.load_keys(args.check_keys)
        except wire.KeysError as exc:
            print(f"{args.check_keys}: invalid keys file:", file=sys.stderr)
            for line in exc.errors:
                print("  " + line, file=sys.stderr)
            return 2
        print(
            "{}: OK: {}".format(
                args.check_keys,
                ", ".join(f"{a} (key {k.send.fingerprint})" for a, k in sorted(keys.items()))
                or "no peers",
            )
        )
        return 0
    if args.status is not None:
        data, error = read_status(args.status)
        if error is not None:
            print(f"{args.status}: cannot read status: {error}", file=sys.stderr)
            return 1
        print(format_status(data))
        return 0
    if args.keys is not None and args.config is None and args.check_config is None:
        parser.error("--keys goes with --config or --check-config")

    compat = None
    if args.config is not None:
        if args.status_file is not None:
            parser.error("--status-file is for compat mode; set status_file in the config")
    else:
        if args.dest is None:
            parser.error("compat mode needs PORT and DEST")
        compat = _parse_compat(parser, args.port, args.dest)
    setup_logging(args.debug, PROG)
    if compat is None:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            log.error("invalid config %s:\n%s", args.config, exc)
            return 2
        relay = Relay(config=cfg, config_path=args.config, debug=args.debug, keys_path=args.keys)
    else:
        relay = Relay(compat=compat, status_file=args.status_file, debug=args.debug)
    try:
        relay.setup()
    except ConfigError as exc:
        log.error("cannot start with %s:\n%s", args.config, exc)
        return 2
    except PortInUse as exc:
        log.error("%s; refusing to start (it would double every datagram)", exc.strerror)
        return 1
    except OSError as exc:
        log.error("cannot open UDP socket: %s", exc)
        return 1
    return relay.run()
