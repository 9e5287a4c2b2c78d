# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The planner's front door: read the office inventory, plan it, once per run.

``plan_inventory`` reads every office host's ``office_*`` variables as Ansible
templates them, and plans the network (``build.plan_network``), raising one
``PlanError`` that lists every problem. ``RunPlans`` keeps the plan of the run:
the office role's one task plans in its loop expression and hands each gateway its
part in the loop's items, all in one worker process, so the network is planned once
per run and a bad inventory fails once. The action (plan.yml) and the filters
(site.yml) only call these.
"""

from __future__ import annotations

import difflib
import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jinja2
from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text

from . import schema
from .build import plan_network
from .model import CANNOT_BE_READ, NetworkPlan, PlanError, describe_problems

# An office_* look-alike (Office_lan_interfce, ofice_lan_adress) this close to a known
# variable is a typo of it; difflib's ratio.
NEAR_MISS_CUTOFF = 0.85
# The collection's other roles' variables are theirs, whatever they look like
# (firewall_input_policy is 0.87 from office_firewall_input_policy).
ROLE_PREFIXES = ("firewall_", "ipsec_", "kernel_", "masquerade_", "relay_", "tunnel_")
OFFICE = "office"


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
                value = host_vars[name]
            except AnsibleError as exc:
                failed.append((name, to_text(getattr(exc, "message", exc)).splitlines()[0]))
                continue
            # Read from a filter (the office role), a value that cannot be templated is
            # not raised but handed over as Jinja's Undefined, maybe deep inside a list.
            undefined = _undefined(value)
            if undefined is None:
                mine[name] = value
            else:
                failed.append((name, undefined))
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


def _undefined(value: Any) -> Optional[str]:
    """Why ``value``, or something in it, could not be templated; None when it could."""
    if isinstance(value, jinja2.Undefined):
        return to_text(value._undefined_message).splitlines()[0]  # noqa: SLF001
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _undefined(item)
            if found is not None:
                return found
    return None


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


class RunPlans:
    """The plan of this run, or the PlanError that stopped it, for one ``hostvars``.

    Ansible runs a task's loop and its items in one worker process with one
    ``hostvars`` object: the first call plans, the others reuse it. Only the identity
    of ``hostvars`` is compared: templating every office's variables again to see
    whether they changed would cost as much as the plan.
    """

    def __init__(self) -> None:
        self._hostvars: Any = None
        self._group: Optional[str] = None
        self._outcome: Union[NetworkPlan, PlanError, None] = None
        self.plans_made = 0  # in this process: the office role's test counts them
        self._handout: tuple[Any, Any] = (None, None)  # (its key, the last gateway's part)
        self.handouts_made = 0

    def get(self, hostvars, group: str, hosts, groups=None) -> tuple[NetworkPlan, bool]:
        """The plan of ``group``'s ``hosts`` and whether this call made it (rather than
        reused it); raises the run's PlanError, every time it is asked.

        ``hosts`` may be a function that gives them, called only to plan: finding a
        group's hosts through ``hostvars`` templates a host's variables, which the
        office role's items, reusing the plan, should not pay for."""
        made = self._hostvars is not hostvars or self._group != group
        if made:
            try:
                self._outcome = plan_inventory(
                    hostvars, hosts() if callable(hosts) else hosts, groups
                )
            except PlanError as exc:
                self._outcome = exc
            self._hostvars, self._group = hostvars, group
            self._handout = (None, None)
            self.plans_made += 1
        if isinstance(self._outcome, PlanError):
            raise self._outcome
        return self._outcome, made

    def handout(self, host: str, *args: Any, make: Callable[[], Any]) -> Any:
        """``make()``: gateway ``host``'s part of this run's plan (for ``args``), made once
        for consecutive calls with the same arguments, as the office role's item asks for
        it once per fact it sets. Only the last one is kept: one gateway's part in memory.
        A new plan (``get``) forgets it."""
        key = (host, *args)
        if self._handout[0] != key:
            self._handout = (key, make())
            self.handouts_made += 1
        return self._handout[1]


RUN = RunPlans()
