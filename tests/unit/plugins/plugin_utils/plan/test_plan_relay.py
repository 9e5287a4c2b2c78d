"""The relay's part of the plan: its version 2 configuration, wires, multicast groups,
the secrets it needs (rotation included) and the office ids of its authenticated wire."""

from __future__ import annotations

import json

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import contract
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import render
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (
    PURPOSES,
    gateway_secrets,
    link_key,
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    branch_offices,
    case_study,
    external_partner,
    with_topology,
)

OLD_SECRET = "the-old-secret-being-rotated-0042"  # noqa: S105  (a test value)
SSDP = "239.255.255.250"
CASE_STUDY_SECRET = case_study()["manhattan-gw"]["office_tunnel_secret"]


def relay(offices: dict, host: str) -> dict:
    return office_plan(plan_network(offices), host)["relay"]


def errors(offices: dict) -> list[str]:
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    return info.value.errors


def addresses_named_by_rules(config: dict) -> set[str]:
    named = set()
    for rule in config["rules"]:
        named |= set(rule["forward_to"]) | set(rule["accept_from"])
        for sender, onward in rule.get("transit", {}).items():
            named |= {sender, *onward}
    return named


# --------------------------------------------------------------------------- version 2


def test_case_study_relay_config_is_version_2():
    plan = plan_network(case_study())
    assert office_plan(plan, "manhattan-gw")["relay"] == {
        "version": 2,
        "office": "manhattan",
        "lan": {"interface": "eth0", "address": "192.168.1.126/24"},
        "own_addresses": ["172.16.1.12"],
        "wire": "sitelink1",
        "keys_file": "/etc/sitelink/relay-keys.json",
        "state_dir": "/var/lib/sitelink-relay",
        "peers": {"192.168.2.126": {"office": "brooklyn", "interface": "sl-brooklyn"}},
        "rules": [{"port": 6799, "forward_to": ["192.168.2.126"], "accept_from": []}],
        "status_file": "/run/sitelink-relay/status.json",
        "metrics_file": "/run/sitelink-relay/metrics.prom",
    }
    brooklyn = office_plan(plan, "brooklyn-gw")["relay"]
    assert brooklyn["office"] == "brooklyn"
    assert brooklyn["peers"] == {
        "192.168.1.126": {"office": "manhattan", "interface": "sl-manhattan"}
    }
    assert brooklyn["rules"] == [{"port": 6799, "forward_to": [], "accept_from": ["192.168.1.126"]}]
    # No key of any kind in the plan, no storm_control (the relay's defaults apply).
    text = json.dumps(office_plan(plan, "manhattan-gw"))
    for purpose in ("tunnel", "relay"):
        assert link_key(CASE_STUDY_SECRET, "brooklyn", "manhattan", purpose) not in text
    assert "storm_control" not in text and "multicast_groups" not in text


def test_peers_are_every_address_a_rule_names_transit_included():
    offices = branch_offices(5)
    offices["office1-gw"]["office_broadcast_relay"] = [{"port": 5000, "to": ["office3"]}]
    offices["office4-gw"]["office_broadcast_relay"] = [{"port": 5001}]
    plan = plan_network(offices)
    for host in plan.gateways:
        config = office_plan(plan, host)["relay"]
        assert set(config["peers"]) == addresses_named_by_rules(config), host
    hub = office_plan(plan, "office0-gw")["relay"]
    (rule5000,) = [r for r in hub["rules"] if r["port"] == 5000]
    assert rule5000["transit"] == {"10.0.1.1": ["10.0.3.1"]}
    assert hub["peers"]["10.0.3.1"] == {"office": "office3", "interface": "sl-office3"}
    # Peers are sorted by address, as every address list of the plan.
    assert list(hub["peers"]) == ["10.0.1.1", "10.0.2.1", "10.0.3.1", "10.0.4.1"]


