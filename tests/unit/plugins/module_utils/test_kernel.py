"""kernel_settings: apply and persist, idempotence, check mode, diff, and retire.

The gateway is a temporary directory (the module's filesystem root): /proc/sys
is plain files there, /proc/modules and the links change only through the fake
modprobe and ip of FakeKernel, which records what ran.
"""

from __future__ import annotations

import json

import pytest
from ansible_collections.sitelink.gateway.plugins.module_utils import kernel
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils import fakes
from ansible_collections.sitelink.gateway.tests.unit.plugins.module_utils.fakes import Exit

SYSCTL_FILE = "/etc/sysctl.d/90-sitelink-gateway.conf"
MODULES_FILE = "/etc/modules-load.d/sitelink-gateway.conf"
SYSCTLS = {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 2}
RELEASE = "6.1.0-28-amd64"
# systemd's upstream /usr/lib/sysctl.d/50-default.conf (Fedora, Arch...; Debian 12 leaves
# it out), the lines that matter here: loose on every interface, but "all" kept off the glob.
SYSTEMD_DEFAULTS = """\
# Source route verification
net.ipv4.conf.default.rp_filter = 2
net.ipv4.conf.*.rp_filter = 2
-net.ipv4.conf.all.rp_filter
"""


class FakeModule(fakes.FakeModule):
    def __init__(self, check_mode=False, diff=False, **params):
        defaults = {
            "state": "present",
            "modules": ["ipip"],
            "sysctls": dict(SYSCTLS),
            "sysctl_file": SYSCTL_FILE,
            "modules_file": MODULES_FILE,
            "builtin_defaults": dict(kernel.BUILTIN_DEFAULTS),
        }
        super().__init__(dict(defaults, **params), check_mode, diff)


class FakeKernel:
    """modprobe and ip on the gateway under ``root``: loading ipip creates tunl0."""

    def __init__(self, root):
        self.root, self.calls, self.links = root, [], []

    def run(self, argv):
        self.calls.append(" ".join(argv))
        if argv[0] == "ip":
            return json.dumps(self.links)
        assert argv[0] == "modprobe", argv
        if argv[1] == "-r":
            self.unload(argv[2])
        else:
            self.load(argv[1])
        return ""

    def modules(self):
        return (self.root / "proc/modules").read_text().splitlines()

    def load(self, name, used_by=0):
        lines = [m for m in self.modules() if m.split()[0] != name]
        lines.append(f"{name} 36864 {used_by} - Live 0x0000000000000000")
        (self.root / "proc/modules").write_text("".join(line + "\n" for line in lines))
        if name == "ipip":
            write(self.root, "/proc/sys/net/ipv4/conf/tunl0/rp_filter", "0\n")
            self.links.append(link("tunl0"))

    def unload(self, name):
        lines = [m for m in self.modules() if m.split()[0] != name]
        (self.root / "proc/modules").write_text("".join(line + "\n" for line in lines))
        if name == "ipip":
            (self.root / "proc/sys/net/ipv4/conf/tunl0/rp_filter").unlink()
            self.links = [lk for lk in self.links if lk["linkinfo"]["info_kind"] != "ipip"]

    def loaded(self):
        return [m.split()[0] for m in self.modules()]


def link(name, kind="ipip"):
    return {"ifname": name, "linkinfo": {"info_kind": kind}}


def write(root, path, text):
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def read(root, path):
    target = root / path.lstrip("/")
    return target.read_text() if target.exists() else None


def live(root, name):
    return read(root, "/proc/sys/" + kernel.sysctl_path(name)).strip()


@pytest.fixture
def root(tmp_path):
    """A gateway as the kernel boots it: no forwarding, no ipip."""
    gw = tmp_path / "gw"
    write(gw, "/proc/modules", "nf_tables 286720 0 - Live 0x0000000000000000\n")
    write(gw, "/proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro quiet\n")
    write(gw, "/proc/sys/kernel/osrelease", RELEASE + "\n")
    write(gw, f"/lib/modules/{RELEASE}/modules.builtin", "kernel/net/ipv4/tcp_cubic.ko\n")
    write(gw, "/proc/sys/net/ipv4/ip_forward", "0\n")
    write(gw, "/proc/sys/net/ipv4/conf/all/rp_filter", "0\n")
    write(gw, "/proc/sys/net/ipv4/conf/all/accept_redirects", "1\n")
    write(gw, "/usr/lib/sysctl.d/50-default.conf", SYSTEMD_DEFAULTS)
    return gw


