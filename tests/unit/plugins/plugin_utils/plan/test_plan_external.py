"""External peers' own keys: validation, where the key goes (and never goes), per-link
protection, and the file written for the peer's administrators."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import ipsec as ipsec_utils
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import (
    external,
    render,
    schema,
)
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import plan_network
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import office_plan
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.ipsec import (
    OWN_KEY,
    UNPROTECTED,
)
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.model import PlanError
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (
    gateway_secrets,
    link_key,
    psk_hex,
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (
    PARTNER_PSK,
    TEST_SECRET,
    branch_offices,
    external_partner,
    with_topology,
)

OLD_SECRET = "the-old-secret-being-rotated-0042"  # noqa: S105  (a test value)
VENDOR_PSK = "vendor-own-key-abcdefghijkl"  # noqa: S105  (a test value)


def vendor(**extra) -> dict:
    return {
        "name": "vendor",
        "wan_address": "198.51.100.9",
        "lan_address": "10.201.0.1/24",
        **extra,
    }


def offices_with(*peers, topology="hub-and-spoke", count=3, quiet=False, **deployment) -> dict:
    """office0 (hub, relays 6799 to every office: peers too) to office<count-1>, and the
    peers; ``quiet``: nothing relayed."""
    offices = with_topology(
        branch_offices(count), topology, office_external_peers=list(peers), **deployment
    )
    if quiet:
        offices["office0-gw"]["office_broadcast_relay"] = []
    return offices


def errors(offices: dict) -> list[str]:
    with pytest.raises(PlanError) as info:
        plan_network(offices)
    return info.value.errors


def secrets_of(plan, host: str, secret=TEST_SECRET, previous=None) -> dict:
    """office_secrets of one gateway, as the office role's filter makes them."""
    mine = office_plan(plan, host)
    return gateway_secrets(mine["links"], secret, previous, plan.external_keys())


def everything_shown(plan) -> str:
    """Every text the plan is shown or handed out as, but office_secrets."""
    parts = [json.dumps(office_plan(plan, h)) for h in plan.gateways]
    parts += [render.network_text(plan), render.dot(plan), "\n".join(plan.warnings)]
    parts += [render.gateway_text(office_plan(plan, h)) for h in plan.gateways]
    parts += [external.peer_text(plan, n) for n, o in plan.offices.items() if o.external]
    parts += [repr(o) for o in plan.offices.values()]
    return "\n".join(parts)


# --------------------------------------------------------------------------- validation


def test_a_protected_peer_without_a_key_is_named_with_its_field():
    peer = external_partner()
    del peer["psk"]
    assert errors(offices_with(peer)) == [
        "office 'partner' (external peer): office_external_peers[0].psk: required when the "
        "link is protected (or set protection: none): the peer's own key, agreed with its "
        'administrators and vaulted, e.g. psk: "{{ vault_partner_psk }}" '
        "(`openssl rand -base64 32`)"
    ]


def test_protection_none_needs_no_key_and_a_plain_deployment_asks_none():
    peer = external_partner(protection="none")
    del peer["psk"]
    plan_network(offices_with(peer, quiet=True))
    plain = external_partner()
    del plain["psk"]
    # With office_tunnel_protection: none, a peer is plain too unless it says ipsec.
    plan_network(offices_with(plain, quiet=True, office_tunnel_protection="none"))
    assert (
        "office_external_peers[0].psk: required"
        in errors(offices_with(dict(plain, protection="ipsec"), office_tunnel_protection="none"))[0]
    )


