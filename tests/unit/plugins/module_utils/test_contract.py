"""The contract between the planner and the gateways (module_utils/contract.py).

Three promises are tested here:
- every plan the planner makes matches the declared shape, and the validator
  names what a broken one gets wrong;
- no consumer (a role, a template, a playbook, a gateway module) reads a field of
  ``office_plan`` the contract does not declare;
- the planner, the modules and the relay share each fact by importing it, never by
  writing it again: a second copy of one makes a test fail.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import sys
import zipfile
from pathlib import Path

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import contract
from ansible_collections.sitelink.gateway.plugins.module_utils import health as hc
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan_render import (  # noqa: E501
    _inventory_offices,
)

ROOT = Path(__file__).resolve().parents[4]
CONTRACT_FILE = ROOT / "plugins/module_utils/contract.py"
RELAY_DIR = ROOT / "relay"


def all_plans(offices: dict) -> dict:
    plan = plan_network(offices)
    return {host: office_plan(plan, host) for host in plan.gateways}


EXAMPLES = {
    name: all_plans(_inventory_offices(ROOT / f"examples/{name}/inventory.yml"))
    for name in ("case-study", "hub-and-branches")
}
MANHATTAN = EXAMPLES["case-study"]["manhattan-gw"]


# ----------------------------------------------------------------------------- the shape


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_plan_of_the_examples_matches_the_contract(example):
    for host, plan in EXAMPLES[example].items():
        assert contract.problems(plan) == [], host
        assert plan["contract"] == contract.VERSION


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (lambda p: p["firewall"].pop("relay_ports"), "office_plan.firewall: missing relay_ports"),
        (lambda p: p.pop("relay"), "office_plan: missing relay"),
        (
            lambda p: p["tunnels"][0].update(mtu="1480"),
            "office_plan.tunnels[0].mtu: '1480' is not an int",
        ),
        (
            lambda p: p["relay"].update(wire="sitelink2"),
            "office_plan.relay.wire: 'sitelink2' is not one of raw, sitelink1",
        ),
        (
            lambda p: p["masquerade"].update(nat_to="x"),
            "office_plan.masquerade: not in the contract: nat_to",
        ),
        (
            lambda p: p["relay"]["peers"]["192.168.2.126"].update(wire=None),
            "office_plan.relay.peers['192.168.2.126'].wire: None is not a string",
        ),
        (lambda p: p["links"][0].update(peer=3), "office_plan.links[0].peer: 3 is not a string"),
        (lambda p: p.update(contract=99), "office_plan: contract version 99, this collection"),
    ],
)
def test_the_validator_names_what_a_broken_plan_gets_wrong(break_it, expected):
    plan = copy.deepcopy(MANHATTAN)
    plan["relay"]["peers"]["192.168.2.126"]["wire"] = "raw"  # an external peer's own wire
    assert contract.problems(plan) == []
    break_it(plan)
    found = contract.problems(plan)
    assert any(expected in problem for problem in found), found


def test_a_section_is_handed_out_checked_or_stops_the_run():
    assert contract.section(MANHATTAN, "firewall") is MANHATTAN["firewall"]
    broken = copy.deepcopy(MANHATTAN)
    del broken["firewall"]["tunnels"]
    with pytest.raises(contract.ContractError, match=r"office_plan\.firewall: missing tunnels"):
        contract.section(broken, "firewall")
    with pytest.raises(contract.ContractError, match="no section 'nat'"):
        contract.section(MANHATTAN, "nat")
    # Another collection version's plan is named as such, not picked apart.
    with pytest.raises(contract.ContractError, match="contract version 2"):
        contract.section({**MANHATTAN, "contract": 2}, "tunnels")


def test_without_a_plan_a_role_gets_the_standalone_section():
    for name, standalone in contract.STANDALONE.items():
        assert contract.section(None, name) == standalone
    assert contract.section(None, "relay")["rules"] == []  # no rules: no relay runs
    with pytest.raises(contract.ContractError, match="there is no plan"):
        contract.section(None, "links")


def test_every_section_a_role_takes_has_a_standalone_form():
    assert set(contract.SECTIONS) | {"rollback_timeout"} == set(contract.STANDALONE)


# ----------------------------------------------------------------------------- relay keys


def test_the_keys_file_sends_with_the_key_and_accepts_the_rotated_ones_too():
    config = copy.deepcopy(MANHATTAN["relay"])
    peers = contract.relay_keyed_peers(config)
    assert peers == ["192.168.2.126"] and contract.relay_needs_keys(config)
    old, new = "11" * 32, "22" * 32
    # Step 1: sends the old key, accepts the new one too; step 2: sends the new one,
    # accepts the old one too; step 3: the new one only.
    steps = [
        {"relay": old, "relay_accepted": [new]},
        {"relay": new, "relay_accepted": [old]},
        {"relay": new},
    ]
    files = [
        contract.relay_keys_document(peers, {"192.168.2.126": keys})["peers"]["192.168.2.126"]
        for keys in steps
    ]
    assert files == [
        {"send": old, "accept": [old, new]},
        {"send": new, "accept": [new, old]},
        {"send": new, "accept": [new]},
    ]
    assert contract.relay_keys_document(peers, {"192.168.2.126": steps[0]})["version"] == (
        contract.RELAY_KEYS_VERSION
    )


def test_a_peer_on_the_raw_wire_needs_no_key_and_a_keyless_one_is_named():
    config = copy.deepcopy(MANHATTAN["relay"])
    config["peers"]["192.168.2.126"]["wire"] = contract.WIRE_RAW
    assert contract.relay_keyed_peers(config) == []
    config["wire"] = contract.WIRE_RAW
    assert not contract.relay_needs_keys(config)
    with pytest.raises(contract.ContractError, match=r"peer relay\(s\) 192\.168\.2\.126") as err:
        contract.relay_keys_document(["192.168.2.126"], {"192.168.2.126": {"tunnel": "ab" * 32}})
    assert "ab" * 32 not in str(err.value)


# ----------------------------------------------------------------------------- consumers


class Recorder(dict):
    """A plan that notes every field read of it, as a contract path."""

    def __init__(self, value, path, seen):
        super().__init__({k: wrap(v, f"{path}.{k}", seen) for k, v in value.items()})
        self.path, self.seen = path, seen

    def __getitem__(self, key):
        self.seen.add(f"{self.path}.{key}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(f"{self.path}.{key}")
        return super().get(key, default)


def wrap(value, path, seen):
    if isinstance(value, dict):
        return Recorder(value, path, seen)
    if isinstance(value, list):
        return [wrap(v, f"{path}[]", seen) for v in value]
    return value


def generic(path: str) -> str:
    """A recorded path as the contract spells it: a data key (an address) is ``*``."""
    return re.sub(r"\.(\d+\.\d+\.\d+\.\d+)(?=\.|$)", ".*", path)


def test_the_health_check_reads_only_declared_fields():
    seen: set = set()
    for plan in EXAMPLES["hub-and-branches"].values():
        hc.plan_view(wrap(plan, "office_plan", seen))
    assert seen, "plan_view read nothing"
    assert {generic(p) for p in seen} <= contract.declared_paths(), sorted(
        {generic(p) for p in seen} - contract.declared_paths()
    )


def test_a_recorder_catches_an_undeclared_read():
    """The check above can fail: a consumer reading a field the contract lacks."""
    seen: set = set()
    plan = wrap(copy.deepcopy(MANHATTAN), "office_plan", seen)
    plan["lan"].get("gateway")
    assert "office_plan.lan.gateway" in {generic(p) for p in seen} - contract.declared_paths()


# What roles, templates and playbooks read of the plan: office_plan.a.b, the
# section variables a role binds with plan_section, and the relay role's config.
JINJA_FILES = [
    *ROOT.glob("roles/*/defaults/*.yml"),
    *ROOT.glob("roles/*/vars/*.yml"),
    *ROOT.glob("roles/*/tasks/*.yml"),
    *ROOT.glob("roles/*/templates/*.j2"),
    *ROOT.glob("playbooks/*.yml"),
]
_BOUND = re.compile(
    r"^(\w+):\s*\"\{\{\s*office_plan \| default\(none\) \| "
    r"sitelink\.gateway\.plan_section\('(\w+)'\)\s*\}\}\"",
    re.M,
)
_ATTRS = r"((?:\.\w+|\[['\"]\w+['\"]\])*)"


def jinja_reads() -> set[str]:
    """Every plan path a role, template or playbook reads, as a contract path."""
    texts = {path: path.read_text() for path in JINJA_FILES}
    bound = {"office_plan": "office_plan"}
    for text in texts.values():
        for name, section in _BOUND.findall(text):
            bound[name] = f"office_plan.{section}"
    reads = set()
    for text in texts.values():
        for name, prefix in bound.items():
            for attrs in re.findall(rf"\b{name}{_ATTRS}", text):
                parts = re.findall(r"\w+", attrs)
                reads.add(".".join([prefix, *parts]) if parts else prefix)
    return reads


def test_roles_and_playbooks_read_only_declared_fields():
    reads = jinja_reads()
    assert "office_plan.firewall.tunnels" in reads  # through firewall's __firewall_plan
    assert "office_plan.relay.rules" in reads  # the relay role's relay_config
    undeclared = {r for r in reads if r not in contract.declared_paths()}
    assert not undeclared, sorted(undeclared)


def test_a_role_reading_an_undeclared_field_is_caught(tmp_path, monkeypatch):
    role = tmp_path / "defaults.yml"
    role.write_text('firewall_zone: "{{ __firewall_plan.zone }}"\n')
    monkeypatch.setattr(sys.modules[__name__], "JINJA_FILES", [*JINJA_FILES, role])
    assert "office_plan.firewall.zone" in jinja_reads() - contract.declared_paths()


# ----------------------------------------------------------------------------- shared facts


def shared_values() -> dict[str, object]:
    """The facts the contract shares that a copy could spell again: its strings."""
    return {
        name: value
        for name, value in vars(contract).items()
        if name.isupper() and isinstance(value, str)
    }


def string_constants(path: Path):
    """(line, value) of every string literal of ``path`` that is not a docstring."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            yield node.lineno, node.value


