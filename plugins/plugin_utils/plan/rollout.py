# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""In what order ``site.yml`` configures the gateways: hubs, then branches in batches.

Every branch depends on a hub, so hubs go first, one at a time, and a failing
hub stops the run. Branches then go in batches (Ansible's ``serial``) with a
failure tolerance per batch (``max_fail_percentage``), so one bad change never
reaches every branch in the same minute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

from . import schema

Batch = Union[int, str]  # a number of hosts, or "25%"

_PERCENT = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")


@dataclass(frozen=True)
class Rollout:
    hubs: list[str]
    branches: list[str]
    batch: list[Batch]
    max_fail_percentage: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "hubs": self.hubs,
            "branches": self.branches,
            "batch": self.batch,
            "max_fail_percentage": self.max_fail_percentage,
        }


def _one_batch(value: Any) -> Optional[Batch]:
    if isinstance(value, str):
        match = _PERCENT.fullmatch(value)
        if match:
            percent = float(match.group(1))
            return f"{match.group(1)}%" if 0 < percent <= 100 else None
    number = schema.to_int(value)
    return number if number is not None and number > 0 else None


def check_batch(value: Any) -> tuple[Optional[list[Batch]], Optional[str]]:
    """``office_rollout_batch`` as a list of batch sizes, or a problem."""
    items = value if isinstance(value, list) else [value]
    batches = [_one_batch(item) for item in items]
    if not items or any(b is None for b in batches):
        return None, (
            f"{value!r} must be a positive number, a percentage from 1% to 100% "
            '("25%"), or a non-empty list of them'
        )
    return batches, None  # type: ignore[return-value]


def check_max_fail_percentage(value: Any) -> tuple[Optional[int], Optional[str]]:
    number = schema.to_int(value)
    if number is None or number > 100:
        return None, f"{value!r} must be a whole number from 0 to 100"
    return number, None


def rollout(hosts: list[str], variable: Callable[[str, str], Any]) -> Rollout:
    """The order for the office gateways ``hosts`` (inventory order kept).

    ``variable(host, name)`` returns a host's inventory variable, or None. The
    planner has already validated every value; anything unusable here falls
    back to the schema's default rather than failing a second time.
    """
    hubs, branches = [], []
    for host in hosts:
        role = variable(host, "office_role") or schema.BY_NAME["office_role"].default
        (hubs if role == "hub" else branches).append(host)
    first = hosts[0] if hosts else None

    def deployment(name: str) -> Any:
        value = variable(first, name) if first is not None else None
        return schema.BY_NAME[name].default if value is None else value

    batch, _unused = check_batch(deployment("office_rollout_batch"))
    max_fail, _unused = check_max_fail_percentage(deployment("office_rollout_max_fail_percentage"))
    return Rollout(
        hubs=hubs,
        branches=branches,
        batch=batch or list(schema.BY_NAME["office_rollout_batch"].default),
        max_fail_percentage=(
            schema.BY_NAME["office_rollout_max_fail_percentage"].default
            if max_fail is None
            else max_fail
        ),
    )
