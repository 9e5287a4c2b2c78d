"""The relay role's files, rendered from real plans and keys, and checked by their readers.

Each variant is rendered by Ansible (the role's own templates, defaults and vars,
from a plan the planner made and the keys the office role would hand the
gateway): the relay's configuration, its link keys and its systemd unit.
``systemd-analyze verify`` checks the unit, and the shipped relay program checks
the configuration (``--check-config``) and the keys (``--check-keys``) once it
knows them. Then the role itself runs in check mode with ``-vvv --diff`` against
this machine (a stand-in ``systemctl``; nothing is written), and no key may show.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
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
from ansible_collections.sitelink.gateway.plugins.plugin_utils.plan.secrets import (  # noqa: E402
    gateway_secrets,
    link_key,
)
from ansible_collections.sitelink.gateway.tests.unit.plugins.plugin_utils.plan.test_plan import (  # noqa: E402
    branch_offices,
    case_study,
    external_partner,
    with_topology,
)

ROLE = ROOT / "roles/relay"
PROGRAM = ROLE / "files/sitelink-relay"
SECRET = case_study()["manhattan-gw"]["office_tunnel_secret"]
OLD_SECRET = "the-old-secret-being-rotated-0042"  # noqa: S105  (a test value)
RELAY_KEY = link_key(SECRET, "brooklyn", "manhattan", "relay")
OLD_RELAY_KEY = link_key(OLD_SECRET, "brooklyn", "manhattan", "relay")


def gateway(offices: dict, host: str, secret=SECRET, previous=None) -> dict:
    plan = office_plan(plan_network(offices), host)
    return {"plan": plan, "secrets": gateway_secrets(plan["links"], secret, previous)}


def variants() -> dict[str, dict]:
    raw = with_topology(case_study(), "hub-and-spoke", office_relay_wire="raw")
    partner = with_topology(
        branch_offices(3),
        "hub-and-spoke",
        office_external_peers=[
            external_partner(relay_wire="raw", broadcast_relay=[{"port": 7000, "to": ["office2"]}])
        ],
    )
    partner["office1-gw"]["office_broadcast_relay"] = [
        {"port": 1900, "groups": ["239.255.255.250"]}
    ]
    solo = {"solo-gw": branch_offices(1)["office0-gw"]}
    keyless = gateway(case_study(), "manhattan-gw")
    keyless["secrets"] = {"links": {}}
    return {
        "case-study-hub": gateway(case_study(), "manhattan-gw"),
        "case-study-branch": gateway(case_study(), "brooklyn-gw"),
        "rotation": gateway(case_study(), "manhattan-gw", previous=OLD_SECRET),
        "raw": gateway(raw, "manhattan-gw"),
        "raw-external-peer": gateway(partner, "office0-gw"),
        "no-rules": gateway(solo, "solo-gw"),
        "keyless": keyless,
    }


def role_vars() -> dict:
    """The role's defaults and vars, as the role sees them (lazily templated)."""
    data = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    data.update(yaml.safe_load((ROLE / "vars/main.yml").read_text()))
    return data


