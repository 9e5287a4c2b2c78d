"""Running a module's main() the way Ansible does, for the tests in this directory."""

from __future__ import annotations

import pytest
from ansible.module_utils.testing import patch_module_args


def run_main(main, args: dict, capsys) -> tuple[int, str]:
    """Call ``main()`` with ``args`` as the module's arguments: its exit code and output."""
    with patch_module_args(args), pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().out