@pytest.mark.parametrize(
    ("psk", "message"),
    [
        ("short-key-15chr", "is shorter than 16 characters (e.g. `openssl rand -base64 32`)"),
        ("with a space 0123456789", "must be printable ASCII without spaces, quotes"),
        ('with"a-quote-0123456789', "must be printable ASCII without spaces, quotes"),
        ("with'a-quote-0123456789", "must be printable ASCII without spaces, quotes"),
        ("back\\slash-0123456789", "must be printable ASCII without spaces, quotes"),
        ("trailing-newline-0123\n", "must be printable ASCII without spaces, quotes"),
        ("ünïcödé-0123456789abc", "must be printable ASCII without spaces, quotes"),
        ("0x00112233445566778899", "must not start with 0x or 0s: strongSwan would read"),
        ("0sAAECAwQFBgcICQoLDA==", "must not start with 0x or 0s"),
    ],
)
def test_a_bad_key_is_refused_without_being_shown(psk, message):
    (problem,) = errors(offices_with(external_partner(psk=psk)))
    assert problem.startswith("office 'partner' (external peer): office_external_peers[0].psk: ")
    assert message in problem
    assert psk.strip() not in problem


def test_a_key_of_the_wrong_type_is_not_shown():
    (problem,) = errors(offices_with(external_partner(psk=12345678901234567890)))
    assert problem == (
        "deployment (every office): office_external_peers[0].psk: the value is not a string"
    )


def test_the_deployment_secret_is_never_a_peers_key():
    (problem,) = errors(offices_with(external_partner(psk=TEST_SECRET)))
    assert problem == (
        "office 'partner' (external peer): office_external_peers[0].psk: is the deployment "
        "secret (office_tunnel_secret), which never leaves the collection: give the peer a key "
        "of its own"
    )
    rotating = offices_with(
        external_partner(psk=OLD_SECRET), office_tunnel_secret_previous=OLD_SECRET
    )
    (problem,) = errors(rotating)
    assert "is the deployment secret (office_tunnel_secret_previous)" in problem
    assert OLD_SECRET not in problem


def test_two_peers_never_share_a_key():
    (problem,) = errors(offices_with(external_partner(), vendor(psk=PARTNER_PSK)))
    assert problem == (
        "office 'vendor' (external peer): office_external_peers[1].psk: is the same key as "
        "office_external_peers[0].psk: each external peer gets a key of its own"
    )


def test_a_deployment_wide_mismatch_hides_the_key():
    offices = offices_with(external_partner())
    offices["office2-gw"]["office_external_peers"] = [
        external_partner(psk="another-key-0123456789")
    ]
    problems = "\n".join(errors(offices))
    assert "office_external_peers: [{" in problems and "'psk': '<hidden>'" in problems
    assert PARTNER_PSK not in problems and "another-key-0123456789" not in problems


def psk_first(psk=PARTNER_PSK, **extra) -> dict:
    """A peer written with its key first: what a message cut at 60 characters shows."""
    peer = external_partner(**extra)
    del peer["psk"]
    return {"psk": psk, **peer}


def test_a_peer_written_as_a_mapping_that_differs_hides_the_key():
    """The dash forgotten (a mapping, not a list of them), and another key at one office:
    neither "differs from the other offices" nor "is not a list" shows a key."""
    offices = offices_with()
    for office in offices.values():
        office["office_external_peers"] = psk_first()
    offices["office2-gw"]["office_external_peers"] = psk_first("another-key-0123456789")
    problems = "\n".join(errors(offices))
    assert "office 'office2' (host office2-gw): office_external_peers: " in problems
    assert "differs from the other offices" in problems
    assert "deployment (every office): office_external_peers: the value" in problems
    assert "is not a list" in problems
    for key in (PARTNER_PSK, "another-key-0123456789"):
        assert key not in problems
        assert key[:8] not in problems  # not even cut short


