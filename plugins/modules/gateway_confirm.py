#!/usr/bin/python
# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gateway_confirm
short_description: Confirm a gateway change over a new connection, cancelling its rollback
version_added: 0.2.0
author: sitelink.gateway developers (!UNKNOWN)
description:
  - The last step of a lockout-proof change (candidate, apply, confirm - as VyOS
    C(commit-confirm)). M(sitelink.gateway.nft_table) and M(sitelink.gateway.ipip_tunnel) with
    C(rollback_timeout) save the state they replace and start the transient
    C(sitelink-rollback.timer) on the gateway before they change anything, and set the
    C(sitelink_rollback) fact. Unless this task confirms in time, the gateway restores that
    state by itself.
  - Does nothing, and does not connect, on a host without a pending C(sitelink_rollback)
    fact (the task reports V(skipped)).
  - Otherwise it first drops the connection the play has to the host (for SSH, the
    ControlPersist master is stopped with C(ssh -O stop)), because a connection established
    before a firewall change survives a firewall that now refuses new SSH connections. It then
    opens a new one and, on the gateway, stops the timer and deletes the checkpoint
    (reported as a change). Connection failures are retried every 2 seconds for O(timeout) seconds.
  - It fails, naming the host and when the gateway restores its previous state by itself, when
    no new connection succeeds in time, and when the gateway has already rolled back (its
    C(/run/sitelink/rollback.json) records a rollback at or after O(armed_at)).
  - On success it sets C(sitelink_rollback) to an empty dict. A failed task sets no facts; a
    host that failed it has left the play anyway.
options:
  timeout:
    description:
      - Seconds to keep trying to open a new connection.
      - Defaults to the time left until 10 seconds before the C(deadline) of the
        C(sitelink_rollback) fact (one attempt at least). This assumes the controller's clock
        and the gateway's agree (NTP).
    type: int
  armed_at:
    description:
      - When the rollback was armed (epoch seconds on the gateway); a rollback recorded at or
        after it fails the task.
      - Defaults to C(armed_at) of the C(sitelink_rollback) fact.
    type: float
extends_documentation_fragment:
  - sitelink.gateway.attributes
  - sitelink.gateway.attributes.action
  - sitelink.gateway.attributes.platform
attributes:
  action:
    details: The action plugin reconnects, then runs the module on the gateway.
  check_mode:
    support: full
    details: Does nothing in check mode (no change was applied, so none was armed); the task
      reports V(skipped).
  diff_mode:
    support: none
  platform:
    platforms: linux
notes:
  - Needs systemd on the host, and root.
  - The checkpoint and C(rollback.json) are on C(/run), a tmpfs. A reboot before the confirm
    boots the new configuration and forgets the rollback.
  - The rollback logs to the journal - C(journalctl -u sitelink-rollback).
  - With fact caching, a C(sitelink_rollback) fact left by a run that could not confirm may be
    seen by a later run.
seealso:
  - module: sitelink.gateway.nft_table
  - module: sitelink.gateway.ipip_tunnel
"""

EXAMPLES = r"""
- name: Change the firewall; the gateway takes the change back unless it is confirmed
  sitelink.gateway.nft_table:
    name: sitelink_firewall
    family: inet
    path: /etc/sitelink/firewall.nft
    body: "{{ lookup('ansible.builtin.template', 'firewall.nft.j2') }}"
    rollback_timeout: 120

- name: Confirm over a new connection (or fail, and the gateway rolls back by itself)
  sitelink.gateway.gateway_confirm:

- name: Give up reconnecting after 30 seconds
  sitelink.gateway.gateway_confirm:
    timeout: 30
"""

RETURN = r"""
confirmed:
  description:
    - What was pending and is now cancelled - C(confirmed) (whether a checkpoint was pending),
      C(unit), and when one was, its C(deadline), C(armed_at) and C(resources).
  returned: success
  type: dict
  sample:
    confirmed: true
    unit: sitelink-rollback.timer
    deadline: 1767355420
    armed_at: 1767355300.125
    resources: [tunnels, nft inet sitelink_firewall]
rolled_back:
  description: Whether the gateway had already restored its previous state by itself.
  returned: when the module ran on the host
  type: bool
  sample: false
rollback:
  description:
    - The content of C(/run/sitelink/rollback.json) - C(rolled_back_at), C(armed_at),
      C(deadline), and per resource its C(key), C(ok) and C(errors).
  returned: when RV(rolled_back) is true
  type: dict
  sample:
    rolled_back_at: 1767355421.52
    armed_at: 1767355300.125
    deadline: 1767355420
    resources:
      - key: nft inet sitelink_firewall
        ok: true
        errors: []
attempts:
  description: How many connections were tried.
  returned: when the host had a pending rollback
  type: int
  sample: 1
elapsed:
  description: Seconds spent reconnecting and confirming.
  returned: when the host had a pending rollback
  type: int
  sample: 3
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402  (Ansible convention: docs first)
from ansible_collections.sitelink.gateway.plugins.module_utils.checkpoint import (  # noqa: E402
    run_confirm,
)


def build_module():
    return AnsibleModule(
        argument_spec=dict(
            timeout=dict(type="int"),
            armed_at=dict(type="float"),
        ),
        supports_check_mode=True,
    )


def main():
    run_confirm(build_module())


if __name__ == "__main__":
    main()
