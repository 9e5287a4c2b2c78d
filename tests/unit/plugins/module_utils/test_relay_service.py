"""relay_service: the relay's files checked before any is written, the service reloaded
or restarted as the change calls for, keys never shown."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import relay_service
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import (
    Exit,
    FakeModule,
    FakeSystemd,
)

SERVICE = relay_service.SERVICE
CONFIG = '{"version": 2, "rules": [{"port": 6799}]}\n'
KEYS = '{"version": 1, "peers": {"192.168.2.126": {"send": "' + "ab" * 32 + '"}}}\n'
UNIT = "[Service]\nExecStart=/usr/local/sbin/sitelink-relay\n"
# Stands in for the relay's --check-config/--check-keys: refuses a file saying "bad",
# naming the file it was given (the module must show the real path instead).
CHECKER = """#!/bin/sh
if grep -q bad "$2"; then echo "$2: rules[0].port: bad" >&2; exit 1; fi
echo "$1" >> "$(dirname "$0")/checked"
"""


class Module(FakeModule):
    def run_command(self, argv, check_rc=False):
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        return done.returncode, done.stdout, done.stderr


@pytest.fixture
def host(tmp_path):
    program = tmp_path / "sbin/sitelink-relay"
    program.parent.mkdir()
    program.write_text(CHECKER)
    program.chmod(0o755)
    return tmp_path


def params(root, **kw):
    base = {
        "config": CONFIG,
        "keys": KEYS,
        "unit": UNIT,
        "program_src": None,
        "program": None,
        "program_sha256": None,
        "program_path": str(root / "sbin/sitelink-relay"),
        "config_path": str(root / "etc/sitelink/relay.json"),
        "keys_path": str(root / "etc/sitelink/relay-keys.json"),
        "unit_path": str(root / "etc/systemd/system/sitelink-relay.service"),
        "forget_senders": [],
        "state_dir": str(root / "var/lib/sitelink-relay"),
    }
    base.update(kw)
    return base


def run(root, systemd, check_mode=False, diff=False, **kw):
    module = Module(params(root, **kw), check_mode=check_mode, diff=diff)
    with pytest.raises(Exit) as exc:
        relay_service.run_module(module, systemd=systemd)
    return exc.value


def checked(root):
    path = root / "sbin/checked"
    return path.read_text().split() if path.exists() else []


def test_first_run_checks_writes_enables_and_starts(host):
    systemd = FakeSystemd()
    done = run(host, systemd)
    assert not done.failed and done.result["changed"] and done.result["active"]
    assert checked(host) == ["--check-config", "--check-keys"]
    assert (host / "etc/sitelink/relay.json").read_text() == CONFIG
    keys = host / "etc/sitelink/relay-keys.json"
    assert keys.read_text() == KEYS and keys.stat().st_mode & 0o777 == 0o600
    assert (host / "etc/sitelink/relay.json").stat().st_mode & 0o777 == 0o644
    assert systemd.verbs() == [("daemon-reload",), ("enable", SERVICE), ("start", SERVICE)]


def test_the_config_is_checked_with_the_keys_it_will_run_with(host):
    """On a first run the keys file is not there yet: the check gets the new keys."""
    program = host / "sbin/sitelink-relay"
    program.write_text(
        '#!/bin/sh\nif [ "$1" = --check-config ]; then\n'
        '  [ "$3" = --keys ] && cp "$4" "$(dirname "$0")/keys-seen" || exit 1\nfi\n'
    )
    done = run(host, FakeSystemd())
    assert not done.failed, done.result
    assert (host / "sbin/keys-seen").read_text() == KEYS


def test_second_run_changes_nothing(host):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    done = run(host, systemd)
    assert not done.result["changed"] and done.result["steps"] == []
    assert systemd.verbs() == []


def test_new_config_reloads_new_keys_or_program_restart(host):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    run(host, systemd, config=CONFIG.replace("6799", "6800"))
    assert systemd.verbs() == [("reload", SERVICE)]
    systemd.calls.clear()
    run(host, systemd, config=CONFIG, keys=KEYS.replace("ab", "cd"))
    # The relay never ran here (no state directory): the credential is copied at start.
    assert systemd.verbs() == [("restart", SERVICE)]
    systemd.calls.clear()
    run(host, systemd, config=CONFIG, keys=KEYS.replace("ab", "cd"), unit=UNIT + "# new\n")
    assert systemd.verbs() == [("daemon-reload",), ("restart", SERVICE)]


def test_a_refused_file_changes_nothing(host):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    # The keys are fine, the config is not: neither is written, nothing restarts.
    done = run(host, systemd, config='{"bad": 1}\n', keys=KEYS.replace("ab", "cd"))
    assert done.failed
    path = str(host / "etc/sitelink/relay.json")
    assert done.result["msg"] == (
        f"{path} refused by {host}/sbin/sitelink-relay --check-config: {path}: rules[0].port: bad"
    )
    assert (host / "etc/sitelink/relay.json").read_text() == CONFIG
    assert (host / "etc/sitelink/relay-keys.json").read_text() == KEYS
    assert systemd.verbs() == []


def test_no_rules_stops_disables_and_removes_config_and_keys(host):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    done = run(host, systemd, config=None, keys=None)
    assert done.result["changed"] and not done.result["active"]
    assert not (host / "etc/sitelink/relay.json").exists()
    assert not (host / "etc/sitelink/relay-keys.json").exists()
    assert (host / "etc/systemd/system/sitelink-relay.service").read_text() == UNIT
    assert systemd.verbs() == [("disable", SERVICE), ("stop", SERVICE)]
    again = run(host, systemd, config=None, keys=None)
    assert not again.result["changed"]


def test_keys_without_a_config_are_refused(host):
    done = run(host, FakeSystemd(), config=None)
    assert done.failed and "keys without a config" in done.result["msg"]
    assert not (host / "etc/sitelink").exists()


def test_check_mode_checks_but_writes_and_runs_nothing(host):
    systemd = FakeSystemd()
    done = run(host, systemd, check_mode=True)
    assert done.result["changed"]
    assert done.result["steps"] == [
        f"write {host}/etc/sitelink/relay.json",
        f"write {host}/etc/sitelink/relay-keys.json",
        f"write {host}/etc/systemd/system/sitelink-relay.service",
        f"systemctl enable {SERVICE}",
        f"systemctl start {SERVICE}",
    ]
    assert checked(host) == ["--check-config", "--check-keys"]
    assert not (host / "etc").exists() and systemd.verbs() == []
    # Before the first run the program is not there to check with: predicted anyway.
    (host / "sbin/sitelink-relay").unlink()
    assert run(host, systemd, check_mode=True).result["changed"]


def test_diff_shows_config_and_unit_and_only_a_fingerprint_of_the_keys(host):
    done = run(host, FakeSystemd(), diff=True)
    diffs = {d["after_header"].rsplit("/", 1)[1]: d for d in done.result["diff"]}
    assert diffs["relay.json"]["after"] == CONFIG
    assert diffs["sitelink-relay.service"]["after"] == UNIT
    keys = diffs["relay-keys.json"]
    assert keys["before"] == "" and keys["after"].startswith("<hidden> (sha256 ")
    assert "ab" * 32 not in repr(done.result)
    rotated = run(host, FakeSystemd(), diff=True, keys=KEYS.replace("ab", "cd"))
    (only,) = rotated.result["diff"]
    assert only["before"] != only["after"] and "cd" * 32 not in repr(rotated.result)


def b64(text):
    return base64.b64encode(text.encode()).decode()


def test_a_new_program_is_installed_and_checks_the_files_then_restarts(host):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    program = host / "sbin/sitelink-relay"
    # The new program checks what comes with it (this one accepts anything, and says so).
    new = CHECKER.replace('echo "$1" >>', 'echo "new$1" >>')
    done = run(host, systemd, config=CONFIG.replace("6799", "6800"), program=b64(new))
    assert done.result["steps"] == [
        f"install {program}",
        f"write {host}/etc/sitelink/relay.json",
        f"systemctl restart {SERVICE}",
    ]
    assert program.read_text() == new and program.stat().st_mode & 0o777 == 0o755
    assert checked(host)[-1] == "new--check-config"
    assert systemd.verbs() == [("restart", SERVICE)]
    assert sorted(p.name for p in (host / "sbin").iterdir()) == ["checked", "sitelink-relay"]
    again = run(host, systemd, config=CONFIG.replace("6799", "6800"), program=b64(new))
    assert not again.result["changed"]


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def test_checksum_first_the_same_program_needs_no_bytes(host):
    """A run whose program is the gateway's sends only its checksum, and does its work."""
    systemd = FakeSystemd()
    done = run(host, systemd, program_sha256=sha256(CHECKER))
    assert "program_needed" not in done.result
    assert done.result["steps"][0] == f"write {host}/etc/sitelink/relay.json"
    assert (host / "sbin/sitelink-relay").read_text() == CHECKER


