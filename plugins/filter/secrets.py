# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``link_secrets``: the keys of one gateway's own links (the ``office_secrets`` fact)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (
    gateway_secrets,
)


def link_secrets(links, secret=None):
    if not isinstance(links, list):
        raise AnsibleFilterError("link_secrets: give it office_plan.links")
    if secret is not None and not isinstance(secret, str):
        raise AnsibleFilterError("link_secrets: office_tunnel_secret must be a string")
    return gateway_secrets(links, secret or None)


class FilterModule:
    def filters(self):
        return {"link_secrets": link_secrets}