def test_a_gateway_without_rules_has_no_peers():
    offices = branch_offices(3)
    offices["office0-gw"]["office_broadcast_relay"] = [{"port": 6799, "to": ["office1"]}]
    config = relay(offices, "office2-gw")
    assert (config["rules"], config["peers"]) == ([], {})
    assert config["version"] == 2 and config["wire"] == "sitelink1"


# --------------------------------------------------------------------------- wires


def test_raw_deployment_wire_needs_no_secret_without_ipsec_and_warns():
    offices = with_topology(
        case_study(), "hub-and-spoke", office_relay_wire="raw", office_tunnel_protection="none"
    )
    for office in offices.values():
        del office["office_tunnel_secret"]
    plan = plan_network(offices)
    config = office_plan(plan, "manhattan-gw")["relay"]
    assert config["wire"] == "raw"
    assert config["peers"] == {"192.168.2.126": {"office": "brooklyn", "interface": "sl-brooklyn"}}
    # Emitted always; the relay ignores them with the raw wire.
    assert config["keys_file"] == "/etc/sitelink/relay-keys.json"
    (warning,) = [w for w in plan.warnings if "office_relay_wire" in w]
    assert warning.startswith("deployment (every office): office_relay_wire: raw: ")
    text = render.network_text(plan)
    # The warning, wrapped and indented in the text.
    assert "Relay wire: RAW" in text
    assert " ".join(warning.split(": raw: ")[1].split()[:8]) in " ".join(text.split())
    gateway = render.gateway_text(office_plan(plan, "manhattan-gw"))
    assert "NOT AUTHENTICATED (office_relay_wire: raw)" in gateway


def test_raw_with_ipsec_warns_without_claiming_internet_forgery():
    offices = with_topology(case_study(), "hub-and-spoke", office_relay_wire="raw")
    (warning,) = plan_network(offices).warnings
    assert "IPsec still protects them" in warning and "anyone on the Internet" not in warning


def test_authenticated_wire_is_the_default_and_does_not_warn():
    plan = plan_network(case_study())
    assert plan.warnings == []
    assert "Relay wire: authenticated" in render.network_text(plan)
    text = render.gateway_text(office_plan(plan, "brooklyn-gw"))
    assert "authenticated: each datagram carries its origin office" in text
    assert "NOT AUTHENTICATED" not in text


def test_a_raw_external_peer_is_marked_on_its_entry_only():
    offices = with_topology(
        branch_offices(3),
        "hub-and-spoke",
        office_external_peers=[
            external_partner(relay_wire="raw", broadcast_relay=[{"port": 7000, "to": ["office2"]}])
        ],
    )
    offices["office1-gw"]["office_broadcast_relay"] = [{"port": 7001, "to": ["partner"]}]
    plan = plan_network(offices)
    hub = office_plan(plan, "office0-gw")["relay"]
    assert hub["wire"] == "sitelink1"
    assert hub["peers"]["10.200.0.1"] == {
        "office": "partner",
        "interface": "sl-partner",
        "wire": "raw",
    }
    assert all("wire" not in p for a, p in hub["peers"].items() if a != "10.200.0.1")
    (warning,) = plan.warnings
    assert warning.startswith(
        "office 'partner' (external peer): office_external_peers[0].relay_wire: raw: "
    )
    text = render.gateway_text(office_plan(plan, "office0-gw"))
    assert "NOT AUTHENTICATED (relay_wire: raw), to: 10.200.0.1 (partner)" in text


def test_an_authenticated_external_peer_in_a_raw_deployment_needs_its_own_key_only():
    """Its link's relay key comes from its psk: no deployment secret is needed for it,
    and without a psk (protection none) it is the psk that is asked for."""
    peer = external_partner(
        relay_wire="authenticated", protection="none", broadcast_relay=[{"port": 7000}]
    )
    offices = with_topology(
        branch_offices(2),
        "hub-and-spoke",
        office_relay_wire="raw",
        office_tunnel_protection="none",
        office_external_peers=[peer],
    )
    for office in offices.values():
        del office["office_tunnel_secret"]
    hub = relay(offices, "office0-gw")
    assert hub["wire"] == "raw"
    assert hub["peers"]["10.200.0.1"]["wire"] == "sitelink1"
    del peer["psk"]
    (problem,) = errors(offices)
    assert problem == (
        "office 'partner' (external peer): office_external_peers[0].psk: required when its "
        "relay speaks the authenticated wire with ours (the link's relay key is derived from "
        "it), or set relay_wire: raw"
    )


