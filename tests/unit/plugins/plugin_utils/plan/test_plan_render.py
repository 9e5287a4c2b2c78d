"""plan.render: the texts administrators read and the Graphviz picture of the network."""

from __future__ import annotations

import ipaddress
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import render
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import (
    Link,
    LinkEnd,
    NetworkPlan,
    Office,
    RelayFlow,
)

ROOT = Path(__file__).resolve().parents[5]
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz (dot) is not installed")


# --------------------------------------------------------------------------- inventories


def case_study() -> dict:
    group = yaml.safe_load((ROOT / "examples/case-study/inventory.yml").read_text())["offices"]
    return {host: {**group.get("vars", {}), **hv} for host, hv in group["hosts"].items()}


def office(index: int, name: str, role: str = "branch", **extra) -> dict:
    lan = ipaddress.IPv4Network((0x0A000000 + ((index + 1) << 8), 24))  # 10.0.x.0/24
    wan = ipaddress.IPv4Network((0x64400000 + (index << 2), 30))  # 100.64.x.y/30
    return {
        "office_name": name,
        "office_role": role,
        "office_lan_interface": "eth0",
        "office_lan_address": f"{lan.network_address + 1}/24",
        "office_wan_interface": "eth1",
        "office_wan_address": f"{wan.network_address + 1}/30",
        "office_tunnel_secret": "render-test-secret-0123",
        **extra,
    }


PARTNER = {
    "name": "partner",
    "wan_address": "198.51.100.7",
    "lan_address": "172.30.0.1/24",
    "broadcast_relay": [{"port": 6000, "to": ["hq"]}],
}


def hub_with_branches(transit: bool = True) -> dict:
    """hq plus b1..b5 and an external partner; b3's port 5000 goes through hq to b4, b5."""
    offices = {"hq-gw": office(0, "hq", "hub", office_masquerade=True)}
    for i in range(1, 6):
        offices[f"b{i}-gw"] = office(i, f"b{i}")
    if transit:
        offices["b3-gw"]["office_broadcast_relay"] = [{"port": 5000, "to": ["b4", "b5"]}]
    offices["hq-gw"]["office_broadcast_relay"] = [{"port": 6799}]
    for host_vars in offices.values():
        host_vars["office_external_peers"] = [PARTNER]
        host_vars["office_transit"] = transit
    return offices


def many(count: int, topology: str = "hub-and-spoke", relaying: int = 1) -> dict:
    """office0 (hub) to office<count-1>; the first ``relaying`` offices relay port 6799."""
    return {
        f"office{i}-gw": office(
            i,
            f"office{i}",
            "hub" if i == 0 else "branch",
            office_topology=topology,
            office_broadcast_relay=[{"port": 6799}] if i < relaying else [],
        )
        for i in range(count)
    }


@pytest.fixture(scope="module")
def mesh300() -> NetworkPlan:
    return plan_network(many(300, "mesh"))


def edges(source: str) -> list[str]:
    return [line for line in source.splitlines() if " -- " in line]


def edge(source: str, a: str, b: str) -> str:
    (line,) = [e for e in edges(source) if e.startswith(f'  "{a}" -- "{b}" ')]
    return line


def all_lines_short(text: str) -> bool:
    return all(len(line) <= render.WIDTH for line in text.splitlines())


# --------------------------------------------------------------------------- gateway text


def test_case_study_hub_says_what_it_does():
    text = render.gateway_text(plan_network(case_study()).gateway_dict("manhattan-gw"))
    assert text.startswith("Gateway of office manhattan (hub)\n")
    assert "LAN  eth0: 192.168.1.126/24 (office LAN 192.168.1.0/24" in text
    assert "WAN  eth1: 172.16.1.12/27, ISP router 172.16.1.30, path MTU 1500" in text
    assert "sl-brooklyn to brooklyn: 172.16.1.12 -> 172.17.2.10, MTU 1440, TTL 64" in text
    assert "routes 1 prefix into it: 192.168.2.0/24" in text
    assert "leave on eth0 get source 192.168.1.126," in text
    masquerade = text[text.index("Masquerade") : text.index("Broadcast relay")]
    assert "192.168.2.0/24" in masquerade
    assert "UDP port 6799:" in text
    assert "broadcasts seen on eth0 are sent to 1 relay: 192.168.2.126 (brooklyn)" in text
    assert "nothing from other offices is re-broadcast on eth0" in text
    assert text.endswith("\n") and all_lines_short(text)


