#!/usr/bin/python
# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The work is done on the controller by the action plugin of the same name
# (plugins/action/health_report.py); this file carries its documentation.

from __future__ import annotations

DOCUMENTATION = r"""
module: health_report
short_description: One health report of every office, from each gateway's own checks
version_added: 0.2.0
author: sitelink.gateway developers (!UNKNOWN)
description:
  - Gathers the M(sitelink.gateway.gateway_health) result registered on every host of O(hosts)
    into one report, on the controller, and renders it as one table (an office per row -
    office, host, tunnels passing traffic, routes present, protection, firewall, relay, NAT,
    verdict).
  - "The protection column says 'ipsec ok', 'ipsec: N problems' or 'ipsec (no links)', or
    'NONE (plain IPIP)' where the deployment runs C(office_tunnel_protection: none). Plain
    IPIP is not a problem, but it is a warning - RV(warnings), shown once on the controller;
    so is a relay on the raw wire (C(office_relay_wire: raw))."
  - "Links to external peers that chose otherwise (C(office_external_peers[].protection)):
    'ipsec ok, N PLAIN' where N of an office's links are plain IPIP to such peers (a warning
    per peer), 'NONE, ipsec ok' where a plain deployment protects some of them."
  - "Under the table, the state of a key rotation - office by office, the IPsec links and the
    peer relays that still accept more than one key (a step of the rotation not followed by
    the next yet); nothing when no rotation is under way. Not a problem."
  - "With two hubs, the hub each office's traffic goes through now (the peer whose tunnel
    carries most of its routes), and the links whose routes went to the other hub because
    they are down (failed over)."
  - "A second table shows the relay's counters, a row per office and port - received,
    relayed (forwarded and passed on), re-broadcast, dropped, and among the drops the
    authentication failures, replays (and stale datagrams) and storm control's. Drops never
    make an office unhealthy, authentication failures included (anyone who can reach a relay
    port could otherwise make any office unhealthy); the table says so, and the JSON report
    has every reason, per port and per peer relay."
  - Every host of O(hosts) gets a row. A gateway that was unreachable, whose check failed, or
    that has no result is unhealthy, with the reason in its problems; it is never skipped.
  - With O(output), writes the report as JSON, replaced in one rename.
  - Does not fail when offices are unhealthy; C(playbooks/verify.yml) asserts on RV(healthy)
    and prints RV(problems).
options:
  hosts:
    description: The hosts that were checked, normally C(ansible_play_hosts_all) of the play.
    type: list
    elements: str
    required: true
  result_var:
    description:
      - The variable each host's M(sitelink.gateway.gateway_health) result was registered as.
      - The office name of a host without a result comes from its C(office_plan), else the host.
    type: str
    default: sitelink_health
  output:
    description: Where to write the JSON report (a relative path is from the current directory).
    type: path
extends_documentation_fragment:
  - sitelink.gateway.attributes
  - sitelink.gateway.attributes.action
  - sitelink.gateway.attributes.platform
attributes:
  action:
    details: The report is built by the action plugin, on the controller.
  check_mode:
    support: full
    details: Works the same in check mode; the report is written.
  diff_mode:
    support: none
  platform:
    platforms: all
    details: Runs on the controller only.
notes:
  - Runs on the controller only; never connects to a gateway.
seealso:
  - module: sitelink.gateway.gateway_health
"""

EXAMPLES = r"""
- name: Report on every checked gateway
  sitelink.gateway.health_report:
    hosts: "{{ ansible_play_hosts_all }}"
    output: ./verify-report.json
  run_once: true
  delegate_to: localhost
  register: sitelink_report

- name: Show the table
  ansible.builtin.debug:
    msg: "{{ sitelink_report.table }}"
  run_once: true

- name: Fail naming every unhealthy office and what failed
  ansible.builtin.assert:
    that: sitelink_report.healthy
    fail_msg: "{{ sitelink_report.summary }}"
  run_once: true
"""

