# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the administrators of an external peer configure on their side.

An external peer (``office_external_peers``) is run by someone else: the plan
configures our ends of its links only. ``peer_text`` is the other half, for its
administrators (plan.yml writes it to ``external/<name>.txt``): their IPsec
connections, made by the same code as ours (``module_utils.ipsec.remote_end``)
with the two ends swapped; their IPIP tunnels and routes, as the same commands
ours are built with (``module_utils.tunnel.create_argvs``); what their firewall
lets in; and what their relay sends and takes, as the relay section our
gateways get (``relay.section``), made for their gateway.

It never holds a key: the IPsec key is a placeholder (the key is given to them
apart), and their relay keys are derived from it with a command they run
(HKDF-SHA256, as ``secrets.link_key``), which asks for the key.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import textwrap

from ansible_collections.sitelink.gateway.plugins.module_utils import contract
from ansible_collections.sitelink.gateway.plugins.module_utils import ipsec as ipsec_utils
from ansible_collections.sitelink.gateway.plugins.module_utils.tunnel import create_argvs

from . import relay, routing, secrets
from .model import GatewayPlan, NetworkPlan, Office
from .tunnels import TUNNEL_TTL

PLACEHOLDER = ipsec_utils.REMOTE_KEY_PLACEHOLDER
# Their LAN interface is theirs to name: the relay configuration says eth0.
LAN_INTERFACE = "eth0"
WIDTH = 100  # text line length, as the plan's other texts


def _lines(text: str, indent: str = "    ") -> list[str]:
    return [indent + line if line else "" for line in text.rstrip("\n").split("\n")]


def their_routes(plan: NetworkPlan, name: str) -> dict[str, tuple[str, ...]]:
    """The LANs the peer routes into its link to each office of ours (by that office's
    name), chosen as ``routing.next_hops`` chooses ours: the next hop on a shortest
    path, ties to the lowest name, so that traffic comes back the way it went (our
    firewalls drop what comes out of a tunnel from a LAN not routed into it)."""
    adj = routing.adjacency(sorted(plan.offices), [(lk.a.office, lk.b.office) for lk in plan.links])
    forwards = {n: not o.external for n, o in plan.offices.items()}
    routes: dict[str, list[str]] = {hop: [] for hop in adj[name]}
    order = sorted(
        (o for o in plan.offices.values() if o.name != name),
        key=lambda o: (int(o.lan.network.network_address), o.lan.network.prefixlen),
    )
    for dest in order:
        if not plan.transit:
            if dest.name in routes:
                routes[dest.name].append(str(dest.lan.network))
            continue
        # As routing.next_hops does for our gateways, with the peer as the one routing.
        dist = routing._hops(dest.name, adj, forwards)
        distance = dist.get(name)
        if distance is None:
            continue
        hop = (
            dest.name
            if distance == 1
            else next(n for n in adj[name] if forwards[n] and dist.get(n) == distance - 1)
        )
        routes[hop].append(str(dest.lan.network))
    return {hop: tuple(prefixes) for hop, prefixes in routes.items()}


def _their_gateway(plan: NetworkPlan, peer: Office) -> GatewayPlan:
    """The peer's gateway as our planner would see it if it were ours: its links, our
    offices at their other ends (speaking its relay wire with it) and its relay rules."""
    links = sorted(
        (lk for lk in plan.links if peer.name in (lk.a.office, lk.b.office)),
        key=lambda lk: lk.other(peer.name).office,
    )
    peers = {
        lk.other(peer.name).office: dataclasses.replace(
            plan.offices[lk.other(peer.name).office], relay_wire=peer.relay_wire
        )
        for lk in links
    }
    return GatewayPlan(
        office=dataclasses.replace(peer, lan_interface=LAN_INTERFACE),
        links=links,
        peers=peers,
        masquerade_sources=[],
        relay=relay.peer_ports(plan, peer.name),
        protection=plan.protection,
        relay_wire=peer.relay_wire,
    )