def test_checksum_first_a_different_program_is_asked_for_and_nothing_is_done(host):
    systemd = FakeSystemd()
    new = CHECKER.replace('echo "$1" >>', 'echo "new$1" >>')
    asked = run(host, systemd, program_sha256=sha256(new))
    assert asked.result == {"changed": False, "program_needed": True}
    assert not (host / "etc").exists() and systemd.calls == []  # not half done
    (host / "sbin/sitelink-relay").unlink()  # a first run: no program there at all
    assert run(host, systemd, program_sha256=sha256(new)).result["program_needed"] is True
    done = run(host, systemd, program=b64(new), program_sha256=sha256(new))
    assert done.result["steps"][0] == f"install {host}/sbin/sitelink-relay"
    assert (host / "sbin/sitelink-relay").read_text() == new


def test_a_program_that_is_not_what_its_checksum_says_is_refused(host):
    new = CHECKER.replace('echo "$1" >>', 'echo "new$1" >>')
    done = run(host, FakeSystemd(), program=b64(new), program_sha256=sha256(CHECKER))
    assert done.failed and "SHA-256" in done.result["msg"]
    assert (host / "sbin/sitelink-relay").read_text() == CHECKER


def test_a_new_program_that_refuses_the_config_is_not_installed(host):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    program = host / "sbin/sitelink-relay"
    strict = '#!/bin/sh\necho "$2: unknown field" >&2\nexit 1\n'
    done = run(host, systemd, config=CONFIG.replace("6799", "6800"), program=b64(strict))
    assert done.failed and done.result["msg"] == (
        f"{host}/etc/sitelink/relay.json refused by {program} --check-config: "
        f"{host}/etc/sitelink/relay.json: unknown field"
    )
    assert program.read_text() == CHECKER
    assert sorted(p.name for p in (host / "sbin").iterdir()) == ["checked", "sitelink-relay"]
    assert (host / "etc/sitelink/relay.json").read_text() == CONFIG and systemd.verbs() == []


