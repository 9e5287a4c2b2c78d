#!/usr/bin/python
# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: ipsec_links
short_description: IPsec ESP (strongSwan, IKEv2) around the IPIP of every link of a gateway
version_added: 0.2.0
author: sitelink.gateway developers (!UNKNOWN)
description:
  - One call reconciles the gateway's IPsec with the complete list of its links. Each link
    is an IKEv2 connection between the two public addresses, authenticated by the link's
    own pre-shared key, with one CHILD_SA in transport mode for IP protocol 4 (IPIP) only.
  - The kernel policies are installed as soon as a connection is loaded (C(start_action =
    trap|start)), before any SA exists, so IPIP to the peer never leaves in clear text, and
    IPIP from the peer that is not inside ESP is dropped by the kernel; and charon initiates
    the connection at once, when it is loaded and at boot. Dead peers are detected (DPD)
    and a link whose peer was not ready is keyed by its next packet, or by the peer when
    it loads the link.
  - C(trap|start) needs strongSwan 5.9.6 or later, which the call asks of
    C(swanctl --version) (an unknown version is taken for a recent one). Older ones
    (Debian 11 has 5.9.1) get C(start_action = trap) instead; the call still initiates
    the links and leaves them up, but after a reboot a link is keyed by its first packet,
    or by its peer.
  - Links are up when the call returns, so the first packet after a run is delivered (a
    link keyed on demand drops its first packets while IKE runs). The call initiates every
    link that is down and idle and waits for all of them at once, at most O(up_timeout)
    seconds, until each is up, or its peer refused, or its peer did not answer IKE within
    O(answer_timeout) seconds. A peer not configured yet (in a rolling apply the hubs come
    first) costs that much once, and the link comes up when the peer's own run loads it.
    Initiating is no change of configuration; RV(links) tells what became of each link.
  - When both ends initiate at the same moment, two IKE_SAs are set up; the call closes
    the one both ends agree on (all but the lowest initiator SPI). An IKE_SA set up while
    another with the same peer is established replaces it (C(unique = replace)). A link
    whose duplicate was closed counts as up once the call sees it up with no duplicate
    left; if the close left it without any IKE_SA, the call initiates it again, within
    the same wait.
  - The connections and keys are written to one file of the collection's own, O(path)
    (mode 0600), atomically and only when it changes; C(strongswan.service) (charon-systemd)
    is enabled and started, and loads it at boot. After a change C(swanctl --load-all)
    loads it now; connections that left the file are unloaded and their SAs closed.
  - Keys are never logged. The diff shows the file with every key replaced by
    C(<hidden>) and a fingerprint (8 hex digits of the key's SHA-256), so a rotation
    shows as a new fingerprint and no key is ever shown.
  - Each key is owned by the peer's identity alone, so that a peer's AUTH is checked
    against that link's keys only, never another link's.
  - A link may have several keys (a rotation). It accepts all of them and authenticates
    itself with the first. A change of keys alone leaves the SAs that are up as they are
    (no packet is lost); they authenticate with the new key the next time they
    authenticate.
  - With O(rollback_timeout), the previous file is restored and loaded by the gateway
    itself unless M(sitelink.gateway.gateway_confirm) confirms the change in time.
  - With O(state=absent), or no O(connections), the file is removed and its connections
    unloaded and closed; strongSwan itself stays installed.
options:
  connections:
    description: Every link of this gateway (the plan's C(office_plan.ipsec.connections)).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Connection name (the tunnel's name at this end).
        type: str
        required: true
      link:
        description: The link's id, the key of its pre-shared key in O(keys).
        type: str
        required: true
      local:
        description: This gateway's public address.
        type: str
        required: true
      remote:
        description: The peer's public address.
        type: str
        required: true
      peer:
        description: The peer office's name (informational).
        type: str
      failover:
        description:
          - Hub failover (the plan sets it on every link of a gateway with two hubs). The
            link's state moves routes between the hubs' tunnels - its CHILD_SA runs the
            hook of M(sitelink.gateway.ipip_tunnel) on up and down.
          - A dead peer is declared sooner - DPD every O(dpd_delay) but at most 10 s, and
            charon's retransmits (C(/etc/strongswan.d/sitelink-gateway.conf), written while
            any link has it) give up after about 11 s, so about 21 s after the peer's last
            packet. The link is then re-keyed at once, with no traffic needed
            (C(dpd_action = restart)).
        type: bool
        default: false
        version_added: 0.2.0
  keys:
    description:
      - Pre-shared key of each link, by link id, as hex (32 digits or more). Never logged.
      - During a rotation, a list - the key the link authenticates with first, then the keys
        it accepts besides.
    type: dict
    default: {}
  path:
    description: The collection's swanctl file.
    type: path
    default: /etc/swanctl/conf.d/sitelink-gateway.conf
  ike_proposals:
    description: IKE proposals (both ends must share one).
    type: str
    default: aes256gcm16-prfsha256-x25519
  esp_proposals:
    description:
      - ESP proposals. The plan's tunnel MTU leaves 40 bytes for ESP, enough for AES-GCM.
    type: str
    default: aes256gcm16
  dpd_delay:
    description: Seconds between dead peer detection checks of a quiet link.
    type: int
    default: 30
  ike_rekey_time:
    description:
      - Seconds between rekeyings of each link's IKE_SA. Unset, strongSwan's own (4 hours),
        and the file does not name it.
      - Short ones are for a lab that proves rekeying loses nothing.
    type: int
  child_rekey_time:
    description:
      - Seconds between rekeyings of each link's CHILD_SA (its ESP SAs). Unset, strongSwan's
        own (1 hour), and the file does not name it.
    type: int
  up_timeout:
    description:
      - Seconds the call waits at most, for all links at once, until every link is up (or
        given up, as refused or unanswered). C(0) initiates and does not wait.
    type: int
    default: 15
  answer_timeout:
    description:
      - Seconds after a link's initiation after which a peer that has not answered IKE at
        all is taken as not ready (not configured yet, or down), and no longer waited for.
    type: int
    default: 5
  state:
    description: Protect the links, or remove the collection's IPsec configuration.
    type: str
    default: present
    choices: [present, absent]