def run_ansible(work: Path, playbook: str, *extra: str, env=None) -> subprocess.CompletedProcess:
    environ = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0", **(env or {}))
    environ["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / ".cache/collections")
    environ["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            *("-i", "localhost,", "-c", "local", str(work / playbook)),
            *("-e", f"ansible_python_interpreter={sys.executable}"),
            *extra,
        ],
        cwd=work,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict]:
    """Every variant through the relay role's templates, in one playbook run."""
    work = tmp_path_factory.mktemp("relay")
    cases = variants()
    (work / "cases.json").write_text(json.dumps(cases))
    program = work / "sitelink-relay"
    shutil.copy(PROGRAM, program)  # the unit names an executable that exists
    play = [
        {
            "name": "Render the relay's files for each gateway",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"cases": "{{ lookup('file', 'cases.json') | from_json }}"},
            "tasks": [
                {
                    "name": "Render",
                    "ansible.builtin.include_tasks": "render.yml",
                    "loop": "{{ cases | dict2items }}",
                }
            ],
        }
    ]
    out = f"{work}/{{{{ item.key }}}}"

    def template(name: str) -> str:
        return "{{ lookup('ansible.builtin.template', '" + str(ROLE / "templates" / name) + "') }}"

    render = [
        {
            "name": "Render one",
            "vars": {
                **role_vars(),
                "office_plan": "{{ item.value.plan }}",
                "office_secrets": "{{ item.value.secrets }}",
                "relay_program_path": str(program),
            },
            "block": [
                {
                    "name": "What the role decides",
                    "ansible.builtin.copy": {
                        "dest": f"{out}.vars.json",
                        "mode": "0600",
                        "content": "{{ {'active': __relay_active, 'keyed': __relay_keyed, "
                        "'keys_path': relay_keys_path} "
                        "| to_json }}",
                    },
                },
                {
                    "name": "The unit",
                    "ansible.builtin.copy": {
                        "dest": f"{out}.service",
                        "mode": "0600",
                        "content": template("sitelink-relay.service.j2"),
                    },
                },
                # In the role's order: the configuration (with its check) first.
                {
                    "name": "The configuration",
                    "ansible.builtin.copy": {
                        "dest": f"{out}.relay.json",
                        "mode": "0600",
                        "content": template("relay.json.j2"),
                    },
                },
                {
                    "name": "The keys",
                    "ansible.builtin.copy": {
                        "dest": f"{out}.keys.json",
                        "mode": "0600",
                        "content": template("relay-keys.json.j2"),
                    },
                    "when": "__relay_keyed",
                    # As the role's task: its keys argument is no_log (the module's
                    # spec), the task is not, so that a missing key is named.
                    "diff": False,
                },
            ],
            "rescue": [
                {
                    "name": "Why it could not be rendered",
                    "ansible.builtin.copy": {
                        "dest": f"{out}.error.txt",
                        "mode": "0600",
                        "content": "{{ ansible_failed_result.msg }}",
                    },
                }
            ],
        }
    ]
    (work / "site.yml").write_text(yaml.safe_dump(play))
    (work / "render.yml").write_text(yaml.safe_dump(render))
    done = run_ansible(work, "site.yml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = {}
    for name, case in cases.items():
        files = {
            kind: (work / f"{name}.{kind}")
            for kind in ("vars.json", "service", "keys.json", "relay.json", "error.txt")
        }
        result[name] = {
            "case": case,
            "dir": work,
            **{kind: path.read_text() for kind, path in files.items() if path.exists()},
        }
    return result


def keys_of(files: dict) -> dict:
    return json.loads(files["keys.json"])


# ----------------------------------------------------------------------------- the files


def test_case_study_keys_file_holds_the_link_key_only(rendered):
    for name, peer in (("case-study-hub", "192.168.2.126"), ("case-study-branch", "192.168.1.126")):
        keys = keys_of(rendered[name])
        assert keys.pop("_comment")  # ansible_managed; the relay ignores it
        assert keys == {"version": 1, "peers": {peer: {"send": RELAY_KEY, "accept": [RELAY_KEY]}}}
        # Not the link's IPsec key, which the same secrets entry holds.
        tunnel_key = rendered[name]["case"]["secrets"]["links"]["brooklyn+manhattan"]["tunnel"]
        assert tunnel_key not in rendered[name]["keys.json"]


def test_rotation_sends_with_the_new_key_and_accepts_the_previous_one_too(rendered):
    keys = keys_of(rendered["rotation"])
    assert keys["peers"] == {
        "192.168.2.126": {"send": RELAY_KEY, "accept": [RELAY_KEY, OLD_RELAY_KEY]}
    }


def test_the_configuration_is_the_plans_section(rendered):
    for name in ("case-study-hub", "raw", "raw-external-peer"):
        config = json.loads(rendered[name]["relay.json"])
        assert config.pop("_comment")
        assert config == rendered[name]["case"]["plan"]["relay"]
        assert config["version"] == 2


def test_keys_only_where_a_peer_is_authenticated(rendered):
    decided = {name: json.loads(files["vars.json"]) for name, files in rendered.items()}
    assert decided["case-study-hub"] == {
        "active": True,
        "keyed": True,
        "keys_path": "/etc/sitelink/relay-keys.json",
    }
    assert sorted(keys_of(rendered["case-study-hub"])["peers"]) == ["192.168.2.126"]
    assert decided["raw"]["keyed"] is False
    assert "keys.json" not in rendered["raw"]
    assert (decided["no-rules"]["active"], decided["no-rules"]["keyed"]) == (False, False)
    # The hub's raw external peer (it runs the article's udp-proxy) gets no key.
    hub = rendered["raw-external-peer"]
    assert sorted(keys_of(hub)["peers"]) == ["10.0.1.1", "10.0.2.1"]
    relay = json.loads(hub["relay.json"])
    assert relay["peers"]["10.200.0.1"]["wire"] == "raw"


def test_a_peer_without_a_key_stops_the_role_naming_the_peer(rendered):
    error = rendered["keyless"]["error.txt"]
    assert "relay_keys: no key for the peer relay(s) 192.168.2.126" in error
    assert "office_tunnel_secret" in error


def test_the_unit_takes_the_keys_as_a_credential_only_where_needed(rendered):
    unit = rendered["case-study-hub"]["service"]
    assert "LoadCredential=relay-keys:/etc/sitelink/relay-keys.json\n" in unit
    assert " --keys %d/relay-keys\n" in unit  # %d: the unit's credentials directory
    assert "StateDirectory=sitelink-relay\n" in unit and "DynamicUser=yes\n" in unit
    for name in ("raw", "no-rules"):
        unit = rendered[name]["service"]
        assert "LoadCredential" not in unit and "--keys" not in unit
        assert "StateDirectory=sitelink-relay\n" in unit
    # Hardening kept: no capability for ports above 1023, a read-only system.
    unit = rendered["raw-external-peer"]["service"]
    assert "CapabilityBoundingSet=\n" in unit and "ProtectSystem=strict\n" in unit


@pytest.mark.parametrize("name", ["case-study-hub", "case-study-branch", "raw", "no-rules"])
def test_systemd_accepts_the_unit(rendered, name, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "sitelink-relay.service"
    unit.write_text(rendered[name]["service"])
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Only what concerns this unit: verify also loads (and may grumble about) the host's.
    mine = [line for line in done.stderr.splitlines() if "sitelink-relay" in line]
    assert done.returncode == 0 and not mine, f"{name}:\n{done.stderr}\n{unit.read_text()}"


def test_systemd_verify_can_fail(tmp_path):
    """The check above can fail: a unit systemd does not understand is refused."""
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "sitelink-relay.service"
    unit.write_text("[Service]\nType=notify\nExecStart=relative/path --x\n")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 or "sitelink-relay" in done.stderr


# ----------------------------------------------------------------- the relay's own checks


def relay_program(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROGRAM), *args], capture_output=True, text=True, check=False
    )