def test_the_program_shows_in_the_diff_as_its_digest(host):
    done = run(host, FakeSystemd(), diff=True, program=b64("#!/bin/sh\nexit 0\n"))
    program = next(d for d in done.result["diff"] if d["after_header"].endswith("sitelink-relay"))
    assert program["before"].startswith("sha256 ") and program["after"].startswith("sha256 ")
    assert program["before"] != program["after"]


def test_a_program_that_is_not_base64_is_refused(host):
    done = run(host, FakeSystemd(), program="not base64!")
    assert done.failed and done.result["msg"] == "program: not base64"


# --------------------------------------------------------------------------
# forget_senders: the request file the relay reads at start and on SIGHUP


@pytest.fixture
def state(host):
    """The relay's state directory as systemd makes it with DynamicUser: the real one in
    var/lib/private, and var/lib/sitelink-relay a symlink to it."""
    private = host / "var/lib/private/sitelink-relay"
    private.mkdir(parents=True)
    (host / "var/lib/sitelink-relay").symlink_to("private/sitelink-relay")
    return private


def request(directory):
    return json.loads((directory / "forget").read_text())


def test_forget_writes_the_request_and_reloads_the_running_relay(host, state):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    done = run(host, systemd, forget_senders=["192.168.3.126", "192.168.1.126", "192.168.1.126"])
    assert not done.failed and done.result["changed"]
    assert request(state) == {"senders": ["192.168.1.126", "192.168.3.126"]}
    assert (state / "forget").stat().st_mode & 0o777 == 0o644  # the relay's user reads it
    assert done.result["steps"] == [
        f"write {host}/var/lib/sitelink-relay/forget",
        f"systemctl reload {SERVICE}",
    ]
    assert systemd.verbs() == [("reload", SERVICE)]
    # An explicit request: asked again, done again.
    assert run(host, systemd, forget_senders=["192.168.1.126"]).result["changed"]


