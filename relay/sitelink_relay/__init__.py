"""sitelink-relay: carry UDP broadcasts between office LANs over a site-to-site link.

Routers never forward broadcasts, so an application that announces itself with UDP
broadcasts (e.g. to 192.168.1.255:6799) is invisible at the other office.  This relay
runs on each gateway: it forwards broadcasts heard on its LAN as unicast to the peer
gateway(s) through the tunnel, and re-broadcasts on its LAN what a peer sent it.

A relay can also be a hub ("transit"): a rule's ``transit`` maps a peer to the peers
that get that peer's datagrams passed on unchanged (unicast, same payload), so branch
A's broadcasts reach branches B and C through hub H.  H re-broadcasts them on its own
LAN only if A is also in its ``accept_from``.  A peer's datagram is never sent on to
any other peer unless ``transit`` says so, and never back to the peer it came from.

It replaces the C ``udp-proxy [-d] PORT DEST`` of the original article, whose loop
filter was imperfect.  Every datagram is classified (``classify``) so that each
broadcast reaches the other LAN exactly once and nothing echoes back.  Between our
relays, datagrams travel on the authenticated wire (``wire``): an envelope with the
origin office, the sending relay, an epoch and a sequence number, tagged with the
link's key, so forged, replayed and duplicated datagrams are dropped and counted.  Our
own datagrams are told by their source address, never by what they carry; a LAN
host repeating what we just re-broadcast is told by a causal memory of those
payloads (``classify.RepeatMemory``).  A peer's datagram also counts only when it
came out of that peer's tunnel (IP_PKTINFO).

The parts: ``contract`` (what the relay shares with the planner: wire names, office
id, versions, paths; the collection's own file), ``config`` (the JSON config,
validated), ``wire`` (envelope, keys, replay windows), ``classify`` (a verdict per
datagram), ``netinfo`` (addresses, interfaces), ``ports`` (per-port and per-peer
state), ``mmsg`` (batched system calls), ``sockfilter`` (what the kernel drops for
us), ``storm`` (rate limits and breaker), ``neighbours`` (which LAN sources are
real), ``files`` (reading our own files). The running relay, ``loop.Relay``, is the
composition of: ``datapath`` (receive, classify, forward: the hot path), ``egress``
(sending, GSO, re-broadcast markers), ``configure`` and ``topology`` (ports at start
and on SIGHUP), ``localnet`` (local addresses, multicast joins), ``stormguard``
(storm control, kernel filters), ``statedir`` (epoch, replay windows, forget
requests), ``peerkeys``, ``siblings`` (redundant gateways), ``report`` (status and
metrics), ``eventloop`` (select, timers, signals). Then ``status`` (status file,
Prometheus text), ``journal`` and ``notify`` (systemd), ``cli``.  Python 3.9+
standard library only; no privileges for ports above 1023.  ``make relay`` bundles it
into the one file gateways run.
"""

__version__ = "2.1.0"
PROG = "sitelink-relay"
