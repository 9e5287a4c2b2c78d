#!/usr/bin/python
# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: nft_table
short_description: One nftables table owned by the collection, validated, atomic, persistent
version_added: 0.1.0
author: sitelink.gateway developers (!UNKNOWN)
description:
  - Manages exactly one nftables table. The host's other tables are never flushed or changed.
  - The table definition is written to O(path) as a file that replaces the table in one
    transaction, checked with C(nft -c) before anything changes, and loaded with C(nft -f).
  - The table carries a comment with a digest of its definition, so the module can tell
    whether the kernel holds the current version without reloading it. Edits made by hand
    inside the table are not detected.
  - A systemd oneshot unit (O(unit)) loads the file at boot, after C(nftables.service)
    (whose C(flush ruleset) would otherwise wipe it), and again whenever C(nftables.service)
    is restarted. The module writes and enables it.
  - With O(state=absent) the table, the file and the unit are removed.
  - With O(rollback_timeout), a change to the live table, the rules file or the unit first
    saves the current rules file, unit file and enablement link and the live table
    (C(nft list table)). Unconfirmed, the timer puts the files back, runs
    C(systemctl daemon-reload), starts or stops the unit as it was and loads the saved table
    in one transaction (or deletes the table when there was none). When the change joins a
    pending rollback, the first saved state of the table wins until the rollback is confirmed
    or has run.
options:
  name:
    description: Table name.
    type: str
    required: true
  family:
    description: Table family.
    type: str
    default: ip
    choices: [ip, ip6, inet, arp, bridge, netdev]
  body:
    description:
      - What goes inside C(table FAMILY NAME { ... }) - chains, sets, rules.
      - Must not set the table's comment, which the module owns.
    type: str
    default: ""
  state:
    description: Whether the table should exist.
    type: str
    default: present
    choices: [present, absent]
  path:
    description: The rules file, loaded at boot.
    type: path
    required: true
  unit:
    description:
      - Name of the boot unit.
      - Defaults to the table name with C(-) for C(_), plus C(.service).
    type: str
extends_documentation_fragment:
  - sitelink.gateway.attributes
  - sitelink.gateway.attributes.platform
  - sitelink.gateway.rollback
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  platform:
    platforms: linux
notes:
  - Needs C(nft) and systemd on the host, and root.
"""

EXAMPLES = r"""
- name: SNAT the other offices to this gateway's LAN address
  sitelink.gateway.nft_table:
    name: sitelink_masquerade
    path: /etc/sitelink/masquerade.nft
    body: |
      chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth0" ip saddr { 192.168.2.0/24 } counter snat ip to 192.168.1.126
      }

- name: A firewall change the gateway takes back unless a new connection confirms it
  sitelink.gateway.nft_table:
    name: sitelink_firewall
    family: inet
    path: /etc/sitelink/firewall.nft
    body: "{{ lookup('ansible.builtin.template', 'firewall.nft.j2') }}"
    rollback_timeout: 120

- name: Confirm over a new connection (or fail, and the gateway rolls back by itself)
  sitelink.gateway.gateway_confirm:

- name: Remove it again
  sitelink.gateway.nft_table:
    name: sitelink_masquerade
    path: /etc/sitelink/masquerade.nft
    state: absent
"""

RETURN = r"""
table:
  description: Family and name of the table.
  returned: always
  type: str
  sample: ip sitelink_masquerade
steps:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample:
    - write /etc/sitelink/masquerade.nft
    - write /etc/systemd/system/sitelink-masquerade.service
    - systemctl enable sitelink-masquerade.service
    - nft -f /etc/sitelink/masquerade.nft
path:
  description: The rules file.
  returned: always
  type: str
  sample: /etc/sitelink/masquerade.nft
unit:
  description: The boot unit.
  returned: always
  type: str
  sample: sitelink-masquerade.service
rollback:
  description:
    - The pending rollback this call armed or joined, as C(Checkpoint.arm) returns it.
    - C(added) is false when this table was already saved by an earlier unconfirmed change.
  returned: when O(rollback_timeout) is set and the call changed something
  type: dict
  sample:
    unit: sitelink-rollback.timer
    deadline: 1767355420
    armed_at: 1767355300.125
    resources: [nft ip sitelink_masquerade]
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
        resources: [nft ip sitelink_masquerade]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402  (Ansible convention: docs first)
from ansible_collections.sitelink.gateway.plugins.module_utils.nftables import (  # noqa: E402
    FAMILIES,
    run_module,
)


def build_module():
    return AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True),
            family=dict(type="str", default="ip", choices=list(FAMILIES)),
            body=dict(type="str", default=""),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            path=dict(type="path", required=True),
            unit=dict(type="str"),
            rollback_timeout=dict(type="int", default=0),
        ),
        supports_check_mode=True,
    )


def main():
    run_module(build_module())


if __name__ == "__main__":
    main()