@pytest.mark.parametrize(
    "peers",
    [
        psk_first(),  # the dash forgotten: not a list
        [[psk_first()]],  # one dash too many: an entry that is not a mapping
        [f"psk={PARTNER_PSK} name=partner"],  # an INI-style entry
        json.dumps([psk_first()]),  # a list as a string (an INI inventory's value)
        [psk_first(broadcast_relay="7000")],  # a bad sub-option beside the key
        [dict(external_partner(), pks=PARTNER_PSK)],  # the key under a misspelled name
    ],
    ids=["mapping", "nested-list", "ini-entry", "string", "bad-sub-option", "misspelled-key"],
)
def test_a_badly_written_peer_is_refused_without_showing_its_key(peers):
    offices = offices_with()
    for office in offices.values():
        office["office_external_peers"] = peers
    problems = "\n".join(errors(offices))
    assert "office_external_peers" in problems
    assert PARTNER_PSK[:8] not in problems


def test_a_deployment_wide_mismatch_hides_a_misspelled_key_too():
    offices = offices_with(external_partner())
    offices["office2-gw"]["office_external_peers"] = [
        dict(external_partner(), pks="a-key-under-a-typo-0123")
    ]
    problems = "\n".join(errors(offices))
    assert "'pks': '<hidden>'" in problems and "'name': 'partner'" in problems
    assert "a-key-under-a-typo" not in problems and PARTNER_PSK not in problems


def test_the_generated_specs_never_log_the_key():
    peers = schema.argument_specs()["argument_specs"]["inventory"]["options"]
    options = peers["office_external_peers"]["options"]
    assert options["psk"]["no_log"] is True
    assert options["protection"]["choices"] == ["ipsec", "none"]


# --------------------------------------------------------------------------- the keys


def test_an_external_link_is_keyed_from_the_peers_key_only():
    plan = plan_network(offices_with(external_partner(), vendor(psk=VENDOR_PSK)))
    hub = secrets_of(plan, "office0-gw")["links"]
    assert hub["office0+partner"] == {
        "tunnel": PARTNER_PSK.encode().hex(),
        "relay": link_key(PARTNER_PSK, "office0", "partner", "relay"),
    }
    assert hub["office0+vendor"]["tunnel"] == psk_hex(VENDOR_PSK)
    # Nothing of the deployment secret on an external link...
    from_secret = {
        link_key(TEST_SECRET, "office0", p, k)
        for p in ("partner", "vendor")
        for k in ("tunnel", "relay")
    }
    external_keys = {k for lk in ("office0+partner", "office0+vendor") for k in hub[lk].values()}
    assert not external_keys & from_secret
    # ... and our own links still keyed from it.
    assert hub["office0+office1"]["tunnel"] == link_key(TEST_SECRET, "office0", "office1", "tunnel")
    # A branch has no link to a peer (hub-and-spoke): it holds none of their keys.
    branch = secrets_of(plan, "office1-gw")["links"]
    assert sorted(branch) == ["office0+office1"]
    assert not external_keys & {k for keys in branch.values() for k in keys.values()}


def test_the_hex_key_is_what_strongswan_reads_as_the_text_key():
    # Our side writes `secret = 0x<hex>`, theirs `secret = "<text>"`: the same bytes.
    assert bytes.fromhex(psk_hex(PARTNER_PSK)).decode() == PARTNER_PSK
    assert (
        ipsec_utils.validate(
            {
                "path": "/x",
                "connections": [
                    {
                        "name": "sl-partner",
                        "link": "a+b",
                        "local": "192.0.2.1",
                        "remote": "192.0.2.2",
                    }
                ],
                "keys": {"a+b": psk_hex(PARTNER_PSK)},
            }
        )
        == []
    )


def test_rotating_the_deployment_secret_leaves_external_links_alone():
    offices = offices_with(external_partner(), office_tunnel_secret_previous=OLD_SECRET)
    plan = plan_network(offices)
    during = secrets_of(plan, "office0-gw", TEST_SECRET, OLD_SECRET)["links"]
    after = secrets_of(plan, "office0-gw", "a-brand-new-secret-0123456789")["links"]
    assert "relay_accepted" not in during["office0+partner"]
    assert during["office0+partner"] == after["office0+partner"]
    assert "relay_accepted" in during["office0+office1"]
    assert "tunnel_accepted" in during["office0+office1"]