@pytest.fixture
def gw(root):
    return FakeKernel(root)


def run(module, gw):
    with pytest.raises(Exit) as exc:
        kernel.run_module(module, gw, root=str(gw.root))
    return exc.value


def applied(gw, **params):
    out = run(FakeModule(**params), gw)
    assert not out.failed, out.result
    gw.calls.clear()
    return out


# ----------------------------------------------------------------------------- present

# What the first run does on a gateway that has none of it, and check mode says it would.
FIRST_RUN = [
    "modprobe ipip",
    f"write {MODULES_FILE}",
    "net.ipv4.ip_forward: 0 -> 1",
    "net.ipv4.conf.all.rp_filter: 0 -> 2",
    f"write {SYSCTL_FILE}",
]


def test_present_from_nothing_loads_sets_and_persists(root, gw):
    module = FakeModule()
    out = run(module, gw)
    assert not out.failed and out.result["changed"] is True
    assert out.result["done"] == FIRST_RUN
    assert gw.calls == ["modprobe ipip"] and "ipip" in gw.loaded()
    assert live(root, "net.ipv4.ip_forward") == "1"
    assert live(root, "net.ipv4.conf.all.rp_filter") == "2"
    assert read(root, MODULES_FILE) == (
        "# Managed by sitelink.gateway: do not edit.\n"
        "# Loaded at boot by systemd-modules-load.\n"
        "ipip\n"
    )
    sysctl_file = read(root, SYSCTL_FILE).splitlines()
    assert sysctl_file[0] == "# Managed by sitelink.gateway: do not edit."
    assert sysctl_file[2:] == ["net.ipv4.ip_forward = 1", "net.ipv4.conf.all.rp_filter = 2"]
    assert out.result["kept"] == [] and module.warnings == []


def test_a_second_run_changes_nothing(root, gw):
    applied(gw)
    again = run(FakeModule(), gw)
    assert again.result["changed"] is False, again.result["done"]
    assert again.result["done"] == [] and gw.calls == []


def test_only_a_live_value_that_differs_is_set(root, gw):
    applied(gw)
    write(root, "/proc/sys/net/ipv4/ip_forward", "0\n")  # someone turned it off
    files = {p: read(root, p) for p in (SYSCTL_FILE, MODULES_FILE)}
    out = run(FakeModule(), gw)
    assert out.result["done"] == ["net.ipv4.ip_forward: 0 -> 1"]
    assert live(root, "net.ipv4.ip_forward") == "1"
    assert {p: read(root, p) for p in files} == files and gw.calls == []


def test_values_compare_as_the_kernel_prints_them(root, gw):
    write(root, "/proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n")
    sysctls = {"net.ipv4.ip_local_port_range": "32768  60999", "net/ipv4/ip_forward": True}
    out = run(FakeModule(sysctls=sysctls), gw)
    assert out.result["done"][2:] == ["net/ipv4/ip_forward: 0 -> 1", f"write {SYSCTL_FILE}"]


def test_check_mode_reports_the_same_and_changes_nothing(root, gw):
    before = sorted(p for p in root.rglob("*"))
    module = FakeModule(check_mode=True)
    out = run(module, gw)
    assert out.result["changed"] is True
    assert out.result["done"] == FIRST_RUN
    assert sorted(p for p in root.rglob("*")) == before and gw.calls == []
    assert live(root, "net.ipv4.ip_forward") == "0"
    # The files it would write count for what boot gives, though they are not there yet.
    assert module.warnings == []


def test_diff_shows_both_files_and_the_live_values(root, gw):
    out = run(FakeModule(diff=True, check_mode=True), gw)
    diff = {d["before_header"]: (d["before"], d["after"]) for d in out.result["diff"]}
    assert diff[MODULES_FILE][0] == "" and diff[MODULES_FILE][1].endswith("\nipip\n")
    assert diff[SYSCTL_FILE][0] == "" and "net.ipv4.ip_forward = 1\n" in diff[SYSCTL_FILE][1]
    assert diff["live sysctls"] == (
        "net.ipv4.ip_forward = 0\nnet.ipv4.conf.all.rp_filter = 0\n",
        "net.ipv4.ip_forward = 1\nnet.ipv4.conf.all.rp_filter = 2\n",
    )
    applied(gw)
    again = run(FakeModule(diff=True), gw)
    assert all(d["before"] == d["after"] for d in again.result["diff"])


