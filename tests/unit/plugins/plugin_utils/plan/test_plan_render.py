"""plan.render: the texts administrators read and the Graphviz picture of the network."""

from __future__ import annotations

import ipaddress
import math
import re
import shutil
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import render
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
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
    "psk": "render-test-partner-key-0123",
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


def edges_between(source: str, a: str, b: str) -> list[str]:
    """The edges between two offices, either way, up to their tooltips."""
    ends = (f'  "{a}" -- "{b}" ', f'  "{b}" -- "{a}" ')
    return [e.split("tooltip=", 1)[0] + "tooltip=" for e in edges(source) if e.startswith(ends)]


def all_lines_short(text: str) -> bool:
    return all(len(line) <= render.WIDTH for line in text.splitlines())


# --------------------------------------------------------------------------- gateway text


def test_case_study_hub_says_what_it_does():
    text = render.gateway_text(office_plan(plan_network(case_study()), "manhattan-gw"))
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
    text = render.gateway_text(office_plan(plan_network(case_study()), "brooklyn-gw"))
    assert "sl-manhattan to manhattan: 172.17.2.10 -> 172.16.1.12" in text
    assert "routes 1 prefix into it: 192.168.1.0/24" in text
    assert "Masquerade: none" in text
    assert "broadcasts seen on eth0 are not sent anywhere" in text
    assert "re-broadcast on eth0: datagrams from 1 relay: 192.168.1.126 (manhattan)" in text


def test_hub_text_names_transit_and_external_peer():
    plan = plan_network(hub_with_branches())
    text = render.gateway_text(office_plan(plan, "hq-gw"))
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
    # What hq masquerades: the branch LANs 10.0.2.0/24 to 10.0.6.0/24, collapsed.
    assert "10.0.2.0/23, 10.0.4.0/23, 10.0.6.0/24, 172.30.0.0/24" in text
    assert all_lines_short(text)


def test_branch_routes_other_branches_through_the_hub_only_with_transit():
    with_transit = render.gateway_text(office_plan(plan_network(hub_with_branches()), "b1-gw"))
    assert (
        "routes 5 prefixes into it: 10.0.1.0/24, 10.0.3.0/24, 10.0.4.0/23, 10.0.6.0/24, "
        "172.30.0.0/24"
    ) in with_transit
    without = render.gateway_text(office_plan(plan_network(hub_with_branches(False)), "b1-gw"))
    assert "routes 1 prefix into it: 10.0.1.0/24\n" in without


def test_gateway_without_tunnels_or_relay():
    plan = plan_network({"solo-gw": office(0, "solo", "hub")})
    text = render.gateway_text(office_plan(plan, "solo-gw"))
    assert "Tunnels: none" in text
    assert "Masquerade: none" in text
    assert "Broadcast relay: none" in text


def test_hundreds_of_routes_stay_readable():
    plan = plan_network(many(400))
    text = render.gateway_text(office_plan(plan, "office7-gw"))
    # 399 LANs, 10.0.1.0/24 to 10.1.144.0/24 but its own: 13 prefixes.
    assert "routes 13 prefixes into it: 10.0.1.0/24, 10.0.2.0/23, 10.0.4.0/22, 10.0.9.0/24," in text
    assert "10.1.128.0/20, 10.1.144.0/24\n" in text
    assert len(text.splitlines()) < 32  # not one line per route
    hub = render.gateway_text(office_plan(plan, "office0-gw"))
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
    assert '"hq" [label="hq\\n10.0.1.0/24\\nmasquerade\\nrelays 6799"' in source
    assert render.HUB_FILL in source.split('"hq" [', 1)[1].split("\n", 1)[0]
    partner = source.split('"partner" [', 1)[1].split("\n", 1)[0]
    assert "dashed" in partner and "external\\nrelays 6000" in partner
    assert '"b3" [label="b3\\n10.0.4.0/24\\nrelays 5000"' in source
    colors = {port: render.PORT_COLORS[i] for i, port in enumerate((5000, 6000, 6799))}
    # b3 -- hq carries 5000 towards hq and 6799 towards b3: an arrow each way.
    assert edges_between(source, "b3", "hq") == [
        f'  "b3" -- "hq" [color="{colors[5000]}" penwidth=2 dir=forward tooltip=',
        f'  "hq" -- "b3" [color="{colors[6799]}" penwidth=2 dir=forward tooltip=',
    ]
    # hq -- b4 carries 5000 and 6799 towards b4: the second head set back.
    assert edges_between(source, "b4", "hq") == [
        f'  "hq" -- "b4" [color="{colors[5000]}" penwidth=2 dir=forward tooltip=',
        f'  "hq" -- "b4" [color="{colors[6799]}" penwidth=2 dir=forward '
        "arrowhead=nonenonenormal tooltip=",
    ]
    assert [e for e in edges(source) if "label=" in e] == []  # colours are enough
    # Pinned radial layout: the hub in the middle.
    assert 'pos="0.00,0.00!"' in source.split('"hq" [', 1)[1].split("\n", 1)[0]
    legend = source.split("label=<<", 1)[1].split(">>", 1)[0]
    for text in ("hub-and-spoke, transit on", "1 external", "UDP 5000", "UDP 6799", "dashed"):
        assert text in legend
    assert "relays PORT" in legend and "passed on" in legend  # b3's 5000 crosses hq
    assert "link: two IPIP tunnels" not in legend  # every link carries an arrow


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


