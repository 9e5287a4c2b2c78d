#!/usr/bin/python
# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: ipip_tunnel
short_description: Reconcile the IPIP tunnels of a Linux gateway with a desired set
description:
  - Makes the IPIP (IPv4-in-IPv4) tunnels owned by this collection on a Linux host match
    O(tunnels) exactly, in one call, using iproute2 (C(ip)).
  - A link is owned by this collection if and only if its alias (C(ifalias)) starts with
    C(sitelink-gateway). Links without that marker are never modified or deleted.
  - A missing tunnel is created. A tunnel whose O(tunnels[].local), O(tunnels[].remote) or
    O(tunnels[].ttl) differ is deleted and recreated (only that tunnel). MTU, alias and
    link state are changed in place. The tunnel carries exactly one IPv4 address
    (O(tunnels[].address)/32) and, in the main routing table, exactly the routes in
    O(tunnels[].routes) with that address as source.
  - The whole input is validated, and every O(tunnels[].local) is checked to be
    configured on the host, before anything is changed.
  - Optionally writes an C(ip -batch) file that recreates the desired tunnels at boot.
  - With O(state=absent) it removes instead, in one call, every tunnel it owns, the boot file
    and the boot unit.
  - With O(rollback_timeout), a change to live tunnels, the boot file or the boot unit (with
    O(state=absent) too) first saves the current O(persist_path), unit file and enablement
    link and the inverse of the change. The inverse is an C(ip -force -batch) file that
    deletes every tunnel the change creates or modifies and rebuilds each one that existed,
    exactly as it was (addresses, routes, MTU, TTL, alias, link state), and puts back routes
    of other devices that a new tunnel route replaced. Tunnels the change does not touch, and
    links without the ownership marker, are never named in it. Changes that join a pending
    rollback add their own inverses, undone newest first, back to the state before the first
    change.
version_added: 0.1.0
author: sitelink.gateway developers (!UNKNOWN)
requirements:
  - iproute2 with JSON output (C(ip -j)), for example Debian 12
  - the C(ipip) kernel module (loaded automatically by C(ip link add ... type ipip))
extends_documentation_fragment:
  - sitelink.gateway.attributes
  - sitelink.gateway.attributes.platform
  - sitelink.gateway.rollback
attributes:
  check_mode:
    support: full
    details: Computes and reports the commands that would run; changes nothing.
  diff_mode:
    support: full
    details: Shows the owned tunnels, the persistence file and (when it changes) the boot unit
      before and after.
  platform:
    platforms: linux