def test_the_earlier_versions_modules_file_is_migrated(root, gw):
    # community.general.modprobe wrote exactly this; anything else is not ours.
    write(root, "/etc/modules-load.d/ipip.conf", "ipip\n")
    write(root, "/etc/modules-load.d/sit.conf", "sit\n# and the gateway's own note\n")
    out = run(FakeModule(modules=["ipip", "sit"], diff=True), gw)
    assert (
        "remove /etc/modules-load.d/ipip.conf (written by an earlier version)"
        in (out.result["done"])
    )
    assert read(root, "/etc/modules-load.d/ipip.conf") is None
    assert read(root, "/etc/modules-load.d/sit.conf") == "sit\n# and the gateway's own note\n"
    diff = {d["before_header"]: (d["before"], d["after"]) for d in out.result["diff"]}
    assert diff["/etc/modules-load.d/ipip.conf"] == ("ipip\n", "")
    assert run(FakeModule(modules=["ipip", "sit"]), gw).result["changed"] is False


def test_the_earlier_versions_sysctl_file_is_rewritten_whole(root, gw):
    write(root, SYSCTL_FILE, "net.ipv4.ip_forward=1\nnet.ipv4.conf.all.rp_filter=2\n")
    write(root, "/proc/sys/net/ipv4/ip_forward", "1\n")
    write(root, "/proc/sys/net/ipv4/conf/all/rp_filter", "2\n")
    out = run(FakeModule(), gw)
    assert out.result["done"] == ["modprobe ipip", f"write {MODULES_FILE}", f"write {SYSCTL_FILE}"]
    assert kernel.managed(read(root, SYSCTL_FILE))


def test_a_sysctl_no_longer_listed_goes_back_now_not_at_the_next_boot(root, gw):
    applied(gw)
    out = run(FakeModule(sysctls={"net.ipv4.ip_forward": 1}, modules=[]), gw)
    assert out.result["done"] == [
        f"remove {MODULES_FILE}",
        f"write {SYSCTL_FILE}",
        "net.ipv4.conf.all.rp_filter: 2 -> 0 (the kernel's built-in value)",
    ]
    assert out.result["kept"] == ["module ipip: no longer loaded at boot, left loaded now"]
    assert "rp_filter" not in read(root, SYSCTL_FILE) and "ipip" in gw.loaded()


def test_a_later_file_that_wins_at_boot_is_warned_about(root, gw):
    write(root, "/etc/sysctl.d/99-local.conf", "net.ipv4.conf.all.rp_filter = 1\n")
    module = FakeModule()
    run(module, gw)
    assert module.warnings == [
        "net.ipv4.conf.all.rp_filter: at boot /etc/sysctl.d/99-local.conf sets 1, "
        f"not 2 as in {SYSCTL_FILE}"
    ]


def test_a_builtin_module_is_not_probed(root, gw):
    write(root, f"/lib/modules/{RELEASE}/modules.builtin", "kernel/net/ipv4/ipip.ko\n")
    out = run(FakeModule(), gw)
    assert "modprobe ipip" not in out.result["done"] and gw.calls == []


def test_an_unknown_sysctl_fails_before_any_file_or_value(root, gw):
    out = run(FakeModule(sysctls=dict(SYSCTLS, **{"net.ipv4.no_such": 1})), gw)
    assert (
        out.failed
        and "no such sysctl: net.ipv4.no_such (/proc/sys/net/ipv4/no_such)" in (out.result["msg"])
    )
    assert read(root, SYSCTL_FILE) is None and read(root, MODULES_FILE) is None
    assert live(root, "net.ipv4.ip_forward") == "0"


def test_a_sysctl_that_comes_with_its_module_is_announced_in_check_mode(root, gw):
    sysctls = {"net.ipv4.conf.tunl0.rp_filter": 2}
    out = run(FakeModule(sysctls=sysctls, check_mode=True), gw)
    assert not out.failed and (
        "net.ipv4.conf.tunl0.rp_filter: (not there before modprobe) -> 2" in out.result["done"]
    )
    out = run(FakeModule(sysctls=sysctls), gw)
    assert "net.ipv4.conf.tunl0.rp_filter: 0 -> 2" in out.result["done"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sysctls": {"net.ipv4.conf.*.rp_filter": 2}}, "is not a sysctl name"),
        ({"sysctls": {"-net.ipv4.ip_forward": 1}}, "is not a sysctl name"),
        ({"sysctls": {"net.ipv4.ip_forward": 1, "net/ipv4/ip_forward": 1}}, "the same sysctl"),
        ({"sysctls": {"net.ipv4.ip_forward": "1\nkernel.panic = 1"}}, "one non-empty line"),
        ({"sysctls": {"net.ipv4.ip_forward": [1]}}, "not a single value"),
        ({"modules": ["ipip; reboot"]}, "not a kernel module name"),
        ({"sysctl_file": "sysctl.conf"}, "must be an absolute path"),
    ],
)
def test_bad_parameters_fail_before_anything(root, gw, params, message):
    out = run(FakeModule(**params), gw)
    assert out.failed and message in out.result["msg"] and gw.calls == []
    assert read(root, SYSCTL_FILE) is None