def relay_key_command(a: str, b: str) -> str:
    """The command that prints the relay key of the link between ``a`` and ``b`` from
    the peer's key (OpenSSL 3): HKDF-SHA256 as ``secrets.link_key`` does it.

    The key is never part of it: ``openssl kdf`` takes its key only as an argument,
    typed into the shell (its history) and on openssl's command line (the process
    list); ``openssl pkeyutl -pkeyopt_passin key`` asks for it on the terminal, not
    echoed (``key:file:<file>``: the first line of a file)."""
    first, second = sorted((a, b))
    info = b"\0".join((b"relay", first.encode(), second.encode())).hex()
    salt = secrets.SALT.decode()
    return (
        "openssl pkeyutl -derive -kdf HKDF -kdflen 32 -pkeyopt md:SHA256 \\\n"
        f"  -pkeyopt salt:{shlex.quote(salt)} \\\n"
        f"  -pkeyopt hexinfo:{info} \\\n"
        "  -pkeyopt_passin key | od -An -tx1 -v | tr -d ' \\n'; echo"
    )


def peer_text(plan: NetworkPlan, name: str) -> str:
    """What the administrators of external peer ``name`` configure on their gateway."""
    peer = plan.offices[name]
    gw = _their_gateway(plan, peer)
    links = gw.links
    protection = plan.link_protection(links[0]) if links else (peer.protection or "none")
    ours = [gw.peers[lk.other(name).office] for lk in links]
    lines = [
        f"External peer {name}: what its administrators configure on their side",
        "(written by sitelink.gateway's plan.yml, from the plan our gateways are configured with)",
        "",
        f"Your gateway: public address {peer.wan.ip}, LAN {peer.lan.network}, its address "
        f"there {peer.lan.ip}",
    ]
    if not links:
        lines += ["", "Links: none (no office of ours is linked to yours)"]
        return "\n".join(lines) + "\n"
    lines.append(f"Links: {len(links)}, to: " + ", ".join(f"{o.name} ({o.wan.ip})" for o in ours))
    if protection == "ipsec":
        lines += [
            "Protection: ipsec (own key): IKEv2 with the pre-shared key you were given (the same",
            "  on every link to you), ESP in transport mode for IP protocol 4 (IPIP) only",
        ]
    else:
        lines += [
            "Protection: NONE (unprotected, warned): plain IPIP, readable by anyone on the path",
            "  and forgeable by anyone on the Internet (RFC 2003 has no authentication); ask for",
            "  a key to protect it with IPsec",
        ]
    if gw.relay:
        wire = "raw" if peer.relay_wire == contract.WIRE_RAW else "authenticated (sitelink-relay)"
        lines.append(f"Relay wire: {wire}, UDP port(s) {', '.join(map(str, sorted(gw.relay)))}")

    step = 0

    def heading(text: str) -> None:
        nonlocal step
        step += 1
        lines.extend(["", f"{step}. {text}"])

    if protection == "ipsec":
        connections = [
            {
                "name": lk.end(name).tunnel,  # as their side names it
                "link": lk.id,
                "local": str(o.wan.ip),
                "remote": str(peer.wan.ip),
            }
            for lk, o in zip(links, ours)
        ]
        # start_action = trap|start, as ours: strongSwan refuses it before this version.
        since = ".".join(map(str, ipsec_utils.TRAP_AND_START_SINCE))
        heading(
            "IPsec, strongSwan: a file in /etc/swanctl/conf.d/ (mode 0600), the key you were given"
        )
        lines += [
            f'   in place of "{PLACEHOLDER}" (between the double quotes), then',
            "   `swanctl --load-all`:",
            "",
            *_lines(ipsec_utils.remote_end(connections)),
            "",
            "   Elsewhere than strongSwan: IKEv2 between the two public addresses, both ends",
            "   authenticated by the pre-shared key, identities the public IPv4 addresses",
            f"   (ID_IPV4_ADDR); IKE proposal {ipsec_utils.IKE_PROPOSALS} (AES-256-GCM with a "
            "16-byte ICV,",
            "   PRF HMAC-SHA256, DH group 31 = Curve25519); one CHILD_SA in transport mode for IP",
            f"   protocol 4 between the two addresses, ESP proposal {ipsec_utils.ESP_PROPOSALS} "
            "(no PFS group);",
            f"   dead peer detection every {ipsec_utils.DPD_DELAY} s. Both ends initiate IKE when "
            "the connection is loaded and",
            "   keep the trap, so that traffic starts it again once it is down: start_action = "
            "trap|start",
            f"   (strongSwan {since} or later; on older versions use start_action = trap, and the "
            "first IPIP",
            "   packet starts IKE).",
            "   Our side drops IPIP from you that did not come out of ESP, and yours should too.",
        ]

    heading("IPIP tunnels and routes (iproute2; make them persistent your own way):")
    routes = their_routes(plan, name)
    for lk, o in zip(links, ours):
        tunnel = {
            "name": lk.end(name).tunnel,
            "local": str(peer.wan.ip),
            "remote": str(o.wan.ip),
            "address": str(peer.lan.ip),
            "routes": list(routes[o.name]),
            "mtu": lk.mtu,
            "ttl": TUNNEL_TTL,
            "description": f"peer {o.name}",
        }
        lines.append(f"   # to {o.name}")
        for argv in create_argvs(tunnel):
            if "alias" in argv:  # our ownership marker: not theirs
                at = argv.index("alias")
                argv = argv[:at] + argv[at + 2 :]
            lines.append("   ip " + " ".join(shlex.quote(a) for a in argv))
    lines += [
        "   and IPv4 forwarding on (sysctl net.ipv4.ip_forward=1), reverse-path filtering",
        "   loose or off (net.ipv4.conf.all.rp_filter=2).",
    ]

    heading("Firewall (as ours does on its side of these links)")
    addresses = ", ".join(str(o.wan.ip) for o in ours)
    if protection == "ipsec":
        lines.append(
            f"   accept from {addresses} on your WAN: IKE (UDP 500 and 4500), ESP (IP protocol 50),"
        )
        lines.append("   and IPIP (IP protocol 4) only once it came out of ESP")
    else:
        lines.append(f"   accept from {addresses} on your WAN: IPIP (IP protocol 4)")
    for lk, o in zip(links, ours):
        lines += _wrap_prefixes(
            f"   out of {lk.end(name).tunnel}: only sources in ", routes[o.name]
        )

    if gw.relay:
        heading("Broadcast relay (between the gateways' LAN addresses, through the tunnels)")
        lines += _relay_lines(plan, gw, peer)
    return "\n".join(lines) + "\n"