def test_forget_all_and_one_reload_with_a_new_config(host, state):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    run(host, systemd, config=CONFIG.replace("6799", "6800"), forget_senders=["all"])
    assert request(state) == {"senders": "all"}
    assert systemd.verbs() == [("reload", SERVICE)]


def test_forget_with_a_restart_due_needs_no_reload(host, state):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    run(host, systemd, unit=UNIT + "# new\n", forget_senders=["192.168.1.126"])
    # It reads the request as it starts.
    assert systemd.verbs() == [("daemon-reload",), ("restart", SERVICE)]


def test_new_keys_reach_a_running_relay_by_a_reload_not_a_restart(host, state):
    """A restart loses the broadcasts of its seconds: a rotation's keys go to the live
    copy in the state directory (the relay's, 0600), which it takes on SIGHUP."""
    systemd = FakeSystemd()
    run(host, systemd)
    live = state / "keys.json"
    # Not made while the credential has the keys: a second run changes nothing.
    assert not live.exists() and not run(host, systemd).result["changed"]
    systemd.calls.clear()
    rotated = KEYS.replace("ab", "cd")
    done = run(host, systemd, keys=rotated, diff=True)
    assert systemd.verbs() == [("reload", SERVICE)]
    assert oct(live.stat().st_mode & 0o777) == "0o600"
    assert live.stat().st_uid == state.stat().st_uid
    assert live.read_text() == rotated == (host / "etc/sitelink/relay-keys.json").read_text()
    assert f"write {host}/var/lib/sitelink-relay/keys.json" in done.result["steps"]
    assert "cd" * 32 not in repr(done.result) and "ab" * 32 not in repr(done.result)
    # Nothing more to do; a copy changed by hand is put back.
    systemd.calls.clear()
    assert not run(host, systemd, keys=rotated).result["changed"]
    live.write_text(KEYS)
    run(host, systemd, keys=rotated)
    assert live.read_text() == rotated and systemd.verbs() == [("reload", SERVICE)]
    # No rules: the relay stops, and the copy goes with the keys file.
    run(host, systemd, config=None, keys=None)
    assert not live.exists()


def test_forget_where_the_relay_does_not_run_leaves_it_for_its_next_start(host, state):
    systemd = FakeSystemd()
    run(host, systemd, config=None, keys=None)
    systemd.calls.clear()
    done = run(host, systemd, config=None, keys=None, forget_senders=["192.168.1.126"])
    assert done.result["steps"] == [f"write {host}/var/lib/sitelink-relay/forget"]
    assert request(state) == {"senders": ["192.168.1.126"]}
    assert systemd.verbs() == []


