"""External peers with their own keys, through Ansible for real (never a gateway).

plan.yml on the hub-and-branches example (whose partner's key is a variable, as a
vaulted one would be) writes the partner's file and never the key; the office role
hands the key to the hub alone and never shows it; the ipsec role's keys skip a plain
link; and what the partner's file tells its administrators makes a relay
configuration and keys file that sitelink-relay itself accepts, with the keys our
side derives.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from playbook import BIN, HUB_AND_BRANCHES, ROOT, run_playbook, unreachable

sys.path.insert(0, str(ROOT / "tests/unit"))
# Makes ansible_collections.sitelink.gateway importable.
import conftest  # noqa: E402,F401  # pylint: disable=unused-import
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan import (  # noqa: E402
    external,
)
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.build import (  # noqa: E402
    plan_network,
)
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.gateway import (
    office_plan,  # noqa: E402
)
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (  # noqa: E402
    gateway_secrets,
    link_key,
    psk_hex,
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (  # noqa: E402
    PARTNER_PSK,
    branch_offices,
    external_partner,
    with_topology,
)

EXAMPLE = yaml.safe_load(HUB_AND_BRANCHES.read_text())["offices"]
PSK = EXAMPLE["vars"]["vault_partner_psk"]
HOSTS = sorted(EXAMPLE["hosts"])
CONNECTION = unreachable({host: {} for host in HOSTS})
RELAY = ROOT / "roles/relay/files/sitelink-relay"


def secrets_in(text: str) -> list[str]:
    """Which forms of the partner's key ``text`` holds (none, it should be)."""
    forms = {
        "psk": PSK,
        "hex": psk_hex(PSK),
        "relay key": link_key(PSK, "manhattan", "partner", "relay"),
    }
    return [name for name, value in forms.items() if value in text]


def run_plan(tmp_path, *extra):
    return run_playbook(
        ROOT / "plan.yml",
        tmp_path,
        "-e",
        f"sitelink_plan_dir={tmp_path / 'plan'}",
        *extra,
        connection=CONNECTION,
        inventory=HUB_AND_BRANCHES,
        cwd=tmp_path,
    )


def override(tmp_path, peers) -> str:
    path = tmp_path / "override.yml"
    path.write_text(yaml.safe_dump({"offices": {"vars": {"office_external_peers": peers}}}))
    return str(path)


# --------------------------------------------------------------------------- plan.yml


def test_plan_writes_the_partners_side_and_never_its_key(tmp_path):
    stale = tmp_path / "plan/external/gone-partner.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("a peer that left office_external_peers")
    done = run_plan(tmp_path, "-vvv", "-e", "sitelink_plan_console=full")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert re.search(r"partner +ipsec \(own key\) +relay wire raw", output)
    assert sorted(p.name for p in (tmp_path / "plan/external").iterdir()) == ["partner.txt"]
    text = (tmp_path / "plan/external/partner.txt").read_text()
    assert 'secret = "<the key you were given>"' in text
    assert "ip link add name sl-manhattan type ipip local 203.0.113.40 remote 172.16.1.12" in text
    assert secrets_in(output) == []
    for path in (tmp_path / "plan").rglob("*"):
        if path.is_file():
            assert secrets_in(path.read_text(errors="replace")) == [], path


def test_plan_shows_and_warns_an_unprotected_partner(tmp_path):
    peer = {"name": "partner", "wan_address": "203.0.113.40", "lan_address": "10.77.0.1/24"}
    peer.update(protection="none", relay_wire="raw")
    done = run_plan(tmp_path, "-i", override(tmp_path, [peer]))
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    network = (tmp_path / "plan/network.txt").read_text()
    assert re.search(r"partner +none \(unprotected, warned\) +relay wire raw", network)
    assert "office_external_peers[0].protection: none: its links (from manhattan) are plain" in (
        " ".join(output.split())
    )
    assert (
        "Protection: NONE (unprotected, warned)"
        in (tmp_path / "plan/external/partner.txt").read_text()
    )


def test_plan_refuses_a_protected_partner_without_a_key(tmp_path):
    peer = {"name": "partner", "wan_address": "203.0.113.40", "lan_address": "10.77.0.1/24"}
    done = run_plan(tmp_path, "-i", override(tmp_path, [dict(peer, relay_wire="raw")]))
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0
    assert (
        "office 'partner' (external peer): office_external_peers[0].psk: required when the "
        "link is protected (or set protection: none)" in output
    )
    assert not (tmp_path / "plan/external").exists()


def test_removing_the_partner_removes_its_file(tmp_path):
    assert run_plan(tmp_path).returncode == 0
    assert (tmp_path / "plan/external/partner.txt").exists()
    done = run_plan(tmp_path, "-i", override(tmp_path, []))
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert list((tmp_path / "plan/external").iterdir()) == []


# --------------------------------------------------------------------------- the office role


