#!/usr/bin/python
# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gateway_health
short_description: Check that an office gateway does what its plan says, changing nothing
version_added: 0.2.0
author: sitelink.gateway developers (!UNKNOWN)
description:
  - Reads the gateway's live state and compares it with its plan (O(plan), the C(office_plan)
    fact set by the C(sitelink.gateway.office) role), in one call.
  - "Tunnels: each planned tunnel exists as an C(ipip) link with the planned endpoints and
    MTU, and is up; C(ip route get) sends the peer gateway's LAN address, from this
    gateway's LAN address, out of that tunnel; and a short C(ping) from this LAN address
    gets an answer through it."
  - "Routes: every prefix the plan routes into a tunnel is in the main table via that tunnel."
  - "IPsec, where the plan's C(protection) is C(ipsec): after all the pings, the kernel holds,
    for each tunnel of the plan's C(ipsec.connections), an ESP SA in transport mode from its
    local to its remote public address and one back (C(ip xfrm state)), and an C(out) and an
    C(in) policy for IP protocol 4 (IPIP) between those two addresses with an ESP template
    (C(ip xfrm policy)). SAs are keyed on demand, by the tunnel's ping, so a missing SA is a
    problem only for a tunnel whose ping ran; the policies must be there regardless."
  - "C(ip xfrm state) prints the SAs' keys. Only the lines naming an SA (addresses, protocol,
    mode) are read: no key, SPI or raw output is ever in the result or in a message."
  - "Where the plan's C(protection) is C(none) (C(office_tunnel_protection: none)), nothing of
    IPsec is read; RV(ipsec.plain_ipip) says so, and M(sitelink.gateway.health_report)
    warns. It is not a problem."
  - "Links to external peers follow their own C(protection) (C(office_external_peers)): one
    that chose C(ipsec) is checked as above even where the plan's C(protection) is C(none),
    and one that chose C(none) where the plan's is C(ipsec) is listed in
    RV(ipsec.unprotected), which M(sitelink.gateway.health_report) warns about. It is not a
    problem."
  - "Firewall: the nftables table O(firewall_table) (family C(inet)) exists and carries the
    collection's C(sitelink-gateway) comment (read from C(nft -t list table): nftables 1.0.6
    leaves a table's comment out of its JSON)."
  - "Relay: C(sitelink-relay.service) is active where the plan has relay rules (inactive where
    it has none), its status file is fresh (written less than 3 intervals and a second ago) and
    lists every planned port; its counters are returned, per port and per peer relay, with
    every drop reason. Drops are never a problem, authentication failures (C(auth)) included:
    anyone who can reach a relay port could otherwise make any office unhealthy."
  - "Relay replay state (a relay that reports it): a peer relay whose last datagrams were all
    refused as C(stale) (its epoch went backwards - its state or clock was reset) or C(future)
    (its epoch more than a day ahead of this gateway's clock) is stuck until this relay forgets
    it; each is a problem naming the peer, the reason, how many datagrams in a row, both
    epochs and the command that resets it (the relay role's C(relay_forget_senders), with
    C(--limit) O(host)). Replay windows the relay cannot save are a problem too."
  - "Masquerade: the nftables table O(masquerade_table) exists where the plan masquerades, SNATs
    to the plan's address on the LAN interface and names every planned source; it is absent
    where the plan masquerades nothing."
  - Problems are reported in RV(problems), one sentence each, and do not fail the task;
    C(playbooks/verify.yml) gathers them with M(sitelink.gateway.health_report). The task fails
    only when O(plan) is not a gateway plan or the tunnels and routes cannot be read.
  - Commands run, all read-only, whatever the number of tunnels - C(ip -j -d link show),
    C(ip -j route show table main), one C(ip -j -force -batch -) asking C(route get) for each
    tunnel that is up, then echo requests through all of them at once from one raw ICMP
    socket bound to the LAN address (see O(probe_concurrency) and O(probe_deadline)), then,
    with IPsec, C(ip xfrm state list) and C(ip xfrm policy list) once for the gateway, then
    C(systemctl is-active), C(nft -j list table ip O(masquerade_table)) and
    C(nft -t list table inet O(firewall_table)).
options:
  plan:
    description:
      - This gateway's plan, C(office_plan), as set by the C(sitelink.gateway.office) role.
      - Each entry of C(links) names the peer's LAN address (C(peer_address)), which is pinged.
    type: dict
    required: true
  relay_unit:
    description: The relay's systemd unit.
    type: str
    default: sitelink-relay.service
  relay_status_file:
    description: The relay's JSON status file (C(sitelink-relay --status) reads the same).
    type: path
    default: /run/sitelink-relay/status.json
  masquerade_table:
    description: The collection's SNAT table, in the C(ip) family.
    type: str
    default: sitelink_masquerade
  firewall_table:
    description: The collection's firewall table, in the C(inet) family (the firewall role's
      C(firewall_table)).
    type: str
    default: sitelink_firewall
  ipsec_config:
    description:
      - The collection's swanctl file (the ipsec role's C(ipsec_config_path)). Only how many
        keys each link accepts is read from it (more than one - a key rotation not
        finished), never a key.
    type: path
    default: /etc/swanctl/conf.d/sitelink-gateway.conf
  host:
    description:
      - This gateway's name in the inventory (C(inventory_hostname)); the commands that
        problems suggest name it in their C(--limit). Omitted - they say C(<this gateway>).
    type: str
  ping_count:
    description:
      - Answers wanted from each tunnel's peer. Echo requests go 0.2 s apart until that many
        came back or the tunnel's own wait (15 s, long enough for IKE to key an IPsec link
        on demand) is over; any answer passes.
    type: int
    default: 3
  probe_concurrency:
    description:
      - Tunnels probed at once. A tunnel leaves the set as soon as it answered
        O(ping_count) times or its 15 s are over; a hub's healthy tunnels take about 0.5 s
        each, so 200 take a few seconds. Bounded so that a hub whose SAs are all down does
        not start hundreds of IKE exchanges at the same instant.
    type: int
    default: 64
  probe_deadline:
    description:
      - Seconds for the probes of all tunnels together. A tunnel whose turn did not come
        before it is reported as not probed (a problem naming this option), never as dead.
      - With the defaults, a quarter of 200 tunnels dead costs one 15 s wait, not 50.
    type: float
    default: 60