options:
  state:
    description:
      - V(present) makes the owned tunnels match O(tunnels) and persists them.
      - V(absent) deletes every tunnel this collection owns (their addresses and routes go
        with them), then the O(persist_path) file (only if it starts with the header the
        module writes; otherwise it is kept, with a warning), then the O(boot_unit) (stopped,
        disabled, deleted, C(systemctl daemon-reload)), and finally the directory of
        O(persist_path) if nothing is left in it. Links without the ownership marker are
        never touched. O(tunnels) must be empty; O(purge) is not used.
    type: str
    choices: [present, absent]
    default: present
    version_added: 0.2.0
  tunnels:
    description:
      - The complete desired set of tunnels owned by this collection on the host.
      - An empty list with O(purge=true) removes every owned tunnel, but keeps the boot file
        (with no tunnels) and its unit; O(state=absent) removes those too.
      - Must be empty with O(state=absent).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - Interface name, 1 to 15 characters of C(A-Z a-z 0-9 _ . -).
          - If a link with this name exists and is not an owned ipip tunnel, the module fails.
        type: str
        required: true
      local:
        description:
          - Outer source address (this gateway's WAN address). Must be configured on the host.
        type: str
        required: true
      remote:
        description:
          - Outer destination address (the peer gateway's WAN address). Must be unique.
        type: str
        required: true
      address:
        description:
          - Inner IPv4 address put on the tunnel as a /32 (an explicit C(/32) suffix is
            accepted) and used as source of O(tunnels[].routes).
        type: str
        required: true
      routes:
        description:
          - IPv4 prefixes routed into the tunnel (main table). A prefix may appear in only
            one tunnel. Host bits must be zero.
        type: list
        elements: str
        default: []
      mtu:
        description:
          - Tunnel MTU; normally the WAN MTU minus 20 bytes of outer header.
        type: int
        default: 1480
      ttl:
        description:
          - TTL of the outer header, C(0) means inherit from the inner packet.
        type: int
        default: 64
      description:
        description:
          - "Free text stored in the link alias after the ownership marker, as
            C(sitelink-gateway: <description>)."
          - Must not contain quotes, C(#), backslashes or control characters (the boot file
            format cannot escape them).
        type: str
        default: ''
      backup:
        description:
          - Hub failover. The name of another tunnel in O(tunnels) that carries this
            tunnel's O(tunnels[].routes) while this tunnel's link is down and the backup's
            is up (two hubs; the planner sets it).
          - strongSwan says when a link goes down or up, through the hook this module
            writes to C(/usr/local/libexec/sitelink-failover) with its configuration in
            C(/etc/sitelink/failover.json) (with O(persist_path) only); the hook moves the
            routes. A route found on this tunnel's backup is where the hook put it, and stays.
        type: str
        version_added: 0.2.0
  purge:
    description:
      - Delete owned tunnels that are not listed in O(tunnels).
    type: bool
    default: true
  persist_path:
    description:
      - File written with C(ip -batch) commands that recreate O(tunnels) on a boot without
        tunnels, for a oneshot unit running C(ip -batch FILE).
      - With no tunnels desired the file holds only comments, so C(ip -batch) still succeeds.
      - Owned tunnels kept because of O(purge=false) are not written to the file.
      - The directory is created with mode 0755 if missing; the file is written atomically with
        mode 0644, only when its content changes.
      - Set to V(null) or an empty string to not persist.
    type: str
    default: /etc/sitelink/tunnels.batch
  boot_unit:
    description:
      - systemd oneshot unit that runs C(ip -batch) on O(persist_path) at boot, before
        C(network.target). The module writes it to C(/etc/systemd/system) and enables it, so
        one call both applies and persists.
      - It runs at boot only; C(systemctl status) shows it inactive until the next boot.
      - Set to V(null) or an empty string to manage no unit. Ignored without O(persist_path).
    type: str
    default: sitelink-tunnels.service
notes:
  - Only changing commands are reported in RV(commands); the read-only C(ip -j) calls are not.
  - State is read with C(ip -j -d link show), C(ip -j address show) and
    C(ip -j route show table main).
seealso:
  - name: ip-link(8)
    description: iproute2 link configuration, including ipip tunnels.
    link: https://man7.org/linux/man-pages/man8/ip-link.8.html
"""

EXAMPLES = r"""
- name: Tunnel to the Brooklyn office
  sitelink.gateway.ipip_tunnel:
    tunnels:
      - name: sl-brooklyn
        local: 172.16.1.12
        remote: 172.17.2.10
        address: 192.168.1.126
        routes: [192.168.2.0/24]
        mtu: 1480
        ttl: 64
        description: peer brooklyn

- name: Change the tunnels; the gateway takes the change back unless it is confirmed
  sitelink.gateway.ipip_tunnel:
    tunnels: "{{ tunnel_peers }}"
    rollback_timeout: 120

- name: Confirm over a new connection (or fail, and the gateway rolls back by itself)
  sitelink.gateway.gateway_confirm:

- name: Remove every tunnel managed by this collection, keep the boot file valid
  sitelink.gateway.ipip_tunnel:
    tunnels: []

- name: Take every tunnel of this collection off the host, with its boot file and unit
  sitelink.gateway.ipip_tunnel:
    state: absent
    persist_path: /etc/sitelink/tunnels.batch
    boot_unit: sitelink-tunnels.service

- name: Add a tunnel without touching other owned ones, no boot file
  sitelink.gateway.ipip_tunnel:
    tunnels:
      - name: sl-queens
        local: 172.16.1.12
        remote: 172.17.3.10
        address: 192.168.1.126
    purge: false
    persist_path: null
"""

RETURN = r"""
tunnels:
  description: The desired tunnels as applied, validated and normalised, sorted by name.
  returned: success
  type: list
  elements: dict
  sample:
    - name: sl-brooklyn
      local: 172.16.1.12
      remote: 172.17.2.10
      address: 192.168.1.126
      routes: [192.168.2.0/24]
      mtu: 1480
      ttl: 64
      description: peer brooklyn
commands:
  description:
    - The changing C(ip) command lines run, in order (in check mode, those that would run).
    - On failure, the commands that ran before the failing one.
  returned: always
  type: list
  elements: str
  sample:
    - ip link add name sl-brooklyn type ipip local 172.16.1.12 remote 172.17.2.10 ttl 64
    - ip link set dev sl-brooklyn mtu 1480 alias "sitelink-gateway: peer brooklyn" up
    - ip address add 192.168.1.126/32 dev sl-brooklyn
    - ip route replace 192.168.2.0/24 dev sl-brooklyn src 192.168.1.126
removed:
  description:
    - Names of owned tunnels deleted because they are not desired (O(purge=true)), or every
      owned tunnel with O(state=absent).
  returned: always
  type: list
  elements: str
  sample: [sl-oldpeer]
persist_path:
  description: The boot-time file managed, or V(null) when not persisting.
  returned: always
  type: str
  sample: /etc/sitelink/tunnels.batch
boot_unit_changed:
  description:
    - Whether the boot unit was written or enabled (or would be in check mode).
    - With O(state=absent), whether it was (or would be) stopped, disabled and deleted.
  returned: when O(boot_unit) and O(persist_path) are set
  type: bool
  sample: false
persist_changed:
  description:
    - Whether the boot-time file content changed (or would change in check mode).
    - With O(state=absent), whether the file was (or would be) deleted.
  returned: when O(persist_path) is set
  type: bool
  sample: false
failover_changed:
  description:
    - Whether the failover hook's configuration (C(/etc/sitelink/failover.json)) changed
      (or would change in check mode), written when a tunnel has O(tunnels[].backup).
  returned: when O(persist_path) is set
  type: bool
  sample: false
  version_added: 0.2.0
failover:
  description:
    - What the failover hook did when this call changed something - its routes put
      where the links' state wants them (as the hook logs it).
  returned: when a tunnel has O(tunnels[].backup) and the call changed something
  type: str
  sample: "sitelink failover: sync -: 0 routes moved"
  version_added: 0.2.0
removed_paths:
  description:
    - With O(state=absent), the files and directory deleted (or that would be in check mode)
      - the boot file, the unit file, the boot file's directory.
  returned: when O(state=absent)
  type: list
  elements: str
  sample: [/etc/sitelink/tunnels.batch, /etc/systemd/system/sitelink-tunnels.service, /etc/sitelink]
  version_added: 0.2.0
rollback:
  description:
    - The pending rollback this call armed or joined, as C(Checkpoint.arm) returns it.
  returned: when O(rollback_timeout) is set and the call changed something
  type: dict
  sample:
    unit: sitelink-rollback.timer
    deadline: 1767355420
    armed_at: 1767355300.125
    resources: [tunnels]
    added: true
  version_added: 0.2.0
ansible_facts:
  description: Facts set on the host.
  returned: when O(rollback_timeout) is set and the call changed something
  type: dict
  version_added: 0.2.0
  contains:
    sitelink_rollback:
      description:
        - The pending rollback, which M(sitelink.gateway.gateway_confirm) cancels - C(unit),
          C(deadline) and C(armed_at) (epoch seconds, gateway clock) and C(resources).
      type: dict
      sample:
        unit: sitelink-rollback.timer
        deadline: 1767355420
        armed_at: 1767355300.125
        resources: [tunnels]
failed_command:
  description: The C(ip) command line that failed.
  returned: when an ip command fails
  type: str
  sample: ip link add name sl-brooklyn type ipip local 172.16.1.12 remote 172.17.2.10 ttl 64
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402  (Ansible convention: docs first)
from ansible_collections.sitelink.gateway.plugins.module_utils.tunnel import (  # noqa: E402
    DEFAULT_MTU,
    DEFAULT_PERSIST_PATH,
    DEFAULT_TTL,
    run_module,
)

TUNNEL_OPTIONS = dict(
    name=dict(type="str", required=True),
    local=dict(type="str", required=True),
    remote=dict(type="str", required=True),
    address=dict(type="str", required=True),
    routes=dict(type="list", elements="str", default=[]),
    mtu=dict(type="int", default=DEFAULT_MTU),
    ttl=dict(type="int", default=DEFAULT_TTL),
    description=dict(type="str", default=""),
    backup=dict(type="str"),
)


def build_module():
    # Factory so tests can build the module with the real argument_spec.
    return AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", default="present", choices=["present", "absent"]),
            tunnels=dict(type="list", elements="dict", default=[], options=TUNNEL_OPTIONS),
            purge=dict(type="bool", default=True),
            persist_path=dict(type="str", default=DEFAULT_PERSIST_PATH),
            boot_unit=dict(type="str", default="sitelink-tunnels.service"),
            rollback_timeout=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )


def main():
    run_module(build_module())


if __name__ == "__main__":
    main()
