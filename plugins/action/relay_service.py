# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""relay_service on the controller: hands the module the relay program, checksum first.

The module is first given the program's SHA-256 only. Where the gateway's copy has
that checksum (every run but the one that installs or updates it) the module does
its work and no program byte crosses the connection. Where it differs, the module
does nothing and asks for the program; the second call carries its bytes (about
100 KB, base64) inside the arguments: no extra temp directory or copy task.
"""

from __future__ import annotations

import base64
import hashlib

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
        program = None
        if source is not None:
            try:
                # A role's files/ first, as the copy action looks.
                path = self._find_needle("files", source)
                with open(path, "rb") as fh:
                    program = fh.read()
            except (AnsibleFileNotFound, OSError) as exc:
                raise AnsibleActionFail(f"program_src {source}: {exc}") from exc
            args["program_sha256"] = hashlib.sha256(program).hexdigest()
        done = self._execute_module(MODULE, module_args=args, task_vars=task_vars)
        sent = program is not None and bool(done.get("program_needed"))
        if sent:
            args["program"] = base64.b64encode(program).decode("ascii")
            done = self._execute_module(MODULE, module_args=args, task_vars=task_vars)
        result.update(done)
        # Whether the program's bytes crossed the connection in this run.
        result["program_sent"] = sent
        return result
