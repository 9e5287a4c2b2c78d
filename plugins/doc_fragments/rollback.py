# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# The lockout rollback's option, for the modules that arm one (Checkpoint.arm in
# module_utils/checkpoint.py):
#
#   extends_documentation_fragment:
#     - sitelink.gateway.rollback
#
# Ansible merges a fragment's option into the module's key by key, so a module that
# documented rollback_timeout itself would replace this whole description. What a
# module saves and how the gateway restores it goes in the module's own description
# instead, as an item starting "With O(rollback_timeout)".
#
# Return values cannot come from a fragment (ansible-core merges fragments into
# DOCUMENTATION only): each module keeps its rollback and ansible_facts RETURN entries.

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  rollback_timeout:
    description:
      - Seconds after which the gateway restores the previous state unless
        M(sitelink.gateway.gateway_confirm) confirms. V(0) arms no rollback.
      - When the call is about to change something (not in check mode), it first saves what
        the change replaces under C(/run/sitelink/checkpoint), and starts the transient
        C(sitelink-rollback.timer) if no rollback is pending yet. What is saved, and how the
        gateway restores it, is in the module's description.
      - When a rollback is already pending (another task, or an earlier unconfirmed run, armed
        it), this change joins it with the deadline it has; the deadline is never extended.
      - The checkpoint is on a tmpfs. A reboot before the confirm boots the new configuration
        and forgets the rollback.
    type: int
    default: 0
    version_added: 0.2.0
"""