def test_the_key_is_never_in_a_plan_a_text_or_a_repr():
    plan = plan_network(
        offices_with(
            external_partner(relay_wire="authenticated", broadcast_relay=[{"port": 7000}]),
            vendor(psk=VENDOR_PSK, protection="none", relay_wire="raw"),
        )
    )
    shown = everything_shown(plan)
    for psk in (PARTNER_PSK, VENDOR_PSK):
        assert psk not in shown
        assert psk_hex(psk) not in shown
        assert link_key(psk, "office0", "partner", "relay") not in shown
    # The check can fail: the key is in office_secrets, which is none of the above.
    assert psk_hex(PARTNER_PSK) in json.dumps(secrets_of(plan, "office0-gw"))


# --------------------------------------------------------------------------- protection


def test_an_unprotected_peer_is_plain_ipip_on_our_side_and_warned():
    peer = external_partner(protection="none")
    del peer["psk"]
    plan = plan_network(offices_with(peer, quiet=True))
    hub = office_plan(plan, "office0-gw")
    assert [c["peer"] for c in hub["ipsec"]["connections"]] == ["office1", "office2"]
    assert hub["ipsec"]["unprotected"] == [
        {"name": "sl-partner", "peer": "partner", "remote": "198.51.100.7"}
    ]
    assert hub["ipsec"]["external"] == {"partner": UNPROTECTED}
    assert hub["firewall"]["plain_peers"] == ["198.51.100.7"]
    assert hub["firewall"]["ipsec_peers"] == ["100.64.0.5", "100.64.0.9"]
    # No ESP on it: its tunnel MTU leaves room for the IPIP header only.
    mtu = {t["name"]: t["mtu"] for t in hub["tunnels"]}
    assert mtu == {"sl-office1": 1440, "sl-office2": 1440, "sl-partner": 1480}
    assert secrets_of(plan, "office0-gw")["links"]["office0+partner"] == {}
    assert plan.warnings == [
        "office 'partner' (external peer): office_external_peers[0].protection: none: its "
        "links (from office0) are plain IPIP, which anyone on the path can read, and anyone "
        "on the Internet can forge (RFC 2003 has no authentication); give it a key of its "
        "own (psk) to protect them"
    ]


def test_a_protected_peer_in_a_plain_deployment_gets_its_connection_only():
    plan = plan_network(
        offices_with(external_partner(protection="ipsec"), office_tunnel_protection="none")
    )
    hub = office_plan(plan, "office0-gw")
    assert hub["protection"] == "none"
    assert hub["ipsec"]["connections"] == [
        {
            "name": "sl-partner",
            "link": "office0+partner",
            "peer": "partner",
            "local": "100.64.0.1",
            "remote": "198.51.100.7",
        }
    ]
    assert [u["name"] for u in hub["ipsec"]["unprotected"]] == ["sl-office1", "sl-office2"]
    assert hub["firewall"]["ipsec_peers"] == ["198.51.100.7"]
    assert {t["name"]: t["mtu"] for t in hub["tunnels"]}["sl-partner"] == 1440
    assert plan.warnings[0].startswith(
        "deployment (every office): office_tunnel_protection: none: every link (but those to "
        "partner) is plain IPIP"
    )
    assert (
        "Protection: NONE (plain IPIP: readable and forgeable on the path) but 1 link (below)\n"
        in render.network_text(plan)
    )