extends_documentation_fragment:
  - sitelink.gateway.attributes
  - sitelink.gateway.attributes.platform
attributes:
  check_mode:
    support: full
    details: The module only reads; it runs the same in check mode.
  diff_mode:
    support: none
  platform:
    platforms: linux
requirements:
  - iproute2 with JSON output (C(ip -j)) and C(ip xfrm), systemd, C(nft)
notes:
  - Needs root (C(become)) to read the nftables ruleset and the IPsec SAs and policies.
  - A peer that filters ICMP echo (an external peer, say) shows as C(no answer).
seealso:
  - module: sitelink.gateway.health_report
"""

EXAMPLES = r"""
- name: Read this gateway's health, compared with its plan
  sitelink.gateway.gateway_health:
    plan: "{{ office_plan }}"
  register: sitelink_health
  become: true

- name: Fewer pings on a hub with many tunnels
  sitelink.gateway.gateway_health:
    plan: "{{ office_plan }}"
    ping_count: 1
"""

RETURN = r"""
office:
  description: The office this gateway serves.
  returned: success
  type: str
  sample: brooklyn
healthy:
  description: Whether every check passed.
  returned: success
  type: bool
  sample: false
problems:
  description: What failed, one sentence each, naming the tunnel, route, service or table.
  returned: success
  type: list
  elements: str
  sample:
    - "tunnel sl-manhattan: no answer from 192.168.1.126"
    - "route 192.168.1.0/24: missing (should go via sl-manhattan)"
    - "tunnel sl-manhattan: no ESP SA from 172.16.1.12 (IPsec not established)"
    - "firewall: table inet sitelink_firewall missing"
    - >-
      relay: peer relay 192.168.1.126 (manhattan) is stuck: its last 12 datagrams were all
      refused as stale, its epoch 1795990000 is older than the 1796000000 held here (its state
      or clock was reset); reset it: ansible-playbook -i <inventory> site.yml --limit
      brooklyn-gw -e '{"relay_forget_senders": ["192.168.1.126"]}'
