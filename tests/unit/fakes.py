"""A stand-in for AnsibleModule: exit_json/fail_json raise Exit with the result."""

from __future__ import annotations

import shutil


class Exit(Exception):
    def __init__(self, result, failed):
        super().__init__(result.get("msg"))
        self.result = result
        self.failed = failed


class FakeModule:
    def __init__(self, params, check_mode=False, diff=False):
        self.params = dict(params)
        self.check_mode = check_mode
        self._diff = diff

    def fail_json(self, **kw):
        raise Exit(kw, True)

    def exit_json(self, **kw):
        raise Exit(kw, False)

    def atomic_move(self, src, dest):
        shutil.move(src, dest)