def test_the_relay_on_an_unprotected_link_needs_a_key_only_when_it_is_used():
    peer = external_partner(protection="none")
    del peer["psk"]
    plan_network(offices_with(peer, quiet=True))  # the authenticated wire, but nothing relayed
    talking = dict(peer, broadcast_relay=[{"port": 7000}])  # it relays to us
    (problem,) = errors(offices_with(talking, quiet=True))
    assert problem.startswith("office 'partner' (external peer): office_external_peers[0].psk:")
    (problem,) = errors(offices_with(peer))  # the hub relays 6799 to every office
    assert problem.startswith("office 'partner' (external peer): office_external_peers[0].psk:")
    plan_network(offices_with(dict(talking, relay_wire="raw")))
    # A key without IPsec keys the relay's wire only.
    keyed = plan_network(offices_with(dict(talking, psk=PARTNER_PSK)))
    assert secrets_of(keyed, "office0-gw")["links"]["office0+partner"] == {
        "tunnel": psk_hex(PARTNER_PSK),
        "relay": link_key(PARTNER_PSK, "office0", "partner", "relay"),
    }
    hub = office_plan(keyed, "office0-gw")
    assert hub["ipsec"]["external"] == {"partner": UNPROTECTED}
    assert [c["peer"] for c in hub["ipsec"]["connections"]] == ["office1", "office2"]


def test_texts_say_how_each_external_link_is_protected():
    peer = vendor(protection="none")
    plan = plan_network(offices_with(external_partner(), peer, quiet=True))
    text = render.network_text(plan)
    assert (
        "Protection: IPsec ESP around every link's IPIP (IKEv2, one key per link) but 1 link "
        "(below)\n" in text
    )
    assert re.search(r"  partner +ipsec \(own key\) +relay wire authenticated\n", text)
    assert re.search(r"  vendor +none \(unprotected, warned\) +relay wire authenticated\n", text)
    hub = render.gateway_text(office_plan(plan, "office0-gw"))
    assert (
        f"sl-partner to partner: 100.64.0.1 -> 198.51.100.7, MTU 1440, TTL 64\n"
        f"    external peer, protection: {OWN_KEY}\n" in hub
    )
    assert f"    external peer, protection: {UNPROTECTED}\n" in hub
    assert (
        "  but NOT PROTECTED (an external peer's protection: none), plain IPIP: sl-vendor\n" in hub
    )
    # Without external peers, nothing of it.
    plain = render.network_text(plan_network(offices_with()))
    assert "External peers" not in plain and ", but" not in plain


# --------------------------------------------------------------------------- their side


def test_their_ipsec_file_is_ours_with_the_ends_swapped():
    """What their swanctl needs is exactly what ours has, seen from their side."""
    plan = plan_network(offices_with(external_partner()))
    (conn,) = [
        c for c in office_plan(plan, "office0-gw")["ipsec"]["connections"] if c["peer"] == "partner"
    ]
    ours = ipsec_utils.render(
        [conn],
        {conn["link"]: psk_hex(PARTNER_PSK)},
        ipsec_utils.IKE_PROPOSALS,
        ipsec_utils.ESP_PROPOSALS,
        ipsec_utils.DPD_DELAY,
    )
    text = external.peer_text(plan, "partner")
    start = text.index("    # For the administrators of the far end")
    theirs = "\n".join(line[4:] for line in text[start:].split("\n\n", 1)[0].splitlines()) + "\n"
    swapped = (
        ours.replace(ipsec_utils.HEADER, ipsec_utils.REMOTE_HEADER)
        .replace("100.64.0.1", "<ours>")
        .replace("198.51.100.7", "100.64.0.1")
        .replace("<ours>", "198.51.100.7")
        .replace("sl-partner", "sl-office0")
        .replace(f"secret = 0x{psk_hex(PARTNER_PSK)}", 'secret = "<the key you were given>"')
    )
    assert theirs == swapped
    assert "start_action" in theirs and "mode = transport" in theirs  # the template, whole


