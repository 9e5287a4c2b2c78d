#!/usr/bin/python
# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: relay_service
short_description: The broadcast relay's program, configuration, keys, unit and service, in one call
version_added: 0.2.0
author: sitelink.gateway developers (!UNKNOWN)
description:
  - Installs the relay program and writes its configuration, link keys and systemd unit,
    each atomically and only when it changes, and brings C(sitelink-relay.service) to the
    state they call for.
  - O(config) and O(keys) are checked by the relay program (C(--check-config),
    C(--check-keys)), the new one if it changes, before anything is written; one refused
    leaves the program, every file and the service as they were.
  - A changed O(config) reloads the relay (SIGHUP, unchanged ports stay open). A changed
    program or O(unit) restarts it.
  - Changed O(keys) (a key rotation) reload it too, losing no broadcast - systemd copies the
    keys file to the relay as a credential only when it starts, so the same keys also go to
    C(keys.json) in O(state_dir) (owned by the relay, mode 0600), which the relay prefers
    at start and takes on C(SIGHUP). Only a relay that never ran (no O(state_dir) yet) is
    restarted for new keys.
  - Without O(config) the relay has no rules - the service is stopped and disabled and the
    configuration and keys files are removed. O(unit) stays installed.
  - Keys are never logged, and the diff shows only a fingerprint of the keys file (8 hex
    digits of its SHA-256). The program shows in the diff as its SHA-256.
  - O(forget_senders) makes the relay forget the replay windows of peer relays whose epoch
    went backwards (their state or clock was reset), which it otherwise refuses as C(stale)
    until that epoch catches up, up to a day (C(verify.yml) names them). The request is a
    file in O(state_dir) that the relay reads at start and on C(SIGHUP), then deletes; a
    running relay is reloaded. It is an explicit request, so the task reports a change
    every time it is given.
