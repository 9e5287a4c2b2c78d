# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the office inventory and plan every gateway, on the controller.

Runs once per play (``run_once``); never connects anywhere. The work is in
``plugin_utils/plan``: this file only reads the inventory and shapes the result.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError

FACT = "__office_network"


def office_variables(hostvars, hosts):
    """Every ``office_*`` variable of every office host, templated as the host sees it."""
    offices = {}
    for host in hosts:
        host_vars = hostvars[host]
        offices[host] = {k: host_vars[k] for k in host_vars if k.startswith("office_")}
    return offices


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("group", "output_dir", "console"))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        group = args.get("group", "offices")
        hosts = task_vars.get("groups", {}).get(group)
        if not hosts:
            raise AnsibleActionFail(
                f"office_plan: the inventory group {group!r} has no hosts (set office_group)"
            )
        try:
            plan = plan_network(office_variables(task_vars["hostvars"], hosts))
        except PlanError as exc:
            return {**result, "failed": True, "msg": str(exc)}
        result["warnings"] = list(plan.warnings)
        result["changed"] = False
        result["summary"] = {
            "topology": plan.topology,
            "offices": len(plan.offices),
            "gateways": len(plan.gateways),
            "links": len(plan.links),
            "relay_flows": len(plan.flows),
        }
        output_dir = args.get("output_dir")
        if output_dir:
            result.update(self._render(plan, output_dir, args.get("console", "auto")))
        else:
            # Only the controller-side host (localhost, via delegate_facts) holds
            # every gateway's plan; each gateway then takes its own.
            result["ansible_facts"] = {
                FACT: {"gateways": {host: plan.gateway_dict(host) for host in plan.gateways}}
            }
        return result

    def _render(self, plan, output_dir, console):
        """plan.yml: text, a file per gateway and the picture, from the same plan."""
        # Imported here: site.yml never renders.
        from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import render

        base = os.path.abspath(os.path.expanduser(to_text(output_dir)))
        gateways_dir = os.path.join(base, "gateways")
        os.makedirs(gateways_dir, exist_ok=True)
        wanted = {f"{host}.txt" for host in plan.gateways}
        for stale in set(os.listdir(gateways_dir)) - wanted:
            if stale.endswith(".txt"):  # a gateway that left the inventory
                os.unlink(os.path.join(gateways_dir, stale))
        texts = {}
        for host in sorted(plan.gateways):
            texts[host] = render.gateway_text(plan.gateway_dict(host))
            _write(os.path.join(gateways_dir, f"{host}.txt"), texts[host])
        network = render.network_text(plan)
        _write(os.path.join(base, "network.txt"), network)
        source = render.dot(plan)
        _write(os.path.join(base, "network.dot"), source)
        files = [os.path.join(base, "network.txt"), os.path.join(base, "network.dot")]
        warnings = []
        try:
            _write(os.path.join(base, "network.svg"), render.svg(source), binary=True)
            files.append(os.path.join(base, "network.svg"))
        except render.RenderError as exc:
            warnings.append(f"no picture: {exc}")
        full = console == "full" or (console == "auto" and len(plan.gateways) <= 20)
        text = network if not full else "\n".join([network, *texts.values()])
        return {
            "output_dir": base,
            "files": files,
            "gateway_files": len(texts),
            "plan_text": text,
            "warnings": warnings,
        }


def _write(path, content, binary=False):
    """Replace ``path`` in one rename, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
        fh.write(content)
    os.replace(tmp, path)