# --------------------------------------------------------------------------- arrows
#
# What the picture must show: for every hop of every relay flow, an arrowhead at
# the office that receives, coloured as the legend colours the flow's port, and
# no other arrowhead. Checked twice: in the .dot source, reading Graphviz's rules
# for where heads go and which colour they get, and in the SVG Graphviz draws,
# where each head is a filled polygon next to one of its edge's two offices.

DOT_EDGE = re.compile(r'^  "((?:[^"\\]|\\.)*)" -- "((?:[^"\\]|\\.)*)" \[(.*)\];$')
DOT_ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s"]+)')
SVG = "{http://www.w3.org/2000/svg}"


def two_way() -> dict:
    """A hub and two branches. The b1 - hq link carries three ports: 5000 and 5001
    to hq, 6000 to b1. (One coloured line for it with dir=both would put 5000's
    colour at hq, 5001's at b1 and no head for 6000.)"""
    offices = {"hq-gw": office(0, "hq", "hub"), "b1-gw": office(1, "b1"), "b2-gw": office(2, "b2")}
    offices["hq-gw"]["office_broadcast_relay"] = [{"port": 6000}]
    offices["b1-gw"]["office_broadcast_relay"] = [
        {"port": 5000, "to": ["hq"]},
        {"port": 5001, "to": ["hq"]},
    ]
    return offices


def legend_colors(source: str) -> dict[str, int]:
    """Colour -> port, as the picture's legend says."""
    found = re.findall(
        r'<font color="(#[0-9a-f]{6})">[^<]*&#9654;</font></td><td align="left">UDP (\d+) ',
        source,
    )
    colors = {color: int(port) for color, port in found}
    assert len(colors) == len(found), "a colour stands for several ports"
    return colors


def expected_heads(plan: NetworkPlan) -> list[tuple[str, str, int]]:
    """(from, to, port) of every hop of every relay flow: the arrowheads there must be."""
    return sorted({(frm, to, flow.port) for flow in plan.flows for frm, to in flow.hops})


def dot_heads(source: str) -> list[tuple[str, str, str]]:
    """(from, to, colour) of each arrowhead the .dot source asks Graphviz for.

    Graphviz's rules: an edge "t" -- "h" has its head end at h; dir says which
    ends get an arrowhead (none by default in a graph); with a colour list
    ("c1:c2:..." parallel lines) the head is drawn in c1 and the tail in c2
    (test_graphviz_colours_heads_as_this_test_reads_them checks this on the SVG).
    """
    heads = []
    for line in source.splitlines():
        match = DOT_EDGE.match(line)
        if not match:
            continue
        tail, head = match[1], match[2]
        attrs = {k: v.strip('"') for k, v in DOT_ATTR.findall(match[3])}
        colors = attrs.get("color", render.LINK_COLOR).split(":")
        way = attrs.get("dir", "none")
        if way in ("forward", "both") and attrs.get("arrowhead", "normal").replace("none", ""):
            heads.append((tail, head, colors[0]))
        if way in ("back", "both") and attrs.get("arrowtail", "normal").replace("none", ""):
            heads.append((head, tail, colors[1 if len(colors) > 1 else 0]))
    return sorted(heads)


def _box(element: ET.Element) -> tuple[float, float, float, float]:
    numbers = []
    for shape in element.iter():
        text = shape.get("d") or shape.get("points") or ""
        numbers += [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", text)]
        if shape.tag == SVG + "ellipse":
            cx, cy, rx, ry = (float(shape.get(k)) for k in ("cx", "cy", "rx", "ry"))
            numbers += [cx - rx, cy - ry, cx + rx, cy + ry]
    xs, ys = numbers[0::2], numbers[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def _distance(point: tuple[float, float], box: tuple[float, float, float, float]) -> float:
    x, y = point
    x0, y0, x1, y1 = box
    return math.hypot(max(x0 - x, 0, x - x1), max(y0 - y, 0, y - y1))


Point = tuple[float, float]
Polygon = list[Point]


def _area(polygon: Polygon) -> float:
    """Signed (anticlockwise positive)."""
    pairs = zip(polygon, polygon[1:] + polygon[:1])
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in pairs) / 2


def _side(a: Point, b: Point, p: Point) -> float:
    """Positive when p is left of the line from a to b."""
    return (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])


