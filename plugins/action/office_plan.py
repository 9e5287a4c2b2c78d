# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the office inventory and plan every gateway, on the controller.

Runs once per play (``run_once``); never connects anywhere. The work is in
``plugin_utils/plan`` (``inventory.plan_inventory`` is the front door): this file
only shapes the result and writes plan.yml's files.
"""

from __future__ import annotations

import os

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.inventory import (
    plan_inventory,
)
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError

# Printed in full up to this many gateways by console: auto.
CONSOLE_AUTO_GATEWAYS = 20


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
            msg = f"office_plan: the inventory group {group!r} has no hosts (set office_group)"
            return {**result, "failed": True, "msg": msg}
        try:
            plan = plan_inventory(task_vars["hostvars"], hosts, task_vars.get("groups"))
        except PlanError as exc:
            # One failure, before any gateway is touched; a misspelled variable
            # warned about may be why another one is missing.
            return {**result, "failed": True, "msg": str(exc), "warnings": exc.warnings}
        result["changed"] = False
        result["summary"] = {
            "topology": plan.topology,
            "offices": len(plan.offices),
            "gateways": len(plan.gateways),
            "links": len(plan.links),
            "relay_flows": len(plan.flows),
        }
        warnings = list(plan.warnings)
        output_dir = args.get("output_dir")
        if output_dir:
            rendered = self._render(plan, output_dir, args.get("console", "auto"))
            warnings += rendered.pop("warnings")
            result.update(rendered)
        result["warnings"] = warnings
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
            texts[host] = render.gateway_text(office_plan(plan, host))
            _write(os.path.join(gateways_dir, f"{host}.txt"), texts[host])
        externals = _write_external(plan, base)
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
        full = console == "full" or (
            console == "auto" and len(plan.gateways) <= CONSOLE_AUTO_GATEWAYS
        )
        # A list of lines, not one text: Ansible's default callback prints a string
        # as JSON, one line full of "\n"; a list comes out a line per item.
        lines = network.splitlines()
        for text in texts.values() if full else ():
            lines += ["", *text.splitlines()]
        lines += ["", f"Written: {', '.join(files)}", _gateway_files_line(base, texts, console)]
        if externals:
            peers = "peer" if len(externals) == 1 else f"{len(externals)} peers"
            lines.append(
                f"For the administrators of the external {peers}, their side of the links: "
                f"{os.path.join(base, 'external', '<name>.txt')}"
            )
        return {
            "output_dir": base,
            "files": files,
            "gateway_files": len(texts),
            "plan_lines": lines,
            "warnings": warnings,
        }


def _write_external(plan, base):
    """external/<name>.txt for each external peer: what its administrators configure (never
    a key). Files of peers that left the inventory go, as gateways/ ones do."""
    from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import external

    directory = os.path.join(base, "external")
    names = sorted(n for n, office in plan.offices.items() if office.external)
    if names or os.path.isdir(directory):
        os.makedirs(directory, exist_ok=True)
        for stale in set(os.listdir(directory)) - {f"{n}.txt" for n in names}:
            if stale.endswith(".txt"):  # a peer that left office_external_peers
                os.unlink(os.path.join(directory, stale))
    for name in names:
        _write(os.path.join(directory, f"{name}.txt"), external.peer_text(plan, name))
    return names


def _gateway_files_line(base, texts, console):
    """Where each gateway's plan is, and whether it was printed above."""
    if console == "full":
        printed = "printed above"
    elif console == "summary":
        printed = "not printed with console summary; -e sitelink_plan_console=full prints them"
    elif len(texts) > CONSOLE_AUTO_GATEWAYS:
        printed = (
            f"not printed past {CONSOLE_AUTO_GATEWAYS} gateways; "
            "-e sitelink_plan_console=full prints them"
        )
    else:
        printed = "printed above"
    where = os.path.join(base, "gateways", "<host>.txt")
    return f"Per-gateway plans of the {len(texts)} gateways: {where} ({printed})"


def _write(path, content, binary=False):
    """Replace ``path`` in one rename, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as fh:
        fh.write(content)
    os.replace(tmp, path)
