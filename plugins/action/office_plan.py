# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the office inventory and plan every gateway, on the controller.

Runs once per play (``run_once``); never connects anywhere. The work is in
``plugin_utils/plan``: this file only reads the inventory and shapes the result.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.schema import OUTPUT_FACTS


def office_variables(hostvars, hosts):
    """Every ``office_*`` variable of every office host, templated as the host sees it.

    A value that cannot be templated (an undefined variable in it, say) is a
    problem of that office like any other, reported with the rest.
    """
    offices, problems = {}, []
    for host in hosts:
        host_vars = hostvars[host]
        values, failed = {}, []
        for name in host_vars:
            # office_plan and office_secrets are this role's own output (from an
            # earlier play of the same run): never input, and never read.
            if not name.startswith("office_") or name in OUTPUT_FACTS:
                continue
            try:
                values[name] = host_vars[name]
            except AnsibleError as exc:
                failed.append((name, to_text(getattr(exc, "message", exc)).splitlines()[0]))
        office = values.get("office_name") or host
        for name, message in failed:
            problems.append(
                f"office {office!r} (host {host}): {name}: cannot be templated: {message}"
            )
        offices[host] = values
    return offices, problems


def plan_inventory(hostvars, hosts):
    """Validate and plan the offices ``hosts``; raises ``PlanError`` listing every problem."""
    offices, problems = office_variables(hostvars, hosts)
    if problems:
        raise PlanError(problems)
    return plan_network(offices)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("group", "output_dir", "console"))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        plan = self._plan(args.get("group", "offices"), task_vars)
        if isinstance(plan, str):
            return {**result, "failed": True, "msg": plan}
        result["changed"] = False
        result["warnings"] = list(plan.warnings)
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
        return result

    @staticmethod
    def _plan(group, task_vars):
        """The network plan, or the message listing every problem."""
        hosts = task_vars.get("groups", {}).get(group)
        if not hosts:
            return f"office_plan: the inventory group {group!r} has no hosts (set office_group)"
        try:
            return plan_inventory(task_vars["hostvars"], hosts)
        except PlanError as exc:
            return str(exc)

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
