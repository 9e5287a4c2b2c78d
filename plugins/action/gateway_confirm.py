# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Confirm a gateway change over a NEW connection, or fail saying when it rolls back.

A connection opened before the change proves nothing: an SSH ControlPersist master
(or any established TCP connection) survives a firewall that now refuses new
connections. So the connection is reset before every attempt, and only a module run
over a fresh one confirms. Modelled on ansible.builtin.wait_for_connection.
"""

from __future__ import annotations

import time
from datetime import datetime

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

FACT = "sitelink_rollback"
MODULE = "sitelink.gateway.gateway_confirm"
# By default give up this long before the deadline: a confirm that arrives while the
# restore runs only finds that the gateway rolled back.
MARGIN = 10


def pending_rollback(task_vars):
    """The host's pending ``sitelink_rollback`` fact, or None."""
    facts = task_vars.get("ansible_facts") or {}
    fact = facts.get(FACT)
    if fact is None:
        fact = task_vars.get(FACT)
    if isinstance(fact, dict) and fact.get("deadline") is not None:
        return fact
    return None


def clock_text(epoch):
    """``epoch`` as the controller's local time of day, e.g. 12:03:40 (with the date if
    it is not today)."""
    try:
        moment = datetime.fromtimestamp(float(epoch))
    except (TypeError, ValueError, OverflowError, OSError):
        return str(epoch)
    text = moment.strftime("%H:%M:%S")
    if moment.date() != datetime.now().date():
        text = moment.strftime("%Y-%m-%d ") + text
    return text


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("timeout", "armed_at"))
    SLEEP = 2

    # Injectable for tests.
    _now = staticmethod(time.time)
    _sleep = staticmethod(time.sleep)

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars if task_vars is not None else {}
        result = super().run(tmp, task_vars)
        del tmp
        host = task_vars.get("inventory_hostname") or self._play_context.remote_addr
        if self._task.check_mode:
            return {**result, "changed": False, "skipped": True, "msg": "check mode: nothing done"}
        fact = pending_rollback(task_vars)
        if fact is None:
            return {**result, "changed": False, "skipped": True, "msg": "no rollback pending"}

        args = self._task.args
        try:
            deadline = float(fact["deadline"])
            armed_at = args.get("armed_at")
            armed_at = float(armed_at if armed_at is not None else fact.get("armed_at"))
            timeout = args.get("timeout")
            if timeout is None:
                timeout = max(0.0, deadline - MARGIN - self._now())
            timeout = float(timeout)
        except (TypeError, ValueError) as exc:
            return {
                **result,
                "failed": True,
                "msg": f"{host}: timeout, armed_at and the {FACT} fact must be numbers ({exc})",
            }
        unit = fact.get("unit") or "sitelink-rollback.timer"
        what = ", ".join(to_text(r) for r in fact.get("resources") or []) or "configuration"

        start = self._now()
        end = start + timeout
        attempts = 0
        while True:
            attempts += 1
            error = None
            try:
                self._new_connection(task_vars)
                confirmed = self._execute_module(
                    module_name=MODULE, module_args={"armed_at": armed_at}, task_vars=task_vars
                )
            except AnsibleConnectionFailure as exc:
                error = to_text(exc)
            else:
                if confirmed.get("unreachable"):
                    error = to_text(confirmed.get("msg"))
            if error is None:
                break
            display.vvv(f"gateway_confirm: attempt {attempts}: {error}", host=host)
            if self._now() + self.SLEEP > end:
                elapsed = self._now() - start
                return {
                    **result,
                    "failed": True,
                    "changed": False,
                    "attempts": attempts,
                    "elapsed": int(elapsed),
                    "deadline": deadline,
                    "msg": (
                        f"{host}: no new connection within {elapsed:.0f} s after the change; the "
                        f"gateway restores its previous state ({what}) by itself at "
                        f"{clock_text(deadline)} ({unit}). Last error: {error.strip()}"
                    ),
                }
            self._sleep(self.SLEEP)

        self._remove_tmp_path(self._connection._shell.tmpdir)
        elapsed = int(self._now() - start)
        confirmed = dict(confirmed)
        confirmed.pop("invocation", None)
        result.update(confirmed, attempts=attempts, elapsed=elapsed)
        if confirmed.get("rolled_back"):
            record = confirmed.get("rollback") or {}
            # The module's error summary would be shown instead of this action's msg.
            result.pop("exception", None)
            result.update(
                failed=True,
                changed=False,
                msg=(
                    f"{host}: the change was not confirmed in time; the gateway restored its "
                    f"previous state ({what}) by itself at "
                    f"{clock_text(record.get('rolled_back_at'))} ({unit})"
                ),
            )
        elif confirmed.get("failed"):
            result["msg"] = f"{host}: {to_text(confirmed.get('msg'))}"
        else:
            result["ansible_facts"] = {FACT: {}}
        return result

    def _new_connection(self, task_vars):
        """Drop the current connection (and its SSH master) so the next command opens one."""
        # Interpreter discovery, if it ran in an earlier attempt, runs again.
        if self._discovered_interpreter_key:
            task_vars.get("ansible_facts", {}).pop(self._discovered_interpreter_key, None)
        self._connection.reset()