def _overlap(subject: Polygon, clip: Polygon) -> float:
    """Area of the intersection of two convex polygons (Sutherland-Hodgman)."""
    if _area(clip) < 0:
        clip = clip[::-1]
    out = subject
    for a, b in zip(clip, clip[1:] + clip[:1]):
        points, out = out, []
        for p, q in zip(points[-1:] + points[:-1], points):
            sp, sq = _side(a, b, p), _side(a, b, q)
            if (sp >= 0) != (sq >= 0):  # the edge p-q crosses the line: where
                t = sp / (sp - sq)
                out.append((p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1])))
            if sq >= 0:
                out.append(q)
        if not out:
            return 0.0
    return abs(_area(out))


def svg_heads(picture: bytes, readable: bool = True) -> list[tuple[str, str, str]]:
    """(from, to, colour) of each arrowhead Graphviz drew: a filled polygon in an
    edge's group, at the nearer of the edge's two offices. Unless told otherwise,
    also checks what makes a head readable: it sits at an office, its line has
    its colour, and no head at one end of a link has more than a sixth of it
    under another one."""
    root = ET.fromstring(picture)  # noqa: S314 (Graphviz's output for our own source)
    groups = [g for g in root.iter(SVG + "g") if g.get("class") in ("node", "edge")]
    boxes = {g.findtext(SVG + "title"): _box(g) for g in groups if g.get("class") == "node"}
    heads = []
    at: dict[tuple[frozenset, str], list[Polygon]] = {}
    for group in groups:
        if group.get("class") != "edge":
            continue
        title = group.findtext(SVG + "title")
        (ends,) = [(a, b) for a in boxes for b in boxes if title == f"{a}--{b}"]
        polygons = list(group.iter(SVG + "polygon"))
        for polygon in polygons:
            numbers = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", polygon.get("points"))]
            corners = list(dict.fromkeys(zip(numbers[0::2], numbers[1::2])))  # closed: once
            centre = (
                sum(x for x, _y in corners) / len(corners),
                sum(y for _x, y in corners) / len(corners),
            )
            near, far = sorted(ends, key=lambda end: _distance(centre, boxes[end]))
            assert _distance(centre, boxes[near]) < 30, f"{title}: a head far from its offices"
            heads.append((far, near, polygon.get("fill")))
            at.setdefault((frozenset(ends), near), []).append(corners)
        lines = {path.get("stroke") for path in group.iter(SVG + "path")}
        if polygons and readable:
            assert lines == {p.get("fill") for p in polygons}, f"{title}: line and head differ"
    for (link, end), placed in at.items() if readable else ():
        for i, head in enumerate(placed):
            for other in placed[i + 1 :]:
                covered = _overlap(head, other) / min(abs(_area(head)), abs(_area(other)))
                assert covered <= 1 / 6, f"{sorted(link)}: heads cover each other at {end}"
    return sorted(heads)


def by_port(heads: list[tuple[str, str, str]], colors: dict[str, int]) -> list:
    return sorted((frm, to, colors[color]) for frm, to, color in heads)


@pytest.mark.parametrize("name", ["two-way", "hub-and-branches"])
def test_each_arrowhead_points_the_way_of_its_port_in_its_colour(name):
    if name == "two-way":
        plan = plan_network(two_way())
    else:
        plan = plan_network(_inventory_offices(ROOT / "examples/hub-and-branches/inventory.yml"))
    source = render.dot(plan)
    colors = legend_colors(source)
    expected = expected_heads(plan)
    assert by_port(dot_heads(source), colors) == expected
    if name == "two-way":
        assert ("b1", "hq", 5000) in expected and ("b1", "hq", 5001) in expected
        assert ("hq", "b1", 6000) in expected
    else:  # the case that was drawn wrong: queens' 5353 to manhattan, 6799 back
        assert ("queens", "manhattan", 5353) in expected
        assert ("manhattan", "queens", 6799) in expected
    if HAVE_DOT:
        assert by_port(svg_heads(render.svg(source)), colors) == expected


