"""Each tunnel's routes, collapsed: the fewest prefixes that cover exactly its LANs."""

from __future__ import annotations

import ipaddress

from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import routing
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    branch_offices,
    collapsed,
    with_topology,
)
from hypothesis import given
from hypothesis import strategies as st


def _block(network):
    return int(network.network_address), network.prefixlen


@st.composite
def disjoint_networks(draw):
    """Networks in a /16, of mixed lengths, none overlapping another, in address order."""
    chosen = []
    for address, length in draw(
        st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(16, 32)), max_size=80)
    ):
        net = ipaddress.IPv4Network((0x0A000000 + address, length), strict=False)
        if not any(net.overlaps(other) for other in chosen):
            chosen.append(net)
    return sorted(chosen)


@given(disjoint_networks())
def test_collapse_gives_what_ipaddress_gives(networks):
    collapsed = routing.collapse(_block(n) for n in networks)
    assert collapsed == [_block(n) for n in ipaddress.collapse_addresses(networks)]


def test_two_halves_become_their_network_and_neighbours_that_are_not_halves_stay():
    def texts(*networks):
        return routing.Prefixes([]).collapsed(_block(ipaddress.ip_network(n)) for n in networks)

    assert texts("10.0.0.0/24", "10.0.1.0/24") == ("10.0.0.0/23",)
    assert texts("10.0.1.0/24", "10.0.2.0/24") == ("10.0.1.0/24", "10.0.2.0/24")
    assert texts("10.0.0.0/25", "10.0.0.128/25", "10.0.1.0/24", "10.0.2.0/23") == ("10.0.0.0/22",)
    assert texts("0.0.0.0/1", "128.0.0.0/1") == ("0.0.0.0/0",)
    assert texts() == ()


def test_a_branch_of_a_thousand_office_hub_routes_a_few_prefixes_not_999_lans():
    offices = with_topology(branch_offices(1000), "hub-and-spoke")  # LANs 10.0.0.0/24 up
    lans = {
        host: ipaddress.ip_interface(o["office_lan_address"]).network for host, o in offices.items()
    }
    plan = plan_network(offices)

    branch = office_plan(plan, "office517-gw")  # 10.2.5.0/24
    (tunnel,) = branch["tunnels"]
    others = [lan for host, lan in lans.items() if host != "office517-gw"]
    assert tunnel["routes"] == [str(n) for n in ipaddress.collapse_addresses(others)]
    assert len(tunnel["routes"]) == 13  # not 999
    assert branch["firewall"]["tunnels"][0]["sources"] == tunnel["routes"]

    # The hub masquerades the 999 branch LANs.
    hub = office_plan(plan, "office0-gw")
    branches = [lan for host, lan in lans.items() if host != "office0-gw"]
    assert hub["masquerade"]["sources"] == [str(n) for n in ipaddress.collapse_addresses(branches)]
    assert len(hub["masquerade"]["sources"]) == 14  # not 999


def two_hubs(count: int, **deployment) -> dict:
    """office0 and office1 hubs, the rest branches."""
    offices = with_topology(branch_offices(count), "hub-and-spoke", office_transit=True)
    offices["office1-gw"]["office_role"] = "hub"
    for office in offices.values():
        office.update(deployment)
    return offices


def test_with_two_hubs_each_link_is_backed_by_the_other_hub():
    plan = plan_network(two_hubs(5))
    branch = office_plan(plan, "office3-gw")
    tunnels = {t["name"]: t for t in branch["tunnels"]}
    # Everything but office1's LAN through office0 (the lower name), office1 backs it up.
    assert tunnels["sl-office0"]["backup"] == "sl-office1"
    assert tunnels["sl-office1"]["backup"] == "sl-office0"
    # What the backup may bring in: its own LAN and everything it carries when it backs up.
    sources = {t["name"]: t["sources"] for t in branch["firewall"]["tunnels"]}
    assert sources["sl-office1"] == collapsed(
        *tunnels["sl-office1"]["routes"], *tunnels["sl-office0"]["routes"]
    )
    assert all(c["failover"] for c in branch["ipsec"]["connections"])

    hub = office_plan(plan, "office0-gw")
    tunnels = {t["name"]: t for t in hub["tunnels"]}
    assert {n: t.get("backup") for n, t in tunnels.items()} == {
        "sl-office1": None,  # two hubs' own link: no third hub to back it
        "sl-office2": "sl-office1",
        "sl-office3": "sl-office1",
        "sl-office4": "sl-office1",
    }
    sources = {t["name"]: t["sources"] for t in hub["firewall"]["tunnels"]}
    assert sources["sl-office1"] == collapsed(
        "10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24", "10.0.4.0/24"
    )


def test_no_failover_with_one_hub_without_transit_or_without_ipsec():
    def backups(offices):
        plan = plan_network(offices)
        return [
            t.get("backup")
            for host in plan.gateways
            for t in office_plan(plan, host)["tunnels"]
            if t.get("backup")
        ]

    assert backups(two_hubs(5)) != []
    assert backups(with_topology(branch_offices(5), "hub-and-spoke", office_transit=True)) == []
    assert backups(two_hubs(5, office_transit=False)) == []
    assert backups(two_hubs(5, office_tunnel_protection="none")) == []
