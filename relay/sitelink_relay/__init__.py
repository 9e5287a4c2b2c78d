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
filter was imperfect.  Every datagram is classified (see ``Classifier``) so that each
broadcast reaches the other LAN exactly once and nothing echoes back: datagrams from
our own addresses, broadcasts from outside the LAN or from the wrong interface,
peer datagrams sent to a broadcast address, and payloads we have just re-broadcast
are dropped and counted.  Python 3.9+ standard library only; no privileges needed
for ports above 1023.  The config lives in /etc/sitelink/relay.json (see ``--help``).

A peer relay is known by its source address, which anyone can forge: a datagram sent
from the Internet to the gateway's public address with a peer's address as source
would otherwise be re-broadcast on the LAN (or passed on to other branches).  The
config's optional ``peer_interfaces`` names the tunnel interface each peer's datagrams
must arrive on (IP_PKTINFO gives the arrival interface); a peer datagram arriving on
any other interface is dropped and counted as ``peer_interface``.  Without
``peer_interfaces`` (hand-written configs in the article's style, and compat mode)
peer datagrams are accepted on any interface, as before.
"""

__version__ = "2.0.0"
PROG = "sitelink-relay"