@pytest.mark.parametrize(
    "name", ["case-study-hub", "case-study-branch", "raw", "raw-external-peer"]
)
def test_the_relay_accepts_the_configuration(rendered, name, tmp_path):
    """As the relay_service module checks it: with the keys it will run with."""
    path = tmp_path / "relay.json"
    path.write_text(rendered[name]["relay.json"])
    keys = []
    if rendered[name].get("keys.json"):
        keys_path = tmp_path / "relay-keys.json"
        keys_path.write_text(rendered[name]["keys.json"])
        keys = ["--keys", str(keys_path)]
    done = relay_program("--check-config", str(path), *keys)
    if done.returncode != 0 and "version: 2 is not supported" in done.stderr:
        pytest.skip("the shipped relay does not read version 2 configurations yet")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["case-study-hub", "rotation", "raw-external-peer"])
def test_the_relay_accepts_the_keys(rendered, name, tmp_path):
    if "--check-keys" not in relay_program("--help").stdout:
        pytest.skip("the shipped relay has no --check-keys yet (the role's validate needs it)")
    path = tmp_path / "relay-keys.json"
    path.write_text(rendered[name]["keys.json"])
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    done = relay_program("--check-keys", str(path))
    assert done.returncode == 0, done.stderr
    assert RELAY_KEY not in done.stdout + done.stderr


# ----------------------------------------------------------------------------- the role, for real

FAKE_SYSTEMCTL = """#!/bin/sh
# Stand-in for systemctl: the relay's unit exists, stopped and disabled.
case "$1" in
  show) printf 'Id=%s\\nLoadState=loaded\\nActiveState=inactive\\nSubState=dead\\n' "$2"
        printf 'UnitFileState=disabled\\n' ;;
  is-enabled) echo disabled; exit 1 ;;
  is-active) echo inactive; exit 3 ;;
esac
exit 0
"""


def test_the_role_in_check_mode_never_shows_a_key(tmp_path):
    """site.yml's relay role, -vvv --diff, check mode: keys censored, never printed."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(FAKE_SYSTEMCTL)
    (fake / "systemctl").chmod(0o755)
    case = gateway(case_study(), "manhattan-gw", previous=OLD_SECRET)
    (tmp_path / "case.json").write_text(json.dumps(case))
    play = [
        {
            "name": "The relay role, in check mode",
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {
                "office_plan": "{{ (lookup('file', 'case.json') | from_json).plan }}",
                "relay_config_path": str(tmp_path / "etc/relay.json"),
                "relay_program_path": str(tmp_path / "sbin/sitelink-relay"),
            },
            "pre_tasks": [
                {
                    "name": "The keys, as the office role sets them",
                    "ansible.builtin.set_fact": {
                        "office_secrets": "{{ (lookup('file', 'case.json') | from_json).secrets }}"
                    },
                    "no_log": True,
                }
            ],
            "roles": [{"role": "sitelink.gateway.relay"}],
        }
    ]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    done = run_ansible(
        tmp_path,
        "play.yml",
        "--check",
        "--diff",
        "-vvv",
        env={"PATH": f"{fake}:{os.environ['PATH']}"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    head = "TASK [sitelink.gateway.relay : Install the relay, its configuration, keys and unit"
    assert head in output
    task = output.split(head, 1)[1].split("TASK [", 1)[0]
    # The keys file would be written: its diff is a fingerprint, its argument censored.
    assert "changed: [localhost]" in task, task[-3000:]
    assert "+<hidden> (sha256 " in task
    # ansible-core 2.19 and 2.20 show the module's arguments (`invocation`) at -vvv, the
    # keys censored; 2.21 shows none.
    assert "invocation" not in task or "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" in task
    assert "systemctl start sitelink-relay.service" in task
    assert f"install {tmp_path}/sbin/sitelink-relay" in task
    keys = [
        k
        for link in case["secrets"]["links"].values()
        for v in link.values()
        for k in ([v] if isinstance(v, str) else v)
    ]
    assert len(keys) == 4  # tunnel and relay, sent and accepted
    for value in [SECRET, OLD_SECRET, *keys]:
        assert value not in output, "a key appears in the -vvv --diff output"
    assert not (tmp_path / "etc").exists()  # check mode: nothing written
