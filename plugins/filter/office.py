# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``office_gateways``: plan the network, once per run; the hosts to hand plans to.

``office_gateway``: one gateway's own plan and the keys of its own links.
``office_rollout``: hubs, branches and the branches' batches, for site.yml's plays.

The planning is ``plugin_utils/plan/inventory.py``'s; these only call it.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible.utils.display import Display
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.inventory import RUN
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.rollout import rollout
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (
    gateway_secrets,
)

display = Display()


def _group_hosts(hostvars, group, hosts):
    """The hosts of the inventory group ``group``, as the first of ``hosts`` sees them."""
    try:
        members = hostvars[hosts[0]]["groups"].get(group) if hosts else None
    except KeyError:
        members = None
    if not members:
        raise AnsibleFilterError(
            f"office_gateways: the inventory group {group!r} has no hosts (set office_group)"
        )
    return members


def office_gateways(hosts, hostvars, group="offices", groups=None):
    """Plan every office of ``group`` (once per run) and return ``hosts``, the play's
    gateways, to loop over with ``office_gateway``.

    A bad inventory does not raise here: Ansible would hide the message of a no_log
    task's loop. It returns one item, None, whose ``office_gateway`` gives every problem
    in one message, for the office role's next task to fail with.
    The plan's warnings are said once, when it is made.
    """
    if not isinstance(hosts, list) or not isinstance(group, str):
        raise AnsibleFilterError(
            "office_gateways: use as ansible_play_hosts_all | office_gateways(hostvars, "
            "'offices', groups)"
        )
    members = _group_hosts(hostvars, group, hosts)
    try:
        plan, made = RUN.get(hostvars, group, members, groups)
    except PlanError as exc:
        for warning in exc.warnings:
            display.warning(warning)
        return [None]
    if made:
        _say(plan)
    return list(hosts)


def _say(plan):
    """A plan's warnings, and the -v line that says a plan was made: whichever filter
    makes it says it, so the line counts the plans of a run (a test counts it at 1)."""
    for warning in plan.warnings:
        display.warning(warning)
    display.v(
        f"sitelink.gateway: planned {len(plan.offices)} offices, {len(plan.gateways)} "
        f"gateways, {len(plan.links)} links ({plan.topology})"
    )


def office_gateway(
    host, hostvars, group="offices", secret=None, previous=None, groups=None, next_secret=None
):
    """``{"plan": office_plan, "secrets": office_secrets, "problems": None}`` of gateway
    ``host``. With ``host`` None (what ``office_gateways`` gives for a bad inventory):
    ``{"plan": None, "secrets": None, "problems": MESSAGE}``, every problem in one text
    (``groups``, as for ``office_gateways``, names a group every office of it shares)."""
    if (host is not None and not isinstance(host, str)) or not isinstance(group, str):
        raise AnsibleFilterError(
            "office_gateway: use as HOST | office_gateway(hostvars, 'offices', secret, previous)"
        )
    if secret is not None and not isinstance(secret, str):
        raise AnsibleFilterError("office_gateway: office_tunnel_secret must be a string")
    if previous is not None and not isinstance(previous, str):
        raise AnsibleFilterError("office_gateway: office_tunnel_secret_previous must be a string")
    if next_secret is not None and not isinstance(next_secret, str):
        raise AnsibleFilterError("office_gateway: office_tunnel_secret_next must be a string")
    try:
        # The plan office_gateways made for this task; made here when called alone.
        plan, made = RUN.get(
            hostvars,
            group,
            lambda: _group_hosts(hostvars, group, [host] if host else list(hostvars)[:1]),
            groups,
        )
    except PlanError as exc:
        if host is None:
            return {"plan": None, "secrets": None, "problems": str(exc)}
        raise AnsibleFilterError(str(exc)) from None
    if made:
        _say(plan)
    if host not in plan.gateways:
        raise AnsibleFilterError(f"office_gateway: {host} is not a host of the group {group}")
    # The office role's item asks twice (office_plan, then office_secrets): the second
    # call gets the first one's answer. Only the last gateway's is kept.
    return RUN.handout(
        host,
        secret or None,
        previous or None,
        next_secret or None,
        make=lambda: _hand_out(plan, host, secret, previous, next_secret),
    )


def _hand_out(plan, host, secret, previous, next_secret):
    mine = office_plan(plan, host)
    return {
        "plan": mine,
        "secrets": gateway_secrets(
            mine["links"],
            secret or None,
            previous or None,
            plan.external_keys(),
            next_secret=next_secret or None,
        ),
        "problems": None,
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
        return {
            "office_gateways": office_gateways,
            "office_gateway": office_gateway,
            "office_rollout": office_rollout,
        }