options:
  program_src:
    description:
      - The relay program on the controller, looked up like the C(src) of
        M(ansible.builtin.copy) (a role's C(files/) first). The action plugin gives the
        module its checksum (O(program_sha256)) first, and its bytes (O(program)) only
        when the gateway's copy differs - a run that changes nothing sends no program byte.
      - Omit to leave the installed program as it is.
    type: str
  program:
    description:
      - The program's bytes, base64. Set by the action plugin from O(program_src), only when
        the gateway's copy differs from O(program_sha256); not logged (it is large, not secret).
    type: str
  program_sha256:
    description:
      - The SHA-256 (hex) of the program to install. Without O(program), where the installed
        program differs the module changes nothing and returns RV(program_needed); with it,
        O(program) must have that checksum.
      - Set by the action plugin from O(program_src).
    type: str
    version_added: 0.2.0
  config:
    description:
      - The relay configuration, as the JSON text of O(config_path). Omit where the relay
        has no rules.
    type: str
  keys:
    description:
      - The link keys file's JSON text (O(keys_path)), only where the relay authenticates a
        peer. Never logged.
    type: str
  unit:
    description: The systemd unit's text, installed as O(unit_path).
    type: str
    required: true
  program_path:
    description: Where the relay program is installed (mode 0755); it checks O(config) and
      O(keys).
    type: path
    default: /usr/local/sbin/sitelink-relay
  config_path:
    description: The relay's configuration file.
    type: path
    default: /etc/sitelink/relay.json
  keys_path:
    description: The link keys file (mode 0600).
    type: path
    default: /etc/sitelink/relay-keys.json
  unit_path:
    description: The relay's systemd unit file.
    type: path
    default: /etc/systemd/system/sitelink-relay.service
  forget_senders:
    description:
      - Peer relays (the IPv4 addresses the relay's status names as senders) whose replay
        windows the relay forgets, so that the next datagram from each is accepted whatever
        its epoch; or the single word V(all) for every sender.
      - Written as the request file C(forget) (mode 0644, JSON) in O(state_dir), merged with
        one the relay has not read yet; a running relay is reloaded to read it, a stopped one
        reads it when it starts.
      - Empty - no request.
    type: list
    elements: str
    default: []
  state_dir:
    description:
      - The relay's state directory (its configuration's C(state_dir)), where the request of
        O(forget_senders) goes, and the keys' live copy.
      - With C(DynamicUser), systemd keeps it in C(/var/lib/private/sitelink-relay), and
        C(/var/lib/sitelink-relay) is a symlink to it; whichever of the two exists is used.
        With neither (the relay never ran), there is nothing to forget - the module warns
        and writes nothing.
    type: path
    default: /var/lib/sitelink-relay
extends_documentation_fragment:
  - sitelink.gateway.attributes
  - sitelink.gateway.attributes.action
  - sitelink.gateway.attributes.platform
attributes:
  check_mode:
    support: full
    details: Changed files are checked by the installed program too, unless the program
      itself changes.
  diff_mode:
    support: full
    details: The configuration, the unit and a forget request; the keys file as a
      fingerprint.
  platform:
    platforms: linux
"""

EXAMPLES = r"""
- name: Write the relay's files and run it
  sitelink.gateway.relay_service:
    program_src: sitelink-relay
    config: "{{ lookup('ansible.builtin.template', 'relay.json.j2') }}"
    # Only where the relay authenticates a peer (sitelink1).
    keys: "{{ lookup('ansible.builtin.template', 'relay-keys.json.j2') }}"
    unit: "{{ lookup('ansible.builtin.template', 'sitelink-relay.service.j2') }}"

- name: Forget what this relay holds of 192.168.1.126 (its epoch went backwards)
  sitelink.gateway.relay_service:
    config: "{{ lookup('ansible.builtin.template', 'relay.json.j2') }}"
    unit: "{{ lookup('ansible.builtin.template', 'sitelink-relay.service.j2') }}"
    forget_senders: [192.168.1.126]

- name: No rules here - the relay stopped and disabled, its config and keys removed
  sitelink.gateway.relay_service:
    unit: "{{ lookup('ansible.builtin.template', 'sitelink-relay.service.j2') }}"
"""

RETURN = r"""
program_sent:
  description:
    - Whether the program's bytes were sent to the gateway in this run - only where its
      copy differed from O(program_sha256) (set by the action plugin).
  type: bool
  returned: always
  version_added: 0.2.0
program_needed:
  description:
    - The installed program differs from O(program_sha256) and O(program) was not given -
      nothing was done. The action plugin then calls the module again with the program.
  type: bool
  returned: when the program is needed
  version_added: 0.2.0
active:
  description: Whether the relay has rules, so is (or would be) running.
  type: bool
  returned: always
steps:
  description: What was done (or, in check mode, would be).
  type: list
  elements: str
  returned: always
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402  (Ansible convention: docs first)
from ansible_collections.sitelink.gateway.plugins.module_utils import contract  # noqa: E402
from ansible_collections.sitelink.gateway.plugins.module_utils.relay_service import (  # noqa: E402
    run_module,
)


def build_module():
    return AnsibleModule(
        argument_spec={
            "config": {"type": "str"},
            "keys": {"type": "str", "no_log": True},
            "unit": {"type": "str", "required": True},
            "program_src": {"type": "str"},
            # Large, not secret: kept out of the logged invocation.
            "program": {"type": "str", "no_log": True},
            "program_sha256": {"type": "str"},
            "program_path": {"type": "path", "default": "/usr/local/sbin/sitelink-relay"},
            "config_path": {"type": "path", "default": "/etc/sitelink/relay.json"},
            "keys_path": {"type": "path", "default": contract.RELAY_KEYS_FILE},
            "unit_path": {
                "type": "path",
                "default": "/etc/systemd/system/sitelink-relay.service",
            },
            "forget_senders": {"type": "list", "elements": "str", "default": []},
            "state_dir": {"type": "path", "default": contract.RELAY_STATE_DIR},
        },
        supports_check_mode=True,
    )


def main():
    run_module(build_module())


if __name__ == "__main__":
    main()