def test_case_study_branch_rebroadcasts_from_the_hub():
    text = render.gateway_text(plan_network(case_study()).gateway_dict("brooklyn-gw"))
    assert "sl-manhattan to manhattan: 172.17.2.10 -> 172.16.1.12" in text
    assert "routes 1 prefix into it: 192.168.1.0/24" in text
    assert "Masquerade: none" in text
    assert "broadcasts seen on eth0 are not sent anywhere" in text
    assert "re-broadcast on eth0: datagrams from 1 relay: 192.168.1.126 (manhattan)" in text


def test_hub_text_names_transit_and_external_peer():
    plan = plan_network(hub_with_branches())
    text = render.gateway_text(plan.gateway_dict("hq-gw"))
    assert "Tunnels: 6 (IPIP); this gateway's address inside them: 10.0.1.1" in text
    assert "sl-partner to partner: 100.64.0.1 -> 198.51.100.7" in text
    assert "routes 1 prefix into it: 172.30.0.0/24" in text
    # b3's port 5000 crosses hq: passed on, not re-broadcast on hq's LAN.
    port = text[text.index("UDP port 5000:") : text.index("UDP port 6000:")]
    assert "nothing from other offices is re-broadcast" in port
    assert (
        "transit: datagrams from 10.0.4.1 (b3) are passed on to 2 relays: "
        "10.0.5.1 (b4), 10.0.6.1 (b5)"
    ) in port
    port = text[text.index("UDP port 6000:") : text.index("UDP port 6799:")]
    assert "re-broadcast on eth0: datagrams from 1 relay: 172.30.0.1 (partner)" in port
    assert "6 relays: 10.0.2.1 (b1)" in text and "172.30.0.1 (partner)" in text
    assert "10.0.2.0/24 to 10.0.6.0/24 (5 adjacent /24), 172.30.0.0/24" in text
    assert all_lines_short(text)


def test_branch_routes_other_branches_through_the_hub_only_with_transit():
    with_transit = render.gateway_text(plan_network(hub_with_branches()).gateway_dict("b1-gw"))
    assert "routes 6 prefixes into it: 10.0.1.0/24, 10.0.3.0/24 to 10.0.6.0/24" in with_transit
    without = render.gateway_text(plan_network(hub_with_branches(False)).gateway_dict("b1-gw"))
    assert "routes 1 prefix into it: 10.0.1.0/24\n" in without


def test_gateway_without_tunnels_or_relay():
    plan = plan_network({"solo-gw": office(0, "solo", "hub")})
    text = render.gateway_text(plan.gateway_dict("solo-gw"))
    assert "Tunnels: none" in text
    assert "Masquerade: none" in text
    assert "Broadcast relay: none" in text


def test_hundreds_of_routes_stay_readable():
    plan = plan_network(many(400))
    text = render.gateway_text(plan.gateway_dict("office7-gw"))
    assert "routes 399 prefixes into it: 10.0.1.0/24 to 10.0.7.0/24 (7 adjacent /24)," in text
    assert "10.0.9.0/24 to 10.1.144.0/24 (392 adjacent /24)" in text
    assert len(text.splitlines()) < 32  # not one line per route
    hub = render.gateway_text(plan.gateway_dict("office0-gw"))
    assert "Tunnels: 399 (IPIP)" in hub and "sl-office399 to office399" in hub
    assert all_lines_short(hub)


# --------------------------------------------------------------------------- network text


def test_case_study_network_text():
    text = render.network_text(plan_network(case_study()))
    assert text.startswith("Network: hub-and-spoke")
    assert "Transit: on" in text
    assert "2 offices (1 hub, 1 branch; 0 external), 1 link, 1 relay flow, 0 warnings" in text
    assert re.search(r"manhattan +manhattan-gw +hub +192\.168\.1\.0/24 +172\.16\.1\.12", text)
    assert re.search(
        r"brooklyn - manhattan +sl-manhattan / sl-brooklyn +mtu 1440 +routes 1 / 1", text
    )
    assert "manhattan:6799 -> every other office (1)" not in text  # 1 target: named
    assert "manhattan:6799 -> 1 office: brooklyn" in text
    assert "Warnings: none" in text


