"""ipsec_links: the swanctl file, loading it, closing what left it, keys never shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import failover, ipsec
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import (
    CheckpointHost,
    Exit,
    FakeModule,
    FakeSystemd,
)

KEY = "ab" * 32
OTHER_KEY = "cd" * 32
BROOKLYN = {
    "name": "sl-brooklyn",
    "link": "brooklyn+manhattan",
    "local": "172.16.1.12",
    "remote": "172.17.2.10",
    "peer": "brooklyn",
}
QUEENS = {
    "name": "sl-queens",
    "link": "manhattan+queens",
    "local": "172.16.1.12",
    "remote": "172.18.3.10",
    "peer": "queens",
}


class FakeSwanctl:
    """charon as swanctl sees it: the loaded connection names, and an SA up for each
    (its peer answers at once; test_ipsec_links_up.py has peers that take their time,
    refuse or stay silent). With ``systemd``, starting strongswan.service loads the file."""

    swanctl = "/usr/sbin/swanctl"

    def __init__(self, path, loaded=(), systemd=None, strongswan=(5, 9, 8)):
        self.path = path
        self.loaded_names = set(loaded)
        self.systemd = systemd
        self.strongswan = strongswan  # Debian 12's; Debian 11 has 5.9.1
        self.versions = 0
        self.calls = []

    def version(self):
        self.versions += 1
        return self.strongswan

    def loaded(self):
        return set(self.loaded_names)

    def load_all(self):
        self.calls.append("load-all")
        self._load()

    def reload_settings(self):
        self.calls.append("reload-settings")

    def _load(self):
        text = Path(self.path).read_text() if os.path.exists(self.path) else ""
        self.loaded_names = set(ipsec.connection_names(text))

    def terminate(self, name):
        self.calls.append("terminate " + name)

    def sas(self):
        if self.systemd is not None and ipsec.SERVICE in self.systemd.active:
            self._load()  # strongswan.service's ExecStartPost did
        return [
            {
                "name": name,
                "uniqueid": str(number),
                "state": "ESTABLISHED",
                "initiator": "yes",
                "initiator-spi": f"{number:016x}",
                "responder-spi": f"{number + 100:016x}",
                "children": [{"name": name, "uniqueid": str(number), "state": "INSTALLED"}],
            }
            for number, name in enumerate(sorted(self.loaded_names), start=1)
        ]

    def initiate(self, name):
        self.calls.append("initiate " + name)

    def terminate_ike_id(self, uniqueid):
        self.calls.append(f"terminate #{uniqueid}")


def params(tmp_path, connections=(BROOKLYN,), keys=None, **extra):
    base = {
        "connections": [dict(c) for c in connections],
        "keys": keys if keys is not None else {c["link"]: KEY for c in connections},
        "path": str(tmp_path / "sitelink-gateway.conf"),
        "ike_proposals": "aes256gcm16-prfsha256-x25519",
        "esp_proposals": "aes256gcm16",
        "dpd_delay": 30,
        "rollback_timeout": 0,
        "state": "present",
        "up_timeout": 15,
        "answer_timeout": 5,
    }
    base.update(extra)
    return base


def run(p, check=False, diff=False, swanctl=None, systemd=None, checkpoint=None):
    module = FakeModule(p, check_mode=check, diff=diff)
    swanctl = swanctl or FakeSwanctl(p["path"])
    systemd = systemd or FakeSystemd(enabled={ipsec.SERVICE}, active={ipsec.SERVICE})
    with pytest.raises(Exit) as info:
        ipsec.run_module(module, swanctl=swanctl, systemd=systemd, checkpoint=checkpoint)
    return info.value, swanctl, systemd


def test_first_run_writes_a_private_file_and_loads_it(tmp_path):
    done, swanctl, _unused = run(params(tmp_path))
    assert not done.failed and done.result["changed"]
    path = tmp_path / "sitelink-gateway.conf"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_text()
    assert "local_ts = dynamic[4]" in text and "mode = transport" in text
    assert "start_action = trap" in text and f"secret = 0x{KEY}" in text
    assert swanctl.calls == ["load-all"]


def test_second_run_changes_nothing(tmp_path):
    run(params(tmp_path))
    path = str(tmp_path / "sitelink-gateway.conf")
    done, swanctl, _unused = run(
        params(tmp_path), swanctl=FakeSwanctl(path, loaded={"sl-brooklyn"})
    )
    assert not done.result["changed"] and done.result["steps"] == []
    assert swanctl.calls == []


def test_a_connection_charon_lost_is_loaded_again(tmp_path):
    run(params(tmp_path))
    path = str(tmp_path / "sitelink-gateway.conf")
    done, swanctl, _unused = run(params(tmp_path), swanctl=FakeSwanctl(path, loaded=set()))
    assert done.result["changed"] and swanctl.calls == ["load-all"]


def test_the_diff_never_shows_a_key_even_in_a_rotation(tmp_path):
    run(params(tmp_path))
    path = str(tmp_path / "sitelink-gateway.conf")
    rotated = params(tmp_path, keys={BROOKLYN["link"]: OTHER_KEY})
    done, swanctl, _unused = run(
        rotated, diff=True, swanctl=FakeSwanctl(path, loaded={"sl-brooklyn"})
    )
    assert done.result["changed"] and swanctl.calls == ["load-all"]
    shown = repr(done.result)
    assert KEY not in shown and OTHER_KEY not in shown
    diff = done.result["diff"][0]
    assert "secret = <hidden> (sha256 " in diff["after"]
    # The rotation shows (as a new fingerprint), the keys do not.
    assert diff["before"] != diff["after"]
    assert Path(path).read_text().count(OTHER_KEY) == 1


def secret_sections(text):
    """Each secrets section of the file: (name, [its lines]), in file order."""
    body = text.split("\nsecrets {\n", 1)[1]
    sections, name = [], None
    for line in body.splitlines():
        if line.endswith("{"):
            name, lines = line.strip()[:-2], []
        elif line.strip() == "}" and name:
            sections.append((name, lines))
            name = None
        elif name:
            lines.append(line.strip())
    return sections


def test_each_key_is_owned_by_the_peer_alone():
    """charon checks a peer's AUTH against every key one of whose owners matches either
    end: owned by the hub too, one branch's key would pass for any other branch."""
    text = ipsec.render(
        [BROOKLYN, QUEENS], {BROOKLYN["link"]: KEY, QUEENS["link"]: OTHER_KEY}, "a", "e", 30
    )
    assert secret_sections(text) == [
        ("ike-sl-brooklyn", ["id = 172.17.2.10", f"secret = 0x{KEY}"]),
        ("ike-sl-queens", ["id = 172.18.3.10", f"secret = 0x{OTHER_KEY}"]),
    ]


