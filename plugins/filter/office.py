# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``office_gateway``: one gateway's own plan and the keys of its own links.

``office_rollout``: hubs, branches and the branches' batches, for site.yml's plays.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.sitelink.gateway.plugins.action.office_plan import plan_inventory
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.rollout import rollout
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (
    gateway_secrets,
)

# The office role calls this once per gateway in one looped task: every item
# runs in the same worker process, so the network is planned once, by the
# first item, for the hostvars object of that task.
_CACHE: list = []


def office_gateway(host, hostvars, group="offices", secret=None, previous=None):
    if not isinstance(host, str) or not isinstance(group, str):
        raise AnsibleFilterError(
            "office_gateway: use as HOST | office_gateway(hostvars, 'offices', secret, previous)"
        )
    if secret is not None and not isinstance(secret, str):
        raise AnsibleFilterError("office_gateway: office_tunnel_secret must be a string")
    if previous is not None and not isinstance(previous, str):
        raise AnsibleFilterError("office_gateway: office_tunnel_secret_previous must be a string")
    # Only the hostvars object is compared on later items: templating the group's
    # host list for every item would cost more than the plan itself.
    if not _CACHE or _CACHE[0] is not hostvars or _CACHE[1] != group:
        try:
            plan = plan_inventory(hostvars, hostvars[host]["groups"].get(group) or [])
        except PlanError as exc:
            raise AnsibleFilterError(str(exc)) from exc
        _CACHE[:] = [hostvars, group, plan]
    plan = _CACHE[2]
    if host not in plan.gateways:
        raise AnsibleFilterError(f"office_gateway: {host} is not a host of the group {group}")
    mine = plan.gateway_dict(host)
    return {
        "plan": mine,
        "secrets": gateway_secrets(
            mine["links"], secret or None, previous or None, plan.external_keys()
        ),
    }


def office_rollout(hosts, hostvars):
    if not isinstance(hosts, list):
        raise AnsibleFilterError(
            "office_rollout: use as groups[office_group] | office_rollout(hostvars)"
        )

    def variable(host, name):
        # No hostvars yet (--syntax-check): every setting takes its default.
        try:
            return hostvars[host].get(name)
        except KeyError:
            return None

    return rollout([str(h) for h in hosts], variable).to_dict()


class FilterModule:
    def filters(self):
        return {"office_gateway": office_gateway, "office_rollout": office_rollout}
