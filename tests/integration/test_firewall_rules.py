"""The firewall role's rules, rendered from real plans and checked by nft itself.

Each variant is rendered by Ansible (the role's own template and defaults, from a
plan the planner made) and validated with ``nft -c`` (a dry-run transaction in
the kernel; nothing is loaded): the edge cases (no link, no relay, IPv6
management sources, both policies) must be valid nftables, and say what they should.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from playbook import BIN, ROOT

sys.path.insert(0, str(ROOT / "tests/unit"))
# Makes the collection importable.
import conftest  # noqa: E402,F401  # pylint: disable=unused-import
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import (  # noqa: E402
    plan_network,
)
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import (
    office_plan,  # noqa: E402
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (  # noqa: E402
    branch_offices,
    case_study,
    external_partner,
    with_topology,
)

pytestmark = pytest.mark.skipif(not shutil.which("nft"), reason="nft is not installed")


def variants() -> dict[str, dict]:
    hub = with_topology(branch_offices(3), "hub-and-spoke")
    hardened = with_topology(branch_offices(3), "hub-and-spoke")
    for office in hardened.values():
        office["office_firewall_input_policy"] = "drop"
        office["office_firewall_forward_policy"] = "drop"
        office["office_management_sources"] = ["198.51.100.7", "2001:db8::/48"]
    plain = with_topology(case_study(), "hub-and-spoke", office_tunnel_protection="none")
    solo = {"solo-gw": branch_offices(1)["office0-gw"]}
    # External peers that chose otherwise than the deployment (office_external_peers).
    plain_peer = external_partner(protection="none", relay_wire="raw")
    del plain_peer["psk"]
    plain_partner = with_topology(
        branch_offices(3), "hub-and-spoke", office_external_peers=[plain_peer]
    )
    protected_partner = with_topology(
        branch_offices(3),
        "hub-and-spoke",
        office_tunnel_protection="none",
        office_relay_wire="raw",
        office_external_peers=[external_partner(protection="ipsec")],
    )
    return {
        "case-study-hub": office_plan(plan_network(case_study()), "manhattan-gw"),
        "case-study-branch": office_plan(plan_network(case_study()), "brooklyn-gw"),
        "hub-of-three": office_plan(plan_network(hub), "office0-gw"),
        "hardened-branch": office_plan(plan_network(hardened), "office1-gw"),
        "plain-ipip": office_plan(plan_network(plain), "brooklyn-gw"),
        "no-links": office_plan(plan_network(solo), "solo-gw"),
        "plain-external-peer": office_plan(plan_network(plain_partner), "office0-gw"),
        "protected-external-peer": office_plan(plan_network(protected_partner), "office0-gw"),
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    """Every variant through the firewall role's template, in one playbook run."""
    work = tmp_path_factory.mktemp("firewall")
    plans = variants()
    (work / "plans.json").write_text(json.dumps(plans))
    play = [
        {
            "name": "Render the firewall rules of each plan",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"plans": "{{ lookup('file', 'plans.json') | from_json }}"},
            "tasks": [
                {
                    "name": "Render",
                    "ansible.builtin.include_tasks": "render.yml",
                    "loop": "{{ plans | dict2items }}",
                }
            ],
        }
    ]
    render = [
        {
            "name": "Render one",
            "ansible.builtin.copy": {
                "dest": f"{work}/{{{{ item.key }}}}.nft",
                "mode": "0600",
                "content": "{{ lookup('ansible.builtin.template', '"
                + str(ROOT / "roles/firewall/templates/firewall.nft.j2")
                + "') }}",
            },
            "vars": {"office_plan": "{{ item.value }}"},
        }
    ]
    defaults = yaml.safe_load((ROOT / "roles/firewall/defaults/main.yml").read_text())
    render[0]["vars"].update(defaults)
    render[0]["vars"].update(yaml.safe_load((ROOT / "roles/firewall/vars/main.yml").read_text()))
    (work / "site.yml").write_text(yaml.safe_dump(play))
    (work / "render.yml").write_text(yaml.safe_dump(render))
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            *("-i", "localhost,", "-c", "local", str(work / "site.yml")),
            *("-e", f"ansible_python_interpreter={sys.executable}"),
        ],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {name: (work / f"{name}.nft").read_text() for name in plans}


def nft_check(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    # As nft_table loads it: the body inside the collection's own table.
    rules = tmp_path / "rules.nft"
    rules.write_text(f"table inet sitelink_fw_check {{\n{body}\n}}\n")
    return subprocess.run(
        ["nft", "-c", "-f", str(rules)], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    "name",
    [
        "case-study-hub",
        "case-study-branch",
        "hub-of-three",
        "hardened-branch",
        "plain-ipip",
        "no-links",
        "plain-external-peer",
        "protected-external-peer",
    ],
)
def test_every_variant_is_valid_nftables(rendered, name, tmp_path):
    done = nft_check(rendered[name], tmp_path)
    assert done.returncode == 0, f"{name}:\n{done.stderr}\n{rendered[name]}"


def test_a_bad_rule_is_caught(tmp_path):
    """The check above can fail: a broken body is refused by nft -c."""
    assert (
        nft_check(
            "chain input { type filter hook input priority filter; ip saddr @nope drop }", tmp_path
        ).returncode
        != 0
    )


def test_case_study_branch_says_what_the_issue_asks(rendered):
    rules = rendered["case-study-branch"]
    assert "elements = { 172.16.1.12 }" in rules  # the one link peer
    assert 'iifname "eth1" ip saddr @office_lans counter drop' in rules
    assert 'iifname "sl-manhattan" ip saddr != { 192.168.1.0/24 } counter drop' in rules
    assert 'iifname "eth1" ip protocol 4 meta ipsec missing counter drop' in rules
    assert 'iifname "sl-manhattan" udp dport { 6799 } ip saddr != 192.168.1.126' in rules
    assert "maxseg size set rt mtu" in rules
    # Management never blocked by default.
    assert "policy accept;" in rules and "policy drop;" not in rules


def test_hardened_input_lets_management_in_first(rendered):
    rules = rendered["hardened-branch"]
    assert "type filter hook input priority filter; policy drop;" in rules
    assert "tcp dport 22 ip saddr { 198.51.100.7/32 } accept" in rules
    assert "tcp dport 22 ip6 saddr { 2001:db8::/48 } accept" in rules
    assert "type filter hook forward priority filter; policy drop;" in rules
    assert "ct state established,related accept" in rules


def test_plain_ipip_has_no_esp_rule_and_no_link_means_no_tunnel_rule(rendered):
    assert "meta ipsec missing" not in rendered["plain-ipip"]
    assert "sl-" not in rendered["no-links"] and "clamp" not in rendered["no-links"]


def test_external_peers_that_chose_otherwise_than_the_deployment(rendered):
    """A peer left plain gets its IPIP in without ESP, and only it; a peer that chose
    IPsec in a plain deployment gets its IPIP dropped unless it came out of ESP."""
    rules = rendered["plain-external-peer"]
    assert (
        'iifname "eth1" ip protocol 4 ip saddr != { 198.51.100.7 } meta ipsec missing counter '
        'drop comment "IPIP outside ESP"' in rules
    )
    rules = rendered["protected-external-peer"]
    assert (
        'iifname "eth1" ip protocol 4 ip saddr { 198.51.100.7 } meta ipsec missing counter '
        'drop comment "IPIP outside ESP"' in rules
    )
    assert rules.count("meta ipsec missing") == 1