RETURN = r"""
healthy:
  description: Whether every office of O(hosts) is healthy.
  returned: success
  type: bool
  sample: false
warnings:
  description:
    - "One warning naming the offices whose links are plain IPIP
      (C(office_tunnel_protection: none)), and one naming those whose relay runs the raw wire
      (C(office_relay_wire: raw)), shown as Ansible warnings on the controller."
    - "One per external peer whose links are plain IPIP by its own choice (C(protection:
      none) in C(office_external_peers)), naming the offices linked to it."
  returned: when some links are plain IPIP, or some relays raw
  type: list
  elements: str
  sample:
    - "office_tunnel_protection: none: the links of every office are plain IPIP, readable by
      anyone on the path and forgeable by anyone on the Internet (RFC 2003 has no
      authentication)"
problems:
  description: "Every problem, as C(office: what failed)."
  returned: success
  type: list
  elements: str
  sample:
    - "brooklyn: tunnel sl-manhattan: no answer from 192.168.1.126"
    - "brooklyn: tunnel sl-manhattan: no ESP SA to or from 172.16.1.12 (IPsec not established)"
    - "queens: unreachable (Failed to connect to the host via ssh: Connection refused)"
summary:
  description:
    - "C(N of M offices healthy), or C(N of M offices unhealthy:) followed by every problem on a
      line of its own, as C(  - office: what failed)."
  returned: success
  type: str
  sample: |-
    1 of 2 offices unhealthy:
      - brooklyn: tunnel sl-manhattan: no answer from 192.168.1.126
table:
  description: The summary table, an office per row, as text.
  returned: success
  type: str
  sample: |-
    office     host          tunnels  routes  protection        firewall  relay               NAT            verdict
    ---------  ------------  -------  ------  ----------------  --------  ------------------  -------------  ---------
    brooklyn   brooklyn-gw   0/1      1/1     ipsec: 1 problem  ok        active 12/12/0/0/3  off            UNHEALTHY
    manhattan  manhattan-gw  1/1      1/1     ipsec ok          ok        active 12/12/0/0/3  ok (1 source)  ok
    1 of 2 offices healthy
    relay counters: received/forwarded/rebroadcast/transited/dropped, all ports

    office     port  received  relayed  rebroadcast  dropped  auth  replay  rate-limited
    ---------  ----  --------  -------  -----------  -------  ----  ------  ------------
    brooklyn   6799  140       12       0            128      90    9       26
    manhattan  6799  12        12       0            3        0     0       0
    relay counters by port: relayed = forwarded + transited; auth, replay (with stale) and
    rate-limited (storm control) are among the dropped. Drops never make an office unhealthy,
    auth failures included: anyone who reaches a relay port can cause them (JSON: every reason)
report:
  description:
    - "The report, as written to O(output): C(version), C(generated) (UTC, ISO 8601),
      C(healthy), C(counts) (C(offices), C(healthy), C(unhealthy)), C(problems),
      C(warnings), C(rotation) (a list of C({office, ipsec, relay}) - the tunnels and the
      peer relays' offices that still accept a second key), C(failover) (a list of
      C({office, uses, failed_over}) - with two hubs, the hub each office uses now and the
      peers whose links are failed over), and C(offices), one entry per office sorted by
      name."
    - "Each office entry: C(office), C(host), C(verdict) (C(healthy), C(unhealthy),
      C(unreachable), C(failed) or C(no result)), C(healthy), C(problems), and the
      M(sitelink.gateway.gateway_health) sections C(tunnels), C(probes), C(routes), C(ipsec),
      C(firewall), C(relay) (with every counter per port and per peer relay, drops by reason)
      and C(masquerade) (V(null) when the gateway gave no result)."
  returned: success
  type: dict
output:
  description: Absolute path of the JSON report written.
  returned: when O(output) is set
  type: str
  sample: /home/admin/verify-report.json
"""  # noqa: E501 (the sample table is as wide as the real one)