def python_sources():
    for base in ("plugins", "relay/sitelink_relay", "tools"):
        for path in sorted((ROOT / base).rglob("*.py")):
            if path.resolve() != CONTRACT_FILE.resolve():
                yield path


def copies_of_shared_facts(paths) -> list[str]:
    wanted = {value: name for name, value in shared_values().items() if len(value) > 4}
    found = []
    for path in paths:
        for line, value in string_constants(path):
            if value in wanted:
                found.append(
                    f"{path.relative_to(ROOT)}:{line}: {value!r} is contract.{wanted[value]}"
                )
    return found


def literal_namesakes(paths) -> list[str]:
    """Module-level names of the contract's (OFFICE_NAME_MAX, CONFIG_VERSION...) given a
    literal value elsewhere: a second copy of a number a string search cannot find."""
    names = {name for name in vars(contract) if name.isupper()}
    names |= {name.removeprefix("RELAY_") for name in names if name.startswith("RELAY_")}
    names = {name for name in names if "_" in name}  # not VERSION, UNIT: too common
    found = []
    for path in paths:
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in names:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {target.id}")
    return found


def test_no_source_spells_a_shared_fact_again():
    assert copies_of_shared_facts(python_sources()) == []
    assert literal_namesakes(python_sources()) == []


def test_a_copy_of_a_shared_fact_is_caught(tmp_path):
    copy_ = tmp_path / "config.py"
    copy_.write_text('"""Docs may name sitelink1."""\nWIRE = "sitelink1"\n')
    (tmp_path / "ok.py").write_text('"""/run/sitelink-relay/status.json"""\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys.modules[__name__], "ROOT", tmp_path)
        assert copies_of_shared_facts([copy_, tmp_path / "ok.py"]) == [
            "config.py:2: 'sitelink1' is contract.WIRE_SITELINK1"
        ]
        number = tmp_path / "limits.py"
        number.write_text("OFFICE_NAME_MAX = 63\nCONFIG_VERSION = 2\nOTHER = 2\n")
        assert literal_namesakes([number]) == [
            "limits.py:1: OFFICE_NAME_MAX",
            "limits.py:2: CONFIG_VERSION",
        ]


def test_the_relay_imports_the_contract_file_itself():
    link = RELAY_DIR / "sitelink_relay" / "contract.py"
    assert link.resolve() == CONTRACT_FILE.resolve()
    sys.path.insert(0, str(RELAY_DIR))
    try:
        from sitelink_relay import config, wire  # noqa: PLC0415  (the relay's own package)
    finally:
        sys.path.remove(str(RELAY_DIR))
    assert Path(wire.office_id.__code__.co_filename).resolve() == CONTRACT_FILE.resolve()
    assert config.CONFIG_VERSION == contract.RELAY_CONFIG_VERSION
    assert (config.WIRE_RAW, config.WIRE_SITELINK1) == (contract.WIRE_RAW, contract.WIRE_SITELINK1)
    assert wire.KEYS_VERSION == contract.RELAY_KEYS_VERSION
    assert config.DEFAULT_STATUS_FILE == contract.RELAY_STATUS_FILE
    # The program the relay role installs carries the same file.
    program = ROOT / "roles/relay/files/sitelink-relay"
    with zipfile.ZipFile(program) as archive:
        assert archive.read("sitelink_relay/contract.py") == CONTRACT_FILE.read_bytes()


def test_the_relay_reads_every_field_the_plan_gives_it():
    """The relay's section is the relay's own configuration file: the relay's parser
    knows each field the contract declares there."""
    sys.path.insert(0, str(RELAY_DIR))
    try:
        from sitelink_relay import config  # noqa: PLC0415
    finally:
        sys.path.remove(str(RELAY_DIR))
    declared = set(contract.RELAY.fields) | set(contract.RELAY.optional)
    assert declared <= set(config._TOP_KEYS_V2)  # noqa: SLF001
    for plan in EXAMPLES["hub-and-branches"].values():
        parsed = config.parse_config(copy.deepcopy(plan["relay"]))
        assert parsed.office == plan["office"]


def test_office_ids_of_the_planner_and_the_relay_agree():
    sys.path.insert(0, str(RELAY_DIR))
    try:
        from sitelink_relay import wire  # noqa: PLC0415
    finally:
        sys.path.remove(str(RELAY_DIR))
    for name in ("manhattan", "brooklyn", "a" * 63, "zürich"):
        assert wire.office_id(name) == contract.office_id(name)
        assert len(contract.office_id(name)) == contract.OFFICE_ID_BYTES
    assert os.path.basename(wire.office_id.__code__.co_filename) == "contract.py"


def test_the_kernel_role_lets_the_relay_have_the_buffers_it_asks_for():
    # The relay runs unprivileged: the kernel caps its socket buffers at rmem_max and
    # wmem_max, and a hub's fan-out needs the send buffer it asks for.
    import yaml  # noqa: PLC0415

    sys.path.insert(0, str(RELAY_DIR))
    try:
        from sitelink_relay import ports  # noqa: PLC0415  (the relay's own package)
    finally:
        sys.path.remove(str(RELAY_DIR))
    sysctls = yaml.safe_load((ROOT / "roles/kernel/defaults/main.yml").read_text())[
        "kernel_sysctls"
    ]
    assert sysctls["net.core.rmem_max"] >= ports.SOCKET_RCVBUF
    assert sysctls["net.core.wmem_max"] >= ports.SOCKET_SNDBUF