@pytest.mark.parametrize(
    ("deployment", "named", "not_named"),
    [
        (
            {"office_tunnel_protection": "none"},
            ["office_relay_wire is authenticated", "office_relay_wire: raw"],
            ["office_tunnel_protection"],
        ),
        (
            {},
            [
                "office_tunnel_protection is ipsec",
                "office_relay_wire is authenticated",
                "office_tunnel_protection: none",
                "office_relay_wire: raw",
            ],
            [],
        ),
        (
            {"office_relay_wire": "raw"},
            ["office_tunnel_protection is ipsec", "office_tunnel_protection: none"],
            ["office_relay_wire"],
        ),
    ],
)
def test_the_authenticated_wire_needs_the_secret(deployment, named, not_named):
    offices = with_topology(case_study(), "hub-and-spoke", **deployment)
    for office in offices.values():
        del office["office_tunnel_secret"]
    (problem,) = errors(offices)
    assert problem.startswith("deployment (every office): office_tunnel_secret: is not set")
    assert "ansible-vault" in problem
    for text in named:
        assert text in problem
    for text in not_named:
        assert text not in problem


def test_a_short_secret_is_refused_for_the_relay_too():
    offices = with_topology(
        case_study(),
        "hub-and-spoke",
        office_tunnel_protection="none",
        office_tunnel_secret="hunter2",  # noqa: S106
    )
    (problem,) = errors(offices)
    assert "office_tunnel_secret: is shorter than 16" in problem and "hunter2" not in problem


def test_a_bad_relay_wire_is_named():
    offices = with_topology(case_study(), "hub-and-spoke", office_relay_wire="signed")
    problem = "\n".join(errors(offices))
    assert "office_relay_wire: 'signed' must be one of: authenticated, raw" in problem
    offices = with_topology(
        case_study(),
        "hub-and-spoke",
        office_external_peers=[external_partner(relay_wire="hmac")],
    )
    problem = "\n".join(errors(offices))
    assert "office_external_peers[0].relay_wire: 'hmac' must be one of" in problem


# --------------------------------------------------------------------------- rotation


ROTATION_SECRETS = ("office_tunnel_secret_next", "office_tunnel_secret_previous")


@pytest.mark.parametrize("name", ROTATION_SECRETS)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("short-old", "is shorter than 16 characters"),
        (12345678901234567890, "the value is not a string"),
    ],
)
def test_a_bad_rotation_secret_is_named_and_never_shown(name, value, expected):
    offices = with_topology(case_study(), "hub-and-spoke", **{name: value})
    text = "\n".join(errors(offices))
    assert f"{name}: {expected}" in text, text
    assert str(value) not in text


@pytest.mark.parametrize("name", ROTATION_SECRETS)
def test_a_rotation_secret_without_a_secret_is_refused(name):
    offices = with_topology(
        case_study(),
        "hub-and-spoke",
        office_tunnel_protection="none",
        office_relay_wire="raw",
        **{name: OLD_SECRET},
    )
    for office in offices.values():
        del office["office_tunnel_secret"]
    (problem,) = errors(offices)
    assert problem.startswith(
        f"deployment (every office): {name}: is set, but office_tunnel_secret is not"
    )
    assert OLD_SECRET not in problem


