# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Gather every gateway's ``gateway_health`` result into one report, on the controller.

Never connects anywhere. The work is in ``plugin_utils/health``: this file reads
each host's registered result and office name, and writes the JSON file.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible_collections.sitelink.gateway.plugins.plugin_utils.health import (
    build_report,
    render_table,
    summary_text,
)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("hosts", "result_var", "output"))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        hosts = args.get("hosts")
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            return {**result, "failed": True, "msg": "hosts: must be a list of host names"}
        result_var = args.get("result_var") or "sitelink_health"
        hostvars = task_vars.get("hostvars") or {}
        results, offices = {}, {}
        for host in hosts:
            host_vars = hostvars.get(host, {})
            results[host] = _plain(host_vars.get(result_var))
            plan = _plain(host_vars.get("office_plan"))
            offices[host] = plan.get("office") if isinstance(plan, dict) else None
        generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
        report = build_report(hosts, results, offices, generated)
        result.update(
            changed=False,
            report=report,
            table=render_table(report),
            healthy=report["healthy"],
            problems=report["problems"],
            summary=summary_text(report),
        )
        if report["warnings"]:
            # Shown as [WARNING] on the controller, once (the links are plain IPIP).
            result["warnings"] = [*(result.get("warnings") or []), *report["warnings"]]
        output = args.get("output")
        if output:
            path = os.path.abspath(os.path.expanduser(to_text(output)))
            # Written by rename: a device or a directory there would be replaced.
            if os.path.lexists(path) and not os.path.isfile(path):
                return {**result, "failed": True, "msg": f"the report {path} is not a file"}
            try:
                _write_json(path, report)
            except OSError as exc:
                return {**result, "failed": True, "msg": f"writing the report {path}: {exc}"}
            result["output"] = path
        return result


def _plain(value):
    """Plain dicts, lists and scalars (hostvars hand out Ansible's own containers)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)


def _write_json(path, data):
    """Replace ``path`` in one rename, so a reader never sees half a report."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