# ----------------------------------------------------------------------------- absent


def retire(gw, **params):
    return run(FakeModule(state="absent", **params), gw)


def test_retire_falls_back_to_the_kernels_builtin_values(root, gw):
    applied(gw)
    out = retire(gw)
    assert out.result["changed"] is True
    assert out.result["done"] == [
        f"remove {SYSCTL_FILE}",
        f"remove {MODULES_FILE}",
        "net.ipv4.ip_forward: 1 -> 0 (the kernel's built-in value)",
        # systemd's own "-net.ipv4.conf.all.rp_filter" keeps its glob off "all".
        "net.ipv4.conf.all.rp_filter: 2 -> 0 (the kernel's built-in value)",
        "modprobe -r ipip",
    ]
    assert live(root, "net.ipv4.ip_forward") == "0" and "ipip" not in gw.loaded()
    assert read(root, SYSCTL_FILE) is None and read(root, MODULES_FILE) is None
    assert gw.calls == ["ip -d -j link show", "modprobe -r ipip"]


def test_a_second_retire_changes_nothing(root, gw):
    applied(gw)
    retire(gw)
    gw.calls.clear()
    again = retire(gw)
    assert again.result["changed"] is False, again.result["done"]
    assert again.result["done"] == [] and gw.calls == []


def test_retire_in_check_mode_predicts_and_changes_nothing(root, gw):
    applied(gw)
    before = {p: p.read_text() for p in root.rglob("*") if p.is_file()}
    out = run(FakeModule(state="absent", check_mode=True, diff=True), gw)
    assert len(out.result["done"]) == 5 and out.result["done"][-1] == "modprobe -r ipip"
    assert {p: p.read_text() for p in root.rglob("*") if p.is_file()} == before
    assert gw.calls == ["ip -d -j link show"]
    diff = {d["before_header"]: (d["before"], d["after"]) for d in out.result["diff"]}
    assert diff[SYSCTL_FILE][1] == "" and diff["live sysctls"][1] == (
        "net.ipv4.ip_forward = 0\nnet.ipv4.conf.all.rp_filter = 0\n"
    )


# What the gateway's own configuration gives net.ipv4.conf.all.rp_filter at boot,
# read as systemd-sysctl reads it, with Debian's /usr/lib/sysctl.d/50-default.conf
# in place. 2 is what the collection set, so "2" means: left as it is.
MASKED_DEFAULTS = {"/etc/sysctl.d/50-default.conf": "# masked\n"}