def test_a_previous_secret_that_differs_between_offices_is_not_shown():
    offices = with_topology(case_study(), "hub-and-spoke", office_tunnel_secret_previous=OLD_SECRET)
    offices["brooklyn-gw"]["office_tunnel_secret_previous"] = "another-old-secret-of-length"  # noqa: S105
    text = "\n".join(errors(offices))
    assert "office_tunnel_secret_previous: its value differs" in text
    assert "another-old" not in text and OLD_SECRET not in text


def test_the_previous_secret_never_enters_the_plan():
    offices = with_topology(case_study(), "hub-and-spoke", office_tunnel_secret_previous=OLD_SECRET)
    plan = plan_network(offices)
    text = json.dumps([office_plan(plan, h) for h in plan.gateways]) + render.network_text(plan)
    assert OLD_SECRET not in text
    assert link_key(OLD_SECRET, "brooklyn", "manhattan", "relay") not in text


LINKS = [{"id": "brooklyn+manhattan", "offices": ["brooklyn", "manhattan"]}]


NEW_SECRET = "the-new-deployment-secret-0123456789"  # noqa: S105  (a test value)


def rotation_steps() -> list[dict]:
    """One link's keys at each step of a rotation from OLD_SECRET to NEW_SECRET: before,
    step 1 (next), step 2 (previous), after."""
    return [
        gateway_secrets(LINKS, *args, **kwargs)["links"]["brooklyn+manhattan"]
        for args, kwargs in (
            ((OLD_SECRET,), {}),
            ((OLD_SECRET,), {"next_secret": NEW_SECRET}),
            ((NEW_SECRET, OLD_SECRET), {}),
            ((NEW_SECRET,), {}),
        )
    ]


def test_a_rotation_adds_keys_that_are_accepted_never_sent():
    before, step1, step2, after = rotation_steps()
    key = {
        s: {p: link_key(s, "brooklyn", "manhattan", p) for p in PURPOSES}
        for s in (OLD_SECRET, NEW_SECRET)
    }
    assert before == key[OLD_SECRET] and after == key[NEW_SECRET]
    assert step1 == {
        **key[OLD_SECRET],
        "tunnel_accepted": [key[NEW_SECRET]["tunnel"]],
        "relay_accepted": [key[NEW_SECRET]["relay"]],
    }
    assert step2 == {
        **key[NEW_SECRET],
        "tunnel_accepted": [key[OLD_SECRET]["tunnel"]],
        "relay_accepted": [key[OLD_SECRET]["relay"]],
    }
    # Both ends of the link derive the same keys, whatever the order of the names.
    flipped = [{"id": "brooklyn+manhattan", "offices": ["manhattan", "brooklyn"]}]
    assert gateway_secrets(flipped, NEW_SECRET, OLD_SECRET)["links"]["brooklyn+manhattan"] == step2
    # Without a deployment secret, a link has no keys (but an entry, to be looked up).
    assert gateway_secrets(LINKS, None, OLD_SECRET) == {"links": {"brooklyn+manhattan": {}}}


@pytest.mark.parametrize("purpose", PURPOSES)
def test_two_gateways_one_step_apart_accept_what_the_other_sends(purpose):
    """A rolling apply, in any order of gateways: at any moment two ends of a link are
    at most one step apart, and each accepts the key the other sends."""
    steps = rotation_steps()

    def accepts(keys):
        return {keys[purpose], *keys.get(f"{purpose}_accepted", ())}

    for a, b in zip(steps, steps[1:]):
        assert a[purpose] in accepts(b) and b[purpose] in accepts(a)
    # Two steps apart (a gateway skipped one) is not promised, and indeed fails:
    # before and step 2 share no key either sends (the test can fail).
    assert steps[0][purpose] not in accepts(steps[3])


# --------------------------------------------------------------------------- groups