def test_network_text_shows_externals_hops_and_transit():
    text = render.network_text(plan_network(hub_with_branches()))
    assert "7 offices (1 hub, 6 branches; 1 external), 6 links, 3 relay flows" in text
    assert re.search(r"partner +external +branch +172\.30\.0\.0/24 +198\.51\.100\.7", text)
    assert re.search(r"hq - partner +sl-partner / sl-hq +mtu 1440 +routes 1 / 0", text)
    assert "b3:5000 -> 2 offices: b4, b5\n    b3 sends to hq\n    hq passes on to b4, b5\n" in text
    assert "hq:6799 -> every other office (6)\n    sent directly" in text
    assert "partner:6000 -> 1 office: hq" in text
    off = render.network_text(plan_network(hub_with_branches(False)))
    assert "Transit: off" in off and "b3:5000" not in off


def test_network_text_lists_warnings_and_stays_compact():
    plan = plan_network(many(3, "links", relaying=0))  # no links: a warning per office
    text = render.network_text(plan)
    assert "Links (a - b" in text and "\n  none\n" in text
    assert len(plan.warnings) >= 3 and f"Warnings: {len(plan.warnings)}\n" in text
    assert "  - office 'office0' (host office0-gw)" in text
    big = render.network_text(plan_network(many(1000)))
    assert "office0:6799 -> every other office (999)" in big
    assert all_lines_short(big)
    assert len(big.splitlines()) < 2100  # an office and a link per line


# --------------------------------------------------------------------------- picture


def test_dot_is_deterministic():
    first = render.dot(plan_network(hub_with_branches()))
    assert render.dot(plan_network(hub_with_branches())) == first
    reversed_hosts = dict(reversed(list(hub_with_branches().items())))
    assert render.dot(plan_network(reversed_hosts)) == first


def test_dot_draws_offices_links_and_relay_directions():
    plan = plan_network(hub_with_branches())
    source = render.dot(plan)
    assert source.startswith("graph sitelink {") and source.endswith("}\n")
    assert len(edges(source)) == len(plan.links) == 6  # one edge per link
    assert '"hq" [label="hq\\n10.0.1.0/24\\nmasquerade"' in source
    assert render.HUB_FILL in source.split('"hq" [', 1)[1].split("\n", 1)[0]
    partner = source.split('"partner" [', 1)[1].split("\n", 1)[0]
    assert "dashed" in partner and "external" in partner
    colors = {port: render.PORT_COLORS[i] for i, port in enumerate((5000, 6000, 6799))}
    # b3 -> hq carries 5000 towards hq, hq -> b3 carries 6799: both ways, labelled.
    b3 = edge(source, "b3", "hq")
    assert "dir=both" in b3 and "5000 to hq" in b3 and "6799 to b3" in b3
    assert f'color="{colors[5000]}:{colors[6799]}"' in b3
    b4 = edge(source, "b4", "hq")  # hq -> b4: the tail end of "b4 -- hq"
    assert "dir=back" in b4 and 'label="5000, 6799"' in b4
    b1 = edge(source, "b1", "hq")
    assert "dir=back" in b1 and 'label="6799"' in b1
    # Pinned radial layout: the hub in the middle.
    assert 'pos="0.00,0.00!"' in source.split('"hq" [', 1)[1].split("\n", 1)[0]
    legend = source.split("label=<<", 1)[1].split(">>", 1)[0]
    for text in ("hub-and-spoke, transit on", "1 external", "UDP 5000", "UDP 6799", "dashed"):
        assert text in legend


def test_small_mesh_draws_every_pair():
    source = render.dot(plan_network(many(8, "mesh")))
    assert len(edges(source)) == 28
    assert "every pair" not in source


def test_mesh_of_300_draws_no_pair_but_the_relay(mesh300):
    start = time.perf_counter()
    source = render.dot(mesh300)
    assert time.perf_counter() - start < 2
    assert len(mesh300.links) == 300 * 299 // 2
    drawn = edges(source)
    assert len(drawn) == 299  # office0's broadcasts to each office, nothing else
    assert all(line.startswith('  "office0" -- ') or '-- "office0"' in line for line in drawn)
    assert "every pair of offices is linked (44850 links, not drawn)" in source
    assert source.count(" [label=") == 300


def test_mesh_with_many_relay_origins_names_them_instead():
    source = render.dot(plan_network(many(20, "mesh", relaying=20)))
    assert edges(source) == []
    assert source.count("relays 6799") == 20
    assert "relays PORT" in source