@pytest.mark.parametrize(
    ("files", "restored"),
    [
        ({"/etc/sysctl.d/60-strict.conf": "net.ipv4.conf.all.rp_filter = 1\n"}, "1"),
        ({"/etc/sysctl.conf": "net.ipv4.conf.all.rp_filter=1\n"}, "1"),
        ({"/etc/sysctl.d/60-strict.conf": "net/ipv4/conf/all/rp_filter = 1\n"}, "1"),
        ({"/run/sysctl.d/60-strict.conf": "net.ipv4.conf.all.rp_filter = 1\n"}, "1"),
        ({"/etc/sysctl.d/60-strict.conf": "-net.ipv4.conf.all.rp_filter = 1\n"}, "1"),
        ({"/etc/sysctl.d/60-strict.conf": "net.ipv4.conf.all.rp_filter = 2\n"}, "2"),
        # Read before 50-default.conf, whose lone "-net.ipv4.conf.all.rp_filter"
        # replaces the assignment: systemd-sysctl leaves the kernel's value.
        ({"/etc/sysctl.d/10-strict.conf": "net.ipv4.conf.all.rp_filter = 1\n"}, "0"),
        # By file name across directories, whatever the directory.
        (
            {
                "/etc/sysctl.d/60-a.conf": "net.ipv4.conf.all.rp_filter = 1\n",
                "/usr/lib/sysctl.d/70-b.conf": "net.ipv4.conf.all.rp_filter = 2\n",
            },
            "2",
        ),
        (
            {
                "/etc/sysctl.d/70-a.conf": "net.ipv4.conf.all.rp_filter = 1\n",
                "/usr/lib/sysctl.d/60-b.conf": "net.ipv4.conf.all.rp_filter = 2\n",
            },
            "1",
        ),
        # The same name in /etc masks the one in /usr/lib.
        (
            {
                "/etc/sysctl.d/70-vendor.conf": "# disabled\n",
                "/usr/lib/sysctl.d/70-vendor.conf": "net.ipv4.conf.all.rp_filter = 1\n",
            },
            "0",
        ),
        # /etc/sysctl.conf comes last and wins.
        (
            {
                "/etc/sysctl.d/99-late.conf": "net.ipv4.conf.all.rp_filter = 2\n",
                "/etc/sysctl.conf": "net.ipv4.conf.all.rp_filter = 1\n",
            },
            "1",
        ),
        # The last assignment wins; comments and other keys do not count.
        (
            {
                "/etc/sysctl.d/60-a.conf": (
                    "; net.ipv4.conf.all.rp_filter = 2\n"
                    "net.ipv4.conf.all.rp_filter = 2\n"
                    "net.ipv4.conf.all.rp_filter = 1\n"
                    "net.ipv4.conf.default.rp_filter = 2\n"
                )
            },
            "1",
        ),
        # A glob applies to "all" only once systemd's "-net.ipv4.conf.all.rp_filter" is gone;
        # an explicit key beats any glob.
        ({"/etc/sysctl.d/60-a.conf": "net.ipv4.conf.*.rp_filter = 1\n"}, "0"),
        ({**MASKED_DEFAULTS, "/etc/sysctl.d/60-a.conf": "net.ipv4.conf.*.rp_filter = 1\n"}, "1"),
        (
            {
                **MASKED_DEFAULTS,
                "/etc/sysctl.d/60-a.conf": "net.ipv4.conf.all.rp_filter = 1\n",
                "/etc/sysctl.d/70-b.conf": "net.ipv4.conf.*.rp_filter = 2\n",
            },
            "1",
        ),
        # systemd's own defaults alone: "all" is kept off the glob, the built-in value.
        ({}, "0"),
    ],
)
def test_retire_gives_back_the_gateways_own_boot_value(root, gw, files, restored):
    applied(gw)
    for path, text in files.items():
        write(root, path, text)
    out = retire(gw)
    assert live(root, "net.ipv4.conf.all.rp_filter") == restored, out.result["done"]
    changes = [d for d in out.result["done"] if d.startswith("net.ipv4.conf.all.rp_filter")]
    assert changes == ([] if restored == "2" else [changes[0]])


def test_retire_names_where_a_value_comes_from(root, gw):
    applied(gw)
    write(root, "/etc/sysctl.d/70-router.conf", "net.ipv4.ip_forward = 1\n")
    write(root, "/etc/sysctl.conf", "net.ipv4.conf.all.rp_filter = 1\n")
    out = retire(gw)
    assert (
        "net.ipv4.conf.all.rp_filter: 2 -> 1 (as /etc/sysctl.conf sets it at boot)"
        in (out.result["done"])
    )
    assert not [d for d in out.result["done"] if d.startswith("net.ipv4.ip_forward")]
    assert live(root, "net.ipv4.ip_forward") == "1"


def test_retire_leaves_a_sysctl_without_a_known_value(root, gw):
    sysctls = dict(SYSCTLS, **{"net.ipv4.conf.all.accept_redirects": 0})
    applied(gw, sysctls=sysctls)
    out = retire(gw, sysctls=sysctls)
    assert (
        "net.ipv4.conf.all.accept_redirects: left at 0 (no built-in value known, none configured)"
        in (out.result["kept"])
    )
    assert live(root, "net.ipv4.conf.all.accept_redirects") == "0"


def test_retire_takes_back_what_the_file_lists_even_if_no_longer_asked(root, gw):
    applied(gw)
    out = retire(gw, sysctls={}, modules=[])
    assert (
        "net.ipv4.conf.all.rp_filter: 2 -> 0 (the kernel's built-in value)" in (out.result["done"])
    )
    assert "modprobe -r ipip" in out.result["done"]


