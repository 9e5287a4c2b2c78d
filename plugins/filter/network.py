# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that turn the office inventory into per-gateway plans."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.topology import (
    OFFICE_VARIABLES,
    TopologyError,
    network_plan,
)


def _network_plan(hostvars, hosts, topology="hub-and-spoke"):
    """Plan every gateway from the ``office_*`` variables of ``hosts``."""
    if isinstance(hosts, str) or not hosts:
        raise AnsibleFilterError(
            "network_plan: give it the list of office gateways, e.g. groups['offices']"
        )
    office_vars = {}
    for host in hosts:
        host_vars = hostvars[host]
        office_vars[host] = {k: host_vars[k] for k in OFFICE_VARIABLES if k in host_vars}
    try:
        return network_plan(office_vars, topology)
    except TopologyError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    def filters(self):
        return {"network_plan": _network_plan}
