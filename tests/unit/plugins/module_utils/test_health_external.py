"""verify.yml and external peers: a link a peer chose to leave plain is a warning, not a
problem; a link it chose to protect is checked like ours, even in a plain deployment."""

from __future__ import annotations

from ansible_collections.sitelink.gateway.plugins.plugin_utils import health as report
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.test_health import (
    Gateway,
    check,
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    branch_offices,
    external_partner,
    with_topology,
)


def plans(*peers, **deployment) -> dict:
    offices = with_topology(
        branch_offices(3), "hub-and-spoke", office_external_peers=list(peers), **deployment
    )
    offices["office0-gw"]["office_broadcast_relay"] = []
    plan = plan_network(offices)
    return {host: office_plan(plan, host) for host in plan.gateways}


def unprotected_partner() -> dict:
    peer = external_partner(protection="none")
    del peer["psk"]
    return peer


def xfrm_reads(gw: Gateway) -> list[list[str]]:
    return [c for c in gw.calls if c[:2] == ["ip", "xfrm"]]


def test_an_unprotected_external_link_is_a_warning_not_a_problem():
    mine = plans(unprotected_partner())
    results = {host: check(Gateway(plan)) for host, plan in mine.items()}
    hub = results["office0-gw"]
    assert hub["healthy"] is True and hub["problems"] == []
    assert hub["ipsec"]["unprotected"] == [{"name": "sl-partner", "peer": "partner"}]
    assert [c["name"] for c in hub["ipsec"]["connections"]] == ["sl-office1", "sl-office2"]
    assert results["office1-gw"]["ipsec"]["unprotected"] == []
    built = report.build_report(sorted(mine), results, {}, "t")
    assert built["healthy"] is True
    assert built["warnings"] == [
        "office_external_peers: protection none: the links of office0 to the external peer "
        "partner are plain IPIP, readable by anyone on the path and forgeable by anyone on "
        "the Internet (RFC 2003 has no authentication)"
    ]
    rows = {row.split()[0]: row for row in report.render_table(built).splitlines()[2:5]}
    assert "ipsec ok, 1 PLAIN" in rows["office0"]
    assert "ipsec ok" in rows["office1"] and "PLAIN" not in rows["office1"]


def test_a_protected_external_link_is_checked_and_warns_nothing():
    mine = plans(external_partner())
    results = {host: check(Gateway(plan)) for host, plan in mine.items()}
    assert [c["name"] for c in results["office0-gw"]["ipsec"]["connections"]] == [
        "sl-office1",
        "sl-office2",
        "sl-partner",
    ]
    assert report.build_report(sorted(mine), results, {}, "t")["warnings"] == []


def test_a_protected_peer_in_a_plain_deployment_has_its_sas_checked():
    mine = plans(external_partner(protection="ipsec"), office_tunnel_protection="none")
    gw = Gateway(mine["office0-gw"])
    result = check(gw)
    assert result["healthy"] is True
    assert [c["name"] for c in result["ipsec"]["connections"]] == ["sl-partner"]
    assert xfrm_reads(gw)  # read, where a plain deployment reads nothing of IPsec
    # Its SA missing is a problem, as on our own links.
    broken = Gateway(mine["office0-gw"])
    broken.drop_sa("198.51.100.7", "100.64.0.1")
    result = check(broken)
    assert result["problems"] == [
        "tunnel sl-partner: no ESP SA from 198.51.100.7 (IPsec not established)"
    ]
    branch = Gateway(mine["office1-gw"])
    assert check(branch)["ipsec"]["ok"] is True and not xfrm_reads(branch)
    built = report.build_report(
        sorted(mine), {h: check(Gateway(p)) for h, p in mine.items()}, {}, "t"
    )
    table = report.render_table(built)
    assert "NONE, ipsec ok" in table and "NONE (plain IPIP)" in table


def test_protection_cells_for_links_that_differ():
    ok = {"protection": "ipsec", "connections": [{}], "problems": [], "unprotected": []}
    assert report._protection_cell(ok) == "ipsec ok"
    two = dict(ok, unprotected=[{"name": "a"}, {"name": "b"}])
    assert report._protection_cell(two) == "ipsec ok, 2 PLAIN"
    alone = {"protection": "ipsec", "connections": [], "problems": [], "unprotected": [{}]}
    assert report._protection_cell(alone) == "ipsec (no links), 1 PLAIN"
    plain = {"protection": "none", "plain_ipip": True, "connections": [{}], "problems": ["x"]}
    assert report._protection_cell(plain) == "NONE, ipsec: 1 problem"


def test_one_warning_per_peer_naming_its_offices():
    def entry(office, *peers):
        return {
            "office": office,
            "ipsec": {"unprotected": [{"name": f"sl-{p}", "peer": p} for p in peers]},
        }

    entries = [entry("hq1", "vendor", "partner"), entry("hq2", "vendor"), entry("b1")]
    assert report.warning_lines(entries) == [
        report.UNPROTECTED_PEER_WARNING.format("hq1", "partner"),
        report.UNPROTECTED_PEER_WARNING.format("hq1, hq2", "vendor"),
    ]