tunnels:
  description: One entry per planned tunnel.
  returned: success
  type: list
  elements: dict
  sample:
    - name: sl-manhattan
      peer: manhattan
      peer_address: 192.168.1.126
      present: true
      up: true
      path: sl-manhattan
      ping: {transmitted: 3, received: 3, rtt_avg_ms: 0.61}
      ok: true
      problems: []
probes:
  description:
    - How the tunnels were probed - C(tunnels) planned, C(probed) (echo requests sent through
      them; the others had a problem already, or their turn did not come before the deadline),
      C(seconds) all the probes took, and the O(probe_deadline) and O(probe_concurrency) used.
  returned: success
  type: dict
  sample: {tunnels: 200, probed: 200, seconds: 3.2, deadline: 60.0, concurrency: 64}
routes:
  description:
    - The planned prefixes found via their tunnel (C(ok)) out of C(total); C(failed)
      lists the others with the devices they go through instead.
    - With two hubs, a tunnel's prefixes found on its C(backup) tunnel are where the
      failover hook put them (the link is down) and count as C(ok); C(carriers) lists each
      tunnel with a backup - C(tunnel), C(backup), C(peer), C(routes) (its prefixes),
      C(carrier) (the tunnel that carries them now) and C(carrier_peer).
  returned: success
  type: dict
  sample: {total: 1, ok: 1, failed: [], problems: [], carriers: []}
ipsec:
  description:
    - The IPsec checks, against the plan's C(protection).
    - No key, SPI or line of C(ip xfrm) output is ever returned.
  returned: success
  type: dict
  contains:
    protection:
      description: The plan's C(protection), V(ipsec) or V(none).
      type: str
      sample: ipsec
    plain_ipip:
      description:
        - Whether the links are plain IPIP (C(protection) V(none)). Not a problem;
          M(sitelink.gateway.health_report) warns about it.
      type: bool
      sample: false
    unprotected:
      description:
        - "Where the plan's C(protection) is V(ipsec), the links that are plain IPIP all the
          same, to external peers with C(protection: none): C(name) (the tunnel) and C(peer)
          each. Not a problem; M(sitelink.gateway.health_report) warns about each peer."
      type: list
      elements: dict
      sample: []
    connections:
      description:
        - With IPsec, one entry per connection of the plan - C(name), C(peer), C(local) and
          C(remote), then C(sa) and C(policy), each with C(out) and C(in), true where the
          kernel holds it (V(null) where it could not be read), C(keys), how many keys the
          link accepts (more than one - a key rotation not finished; V(null) where the file
          could not be read), and the entry's C(ok) and C(problems).
        - Empty where the plan's C(protection) is V(none), but for links to external peers
          that chose C(ipsec).
      type: list
      elements: dict
    ok:
      description: Whether every IPsec check passed (always true with C(protection) V(none)).
      type: bool
      sample: true
    problems:
      description: What failed, one sentence each.
      type: list
      elements: str
      sample: []
  sample:
    protection: ipsec
    plain_ipip: false
    connections:
      - name: sl-manhattan
        peer: manhattan
        local: 172.17.2.10
        remote: 172.16.1.12
        sa: {out: true, in: true}
        policy: {out: true, in: true}
        ok: true
        problems: []
    ok: true
    problems: []
firewall:
  description: Whether the firewall table is present (V(null) when C(nft) could not list it)
    and carries the collection's comment (C(ours)), with the digest that comment names.
  returned: success
  type: dict
  sample:
    table: inet sitelink_firewall
    present: true
    ours: true
    digest: 3f2a9c0d1e4b5a67
    ok: true
    problems: []
