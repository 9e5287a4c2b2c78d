"""office_plan's action plugin: what plan.yml prints, and how the inventory's problems read."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ansible.errors import AnsibleUndefinedVariable
from ansible_collections.sitelink.gateway.plugins.action import office_plan as action
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import inventory, render
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    branch_offices,
)

ROOT = Path(action.__file__).resolve().parents[2]  # the collection


def run_action(offices, groups=None, **args):
    """The action over ``offices`` ({host: its variables}, as hostvars shows them)."""
    task = SimpleNamespace(
        args={"group": "offices", **args},
        async_val=0,
        check_mode=False,
        action="sitelink.gateway.office_plan",
    )
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/nowhere"))  # never used
    plugin = action.ActionModule(task, connection, SimpleNamespace(), None, None, None)
    groups = {"all": sorted(offices), "offices": sorted(offices), **(groups or {})}
    return plugin.run(task_vars={"hostvars": offices, "groups": groups})


class Undefined(dict):
    """A host's variables where ``broken`` cannot be templated."""

    def __init__(self, values, broken):
        super().__init__(values)
        self.broken = broken

    def __getitem__(self, name):
        if name in self.broken:
            raise AnsibleUndefinedVariable(f"'{self.broken[name]}' is undefined")
        return super().__getitem__(name)


# --------------------------------------------------------------------------- (a), (b) output


def test_plan_lines_are_lines_and_say_where_the_files_are(tmp_path):
    result = run_action(branch_offices(3), output_dir=str(tmp_path / "plan"))
    assert not result.get("failed"), result.get("msg")
    lines = result["plan_lines"]
    assert isinstance(lines, list)
    assert not any("\n" in line for line in lines), "a line with a line break in it"
    assert lines[0].startswith("Network: hub-and-spoke")
    # The network, then each gateway, in the order the files hold them.
    network = (tmp_path / "plan/network.txt").read_text().splitlines()
    assert lines[: len(network)] == network
    hub = (tmp_path / "plan/gateways/office0-gw.txt").read_text().splitlines()
    start = lines.index(hub[0])
    assert lines[start : start + len(hub)] == hub
    base = tmp_path / "plan"
    assert lines[-2] == (
        f"Written: {base}/network.txt, {base}/network.dot"
        + (f", {base}/network.svg" if (base / "network.svg").exists() else "")
    )
    assert lines[-1] == (
        f"Per-gateway plans of the 3 gateways: {base}/gateways/<host>.txt (printed above)"
    )
    assert "plan_text" not in result  # one copy of the plan in the result, not two


@pytest.mark.parametrize(
    ("console", "count", "printed", "note"),
    [
        ("auto", 20, True, "printed above"),
        (
            "auto",
            21,
            False,
            "not printed past 20 gateways; -e sitelink_plan_console=full prints them",
        ),
        ("full", 21, True, "printed above"),
        (
            "summary",
            2,
            False,
            "not printed with console summary; -e sitelink_plan_console=full prints them",
        ),
    ],
)
def test_past_20_gateways_the_console_says_where_they_are(tmp_path, console, count, printed, note):
    result = run_action(branch_offices(count), output_dir=str(tmp_path), console=console)
    lines = result["plan_lines"]
    gateway_sections = [line for line in lines if line.startswith("Gateway of office ")]
    assert len(gateway_sections) == (count if printed else 0)
    assert lines[-1] == (
        f"Per-gateway plans of the {count} gateways: {tmp_path}/gateways/<host>.txt ({note})"
    )
    assert len(list((tmp_path / "gateways").iterdir())) == count  # written either way


def test_render_warnings_do_not_replace_the_plans_own(tmp_path, monkeypatch):
    """A missing picture is one more warning, not instead of the plan's warnings."""

    def no_dot(_source):
        raise render.RenderError("Graphviz's dot is not installed")

    monkeypatch.setattr(render, "svg", no_dot)
    offices = branch_offices(1)
    plan_warnings = inventory.plan_inventory(offices, sorted(offices)).warnings
    assert plan_warnings  # office0 alone: nothing to masquerade, nobody to relay to
    result = run_action(offices, output_dir=str(tmp_path))
    assert result["warnings"] == [*plan_warnings, "no picture: Graphviz's dot is not installed"]


# --------------------------------------------------------------------------- (e) masquerade