def test_their_routes_mirror_ours_with_two_hubs():
    """Traffic to and from the peer takes the same hub: ours route its LAN into the
    hub they use for ours (a firewall drops what comes out of another tunnel)."""
    offices = offices_with(external_partner(), count=5)
    offices["office1-gw"]["office_role"] = "hub"
    plan = plan_network(offices)
    theirs = external.their_routes(plan, "partner")
    assert sorted(theirs) == ["office0", "office1"]
    routed = {p for prefixes in theirs.values() for p in prefixes}
    assert routed == {str(o.lan.network) for o in plan.offices.values() if o.name != "partner"}
    for host, gw in plan.gateways.items():
        mine = office_plan(plan, host)
        (tunnel,) = [t for t in mine["tunnels"] if "10.200.0.0/24" in t["routes"]]
        hop = next(lk["peer"] for lk in mine["links"] if lk["tunnel"] == tunnel["name"])
        last = gw.office.name if hop == "partner" else hop
        assert str(gw.office.lan.network) in theirs[last], host


def test_their_file_has_tunnels_firewall_and_relay_but_no_key():
    plan = plan_network(
        offices_with(
            external_partner(
                relay_wire="authenticated",
                broadcast_relay=[{"port": 7000, "to": ["office2"], "groups": ["239.1.2.3"]}],
            )
        )
    )
    text = external.peer_text(plan, "partner")
    assert "Protection: ipsec (own key)" in text
    assert (
        "ip link add name sl-office0 type ipip local 198.51.100.7 remote 100.64.0.1 ttl 64\n"
        in text
    )
    assert "ip link set dev sl-office0 mtu 1440 up\n" in text
    assert "ip address add 10.200.0.1/32 dev sl-office0\n" in text
    for lan in ("10.0.0.0/24", "10.0.1.0/24", "10.0.2.0/24"):
        assert f"ip route replace {lan} dev sl-office0 src 10.200.0.1\n" in text
    assert "alias" not in text and "sitelink-gateway" not in text
    assert "accept from 100.64.0.1 on your WAN: IKE (UDP 500 and 4500), ESP" in text
    assert "UDP port 7000 (and multicast 239.1.2.3):" in text
    assert "broadcasts on your LAN go to: 10.0.0.1 (office0)" in text
    config = json.loads(text.split("interface):\n\n", 1)[1].split("\n\n", 1)[0])
    assert config["office"] == "partner" and config["wire"] == "sitelink1"
    assert config["peers"] == {"10.0.0.1": {"office": "office0", "interface": "sl-office0"}}
    assert config["rules"] == [
        {"port": 6799, "forward_to": [], "accept_from": ["10.0.0.1"]},
        {
            "port": 7000,
            "forward_to": ["10.0.0.1"],
            "accept_from": [],
            "multicast_groups": ["239.1.2.3"],
        },
    ]
    assert "<relay key of office0>" in text
    command = external.relay_key_command("partner", "office0").splitlines()
    shown = text.split("# relay key of office0:\n", 1)[1].splitlines()[: len(command)]
    assert [line.strip() for line in shown] == [line.strip() for line in command]
    assert PARTNER_PSK not in text and psk_hex(PARTNER_PSK) not in text


def test_their_ipsec_text_says_both_ends_initiate_and_keep_the_trap():
    text = " ".join(
        external.peer_text(plan_network(offices_with(external_partner())), "partner").split()
    )
    assert "start_action = trap|start" in text  # their swanctl file, ours swapped
    assert "Both ends trap: the first IPIP packet starts IKE" not in text
    assert (
        "Both ends initiate IKE when the connection is loaded and keep the trap, so that "
        "traffic starts it again once it is down: start_action = trap|start (strongSwan "
        "5.9.6 or later; on older versions use start_action = trap, and the first IPIP "
        "packet starts IKE)."
    ) in text


def openssl_3() -> bool:
    found = shutil.which("openssl")
    if not found:
        return False
    done = subprocess.run([found, "version"], capture_output=True, text=True, check=False)
    return done.returncode == 0 and re.match(r"OpenSSL [3-9]\.", done.stdout) is not None


