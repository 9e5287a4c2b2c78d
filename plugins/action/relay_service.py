# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""relay_service on the controller: hands the module the relay program's bytes.

The program (about 70 KB) goes inside the module's arguments, so installing it
takes no extra connection, temp directory or task: the module compares it with
the gateway's copy and installs it only when it differs.
"""

from __future__ import annotations

import base64

from ansible.errors import AnsibleActionFail, AnsibleFileNotFound
from ansible.plugins.action import ActionBase

MODULE = "sitelink.gateway.relay_service"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars if task_vars is not None else {}
        result = super().run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        source = args.pop("program_src", None)
        if source is not None:
            try:
                # A role's files/ first, as the copy action looks.
                path = self._find_needle("files", source)
                with open(path, "rb") as fh:
                    args["program"] = base64.b64encode(fh.read()).decode("ascii")
            except (AnsibleFileNotFound, OSError) as exc:
                raise AnsibleActionFail(f"program_src {source}: {exc}") from exc
        result.update(self._execute_module(MODULE, module_args=args, task_vars=task_vars))
        return result