def test_the_partners_key_reaches_the_hub_alone_and_never_the_output(tmp_path):
    done = run_playbook(
        ROOT / "tests/integration/playbooks/office_channel.yml",
        tmp_path,
        "-e",
        f"channel_out={tmp_path}",
        "--diff",
        "-vvv",
        connection=CONNECTION,
        inventory=HUB_AND_BRANCHES,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    secrets = {h: json.loads((tmp_path / f"{h}.secrets.json").read_text()) for h in HOSTS}
    assert secrets["manhattan-gw"]["links"]["manhattan+partner"] == {
        "tunnel": psk_hex(PSK),
        "relay": link_key(PSK, "manhattan", "partner", "relay"),
    }
    for host in HOSTS:
        if host != "manhattan-gw":
            assert secrets_in(json.dumps(secrets[host])) == [], host
        held = json.loads((tmp_path / f"{host}.vars.json").read_text())
        assert secrets_in(json.dumps(held["office_plan"])) == [], host
    assert "PLAY RECAP" in output
    assert secrets_in(output) == []


def test_the_ipsec_and_relay_roles_take_a_plain_links_empty_keys(tmp_path):
    """office_secrets has an empty entry for a link without keys: the ipsec role's keys
    leave it out, and the relay role's still map every other link (its relay keys only)."""
    defaults = {
        **yaml.safe_load((ROOT / "roles/ipsec/defaults/main.yml").read_text()),
        **yaml.safe_load((ROOT / "roles/relay/defaults/main.yml").read_text()),
    }
    office_secrets = {"links": {"a+b": {"tunnel": "ab" * 32, "relay": "cd" * 32}, "a+c": {}}}
    office_plan = {
        "links": [
            {
                "id": f"a+{peer}",
                "offices": ["a", peer],
                "peer": peer,
                "peer_address": address,
                "tunnel": f"sl-{peer}",
            }
            for peer, address in (("b", "10.0.2.1"), ("c", "10.0.3.1"))
        ]
    }
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {**defaults, "office_secrets": office_secrets, "office_plan": office_plan},
            "tasks": [
                {
                    "ansible.builtin.copy": {
                        "dest": str(tmp_path / "keys.json"),
                        "mode": "0600",
                        "content": "{{ {'ipsec': ipsec_keys, 'relay': relay_keys} | to_json }}",
                    }
                }
            ],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            *("-i", "localhost,", "-c", "local", "play.yml"),
            *("-e", f"ansible_python_interpreter={sys.executable}"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    keys = json.loads((tmp_path / "keys.json").read_text())
    assert keys["ipsec"] == {"a+b": ["ab" * 32]}
    # The relay role gets the relay keys of the keyed link only, never a tunnel key.
    assert keys["relay"] == {"10.0.2.1": {"relay": "cd" * 32}}


# --------------------------------------------------------------------------- their relay


needs_openssl = pytest.mark.skipif(
    shutil.which("openssl") is None
    or subprocess.run(["openssl", "kdf", "-help"], capture_output=True, check=False).returncode
    != 0,
    reason="OpenSSL 3 (its HKDF) is not installed",
)


@needs_openssl
def test_the_partners_relay_runs_with_what_its_file_says(tmp_path):
    offices = with_topology(
        branch_offices(3),
        "hub-and-spoke",
        office_external_peers=[
            external_partner(relay_wire="authenticated", broadcast_relay=[{"port": 7000}])
        ],
    )
    offices["office1-gw"]["office_role"] = "hub"  # two hubs: two links, two keys
    plan = plan_network(offices)
    text = external.peer_text(plan, "partner")
    config = json.loads(text.split("interface):\n\n", 1)[1].split("\n\n", 1)[0])
    keys = json.loads(text.split("relay key:\n\n", 1)[1].split("\n\n", 1)[0])
    # Each link's key, by the command the file gives, with the key they were given.
    commands = re.findall(r"# relay key of (\S+):\n((?:.*\\\n)*.*\n)", text)
    assert sorted(office for office, _unused in commands) == ["office0", "office1"]
    derived = {}
    for office, command in commands:
        # The command asks for the key (never on its command line); without a
        # terminal (a session of its own) OpenSSL reads it from stdin.
        done = subprocess.run(
            ["bash", "-c", command],
            input=PARTNER_PSK + "\n",
            start_new_session=True,
            capture_output=True,
            text=True,
            check=True,
        )
        derived[office] = done.stdout.strip().splitlines()[-1]
        # The key our hub's relay has for the link (office_secrets, from the psk).
        ours = gateway_secrets(
            office_plan(plan, f"{office}-gw")["links"], "x" * 16, None, plan.external_keys()
        )
        assert derived[office] == ours["links"][f"{office}+partner"]["relay"]
    for address, entry in config["peers"].items():
        placeholder = keys["peers"][address]["send"]
        assert placeholder == f"<relay key of {entry['office']}>"
        keys["peers"][address] = {
            "send": derived[entry["office"]],
            "accept": [derived[entry["office"]]],
        }
    config["state_dir"] = str(tmp_path / "state")
    config["keys_file"] = str(tmp_path / "keys.json")
    config["status_file"] = str(tmp_path / "status.json")
    config["metrics_file"] = str(tmp_path / "metrics.prom")
    (tmp_path / "relay.json").write_text(json.dumps(config))
    (tmp_path / "keys.json").write_text(json.dumps(keys))
    (tmp_path / "keys.json").chmod(0o600)
    check = [
        sys.executable,
        str(RELAY),
        "--check-config",
        str(tmp_path / "relay.json"),
        "--keys",
        str(tmp_path / "keys.json"),
    ]
    done = subprocess.run(check, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout
    # The check can fail: a placeholder left in the keys file is refused.
    (tmp_path / "keys.json").write_text(text.split("relay key:\n\n", 1)[1].split("\n\n", 1)[0])
    done = subprocess.run(check, capture_output=True, text=True, check=False)
    assert done.returncode != 0