def test_during_a_rotation_the_key_sent_is_loaded_after_the_ones_accepted():
    """charon keeps keys newest first and authenticates with the first of equal
    matches: the key a link sends is the one loaded last."""
    third = "ef" * 32
    text = ipsec.render([BROOKLYN], {BROOKLYN["link"]: [OTHER_KEY, KEY, third]}, "a", "e", 30)
    assert secret_sections(text) == [
        ("ike1-sl-brooklyn", ["id = 172.17.2.10", f"secret = 0x{KEY}"]),
        ("ike2-sl-brooklyn", ["id = 172.17.2.10", f"secret = 0x{third}"]),
        ("ike-sl-brooklyn", ["id = 172.17.2.10", f"secret = 0x{OTHER_KEY}"]),
    ]
    # A key list the module refuses, naming the link and never a key.
    bad = ipsec.validate(
        {"path": "/x", "connections": [BROOKLYN], "keys": {BROOKLYN["link"]: [KEY, "zz"]}}
    )
    assert bad == [
        f"keys['{BROOKLYN['link']}']: must be a hex string of 32+ digits, or a list of them"
    ]
    assert ipsec.validate({"path": "/x", "connections": [BROOKLYN], "keys": {BROOKLYN["link"]: []}})


def test_check_mode_reports_and_changes_nothing(tmp_path):
    done, swanctl, systemd = run(params(tmp_path), check=True)
    assert done.result["changed"] and not os.path.exists(tmp_path / "sitelink-gateway.conf")
    assert swanctl.calls == [] and systemd.verbs() == []


def test_a_link_that_left_is_unloaded_and_its_sas_closed(tmp_path):
    run(params(tmp_path, connections=(BROOKLYN, QUEENS)))
    path = str(tmp_path / "sitelink-gateway.conf")
    loaded = FakeSwanctl(path, loaded={"sl-brooklyn", "sl-queens", "someone-elses"})
    done, swanctl, _unused = run(params(tmp_path), swanctl=loaded)
    assert swanctl.calls == ["load-all", "terminate sl-queens"]
    assert "sl-queens" not in Path(path).read_text()
    assert "swanctl --terminate --ike sl-queens" in done.result["steps"]