def test_retire_keeps_the_gateways_own_lines_of_an_earlier_versions_file(root, gw):
    applied(gw)
    # ansible.posix.sysctl shared this file; someone added a line of their own.
    write(
        root,
        SYSCTL_FILE,
        "net.ipv4.ip_forward=1\n# ours\nnet.ipv4.conf.all.rp_filter=2\nvm.swappiness=10\n",
    )
    out = retire(gw)
    assert f"take the collection's lines out of {SYSCTL_FILE}" in out.result["done"]
    assert read(root, SYSCTL_FILE) == "# ours\nvm.swappiness=10\n"
    assert f"{SYSCTL_FILE}: kept, 1 line(s) the collection did not write" in out.result["kept"]


def test_retire_removes_the_earlier_versions_modules_file(root, gw):
    applied(gw)
    (root / MODULES_FILE.lstrip("/")).unlink()
    write(root, "/etc/modules-load.d/ipip.conf", "ipip\n")
    out = retire(gw)
    assert "remove /etc/modules-load.d/ipip.conf" in out.result["done"]
    assert "modprobe -r ipip" in out.result["done"]


def test_retire_keeps_ipip_while_someone_elses_tunnel_uses_it(root, gw):
    applied(gw)
    gw.links += [link("foreign0"), link("eth0", kind=None), link("gre1", kind="gre")]
    out = retire(gw)
    assert out.result["kept"] == ["module ipip: kept, in use by foreign0"]
    assert "ipip" in gw.loaded() and "modprobe -r ipip" not in gw.calls
    # The rest is retired all the same, and a second run has nothing left to do.
    assert live(root, "net.ipv4.ip_forward") == "0"
    assert retire(gw).result["changed"] is False


@pytest.mark.parametrize(
    "boot",
    [
        {"/etc/modules-load.d/tunnels.conf": "# tunnels\nipip\n"},
        {"/usr/lib/modules-load.d/ipip.conf": "ipip\n"},  # not the earlier version's file
        {"/etc/modules-load.d/ipip.conf": "ipip\nsit\n"},  # not exactly what it wrote
        {"/etc/modules": "ipip\n", "/etc/modules-load.d/modules.conf": "-> ../modules"},
        {"/proc/cmdline": "root=/dev/vda1 modules-load=fou,ipip\n"},
    ],
    ids=["modules-load.d", "usr-lib", "shared-file", "etc-modules", "cmdline"],
)
def test_retire_keeps_ipip_when_the_gateway_loads_it_at_boot(root, gw, boot):
    applied(gw)
    for path, text in boot.items():
        if text.startswith("-> "):
            (root / path.lstrip("/")).symlink_to(text[3:])
        else:
            write(root, path, text)
    out = retire(gw)
    assert out.result["kept"] == [
        "module ipip: kept, the gateway's own configuration loads it at boot"
    ], out.result
    assert "ipip" in gw.loaded()
    for path, text in boot.items():
        if not text.startswith("-> "):
            assert read(root, path) == text


def test_retire_keeps_a_module_something_else_holds(root, gw):
    applied(gw)
    gw.load("ipip", used_by=1)
    out = retire(gw)
    assert out.result["kept"] == ["module ipip: kept, 1 other user(s) hold it"]


def test_retire_never_unloads_a_module_it_cannot_check(root, gw):
    applied(gw, modules=["ipip", "fou"])
    out = retire(gw, modules=["ipip", "fou"])
    assert out.result["kept"] == ["module fou: kept, retire cannot tell what else uses it"]
    assert "fou" in gw.loaded() and "ipip" not in gw.loaded()


def test_retire_of_a_gateway_that_never_had_it_changes_nothing(root, gw):
    out = retire(gw)
    assert out.result["changed"] is False and out.result["done"] == [] and gw.calls == []


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("key", "path"),
    [
        ("net.ipv4.ip_forward", "net/ipv4/ip_forward"),
        ("net/ipv4/ip_forward", "net/ipv4/ip_forward"),
        ("net.ipv4.conf.eth0/100.rp_filter", "net/ipv4/conf/eth0.100/rp_filter"),
        ("net/ipv4/conf/eth0.100/rp_filter", "net/ipv4/conf/eth0.100/rp_filter"),
        (" -net.ipv4.ip_forward ", "net/ipv4/ip_forward"),
    ],
)
def test_sysctl_names_read_as_systemd_reads_them(key, path):
    assert kernel.sysctl_path(key) == path
