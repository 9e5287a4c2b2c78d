"""Properties of every plan, over random valid inventories (hypothesis).

- every pair of offices the topology connects has a route both ways, hop by hop;
- no route points into a tunnel that does not exist at both ends;
- each tunnel's routes cover exactly the LANs routed into it, no address more
  (they are collapsed: the fewest prefixes that do);
- relay fan-out, simulated with the relays' own rules, delivers each broadcast
  to exactly the offices asked for, once each, and never back to its origin;
- every gateway's office_plan matches the contract (``contract.problems``), from one
  office to a thousand.

Connectivity and relay targets are worked out here from the topology's
definition, not from the planner's own links.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from itertools import combinations

from ansible_collections.sitelink.gateway.plugins.module_utils import contract
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.tunnels import tunnel_name
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    branch_offices,
    with_topology,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

PORTS = (5000, 6799)


@st.composite
def inventories(draw):
    internal = draw(st.integers(min_value=1, max_value=9))
    external = draw(st.integers(min_value=0, max_value=2))
    names = [f"o{i}" for i in range(internal + external)]
    topology = draw(st.sampled_from(["hub-and-spoke", "mesh", "links"]))
    roles = [draw(st.sampled_from(["hub", "branch"])) for _unused in names]
    if topology == "hub-and-spoke" and "hub" not in roles[:internal]:
        roles[0] = "hub"
    pairs = list(combinations(names, 2))
    extra = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=6)) if pairs else []
    extra = [p for p in extra if not (p[0] in names[internal:] and p[1] in names[internal:])]
    transit = draw(st.booleans())

    def relay_rules(name):
        rules = []
        for port in draw(st.lists(st.sampled_from(PORTS), unique=True, max_size=2)):
            if draw(st.booleans()):
                rules.append({"port": port})
            else:
                others = [n for n in names if n != name]
                if not others:
                    continue
                to = draw(st.lists(st.sampled_from(others), unique=True, min_size=1, max_size=3))
                rules.append({"port": port, "to": to})
        return rules

    deployment = {
        "office_topology": topology,
        "office_tunnel_secret": "property-test-secret-0123",
        "office_transit": transit,
        "office_links": [{"between": list(p)} for p in extra],
        "office_external_peers": [
            {
                "name": name,
                "role": roles[index],
                "wan_address": f"198.51.100.{index + 1}",
                "lan_address": f"10.200.{index}.1/24",
                "psk": f"{name}-own-key-0123456789",
                "broadcast_relay": relay_rules(name),
            }
            for index, name in enumerate(names)
            if index >= internal
        ],
    }
    offices = {}
    for index, name in enumerate(names[:internal]):
        offices[f"{name}-gw"] = {
            "office_name": name,
            "office_role": roles[index],
            "office_lan_interface": "eth0",
            "office_lan_address": f"10.{index}.0.1/16",
            "office_wan_interface": "eth1",
            "office_wan_address": f"100.64.{index}.1/24",
            "office_masquerade": draw(st.booleans()),
            "office_broadcast_relay": relay_rules(name),
            **deployment,
        }
    expected_links = set(extra)
    if topology == "mesh":
        expected_links |= set(pairs)
    elif topology == "hub-and-spoke":
        hubs = [n for n, r in zip(names, roles) if r == "hub"]
        expected_links |= {tuple(sorted((h, n))) for h in hubs for n in names if n != h}
    expected_links = {
        p for p in expected_links if not (p[0] in names[internal:] and p[1] in names[internal:])
    }
    return offices, expected_links, set(names[internal:]), transit


def reachable(origin, adjacency, externals, transit):
    """Offices an origin reaches: over links, through our own gateways if transit is on."""
    seen, frontier = {origin}, [origin]
    while frontier:
        node = frontier.pop()
        if node != origin and (not transit or node in externals):
            continue
        for n in adjacency.get(node, ()):
            if n not in seen:
                seen.add(n)
                frontier.append(n)
    return seen - {origin}


def _covering(tunnels, network):
    """The tunnels (of one gateway's plan) whose routes cover ``network``."""
    return [
        t for t in tunnels if any(network.subnet_of(ipaddress.ip_network(r)) for r in t["routes"])
    ]


def _adjacency(links):
    adjacency = {}
    for a, b in links:
        adjacency.setdefault(a, set()).add(b)
        adjacency.setdefault(b, set()).add(a)
    return adjacency


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(inventories())
def test_routes_relay_and_tunnels(case):
    offices, links, externals, transit = case
    try:
        plan = plan_network(offices)
    except PlanError as exc:
        # The only refusals valid input can meet: a relay target the topology
        # cannot reach, or two origins needing different fan-out from one sender.
        assert all("not reachable" in e or "onward relaying" in e for e in exc.errors), exc.errors
        assume(False)
    adjacency = _adjacency(links)
    lan = {name: o.lan.network for name, o in plan.offices.items()}
    by_address = {str(o.lan.ip): name for name, o in plan.offices.items()}
    configs = {g.office.name: office_plan(plan, h) for h, g in plan.gateways.items()}
    for name, config in configs.items():
        assert contract.problems(config) == [], name

    # Tunnels exist at both ends of every link, and only there.
    for name, config in configs.items():
        peers = {t["description"].split()[-1] for t in config["tunnels"]}
        assert peers == adjacency.get(name, set())
        for peer in peers - externals:
            back = [t for t in configs[peer]["tunnels"] if t["remote"] == config["wan"]["address"]]
            assert len(back) == 1
        routed = [ipaddress.ip_network(r) for t in config["tunnels"] for r in t["routes"]]
        assert not any(a.overlaps(b) for a, b in combinations(routed, 2)), "routed twice"
        assert not _covering(config["tunnels"], lan[name])
        # Collapsed, and exact: the routes hold as many addresses as the LANs they cover.
        for tunnel in config["tunnels"]:
            covered = [d for d in plan.offices if _covering([tunnel], lan[d])]
            routes = [ipaddress.ip_network(r) for r in tunnel["routes"]]
            assert sum(r.num_addresses for r in routes) == sum(
                lan[d].num_addresses for d in covered
            ), tunnel
            assert routes == list(ipaddress.collapse_addresses(lan[d] for d in covered))

    # Every connected pair has a route both ways, hop by hop, without loops.
    for name in configs:
        for dest in reachable(name, adjacency, externals, transit):
            node, hops = name, 0
            while node != dest:
                assert node in configs, f"route from {name} to {dest} transits external {node}"
                (tunnel,) = _covering(configs[node]["tunnels"], lan[dest])
                node = tunnel["description"].split()[-1]
                hops += 1
                assert hops <= len(plan.offices), "routing loop"
        assert not any(
            _covering(configs[name]["tunnels"], lan[d])
            for d in set(plan.offices) - reachable(name, adjacency, externals, transit) - {name}
        )

    # Relay: simulate each origin's broadcast with the relays' own rules.
    failover = {t["backup"] for c in configs.values() for t in c["tunnels"] if t.get("backup")}
    for origin, office in plan.offices.items():
        for request in office.relay:
            wanted = reachable(origin, adjacency, externals, transit)
            if request.to is not None:
                wanted = set(request.to)
            port = request.port
            if origin in configs:
                rules = [r for r in configs[origin]["relay"]["rules"] if r["port"] == port]
                assert len(rules) == (1 if wanted else 0)
                queue = [(str(office.lan.ip), t) for r in rules for t in r["forward_to"]]
            else:  # an external peer sends to the first hops the plan names for it
                flows = [f for f in plan.flows if f.origin == origin and f.port == port]
                queue = [
                    (str(office.lan.ip), str(plan.offices[b].lan.ip))
                    for flow in flows
                    for a, b in flow.hops
                    if a == origin
                ]
            delivered = []
            steps = 0
            while queue:
                sender, receiver = queue.pop()
                steps += 1
                assert steps < 10 * len(plan.offices) ** 2, "relay loop"
                node = by_address[receiver]
                if node not in configs:
                    delivered.append(node)  # an external peer re-broadcasts on its own
                    continue
                rules = [r for r in configs[node]["relay"]["rules"] if r["port"] == port]
                if not rules:
                    continue
                if sender in rules[0]["accept_from"]:
                    delivered.append(node)
                queue += [(receiver, t) for t in rules[0].get("transit", {}).get(sender, [])]
            assert origin not in delivered, "a broadcast came back to its origin"
            if failover and plan.relay_wire == contract.WIRE_SITELINK1:
                # Two hubs: a branch also gets each hub's copy, the second dropped as a
                # replay by the relay (authenticated wire); never more than one per hub.
                assert sorted(set(delivered)) == sorted(wanted), (origin, port, delivered)
                assert max(Counter(delivered).values()) <= len(failover), delivered
            else:
                assert sorted(delivered) == sorted(wanted), (origin, port, delivered, wanted)


def _forget(office_vars: dict, name: str) -> dict:
    """One office's variables after ``name`` was deleted from the inventory, as a person
    would: links to it and relay targets naming it go too (a rule left with no target
    goes with them)."""

    def rules(entries):
        kept = []
        for rule in entries:
            if rule.get("to") is None:
                kept.append(rule)
            elif [t for t in rule["to"] if t != name]:
                kept.append({**rule, "to": [t for t in rule["to"] if t != name]})
        return kept

    out = dict(office_vars)
    out["office_broadcast_relay"] = rules(out.get("office_broadcast_relay", []))
    out["office_links"] = [lk for lk in out.get("office_links", []) if name not in lk["between"]]
    out["office_external_peers"] = [
        {**peer, "broadcast_relay": rules(peer.get("broadcast_relay", []))}
        for peer in out.get("office_external_peers", [])
        if peer["name"] != name
    ]
    return out


def _words(value) -> set[str]:
    """Every string in a plan, split into the words that could name an office."""
    if isinstance(value, dict):
        return set().union(*(_words(k) | _words(v) for k, v in value.items()))
    if isinstance(value, list):
        return set().union(*(_words(v) for v in value))
    if isinstance(value, str):
        return set(value.replace("+", " ").split())
    return set()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(inventories(), st.data())
def test_a_removed_office_leaves_nothing_behind(case, data):
    """Delete an office (ours or an external peer): no other gateway's plan keeps its
    tunnel, a route to its LAN, its address as a NAT source or relay target."""
    offices, _unused, externals, _unused = case
    candidates = sorted(o["office_name"] for o in offices.values()) + sorted(externals)
    assume(len(candidates) >= 2)
    try:
        before = plan_network(offices)
    except PlanError:
        assume(False)
    name = data.draw(st.sampled_from(candidates))
    gone = before.offices[name]
    rest = {h: _forget(v, name) for h, v in offices.items() if v["office_name"] != name}
    assume(rest)
    try:
        after = plan_network(rest)
    except PlanError as exc:
        # Only: the last hub went, or a relay target is now out of reach.
        assert all(
            "needs at least one office with office_role: hub" in e
            or "not reachable" in e
            or "onward relaying" in e
            for e in exc.errors
        ), exc.errors
        assume(False)
    traces = {
        name,
        tunnel_name(name),
        str(gone.lan.network),
        str(gone.lan.ip),
        gone.lan.with_prefixlen,
        str(gone.wan.ip),
    }
    for host in after.gateways:
        left = _words(office_plan(after, host)) & traces
        assert not left, f"{host} still holds {sorted(left)} of the removed office {name}"


@st.composite
def networks(draw):
    """1 to 1000 offices (a mesh: up to 40) with what changes a plan's shape: topology,
    transit, protection, relay wire, relays through the hub, external peers."""
    topology = draw(st.sampled_from(["hub-and-spoke", "mesh", "links"]))
    count = draw(st.integers(min_value=1, max_value=40 if topology == "mesh" else 1000))
    names = [f"office{i}" for i in range(count)]
    links = [{"between": [names[i], names[i + 1]]} for i in range(count - 1)]
    offices = with_topology(
        branch_offices(count),
        topology,
        office_links=links,
        office_transit=draw(st.booleans()),
        office_tunnel_protection=draw(st.sampled_from(["ipsec", "none"])),
        office_relay_wire=draw(st.sampled_from(["authenticated", "raw"])),
        office_external_peers=[
            {
                "name": f"peer{index}",
                "wan_address": f"198.51.100.{index + 1}",
                "lan_address": f"10.200.{index}.1/24",
                "psk": f"peer{index}-own-key-0123456789",
                "protection": draw(st.sampled_from(["ipsec", "none"])),
                "relay_wire": draw(st.sampled_from(["authenticated", "raw"])),
                "broadcast_relay": [{"port": 6799}] if draw(st.booleans()) else [],
            }
            for index in range(draw(st.integers(min_value=0, max_value=2)))
        ],
    )
    if count > 2 and draw(st.booleans()):
        offices["office1-gw"]["office_broadcast_relay"] = [
            {"port": 1900, "to": [names[-1]], "groups": ["239.255.255.250"]}
        ]
    return offices


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks())
def test_every_office_plan_matches_the_contract(offices):
    try:
        plan = plan_network(offices)
    except PlanError as exc:
        # Only: a relay target out of reach without transit, or two origins needing
        # different fan-out from one sender.
        assert all("not reachable" in e or "onward relaying" in e for e in exc.errors), exc.errors
        assume(False)
    for host in plan.gateways:
        assert contract.problems(office_plan(plan, host)) == [], host