def test_absent_removes_the_file_and_closes_everything(tmp_path):
    run(params(tmp_path))
    path = str(tmp_path / "sitelink-gateway.conf")
    p = params(tmp_path, state="absent")
    done, swanctl, _unused = run(p, swanctl=FakeSwanctl(path, loaded={"sl-brooklyn"}))
    assert not os.path.exists(path)
    assert swanctl.calls == ["load-all", "terminate sl-brooklyn"]
    again, swanctl, _unused = run(p)
    assert not again.result["changed"] and swanctl.calls == []


def test_strongswan_before_5_9_6_gets_a_file_it_can_load(tmp_path):
    """``start_action = trap|start`` is 5.9.6's: 5.9.1 (Debian 11) refuses the file. The
    same file in check mode as in a real run, and a second run changes nothing."""
    path = str(tmp_path / "sitelink-gateway.conf")
    checked, swanctl, _unused = run(
        params(tmp_path), check=True, diff=True, swanctl=FakeSwanctl(path, strongswan=(5, 9, 1))
    )
    assert checked.result["changed"] and swanctl.versions == 1
    done, swanctl, _unused = run(
        params(tmp_path), diff=True, swanctl=FakeSwanctl(path, strongswan=(5, 9, 1))
    )
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    assert "start_action = trap" in lines and "start_action = trap|start" not in lines
    assert "dpd_action = trap" in lines and "close_action = trap" in lines
    assert "keyingtries = 0" in lines  # 5.9.1 has it too
    assert done.result["diff"][0]["after"] == checked.result["diff"][0]["after"]
    again, swanctl, _unused = run(
        params(tmp_path), swanctl=FakeSwanctl(path, {"sl-brooklyn"}, strongswan=(5, 9, 1))
    )
    assert not again.result["changed"] and swanctl.calls == [] and swanctl.versions == 1


def test_strongswan_5_9_6_and_later_or_unknown_initiate_at_load(tmp_path):
    path = tmp_path / "sitelink-gateway.conf"
    for version in ((5, 9, 6), (5, 9, 8), (6, 0, 0), None):
        run(params(tmp_path), swanctl=FakeSwanctl(str(path), strongswan=version))
        assert "        start_action = trap|start\n" in path.read_text(), version
    # Nothing to write, nothing asked.
    done, swanctl, _unused = run(params(tmp_path, state="absent"))
    assert done.result["changed"] and swanctl.versions == 0


def test_the_version_is_read_with_or_without_charon_running():
    assert ipsec.parse_version("strongSwan swanctl 5.9.8\n") == (5, 9, 8)
    # charon not running: swanctl fails to connect, and names its version in its usage.
    usage = (
        "Error: connecting to 'default' URI failed: No such file or directory\n"
        "strongSwan 5.9.1 swanctl\nusage:\n  swanctl --version [--raw|--pretty]\n"
    )
    assert ipsec.parse_version(usage) == (5, 9, 1)
    assert ipsec.parse_version("strongSwan swanctl 5.9.14dr2") == (5, 9, 14)
    assert ipsec.parse_version("") is None and ipsec.parse_version("swanctl: 5.9") is None

    class Module(FakeModule):
        def __init__(self, found, answer):
            super().__init__({})
            self.found, self.answer, self.argv = found, answer, []

        def get_bin_path(self, name):
            return "/usr/sbin/swanctl" if self.found else None

        def run_command(self, argv, check_rc=False):
            self.argv.append(argv)
            return self.answer

    module = Module(True, (2, "", usage))
    assert ipsec.Swanctl(module).version() == (5, 9, 1)
    assert module.argv == [["/usr/sbin/swanctl", "--version"]]
    assert ipsec.Swanctl(Module(True, (0, "garbled", ""))).version() is None
    # Not installed (check mode before the ipsec role's apt task ran): nothing run.
    module = Module(False, (0, "", ""))
    assert ipsec.Swanctl(module).version() is None and module.argv == []


def test_nothing_to_remove_where_strongswan_never_ran(tmp_path):
    systemd = FakeSystemd()
    done, swanctl, systemd = run(params(tmp_path, connections=()), systemd=systemd)
    assert not done.result["changed"] and systemd.verbs() == [] and swanctl.calls == []


def test_strongswan_is_enabled_and_started_when_stopped(tmp_path):
    systemd = FakeSystemd()
    swanctl = FakeSwanctl(str(tmp_path / "sitelink-gateway.conf"), systemd=systemd)
    done, swanctl, systemd = run(params(tmp_path), systemd=systemd, swanctl=swanctl)
    assert ("enable", ipsec.SERVICE) in systemd.verbs()
    assert ("start", ipsec.SERVICE) in systemd.verbs()
    assert swanctl.calls == []  # its ExecStartPost loads the file