def test_hub_of_100_is_fast_and_one_edge_per_branch():
    plan = plan_network(many(100))
    start = time.perf_counter()
    source = render.dot(plan)
    assert time.perf_counter() - start < 1
    assert len(edges(source)) == 99
    positions = [
        tuple(float(v) for v in m.split(","))
        for m in re.findall(r'pos="([-\d.]+,[-\d.]+)!"', source)
    ]
    assert len(set(positions)) == 100
    # No two offices closer than a node's width: nothing overlaps.
    closest = min(
        ((x1 - x2) ** 2 + (y1 - y2) ** 2) ** 0.5
        for i, (x1, y1) in enumerate(positions)
        for x2, y2 in positions[i + 1 :]
    )
    assert closest > 1.0


def test_labels_are_escaped():
    weird = 'we"ird\\name'

    def make(name: str, index: int, host) -> Office:
        return Office(
            name=name,
            host=host,
            role="hub" if index == 0 else "branch",
            lan=ipaddress.IPv4Interface(f"10.0.{index}.1/24"),
            wan=ipaddress.IPv4Interface(f"100.64.0.{index + 1}/32"),
            wan_mtu=1500,
        )

    offices = {"hq": make("hq", 0, "hq-gw"), weird: make(weird, 1, None)}
    link = Link(LinkEnd("hq", "sl-x", ("10.0.1.0/24",)), LinkEnd(weird, "sl-hq", ()), 1480)
    plan = NetworkPlan(
        topology="links<&>",
        transit=True,
        offices=offices,
        links=[link],
        gateways={},
        flows=[RelayFlow("hq", 6799, (weird,), (("hq", weird),))],
        warnings=['a "quoted" warning'],
    )
    source = render.dot(plan)
    assert '"we\\"ird\\\\name" [label="we\\"ird\\\\name\\n10.0.1.0/24\\nexternal"' in source
    assert '"hq" -- "we\\"ird\\\\name"' in source
    assert "links&lt;&amp;&gt;" in source and "links<&>" not in source
    text = render.network_text(plan)
    assert f"hq - {weird}" in text and 'a "quoted" warning' in text
    if HAVE_DOT:
        picture = render.svg(source)
        assert b"we&quot;ird\\name" in picture or b'we"ird\\name' in picture


# --------------------------------------------------------------------------- Graphviz


@needs_dot
@pytest.mark.parametrize("count", [2, 6, 100])
def test_svg_renders(count):
    plan = plan_network(case_study() if count == 2 else many(count, relaying=2))
    picture = render.svg(render.dot(plan))
    assert picture.lstrip().startswith(b"<?xml") and b"<svg" in picture
    assert b"office1" in picture or b"brooklyn" in picture


@needs_dot
def test_large_pictures_render_quickly(mesh300):
    for plan in (plan_network(many(100)), mesh300, plan_network(many(40, "links"))):
        start = time.perf_counter()
        picture = render.svg(render.dot(plan))
        assert time.perf_counter() - start < 20
        assert b"</svg>" in picture


@needs_dot
def test_svg_reports_graphviz_errors():
    with pytest.raises(render.RenderError, match="failed"):
        render.svg("graph { this is not dot")


def test_svg_without_graphviz(tmp_path):
    with pytest.raises(render.RenderError, match="not installed"):
        render.svg("graph {}", dot_binary=str(tmp_path / "no-such-dot"))
    with pytest.raises(render.RenderError, match="exit status 1"):
        render.svg("graph {}", dot_binary="false")


# ----------------------------------------------------------------------------- checked-in examples


def _inventory_offices(path: Path) -> dict:
    """The office variables of an example inventory, group vars applied (no templating)."""
    group = yaml.safe_load(path.read_text())["offices"]
    return {h: {**group.get("vars", {}), **(v or {})} for h, v in group["hosts"].items()}


@pytest.mark.parametrize("example", ["case-study", "hub-and-branches"])
def test_checked_in_example_plans_are_current(example):
    """`make plan` output in examples/*/plan matches what the planner renders today."""
    base = ROOT / "examples" / example
    plan = plan_network(_inventory_offices(base / "inventory.yml"))
    rendered = {
        "network.txt": render.network_text(plan),
        "network.dot": render.dot(plan),
        **{f"gateways/{h}.txt": render.gateway_text(plan.gateway_dict(h)) for h in plan.gateways},
    }
    for name, content in rendered.items():
        assert (base / "plan" / name).read_text() == content, f"run `make plan`: {name} is stale"
    assert (base / "plan/network.svg").read_text().lstrip().startswith("<?xml")