def test_groups_reach_the_sender_the_hub_and_the_receivers():
    offices = branch_offices(4)
    offices["office0-gw"]["office_broadcast_relay"] = []
    offices["office1-gw"]["office_broadcast_relay"] = [
        {"port": 1900, "groups": [SSDP, " 239.255.255.250", "224.0.0.251"]}
    ]
    offices["office2-gw"]["office_broadcast_relay"] = [
        {"port": 1900, "to": ["office3"], "groups": ["239.1.2.3"]}
    ]
    plan = plan_network(offices)
    rule = {h: office_plan(plan, h)["relay"]["rules"][0] for h in plan.gateways}
    union = ["224.0.0.251", "239.1.2.3", "239.255.255.250"]
    assert rule["office1-gw"]["forward_to"] == ["10.0.0.1"]
    assert rule["office0-gw"]["transit"] == {
        "10.0.1.1": ["10.0.2.1", "10.0.3.1"],
        "10.0.2.1": ["10.0.3.1"],
    }
    # office1's groups at office1, the hub and every receiver; office2's on the way to
    # office3. Each rule carries the union of what crosses it, sorted, once.
    assert rule["office1-gw"]["multicast_groups"] == ["224.0.0.251", SSDP]
    assert rule["office0-gw"]["multicast_groups"] == union
    assert rule["office3-gw"]["multicast_groups"] == union
    assert rule["office2-gw"]["multicast_groups"] == union
    assert list(rule["office0-gw"]) == [
        "port",
        "forward_to",
        "accept_from",
        "transit",
        "multicast_groups",
    ]
    text = render.network_text(plan)
    assert "office1:1900 (and multicast 224.0.0.251, 239.255.255.250) -> " in text
    gateway = render.gateway_text(office_plan(plan, "office3-gw"))
    assert f"UDP port 1900 (and multicast {', '.join(union)}):" in gateway


def test_groups_of_one_port_stay_off_another():
    offices = branch_offices(2)
    offices["office0-gw"]["office_broadcast_relay"] = [
        {"port": 1900, "groups": [SSDP]},
        {"port": 6799},
    ]
    rules = relay(offices, "office1-gw")["rules"]
    assert [r["port"] for r in rules] == [1900, 6799]
    assert rules[0]["multicast_groups"] == [SSDP] and "multicast_groups" not in rules[1]


def test_an_external_peers_groups_reach_our_receivers():
    offices = with_topology(
        branch_offices(2),
        "hub-and-spoke",
        office_external_peers=[
            external_partner(broadcast_relay=[{"port": 1900, "groups": [SSDP]}])
        ],
    )
    offices["office0-gw"]["office_broadcast_relay"] = []
    plan = plan_network(offices)
    hub = office_plan(plan, "office0-gw")["relay"]["rules"]
    assert hub == [
        {
            "port": 1900,
            "forward_to": [],
            "accept_from": ["10.200.0.1"],
            "transit": {"10.200.0.1": ["10.0.1.1"]},
            "multicast_groups": [SSDP],
        }
    ]
    assert office_plan(plan, "office1-gw")["relay"]["rules"][0]["multicast_groups"] == [SSDP]


@pytest.mark.parametrize("group", ["192.168.1.255", "255.255.255.255", "240.0.0.1", "ff02::c", "x"])
def test_a_group_outside_224_0_0_0_4_is_named_with_office_and_field(group):
    offices = case_study()
    offices["manhattan-gw"]["office_broadcast_relay"] = [{"port": 1900, "groups": [SSDP, group]}]
    (problem,) = errors(with_topology(offices, "hub-and-spoke"))
    assert problem.startswith(
        "office 'manhattan' (host manhattan-gw): office_broadcast_relay[0].groups[1]: "
        f"{group!r} is not an IPv4 multicast group (224.0.0.0/4"
    )


def test_groups_of_an_external_peer_are_named_with_its_entry():
    offices = with_topology(
        case_study(),
        "hub-and-spoke",
        office_external_peers=[
            external_partner(broadcast_relay=[{"port": 1900, "groups": ["10.0.0.1"]}])
        ],
    )
    problem = "\n".join(errors(offices))
    assert (
        "office 'partner' (external peer): "
        "office_external_peers[0].broadcast_relay[0].groups[0]: '10.0.0.1' is not" in problem
    )