def test_a_request_not_yet_read_is_merged_not_lost(host, state):
    systemd = FakeSystemd()
    run(host, systemd, config=None, keys=None, forget_senders=["192.168.3.126"])
    run(host, systemd, config=None, keys=None, forget_senders=["192.168.1.126"])
    assert request(state) == {"senders": ["192.168.1.126", "192.168.3.126"]}
    run(host, systemd, config=None, keys=None, forget_senders=["all"])
    run(host, systemd, config=None, keys=None, forget_senders=["192.168.1.126"])
    assert request(state) == {"senders": "all"}
    (state / "forget").write_text("garbage")
    run(host, systemd, config=None, keys=None, forget_senders=["192.168.1.126"])
    assert request(state) == {"senders": ["192.168.1.126"]}


@pytest.mark.parametrize("layout", ["symlink", "private only", "plain directory"])
def test_forget_writes_into_whichever_state_directory_exists(host, layout):
    real = host / (
        "var/lib/sitelink-relay"
        if layout == "plain directory"
        else "var/lib/private/sitelink-relay"
    )
    real.mkdir(parents=True)
    if layout == "symlink":
        (host / "var/lib/sitelink-relay").symlink_to("private/sitelink-relay")
    done = run(host, FakeSystemd(), forget_senders=["192.168.1.126"])
    assert request(real) == {"senders": ["192.168.1.126"]}
    wrote = [s for s in done.result["steps"] if s.endswith("/forget")]
    assert [os.path.realpath(s.split(" ", 1)[1]) for s in wrote] == [str(real / "forget")]
    assert sorted(p.name for p in real.iterdir()) == ["forget"]  # no temp file left
    # (nor the keys' live copy: the relay's credential holds its first keys)


def test_forget_without_a_state_directory_warns_and_writes_nothing(host):
    systemd = FakeSystemd()
    run(host, systemd, config=None, keys=None)
    module = Module(params(host, config=None, keys=None, forget_senders=["all"]))
    with pytest.raises(Exit) as exc:
        relay_service.run_module(module, systemd=systemd)
    assert not exc.value.failed and not exc.value.result["changed"]
    assert not (host / "var").exists()
    (warning,) = module.warnings
    assert warning.startswith(f"forget_senders: no state directory {host}/var/lib/sitelink-relay:")


def test_forget_in_check_mode_writes_nothing_and_predicts_the_change(host, state):
    systemd = FakeSystemd()
    run(host, systemd)
    systemd.calls.clear()
    done = run(host, systemd, check_mode=True, diff=True, forget_senders=["192.168.1.126"])
    assert done.result["changed"]
    assert done.result["steps"] == [
        f"write {host}/var/lib/sitelink-relay/forget",
        f"systemctl reload {SERVICE}",
    ]
    assert not (state / "forget").exists() and systemd.verbs() == []
    (diff,) = done.result["diff"]
    assert diff["after_header"] == f"{host}/var/lib/sitelink-relay/forget"
    assert (diff["before"], diff["after"]) == ("", '{"senders": ["192.168.1.126"]}\n')


@pytest.mark.parametrize(
    ("senders", "message"),
    [
        (
            ["192.168.1.126", "brooklyn"],
            "forget_senders: 'brooklyn' is not an IPv4 address (give the peer relays' "
            "addresses, as verify.yml names them, or the single word all)",
        ),
        (["192.168.1.300"], "forget_senders: '192.168.1.300' is not an IPv4 address"),
        (["192.168.1.0/24"], "forget_senders: '192.168.1.0/24' is not an IPv4 address"),
        (
            ["all", "192.168.1.126"],
            "forget_senders: all stands alone (every sender is forgotten), got all, 192.168.1.126",
        ),
    ],
)
def test_forget_refuses_what_is_not_an_address_before_anything_is_done(
    host, state, senders, message
):
    systemd = FakeSystemd()
    done = run(host, systemd, forget_senders=senders)
    assert done.failed and done.result["msg"].startswith(message)
    assert not (host / "etc").exists() and not (state / "forget").exists()
    assert systemd.verbs() == []