def test_a_missing_key_or_bad_address_is_refused_before_anything(tmp_path):
    bad = dict(BROOKLYN, remote="172.17.2.300")
    done, swanctl, _unused = run(params(tmp_path, connections=(bad,), keys={}))
    assert done.failed
    assert "connections[0].remote" in done.result["msg"]
    assert "no key for link 'brooklyn+manhattan'" in done.result["msg"]
    assert not os.path.exists(tmp_path / "sitelink-gateway.conf") and swanctl.calls == []


def test_a_change_arms_the_rollback_first(tmp_path):
    host = CheckpointHost(tmp_path)
    checkpoint = host.checkpoint()
    done, _unused, _unused = run(params(tmp_path, rollback_timeout=120), checkpoint=checkpoint)
    assert done.result["rollback"]["resources"] == ["ipsec"]
    assert done.result["ansible_facts"]["sitelink_rollback"]["unit"] == "sitelink-rollback.timer"
    manifest = host.manifest()
    (resource,) = manifest["resources"]
    assert resource["key"] == "ipsec"
    # Nothing changed, nothing armed.
    path = str(tmp_path / "sitelink-gateway.conf")
    done, _unused, _unused = run(
        params(tmp_path, rollback_timeout=120),
        swanctl=FakeSwanctl(path, loaded={"sl-brooklyn"}),
        checkpoint=host.checkpoint(),
    )
    assert "rollback" not in done.result and "ansible_facts" not in done.result


def test_connection_names_reads_back_what_render_wrote():
    text = ipsec.render(
        [BROOKLYN, QUEENS],
        {BROOKLYN["link"]: KEY, QUEENS["link"]: KEY},
        "aes256gcm16-prfsha256-x25519",
        "aes256gcm16",
        30,
    )
    assert ipsec.connection_names(text) == ["sl-brooklyn", "sl-queens"]
    hidden = ipsec.hide_keys(text)
    assert hidden.count("<hidden>") == 2 and KEY not in hidden and KEY[:8] not in hidden


# --------------------------------------------------------------------------
# the far end of a link to an external peer


def test_the_far_end_gets_our_file_with_its_ends_swapped_and_no_key():
    ours = ipsec.render(
        [BROOKLYN, QUEENS],
        {BROOKLYN["link"]: KEY, QUEENS["link"]: OTHER_KEY},
        ipsec.IKE_PROPOSALS,
        ipsec.ESP_PROPOSALS,
        ipsec.DPD_DELAY,
    )
    theirs = ipsec.remote_end([BROOKLYN, QUEENS])
    assert KEY not in theirs and OTHER_KEY not in theirs
    assert theirs.count('secret = "<the key you were given>"') == 2
    assert ipsec.HEADER not in theirs and theirs.startswith(ipsec.REMOTE_HEADER + "\n")
    # Line by line, ours and theirs differ only where the two ends swap.
    pairs = list(zip(ours.splitlines()[1:], theirs.splitlines()[2:]))
    assert len(pairs) == len(ours.splitlines()) - 1 == len(theirs.splitlines()) - 2
    differ = [(a.strip(), b.strip()) for a, b in pairs if a != b]
    assert differ == [
        ("local_addrs = 172.16.1.12", "local_addrs = 172.17.2.10"),
        ("remote_addrs = 172.17.2.10", "remote_addrs = 172.16.1.12"),
        ("id = 172.16.1.12", "id = 172.17.2.10"),
        ("id = 172.17.2.10", "id = 172.16.1.12"),
        ("local_addrs = 172.16.1.12", "local_addrs = 172.18.3.10"),
        ("remote_addrs = 172.18.3.10", "remote_addrs = 172.16.1.12"),
        ("id = 172.16.1.12", "id = 172.18.3.10"),
        ("id = 172.18.3.10", "id = 172.16.1.12"),
        ("id = 172.17.2.10", "id = 172.16.1.12"),
        (f"secret = 0x{KEY}", 'secret = "<the key you were given>"'),
        ("id = 172.18.3.10", "id = 172.16.1.12"),
        (f"secret = 0x{OTHER_KEY}", 'secret = "<the key you were given>"'),
    ]


def test_the_module_documents_the_proposals_the_far_end_is_told():
    import yaml
    from ansible_collections.sitelink.gateway.plugins.modules import ipsec_links

    options = yaml.safe_load(ipsec_links.DOCUMENTATION)["options"]
    assert options["ike_proposals"]["default"] == ipsec.IKE_PROPOSALS
    assert options["esp_proposals"]["default"] == ipsec.ESP_PROPOSALS
    assert options["dpd_delay"]["default"] == ipsec.DPD_DELAY