@pytest.mark.parametrize("output_dir", [False, True], ids=["site", "plan"])
def test_a_masquerading_office_without_peers_is_warned_about(tmp_path, output_dir):
    args = {"output_dir": str(tmp_path)} if output_dir else {}
    # One office alone.
    alone = run_action(branch_offices(1), **args)
    assert (
        "office 'office0' (host office0-gw): office_masquerade: no other office reaches this "
        "office, so there is nothing to masquerade"
    ) in alone["warnings"]
    # An office with no link to any other (links topology, no office_links).
    offices = branch_offices(3)
    for office in offices.values():
        office["office_topology"] = "links"
    unlinked = run_action(offices, **args)
    assert any(
        w.startswith("office 'office0' (host office0-gw): office_masquerade: no other office")
        for w in unlinked["warnings"]
    ), unlinked["warnings"]
    # The control: linked to others, nothing to warn about.
    linked = run_action(branch_offices(3), **args)
    assert not any("office_masquerade" in w for w in linked["warnings"])


# --------------------------------------------------------------------------- (c) shared problems


def test_a_group_variable_typo_at_100_offices_is_one_problem():
    offices = branch_offices(100)
    for office in offices.values():
        office["office_lan_interfce"] = office.pop("office_lan_interface")
    offices["office7-gw"]["office_role"] = "spoke"  # one office's own problem
    result = run_action(offices)
    assert result["failed"] is True
    message = result["msg"]
    assert message.startswith("invalid office inventory (3 problems, 201 counted office by office)")
    lines = message.splitlines()[1:]
    assert lines == [
        "  - office_lan_interfce: unknown office variable (did you mean office_lan_interface?); "
        "the same at 100 offices, every office of group 'offices', likely one group variable: "
        "'office0' (host office0-gw), 'office1' (host office1-gw), 'office10' (host "
        "office10-gw) and 97 more",
        # Unset everywhere: the same problem, but no value to call a group variable.
        "  - office_lan_interface: is required; the same at 100 offices, every office of group "
        "'offices': 'office0' (host office0-gw), 'office1' (host office1-gw), 'office10' "
        "(host office10-gw) and 97 more",
        "  - office 'office7' (host office7-gw): office_role: 'spoke' must be one of: hub, branch",
    ]


def test_a_shared_problem_names_the_group_whose_offices_have_it():
    offices = branch_offices(30)
    east = [f"office{index}-gw" for index in range(10, 20)]
    for host in east:
        offices[host]["office_wan_mtu"] = "{{ east_mtu }}"
    hostvars = {
        host: Undefined(values, {"office_wan_mtu": "east_mtu"} if host in east else {})
        for host, values in offices.items()
    }
    result = run_action(
        hostvars, groups={"east": east, "branches": sorted(offices)[1:], "unrelated": ["x"]}
    )
    assert result["msg"].splitlines()[1:] == [
        "  - office_wan_mtu: cannot be templated: 'east_mtu' is undefined; the same at 10 "
        "offices, every office of group 'east', likely one group variable: 'office10' (host "
        "office10-gw), 'office11' (host office11-gw), 'office12' (host office12-gw) and 7 more"
    ]


def test_a_shared_problem_is_not_called_a_group_variable_when_the_values_say_otherwise():
    """Every office on the same LAN: each overlaps the first, whose value is the same but which
    has no problem, so the offices with it are not the offices with that value."""
    offices = branch_offices(5)
    for office in offices.values():
        office["office_lan_address"] = "10.9.0.1/24"
    message = run_action(offices)["msg"]
    (line,) = message.splitlines()[1:]
    assert line.startswith(
        "  - office_lan_address: LAN 10.9.0.0/24 overlaps the LAN 10.9.0.0/24 of office "
        "'office0' (host office0-gw); the same at 4 offices: 'office1' (host office1-gw), "
    )
    assert line.endswith(" and 1 more")
    assert "group variable" not in line and "group 'offices'" not in line


def test_a_shared_warning_about_a_deployment_variable_is_not_called_a_group_variable():
    """office_topology is one setting everywhere by design: that every unlinked office has
    it tells nothing (the fix is office_links)."""
    offices = branch_offices(3)
    for office in offices.values():
        office["office_topology"] = "links"
    warnings = run_action(offices)["warnings"]
    assert (
        "office_topology: this office has no link to any other office in the links topology; "
        "the same at 3 offices, every office of group 'offices': 'office0' (host office0-gw), "
        "'office1' (host office1-gw), 'office2' (host office2-gw)"
    ) in warnings