extends_documentation_fragment:
  - sitelink.gateway.attributes
  - sitelink.gateway.attributes.platform
  - sitelink.gateway.rollback
attributes:
  check_mode:
    support: full
    details: Nothing is initiated; RV(links) tells which links are up.
  diff_mode:
    support: full
    details: The collection's swanctl file, every key replaced by C(<hidden>) and a
      fingerprint.
  platform:
    platforms: linux
notes:
  - Needs the C(charon-systemd) and C(strongswan-swanctl) packages (the ipsec role installs
    them), and the peers' public addresses reachable without NAT between them.
"""

EXAMPLES = r"""
- name: Protect every link of this gateway
  sitelink.gateway.ipsec_links:
    connections: "{{ office_plan.ipsec.connections }}"
    # link id -> the link's PSKs, from the office role's no_log fact
    keys: "{{ office_plan | sitelink.gateway.link_keys(office_secrets, 'tunnel') }}"
    rollback_timeout: 300
"""

RETURN = r"""
connections:
  description: The connection names wanted.
  type: list
  elements: str
  returned: always
steps:
  description: What was done (or, in check mode, would be).
  type: list
  elements: str
  returned: always
rollback:
  description: The pending rollback, when this call armed one.
  type: dict
  returned: when a change was applied with O(rollback_timeout)
links:
  description: What became of the links' SAs (initiating one is not a change).
  type: dict
  returned: when O(state=present) with connections
  contains:
    up:
      description: Links with an installed CHILD_SA when the call returned.
      type: list
      elements: str
    down:
      description:
        - Links without, each with why (no answer from the peer, refused or failed,
          still negotiating or a duplicate IKE_SA still closing at the deadline, down
          after its duplicate IKE_SA was closed; in check mode, not initiated).
      type: dict
    initiated:
      description: Links this call initiated, or had charon initiate by loading them.
      type: list
      elements: str
    duplicates_closed:
      description: Duplicate IKE_SAs closed, each as its link name, a space, C(#) and its
        uniqueid.
      type: list
      elements: str
    waited:
      description: Seconds from the end of loading the file (or from the start of the
        wait) until the links were settled.
      type: float
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402  (Ansible convention: docs first)
from ansible_collections.sitelink.gateway.plugins.module_utils.ipsec import (  # noqa: E402
    DEFAULT_PATH,
    DPD_DELAY,
    ESP_PROPOSALS,
    IKE_PROPOSALS,
    run_module,
)


def build_module():
    return AnsibleModule(
        argument_spec={
            "connections": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "name": {"type": "str", "required": True},
                    "link": {"type": "str", "required": True},
                    "local": {"type": "str", "required": True},
                    "remote": {"type": "str", "required": True},
                    "peer": {"type": "str"},
                    "failover": {"type": "bool", "default": False},
                },
            },
            "keys": {"type": "dict", "default": {}, "no_log": True},
            "path": {"type": "path", "default": DEFAULT_PATH},
            "ike_proposals": {"type": "str", "default": IKE_PROPOSALS},
            "esp_proposals": {"type": "str", "default": ESP_PROPOSALS},
            "dpd_delay": {"type": "int", "default": DPD_DELAY},
            # Times, not keys (sanity's no-log-needed reads "key" in the names).
            "ike_rekey_time": {"type": "int", "no_log": False},
            "child_rekey_time": {"type": "int", "no_log": False},
            "rollback_timeout": {"type": "int", "default": 0},
            "state": {"type": "str", "default": "present", "choices": ["present", "absent"]},
            "up_timeout": {"type": "int", "default": 15},
            "answer_timeout": {"type": "int", "default": 5},
        },
        supports_check_mode=True,
    )


def main():
    run_module(build_module())


if __name__ == "__main__":
    main()