def test_a_removed_link_is_closed_without_waiting_for_its_peer(tmp_path):
    # The firewall, reloaded before this role, already drops IKE from a removed
    # office: a terminate that waited for the peer's answer to its DELETE waited
    # out its timeout, link after link (5 s each, 135 s for 25 at the crowd lab).
    ran = []

    class Commands(FakeModule):
        def get_bin_path(self, name):
            return "/usr/sbin/" + name

        def run_command(self, argv, check_rc=False):
            ran.append(argv)
            return 0, "", ""

    ipsec.Swanctl(Commands({})).terminate("sl-queens")
    (argv,) = ran
    assert argv[:4] == ["/usr/sbin/swanctl", "--terminate", "--ike", "sl-queens"]
    assert "--force" in argv and "--timeout" not in argv


def test_rekey_times_show_only_when_set():
    """Unset, the file is as before (no connection changes, no SA closed on upgrade);
    set, e.g. short in a lab, each connection and its CHILD_SA name them."""
    plain = ipsec.render([BROOKLYN], {BROOKLYN["link"]: KEY}, "a", "e", 30)
    assert "rekey_time" not in plain
    short = ipsec.render(
        [BROOKLYN], {BROOKLYN["link"]: KEY}, "a", "e", 30, ike_rekey_time=90, child_rekey_time=40
    )
    block = ipsec.connection_blocks(short)["sl-brooklyn"].splitlines()
    assert (
        block.index("rekey_time = 90s")
        < block.index("children {")
        < block.index("rekey_time = 40s")
    )
    assert ipsec.validate({"path": "/x", "child_rekey_time": 0}) == [
        "child_rekey_time: 0 must be 1 or more seconds"
    ]


def test_every_link_keeps_trying_to_key_its_peer():
    """A peer gone a while (a reboot, a cut line) is keyed again soon after it is back:
    each connection tries again at once when a try gets no answer (keyingtries = 0), with
    or without the initiation at load. With strongSwan's one try, the trap's next acquire
    came a moment before the try gave up, was ignored, and the link sat untried 165 s."""
    for start in (True, False):
        text = ipsec.render(
            [BROOKLYN, QUEENS],
            {BROOKLYN["link"]: KEY, QUEENS["link"]: KEY},
            "a",
            "e",
            30,
            start=start,
        )
        for name, block in ipsec.connection_blocks(text).items():
            lines = block.splitlines()
            # The connection's own option (IKE_SA retries), not its CHILD_SA's.
            assert lines.index("keyingtries = 0") < lines.index("children {"), (start, name)


def test_a_failover_link_runs_the_hook_and_comes_back_by_itself(tmp_path, monkeypatch):
    """Two hubs: the link's state moves routes (the updown hook), a dead peer is noticed
    sooner (DPD at most 10 s, charon's retransmits shortened) and re-keyed until it
    answers; the other links are as they were, and without failover no settings file."""
    settings = tmp_path / "strongswan.d" / "sitelink-gateway.conf"
    monkeypatch.setattr(ipsec, "SETTINGS_PATH", str(settings))
    hook = tmp_path / "sitelink-failover"
    monkeypatch.setattr(failover, "HOOK_PATH", str(hook))
    path = str(tmp_path / "sitelink-gateway.conf")
    links = (BROOKLYN, {**QUEENS, "failover": True})
    swanctl = FakeSwanctl(path, loaded={"sl-brooklyn", "sl-queens"})
    done, swanctl, _unused = run(params(tmp_path, links), diff=True, swanctl=swanctl)
    blocks = ipsec.connection_blocks(Path(path).read_text())
    assert f"updown = {hook}" in blocks["sl-queens"]
    assert hook.read_text().startswith("#!/usr/bin/python3") and hook.stat().st_mode & 0o111
    assert "dpd_action = restart" in blocks["sl-queens"]
    assert "keyingtries = 0" in blocks["sl-queens"]
    assert "dpd_delay = 10s" in blocks["sl-queens"]
    assert "updown" not in blocks["sl-brooklyn"] and "dpd_delay = 30s" in blocks["sl-brooklyn"]
    assert "retransmit_tries = 3" in settings.read_text()
    # Settings before the load: the IKE_SAs it starts read them.
    assert swanctl.calls.index("reload-settings") < swanctl.calls.index("load-all")
    assert [d["before_header"] for d in done.result["diff"][1:]] == [str(hook), str(settings)]

    again, swanctl, _unused = run(params(tmp_path, links), swanctl=swanctl)
    assert not again.result["changed"]
    plain, swanctl, _unused = run(params(tmp_path, (BROOKLYN, QUEENS)), swanctl=swanctl)
    assert plain.result["changed"] and not settings.exists() and not hook.exists()