def _wrap_prefixes(head: str, prefixes: tuple[str, ...]) -> list[str]:
    """``head`` and the prefixes, as the plan's texts wrap them; "none" for none."""
    items = ", ".join(prefixes) or "none (nothing is routed into it)"
    return textwrap.wrap(
        head + items,
        WIDTH,
        subsequent_indent="       ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _relay_lines(plan: NetworkPlan, gw: GatewayPlan, peer: Office) -> list[str]:
    lines: list[str] = []
    names = {str(o.lan.ip): o.name for o in gw.peers.values()}
    for port, rule in sorted(gw.relay.items()):
        groups = sorted(rule.multicast_groups)
        also = f" (and multicast {', '.join(groups)})" if groups else ""
        lines.append(f"   UDP port {port}{also}:")
        sends = sorted(rule.forward_to)
        takes = sorted(rule.accept_from)
        lines.append(
            "     broadcasts on your LAN go to: "
            + (", ".join(f"{a} ({names[a]})" for a in sends) or "nobody of ours")
        )
        lines.append(
            "     re-broadcast on your LAN: what comes from "
            + (", ".join(f"{a} ({names[a]})" for a in takes) or "nobody of ours")
        )
    if peer.relay_wire == contract.WIRE_RAW:
        lines += [
            "   Raw wire (e.g. udp-proxy, a plain C relay): the datagrams as they are, sent",
            f"   from your gateway's LAN address {peer.lan.ip} to each address above on the",
            "   same port.",
        ]
        return lines
    config = relay.section(gw)
    lines += [
        "   Authenticated wire: run sitelink-relay (roles/relay/files/sitelink-relay of the",
        f"   collection) with this configuration ({LAN_INTERFACE} stands for your LAN interface):",
        "",
        *_lines(json.dumps(config, indent=2)),
        "",
        f"   and {config['keys_file']} (mode 0600) with each link's relay key:",
        "",
        *_lines(
            json.dumps(
                {
                    "version": contract.RELAY_KEYS_VERSION,
                    "peers": {
                        address: {
                            "send": f"<relay key of {entry['office']}>",
                            "accept": [f"<relay key of {entry['office']}>"],
                        }
                        for address, entry in config["peers"].items()
                    },
                },
                indent=2,
            )
        ),
        "",
        "   Each link's relay key is derived from the key you were given (OpenSSL 3). Each command",
        "   asks for the key (Enter key:, not echoed): typed into a command line, it would stay in",
        "   the shell's history and show in the process list. `-pkeyopt_passin key:file:<file>`",
        "   reads it from the first line of a file (mode 0600) instead.",
    ]
    for entry in config["peers"].values():
        lines += [
            f"   # relay key of {entry['office']}:",
            *_lines(relay_key_command(peer.name, entry["office"]), "   "),
        ]
    return lines
