"""relay_service's action plugin: the program's bytes go to the module in its arguments."""

from __future__ import annotations

import base64
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail, AnsibleFileNotFound
from ansible_collections.sitelink.gateway.plugins.action import relay_service as action


def make_action(args, files):
    task = SimpleNamespace(
        args=dict(args), async_val=0, check_mode=False, action="sitelink.gateway.relay_service"
    )
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir=None))
    plugin = action.ActionModule(task, connection, SimpleNamespace(), None, None, None)
    calls = []

    def find_needle(dirname, needle):
        if needle not in files:
            raise AnsibleFileNotFound(f"could not find {needle} in {dirname}")
        return files[needle]

    def execute_module(module_name=None, module_args=None, task_vars=None):
        calls.append((module_name, module_args))
        return {"changed": True, "steps": ["install"]}

    plugin._find_needle = find_needle
    plugin._execute_module = execute_module
    return plugin, calls


def test_the_program_goes_base64_in_the_module_arguments(tmp_path):
    program = tmp_path / "sitelink-relay"
    program.write_bytes(b"#!/usr/bin/env python3\nPK\x03\x04\xff\x00binary")
    plugin, calls = make_action(
        {"program_src": "sitelink-relay", "unit": "[Service]\n"},
        {"sitelink-relay": str(program)},
    )
    result = plugin.run(task_vars={})
    assert result["changed"] and result["steps"] == ["install"]
    ((module, args),) = calls
    assert module == "sitelink.gateway.relay_service"
    assert "program_src" not in args and args["unit"] == "[Service]\n"
    assert base64.b64decode(args["program"]) == program.read_bytes()


def test_without_program_src_the_program_is_left_alone():
    plugin, calls = make_action({"unit": "[Service]\n"}, {})
    plugin.run(task_vars={})
    assert "program" not in calls[0][1]


def test_a_missing_program_fails_naming_it():
    plugin, calls = make_action({"program_src": "nowhere", "unit": "x"}, {})
    with pytest.raises(AnsibleActionFail, match="program_src nowhere"):
        plugin.run(task_vars={})
    assert calls == []