relay:
  description:
    - The relay's unit state, the plan's C(wire) (C(sitelink1) or C(raw)) and, where it should
      run, the age of its status file and its counters - per port (C(dropped) and
      C(send_errors) summed over their reasons, which C(dropped_by_reason) and
      C(send_errors_by_reason) keep) and per peer relay (C(peers), by address - its office,
      C(received), C(accepted), C(sent), C(dropped) and C(dropped_by_reason), and from a
      relay that counts it C(stale_streak), its last datagrams in a row refused as C(stale),
      and C(keys), how many keys it accepts from that peer (more than one - a key rotation
      not finished)).
    - "Drop reasons include C(auth) (failed authentication), C(replay), C(stale),
      C(rate_limited), C(cut_off) and C(storm) (storm control)."
    - "C(replay) - where the relay keeps its replay windows (C(state_dir)), for how many
      C(senders), C(save_failures) and the last C(save_error) while saving them fails
      (V(null) when it works), and C(forgotten_total), the senders it was asked to forget;
      V(null) from a relay too old to report it."
    - "C(stuck) - the senders the relay refuses datagram after datagram, each with its
      C(sender) address, C(office) (where it is a peer relay), C(reason) (C(stale) or
      C(future)), C(streak) (datagrams in a row), C(epoch) (the one held) and C(offered)
      (the one last refused). Each is in RV(problems) with the command that resets it."
  returned: success
  type: dict
  sample:
    expected: true
    unit: sitelink-relay.service
    state: active
    wire: sitelink1
    age: 2.4
    stale: false
    ports:
      "6799": {received: 12, forwarded: 12, rebroadcast: 0, transited: 0, dropped: 3,
               send_errors: 0, dropped_by_reason: {repeated: 3}, send_errors_by_reason: {}}
    peers:
      192.168.2.126: {office: brooklyn, received: 0, accepted: 0, sent: 12, dropped: 0,
                      dropped_by_reason: {}, stale_streak: 0, keys: 1}
    replay: {state_dir: /var/lib/sitelink-relay, senders: 1, save_failures: 0, save_error: null,
             forgotten_total: 0}
    stuck: []
    ok: true
    problems: []
masquerade:
  description: Whether the SNAT table is wanted and present, and what it translates.
  returned: success
  type: dict
  sample:
    expected: true
    table: ip sitelink_masquerade
    present: true
    address: 192.168.1.126
    interface: eth0
    sources: [192.168.2.0/24]
    ok: true
    problems: []
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402  (Ansible convention: docs first)
from ansible_collections.sitelink.gateway.plugins.module_utils.health import (  # noqa: E402
    FIREWALL_TABLE,
    IPSEC_CONFIG,
    MASQUERADE_TABLE,
    PING_COUNT,
    PROBE_CONCURRENCY,
    PROBE_DEADLINE,
    RELAY_STATUS_FILE,
    RELAY_UNIT,
    run_module,
)


def build_module():
    return AnsibleModule(
        argument_spec=dict(
            plan=dict(type="dict", required=True),
            relay_unit=dict(type="str", default=RELAY_UNIT),
            relay_status_file=dict(type="path", default=RELAY_STATUS_FILE),
            masquerade_table=dict(type="str", default=MASQUERADE_TABLE),
            firewall_table=dict(type="str", default=FIREWALL_TABLE),
            ipsec_config=dict(type="path", default=IPSEC_CONFIG),
            ping_count=dict(type="int", default=PING_COUNT),
            probe_concurrency=dict(type="int", default=PROBE_CONCURRENCY),
            probe_deadline=dict(type="float", default=PROBE_DEADLINE),
            host=dict(type="str"),
        ),
        supports_check_mode=True,
    )


def main():
    run_module(build_module())


if __name__ == "__main__":
    main()