@needs_dot
def test_graphviz_colours_heads_as_this_test_reads_them():
    """The rules dot_heads applies, checked on what Graphviz draws: with a colour
    list, the head gets the first colour and the tail the second (dir=back too);
    one head per end, whatever the number of colours; set-back heads count."""
    source = "\n".join(
        [
            "graph g {",
            "  graph [layout=neato splines=false];",
            '  "a" [pos="0,0!"];',
            '  "b" [pos="3,0!"];',
            '  "c" [pos="0,2!"];',
            '  "a" -- "b" [color="#d62728:#1f77b4:#2ca02c" dir=both];',
            '  "c" -- "a" [color="#9467bd:#ff7f0e" dir=back];',
            '  "b" -- "c" [color="#8c564b" dir=forward arrowhead=nonenonenormal];',
            '  "c" -- "b" [color="#e377c2"];',
            "}",
        ]
    )
    expected = [
        ("a", "b", "#d62728"),
        ("a", "c", "#ff7f0e"),
        ("b", "a", "#1f77b4"),
        ("b", "c", "#8c564b"),
    ]
    assert dot_heads(source) == expected
    picture = render.svg(source)
    assert svg_heads(picture, readable=False) == expected
    with pytest.raises(AssertionError, match="line and head differ"):
        svg_heads(picture)


def test_many_offices_get_one_label_per_rule_and_none_on_arrows():
    """At 100 offices (and 200 with two hubs) nothing is said twice: each relay rule
    is named once, on the office it starts from; arrows carry no label."""
    for count, hubs in ((100, 1), (200, 2)):
        offices = many(count, relaying=1)
        for i in range(hubs):
            offices[f"office{i}-gw"]["office_role"] = "hub"
        offices["office5-gw"]["office_broadcast_relay"] = [{"port": 5353, "to": ["office0"]}]
        offices["office9-gw"]["office_broadcast_relay"] = [{"port": 137}]
        plan = plan_network(offices)
        source = render.dot(plan)
        assert len(plan.flows) == 3
        notes = re.findall(r'"(office\d+)" \[label="[^"]*\\nrelays ([^"]+)"', source)
        assert sorted(notes) == [("office0", "6799"), ("office5", "5353"), ("office9", "137")]
        assert [e for e in edges(source) if "label=" in e] == []
        assert by_port(dot_heads(source), legend_colors(source)) == expected_heads(plan)
        if HAVE_DOT:  # long spokes: two heads the same way meet at a branch
            drawn = svg_heads(render.svg(source))
            assert by_port(drawn, legend_colors(source)) == expected_heads(plan)


def test_ports_that_share_a_colour_are_named_on_their_arrows():
    ports = list(range(7000, 7000 + len(render.PORT_COLORS) + 2))  # two colours reused
    offices = many(4, relaying=0)
    offices["office0-gw"]["office_broadcast_relay"] = [{"port": p} for p in ports]
    source = render.dot(plan_network(offices))
    labelled = {int(p) for p in re.findall(r' label="(\d+)"', source)}
    assert labelled == {7000, 7001, 7008, 7009}  # the ports of the two reused colours
    assert "relays 7000, 7001, 8 more" in source
    assert "UDP 7000, 7008 broadcasts" in source and "share a colour" in source


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
    """The office variables of an example inventory, group vars applied; the only
    templating: a whole value "{{ name }}" (a vaulted key's stand-in) is looked up."""
    group = yaml.safe_load(path.read_text())["offices"]
    merged = {h: {**group.get("vars", {}), **(v or {})} for h, v in group["hosts"].items()}

    def resolve(value, names: dict):
        if isinstance(value, dict):
            return {k: resolve(v, names) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, names) for v in value]
        reference = re.fullmatch(r"\{\{\s*(\w+)\s*\}\}", value) if isinstance(value, str) else None
        return resolve(names[reference[1]], names) if reference else value

    return {h: resolve(v, v) for h, v in merged.items()}


@pytest.mark.parametrize("example", ["case-study", "hub-and-branches"])
def test_checked_in_example_plans_are_current(example):
    """`make plan` output in examples/*/plan matches what the planner renders today."""
    base = ROOT / "examples" / example
    plan = plan_network(_inventory_offices(base / "inventory.yml"))
    rendered = {
        "network.txt": render.network_text(plan),
        "network.dot": render.dot(plan),
        **{f"gateways/{h}.txt": render.gateway_text(office_plan(plan, h)) for h in plan.gateways},
    }
    for name, content in rendered.items():
        assert (base / "plan" / name).read_text() == content, f"run `make plan`: {name} is stale"
    assert (base / "plan/network.svg").read_text().lstrip().startswith("<?xml")
