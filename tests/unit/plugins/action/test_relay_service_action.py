"""relay_service's action plugin: the program's checksum first, its bytes in the module's
arguments only when the gateway's copy differs."""

from __future__ import annotations

import base64
import hashlib
from types import SimpleNamespace

import pytest
from ansible.errors import AnsibleActionFail, AnsibleFileNotFound
from ansible_collections.sitelink.gateway.plugins.action import relay_service as action


def make_action(args, files, needed=False):
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
        calls.append((module_name, dict(module_args)))
        if needed and "program" not in module_args:
            return {"changed": False, "program_needed": True}
        return {"changed": True, "steps": ["install"]}

    plugin._find_needle = find_needle
    plugin._execute_module = execute_module
    return plugin, calls


PROGRAM = b"#!/usr/bin/env python3\nPK\x03\x04\xff\x00binary"


def test_a_program_the_gateway_has_is_sent_as_its_checksum_only(tmp_path):
    program = tmp_path / "sitelink-relay"
    program.write_bytes(PROGRAM)
    plugin, calls = make_action(
        {"program_src": "sitelink-relay", "unit": "[Service]\n"},
        {"sitelink-relay": str(program)},
    )
    result = plugin.run(task_vars={})
    assert result["changed"] and result["steps"] == ["install"]
    assert result["program_sent"] is False
    ((module, args),) = calls  # one call, no program byte
    assert module == "sitelink.gateway.relay_service"
    assert "program_src" not in args and "program" not in args
    assert args["program_sha256"] == hashlib.sha256(PROGRAM).hexdigest()
    assert args["unit"] == "[Service]\n"


def test_the_program_goes_base64_in_the_module_arguments_when_asked_for(tmp_path):
    program = tmp_path / "sitelink-relay"
    program.write_bytes(PROGRAM)
    plugin, calls = make_action(
        {"program_src": "sitelink-relay", "unit": "[Service]\n"},
        {"sitelink-relay": str(program)},
        needed=True,
    )
    result = plugin.run(task_vars={})
    assert result["changed"] and "program_needed" not in result
    assert result["program_sent"] is True
    (_first, first), (_second, second) = calls
    assert "program" not in first
    assert base64.b64decode(second["program"]) == PROGRAM
    assert second["program_sha256"] == first["program_sha256"]


def test_without_program_src_the_program_is_left_alone():
    plugin, calls = make_action({"unit": "[Service]\n"}, {})
    assert plugin.run(task_vars={})["program_sent"] is False
    assert "program" not in calls[0][1]


def test_a_missing_program_fails_naming_it():
    plugin, calls = make_action({"program_src": "nowhere", "unit": "x"}, {})
    with pytest.raises(AnsibleActionFail, match="program_src nowhere"):
        plugin.run(task_vars={})
    assert calls == []