def test_problems_at_two_offices_that_differ_stay_two_lines():
    offices = branch_offices(3)
    offices["office1-gw"]["office_role"] = "spoke"
    offices["office2-gw"]["office_role"] = "hubb"
    lines = run_action(offices)["msg"].splitlines()
    assert lines[0] == "invalid office inventory (2 problems):"
    assert lines[1].startswith("  - office 'office1' (host office1-gw): office_role: 'spoke'")
    assert lines[2].startswith("  - office 'office2' (host office2-gw): office_role: 'hubb'")


# --------------------------------------------------------------------------- (d) near misses


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("ofice_role", "office_role"),
        ("office-role", "office_role"),
        ("Office_role", "office_role"),
        ("OFFICE_ROLE", "office_role"),
        ("offce_lan_address", "office_lan_address"),
        ("officerole", "office_role"),
        ("offcie_role", "office_role"),  # two letters swapped
        ("offfice-wan-mtu", "office_wan_mtu"),
        ("Office_lan_interfce", "office_lan_interface"),
        ("ofice_lan_adress", "office_lan_address"),  # and a typo after it
    ],
)
def test_a_near_miss_of_an_office_variable_is_warned_about(name, meant):
    offices = branch_offices(2)
    offices["office1-gw"][name] = "hub"
    result = run_action(offices)
    assert not result.get("failed"), result.get("msg")
    assert (
        f"office 'office1' (host office1-gw): {name}: ignored, not an office variable "
        f"(did you mean {meant}?)"
    ) in result["warnings"]


def test_an_office_look_alike_without_a_match_is_warned_about_too():
    offices = branch_offices(2)
    offices["office1-gw"]["Office_notes"] = "by the window"
    assert (
        "office 'office1' (host office1-gw): Office_notes: ignored, not an office variable "
        "(they are spelled office_*, lower case)"
    ) in run_action(offices)["warnings"]


def test_other_variables_are_not_warned_about():
    offices = branch_offices(2)
    for office in offices.values():
        office.update(
            ansible_host="127.0.0.1",
            ansible_user="admin",
            inventory_hostname="x",
            group_names=["offices"],
            notice_role="reception",  # 0.82 from office_role: another role's variable
            offices="a list of my own",
        )
    assert run_action(offices)["warnings"] == []


def role_variables() -> list[str]:
    """Every variable the collection's roles declare, but the office role's own."""
    names = set()
    for path in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        for entry in yaml.safe_load(path.read_text())["argument_specs"].values():
            names.update(entry.get("options", {}))
    return sorted(n for n in names if not n.startswith("office_"))


def test_the_roles_own_variables_are_all_found():
    assert {"firewall_input_policy", "tunnel_peers", "relay_keys"} <= set(role_variables())


@pytest.mark.parametrize(
    "name",
    [
        *role_variables(),  # firewall_input_policy is 0.87 from office_firewall_input_policy
        "officer_name",  # another word: 0.96 from office_name
        "offices_role",
        "offline_role",
        "offer_name",
        "Officer-Name",
    ],
)
def test_the_roles_variables_and_other_words_are_no_near_misses(name):
    offices = branch_offices(2)
    offices["office1-gw"][name] = "drop"
    assert inventory.near_miss(name) is None
    assert run_action(offices)["warnings"] == []


def test_a_near_miss_in_a_group_variable_is_one_warning_and_comes_with_a_failure():
    """At 100 offices, once; and when validation fails, the warning is there to say why."""
    offices = branch_offices(100)
    for office in offices.values():
        office["office-lan-interface"] = office.pop("office_lan_interface")
    result = run_action(offices)
    assert result["failed"] is True
    assert result["warnings"] == [
        "office-lan-interface: ignored, not an office variable (did you mean "
        "office_lan_interface?); the same at 100 offices, every office of group 'offices', "
        "likely one group variable: 'office0' (host office0-gw), 'office1' (host office1-gw), "
        "'office10' (host office10-gw) and 97 more"
    ]
    assert "office_lan_interface: is required; the same at 100 offices" in result["msg"]


def test_the_filter_path_sees_the_same_plan_without_groups():
    """plan_inventory without groups (the office_gateway filter): shared problems are still
    said once, without naming a group."""
    offices = copy.deepcopy(branch_offices(4))
    for office in offices.values():
        office["office_role"] = "spoke"
    with pytest.raises(inventory.PlanError) as info:
        inventory.plan_inventory(offices, sorted(offices))
    assert len(info.value.errors) == 4
    assert (
        str(info.value)
        .splitlines()[1]
        .startswith(
            "  - office_role: 'spoke' must be one of: hub, branch; the same at 4 offices, likely "
            "one group variable: "
        )
    )
