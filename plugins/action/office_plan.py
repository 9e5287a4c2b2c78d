# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validate the office inventory and plan every gateway, on the controller.

Runs once per play (``run_once``); never connects anywhere. The work is in
``plugin_utils/plan``: this file only reads the inventory and shapes the result.
"""

from __future__ import annotations

import difflib
import functools
import os
from typing import Any, NamedTuple, Optional

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import schema
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import (
    CANNOT_BE_READ,
    PlanError,
    describe_problems,
)

# An office_* look-alike (Office_lan_interfce, ofice_lan_adress) this close to a known
# variable is a typo of it; difflib's ratio.
NEAR_MISS_CUTOFF = 0.85
# The collection's other roles' variables are theirs, whatever they look like
# (firewall_input_policy is 0.87 from office_firewall_input_policy).
ROLE_PREFIXES = ("firewall_", "ipsec_", "kernel_", "masquerade_", "relay_", "tunnel_")
OFFICE = "office"
# Printed in full up to this many gateways by console: auto.
CONSOLE_AUTO_GATEWAYS = 20


class OfficeInventory(NamedTuple):
    offices: dict[str, dict[str, Any]]  # host -> its office_* variables
    problems: list[str]
    warnings: list[str]
    # host -> every variable problems and warnings name, as describe_problems reads them
    values: dict[str, dict[str, Any]]


def office_variables(hostvars, hosts) -> OfficeInventory:
    """Every ``office_*`` variable of every office host, templated as the host sees it.

    A value that cannot be templated (an undefined variable in it, say) is a
    problem of that office like any other, reported with the rest. A variable
    that misses the ``office_`` spelling (``ofice_role``, ``office-role``,
    ``Office_role``) would be ignored without a word: it is warned about.
    """
    offices, problems, warnings, values = {}, [], [], {}
    for host in sorted(hosts):  # as plan_network reports its problems
        host_vars = hostvars[host]
        mine, failed, misses = {}, [], []
        for name in host_vars:
            if not name.startswith("office_"):
                meant = near_miss(name)
                if meant is not None:
                    misses.append((name, meant))
                continue
            # office_plan and office_secrets are this role's own output (from an
            # earlier play of the same run): never input, and never read.
            if name in schema.OUTPUT_FACTS:
                continue
            try:
                mine[name] = host_vars[name]
            except AnsibleError as exc:
                failed.append((name, to_text(getattr(exc, "message", exc)).splitlines()[0]))
        office = mine.get("office_name") or host
        label = f"office {office!r} (host {host})"
        seen = dict(mine)
        for name, message in failed:
            problems.append(f"{label}: {name}: cannot be templated: {message}")
            seen[name] = CANNOT_BE_READ
        for name, meant in sorted(misses):
            hint = f"did you mean {meant}?" if meant else "they are spelled office_*, lower case"
            warnings.append(f"{label}: {name}: ignored, not an office variable ({hint})")
            try:
                seen[name] = host_vars[name]
            except AnsibleError:
                seen[name] = CANNOT_BE_READ
        offices[host] = mine
        values[host] = seen
    return OfficeInventory(offices, problems, warnings, values)


@functools.lru_cache(maxsize=4096)
def near_miss(name: str) -> Optional[str]:
    """The office variable ``name`` (not spelled office_*) most likely meant: the known
    name, "" for an office_* look-alike with no close match, None for any other variable.

    A look-alike is "office" with dashes or capitals (office-role, Office_lan_interfce),
    with one typo (ofice_role, offcie_role: a letter missing, added, changed, or two
    swapped) or without the "_" after it (officerole). Another word that starts like it
    is another variable (officer_name, offices_role, offline_role), and the collection's
    other roles' variables are theirs.
    """
    spelled = name.lower().replace("-", "_")
    if spelled in schema.BY_NAME:
        return spelled
    if not spelled.startswith("of") or spelled.startswith(ROLE_PREFIXES):
        return None
    head, separated, rest = spelled.partition("_")
    if separated and _mistyped_office(head):
        meant = f"{OFFICE}_{rest}"
        close = difflib.get_close_matches(meant, schema.BY_NAME, n=1, cutoff=NEAR_MISS_CUTOFF)
        return close[0] if close else ""
    meant = f"{OFFICE}_{spelled[len(OFFICE) :]}"
    return meant if spelled.startswith(OFFICE) and meant in schema.BY_NAME else None


def _mistyped_office(word: str) -> bool:
    """``word`` is "office", or it with one typo; not another word that starts with it
    (officer, offices)."""
    if word.startswith(OFFICE):
        return word == OFFICE
    # Optimal string alignment distance: an edit, or two neighbours swapped, counts one.
    rows = [list(range(len(OFFICE) + 1))]
    for i, a in enumerate(word, 1):
        row = [i]
        for j, b in enumerate(OFFICE, 1):
            cost = min(rows[-1][j] + 1, row[j - 1] + 1, rows[-1][j - 1] + (a != b))
            if i > 1 and j > 1 and a == OFFICE[j - 2] and word[i - 2] == b:
                cost = min(cost, rows[-2][j - 2] + 1)
            row.append(cost)
        rows.append(row)
    return rows[-1][-1] <= 1


def office_groups(groups, hosts) -> list[tuple[str, frozenset[str]]]:
    """The inventory's groups as the office hosts in them, the most specific first
    (fewest hosts; of equal ones, ``all`` last): how a shared problem names a group."""
    offices = frozenset(hosts)
    found = []
    for name, members in (groups or {}).items():
        mine = offices.intersection(members)
        if mine:
            found.append((len(members), name in ("all", "ungrouped"), name, frozenset(mine)))
    return [(name, mine) for _size, _last, name, mine in sorted(found)]


def plan_inventory(hostvars, hosts, groups=None):
    """Validate and plan the offices ``hosts``; raises ``PlanError`` listing every problem.

    ``groups``: the inventory's groups ({name: hosts}, as the ``groups`` variable),
    so that a problem every office of a group shares can name it. The plan's
    warnings, the inventory's own first, say a shared warning once too.
    """
    found = office_variables(hostvars, hosts)
    context = {"groups": office_groups(groups, hosts), "values": found.values}
    warnings = describe_problems(found.warnings, **context)
    if found.problems:
        raise PlanError(found.problems, warnings=warnings, **context)
    try:
        plan = plan_network(found.offices)
    except PlanError as exc:
        raise PlanError(exc.errors, warnings=warnings, **context) from None
    plan.warnings[:] = warnings + describe_problems(plan.warnings, **context)
    return plan


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
            texts[host] = render.gateway_text(plan.gateway_dict(host))
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