@pytest.mark.skipif(not openssl_3(), reason="needs OpenSSL 3 (openssl pkeyutl -pkeyopt_passin)")
@pytest.mark.parametrize("how", ["asked", "from a file"])
def test_the_relay_keys_derived_as_their_file_says_are_ours(tmp_path, how):
    """Each command the file gives derives the link's relay key our gateway has, with the
    key never on its command line: asked for (stdin here: no terminal), or read from a file."""
    offices = offices_with(
        external_partner(relay_wire="authenticated", broadcast_relay=[{"port": 7000}])
    )
    offices["office1-gw"]["office_role"] = "hub"  # two hubs: two links, two keys
    plan = plan_network(offices)
    text = external.peer_text(plan, "partner")
    flat = " ".join(text.split())
    assert "typed into a command line, it would stay in the shell's history" in flat
    assert "and show in the process list" in flat
    commands = dict(re.findall(r"# relay key of (\S+):\n((?:.*\\\n)*.*\n)", text))
    assert sorted(commands) == ["office0", "office1"]
    key_file = tmp_path / "partner.key"
    key_file.write_text(PARTNER_PSK + "\n")
    for office, command in commands.items():
        assert external.PLACEHOLDER not in command and "-pkeyopt_passin key |" in command
        stdin = PARTNER_PSK + "\n"
        if how == "from a file":
            assert "`-pkeyopt_passin key:file:<file>` reads it from the first line" in flat
            command = command.replace(
                "-pkeyopt_passin key ", f"-pkeyopt_passin key:file:{key_file} "
            )
            stdin = ""
        done = subprocess.run(
            ["bash", "-c", command],
            input=stdin,
            capture_output=True,
            text=True,
            check=True,
            start_new_session=True,  # no terminal to ask on: openssl reads stdin
        )
        ours = secrets_of(plan, f"{office}-gw")["links"][f"{office}+partner"]["relay"]
        assert done.stdout == ours + "\n"
        assert ours == link_key(PARTNER_PSK, office, "partner", "relay")


def test_an_unprotected_or_raw_peer_gets_no_ipsec_and_no_relay_config():
    peer = external_partner(protection="none", relay_wire="raw", broadcast_relay=[{"port": 7000}])
    del peer["psk"]
    text = external.peer_text(plan_network(offices_with(peer)), "partner")
    assert "Protection: NONE (unprotected, warned)" in text
    assert "swanctl" not in text and "IKE" not in text
    assert "accept from 100.64.0.1 on your WAN: IPIP (IP protocol 4)" in text
    assert "ip link set dev sl-office0 mtu 1480 up" in text
    assert "Raw wire (e.g. udp-proxy, a plain C relay)" in text and "openssl" not in text


def test_a_peer_left_without_links_is_told_so():
    offices = offices_with(external_partner(), topology="links", office_links=[])
    text = external.peer_text(plan_network(offices), "partner")
    assert "Links: none (no office of ours is linked to yours)" in text


def test_the_checked_in_external_files_are_current():
    """`make plan` output in examples/*/plan/external matches what is rendered today
    (their swanctl file follows ours: a change to module_utils/ipsec.py shows here)."""
    from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan_render import (  # noqa: E501
        ROOT,
        _inventory_offices,
    )

    checked = 0
    for inventory in sorted(ROOT.glob("examples/*/inventory.yml")):
        plan = plan_network(_inventory_offices(inventory))
        directory = inventory.parent / "plan/external"
        names = sorted(n for n, o in plan.offices.items() if o.external)
        shown = sorted(p.stem for p in directory.glob("*.txt")) if directory.is_dir() else []
        assert shown == names, f"run `make plan`: {directory}"
        for name in names:
            text = (directory / f"{name}.txt").read_text()
            assert text == external.peer_text(plan, name), f"run `make plan`: {name}.txt is stale"
            checked += 1
    assert checked  # the hub-and-branches example has a partner
