"""The command line: service mode, compat mode, --check-config, --status."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from typing import Optional

from . import PROG, __version__
from .config import DEFAULT_STATUS_FILE, ConfigError, load_config
from .loop import Relay
from .status import format_status

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
accept_from too.  Our own datagrams, broadcasts from other interfaces or sources,
peers' datagrams that neither accept_from nor transit names, and echoes of what
we just re-broadcast are dropped and counted, so each broadcast arrives exactly
once and nothing loops.  With peer_interfaces in the config, a peer's datagram
is taken only if it arrived on that peer's tunnel interface (a forged source
address arriving from the Internet or the LAN is dropped as "peer_interface");
without it, peers' datagrams are taken from any interface, as in the article.

Compat mode (command line of the original udp-proxy):
  %(prog)s [-d] PORT DEST
Every datagram received on udp/PORT (any interface) is sent to DEST:PORT, except
datagrams from this host's own addresses and echoes of what it just sent.  DEST is
the peer gateway (192.168.2.126) or a broadcast address (192.168.2.255).
"""

EPILOG = """\
config file (JSON, version 1):
  {"version": 1,
   "lan": {"interface": "eth0", "address": "192.168.1.126/24"},
   "own_addresses": ["172.16.1.12"],      (optional: other addresses of this gateway)
   "wire": "raw",                         (optional; only "raw" = payload as-is)
   "rules": [{"port": 6799, "forward_to": ["192.168.2.126"],
              "accept_from": ["192.168.2.126"]}],
   "status_file": "/run/sitelink-relay/status.json"}   (optional; null = none)
  a rule of hub H that passes branch A's (192.168.3.126) datagrams on to
  branches B and C without re-broadcasting them on its own LAN:
   {"port": 6799, "forward_to": ["192.168.2.126"], "accept_from": [],
    "transit": {"192.168.3.126": ["192.168.2.126", "192.168.4.126"]}}
  transit (optional, default {}): peer -> non-empty list of other peers; counted
  as "transited" in --status.
  peer_interfaces (optional): the tunnel interface each peer's datagrams must
  arrive on, e.g. "peer_interfaces": {"192.168.2.126": "sl-brooklyn"}; a peer's
  datagram arriving on any other interface is dropped ("peer_interface" in
  --status).  When present, every accept_from and transit peer needs an entry;
  entries for addresses no rule takes datagrams from are allowed and unused.
  An interface may be missing at start or recreated while the relay runs.
  Absent: peers' datagrams are accepted on any interface (as in the article).

signals: SIGHUP reloads the config (a bad one is logged and the old one kept),
SIGUSR1 writes the status file now, SIGTERM/SIGINT stop.  Runs as a systemd
Type=notify service with watchdog; needs no privileges for ports above 1023.

examples:
  Manhattan: %(prog)s 6799 192.168.2.126      Brooklyn: %(prog)s 6799 192.168.2.255
  %(prog)s --check-config /etc/sitelink/relay.json
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
        help="validate FILE and exit (0 = valid, 2 = invalid, reason on stderr)",
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


class _JournalFormatter(logging.Formatter):
    """Prefix lines with <N> syslog priorities when stderr goes to journald."""

    LEVELS = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}

    def __init__(self, journal: bool):
        super().__init__("%(message)s" if journal else PROG + ": %(levelname)s: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if self.journal:
            level = self.LEVELS.get(record.levelno, 2)
            return f"<{level}>" + text.replace("\n", " | ")
        return text


def setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JournalFormatter(bool(os.environ.get("JOURNAL_STREAM"))))
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False


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
            ("--status", args.status is not None),
            ("PORT DEST", args.port is not None),
        )
        if on
    ]
    if len(modes) != 1:
        parser.error(
            "choose exactly one of --config FILE, --check-config FILE, --status [FILE],"
            " PORT DEST (got %s)" % (", ".join(modes) or "none")
        )
    if args.check_config is not None:
        try:
            cfg = load_config(args.check_config)
        except ConfigError as exc:
            print(f"{args.check_config}: invalid config:", file=sys.stderr)
            for line in exc.errors:
                print("  " + line, file=sys.stderr)
            return 2
        print(f"{args.check_config}: OK: {cfg.summary()}")
        return 0
    if args.status is not None:
        try:
            with open(args.status, encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            print(f"{args.status}: cannot read status: {exc}", file=sys.stderr)
            return 1
        print(format_status(data))
        return 0

    compat = None
    if args.config is not None:
        if args.status_file is not None:
            parser.error("--status-file is for compat mode; set status_file in the config")
    else:
        if args.dest is None:
            parser.error("compat mode needs PORT and DEST")
        compat = _parse_compat(parser, args.port, args.dest)
    setup_logging(args.debug)
    if compat is None:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            log.error("invalid config %s:\n%s", args.config, exc)
            return 2
        relay = Relay(config=cfg, config_path=args.config, debug=args.debug)
    else:
        relay = Relay(compat=compat, status_file=args.status_file, debug=args.debug)
    try:
        relay.setup()
    except OSError as exc:
        log.error("cannot open UDP socket: %s", exc)
        return 1
    return relay.run()