def test_groups_must_be_a_list_of_strings():
    offices = case_study()
    offices["manhattan-gw"]["office_broadcast_relay"] = [{"port": 1900, "groups": SSDP}]
    problem = "\n".join(errors(with_topology(offices, "hub-and-spoke")))
    assert "office 'manhattan' (host manhattan-gw): office_broadcast_relay[0].groups:" in problem
    assert "is not a list" in problem


# --------------------------------------------------------------------------- office ids


def test_the_relay_office_id_is_the_contracts():
    # The formula is the contract's (contract.office_id), shared with the relay.
    manhattan = contract.office_id("manhattan")
    assert isinstance(manhattan, bytes) and len(manhattan) == contract.OFFICE_ID_BYTES
    assert manhattan == contract.office_id("manhattan") != contract.office_id("brooklyn")
    assert len(contract.office_id("bröoklyn")) == contract.OFFICE_ID_BYTES


def test_two_offices_with_the_same_relay_id_are_refused(monkeypatch):
    # A real collision needs ~2^16 names; the id function stands in for one.
    real = contract.office_id
    clash = ("office1", "office3")
    monkeypatch.setattr(
        contract, "office_id", lambda name: b"\0\0\0\1" if name in clash else real(name)
    )
    (problem,) = errors(branch_offices(4))
    assert problem.startswith("office 'office3' (host office3-gw): office_name: relay office id ")
    assert "00000001" in problem and "office 'office1' (host office1-gw)" in problem


def test_no_two_of_many_offices_share_a_relay_id():
    plan = plan_network(branch_offices(300))
    assert len({contract.office_id(name) for name in plan.offices}) == 300


def deliveries(plan, origin: str, port: int, dead: str = "") -> list[str]:
    """Where ``origin``'s broadcasts on ``port`` are re-broadcast, following the relays'
    own rules, with office ``dead`` sending and passing on nothing (a hub gone)."""
    configs = {g.office.name: office_plan(plan, h)["relay"] for h, g in plan.gateways.items()}
    name_of = {str(o.lan.ip): n for n, o in plan.offices.items()}
    (rule,) = [r for r in configs[origin]["rules"] if r["port"] == port]
    queue = [(str(plan.offices[origin].lan.ip), to) for to in rule["forward_to"]]
    delivered = []
    while queue:
        sender, receiver = queue.pop()
        node = name_of[receiver]
        if node == dead:
            continue
        (rule,) = [r for r in configs[node]["rules"] if r["port"] == port]
        if sender in rule["accept_from"]:
            delivered.append(node)
        queue += [(receiver, to) for to in rule.get("transit", {}).get(sender, [])]
    return sorted(delivered)


def test_with_two_hubs_a_branch_broadcast_crosses_either_hub():
    """office3's broadcasts for office4 go through both hubs: office4 gets a copy from
    each (the second dropped as a replay), and one while either hub is dead. With the
    raw wire, which cannot tell a copy from a new datagram, through one hub only."""
    offices = with_topology(branch_offices(5), "hub-and-spoke", office_transit=True)
    offices["office1-gw"]["office_role"] = "hub"
    offices["office3-gw"]["office_broadcast_relay"] = [{"port": 6801, "to": ["office4"]}]
    plan = plan_network(offices)
    assert deliveries(plan, "office3", 6801) == ["office4", "office4"]
    assert deliveries(plan, "office3", 6801, dead="office0") == ["office4"]
    assert deliveries(plan, "office3", 6801, dead="office1") == ["office4"]

    for office in offices.values():
        office["office_relay_wire"] = "raw"
        office["office_tunnel_secret"] = CASE_STUDY_SECRET
    raw = plan_network(offices)
    assert deliveries(raw, "office3", 6801) == ["office4"]
    assert deliveries(raw, "office3", 6801, dead="office0") == []
