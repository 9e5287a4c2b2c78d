# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel settings of a tunnel gateway: modules and sysctls, now and at boot.

present: load the missing modules, list them in the collection's modules-load.d
file, set each sysctl that differs live, and write the collection's sysctl.d
file. Both files are written whole (they are the collection's own).

absent (retire): the collection's lines leave both files (a file goes once
nothing else is left in it); each sysctl goes back to what the gateway's own
configuration gives it at boot, read as systemd-sysctl reads it, else to the
kernel's built-in value; a module is unloaded only when no link of its kind is
left but the kernel's own fallback device, nothing else holds it, and the
gateway's own configuration does not load it at boot.

Runs on the gateway: standard library only, Python 3.9+. Everything but
``Host`` and ``Runner`` is pure (file texts in, plans out). ``Host`` reads and
writes below a root directory, so unit tests run in a temporary one.
"""

from __future__ import annotations

import json
import os
import re
from fnmatch import fnmatchcase

from ansible_collections.sitelink.gateway.plugins.module_utils.persist import write_atomic

DEFAULT_SYSCTL_FILE = "/etc/sysctl.d/90-sitelink-gateway.conf"
DEFAULT_MODULES_FILE = "/etc/modules-load.d/sitelink-gateway.conf"
# community.general.modprobe (persistent: present), used before this module,
# wrote /etc/modules-load.d/NAME.conf holding the line NAME.
LEGACY_MODULES_DIR = "/etc/modules-load.d"
MANAGED = "# Managed by sitelink.gateway: do not edit."
HEADERS = {
    "sysctl": (
        MANAGED,
        "# Read at boot by systemd-sysctl; sitelink.gateway.kernel_settings sets the same live.",
    ),
    "modules-load": (MANAGED, "# Loaded at boot by systemd-modules-load."),
}
# Where systemd looks for sysctl.d and modules-load.d files, in precedence order.
CONFIG_DIRS = ("/etc", "/run", "/usr/local/lib", "/usr/lib", "/lib")
# The kernel's own values of the sysctls the collection sets.
BUILTIN_DEFAULTS = {
    "net.ipv4.ip_forward": 0,
    "net.ipv4.conf.all.rp_filter": 0,
    "net.core.rmem_max": 212992,
    "net.core.wmem_max": 212992,
}
# Per module: the link kinds that need it, and the devices the kernel itself
# creates with it (never a reason to keep it). Unloading ipip deletes every
# ipip link, someone else's too; modules not listed here are never unloaded.
MODULE_LINKS = {"ipip": {"kinds": ("ipip",), "fallback": ("tunl0",)}}

_MODULE = re.compile(r"^[A-Za-z0-9_-]{1,55}$")
_SYSCTL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:/@+-]*$")


class KernelError(Exception):
    def __init__(self, msg, stderr=""):
        self.stderr = stderr
        super().__init__(msg)


# --------------------------------------------------------------------------
# pure: names, values, file texts


def sysctl_path(key):
    """A sysctl name as its path below /proc/sys, as systemd-sysctl reads it.

    A key whose first separator is "/" is a path already; otherwise dots
    separate and a slash stands for a dot (net.ipv4.conf.eth0/100.rp_filter is
    interface eth0.100). A leading "-" (ignore failures) is not part of it.
    """
    key = key.strip().lstrip("-").strip()
    if key.find(".") >= 0 and not 0 <= key.find("/") < key.find("."):
        key = key.translate(str.maketrans("./", "/."))
    return key.strip("/")


def same(a, b):
    """Sysctl values compare as the kernel prints them: whitespace-separated words."""
    return a is not None and b is not None and a.split() == b.split()


def value_text(value):
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value).strip()


def validate(params):
    """Problems with the module parameters, as a list of messages."""
    errors = []
    for option in ("sysctl_file", "modules_file"):
        if not str(params.get(option) or "").startswith("/"):
            errors.append(f"{option}: {params.get(option)!r} must be an absolute path")
    if params.get("sysctl_file") and params.get("sysctl_file") == params.get("modules_file"):
        errors.append("sysctl_file and modules_file must be different files")
    for module in params.get("modules") or []:
        if not _MODULE.match(str(module)):
            errors.append(f"modules: {module!r} is not a kernel module name")
    seen = {}
    for name, value in (params.get("sysctls") or {}).items():
        name = str(name)
        path = sysctl_path(name)
        if not _SYSCTL.match(name) or ".." in path.split("/") or "//" in path:
            errors.append(f"sysctls: {name!r} is not a sysctl name (no globs, no '-' prefix)")
            continue
        if path in seen:
            errors.append(f"sysctls: {name!r} and {seen[path]!r} are the same sysctl")
        seen[path] = name
        if params.get("state") == "present":
            if isinstance(value, (dict, list)) or value is None:
                errors.append(f"sysctls: {name}: {value!r} is not a single value")
            elif not value_text(value) or "\n" in value_text(value):
                errors.append(f"sysctls: {name}: {value!r} must be one non-empty line")
    for name, value in (params.get("builtin_defaults") or {}).items():
        if isinstance(value, (dict, list)) or value is None or "\n" in value_text(value):
            errors.append(f"builtin_defaults: {name}: {value!r} is not a single value")
    return errors


def render_sysctl_file(sysctls):
    """The collection's sysctl.d file: header, then ``name = value`` in the order given."""
    if not sysctls:
        return None
    lines = list(HEADERS["sysctl"]) + [f"{n} = {value_text(v)}" for n, v in sysctls.items()]
    return "\n".join(lines) + "\n"


def render_modules_file(modules):
    if not modules:
        return None
    return "\n".join(list(HEADERS["modules-load"]) + list(modules)) + "\n"


def _entries(text):
    """The settings lines of a sysctl.d or modules-load.d text (comments dropped)."""
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line and line[0] not in "#;":
            out.append(line)
    return out


def entry_name(line, kind):
    """What a settings line is about: a sysctl's path, or a module name ("-" is "_")."""
    if kind == "sysctl":
        return sysctl_path(line.partition("=")[0])
    return line.replace("-", "_")


def managed(text):
    return (text or "").startswith(MANAGED + "\n")


def names_in(text, kind):
    """Names a file written by this module lists (empty for anyone else's file)."""
    if not managed(text):
        return []
    return [line.partition("=")[0].strip() for line in _entries(text)]


def _is_ours(line, kind, ours):
    line = line.strip()
    if line in HEADERS[kind]:
        return True
    if not line or line[0] in "#;" or (kind == "sysctl" and "=" not in line):
        return False
    return entry_name(line, kind) in ours


def drop_ours(text, kind, names):
    """``text`` without the collection's lines; None once only comments would be left.

    A file with the collection's header is the collection's own: all of it goes.
    Otherwise (a file written by an earlier version) only the lines for ``names``.
    """
    if text is None or managed(text):
        return None
    ours = {entry_name(n, kind) for n in names}
    left = [line for line in text.splitlines(keepends=True) if not _is_ours(line, kind, ours)]
    if not _entries("".join(left)):
        return None
    return "".join(left)


def legacy_modules_file(module):
    return f"{LEGACY_MODULES_DIR}/{module}.conf"


def is_legacy_modules_text(text, module):
    """What community.general.modprobe wrote for ``module``: that one line, nothing else."""
    return text is not None and text.split() == [module]


def sysctl_boot_settings(texts):
    """systemd-sysctl's view of the configuration ``texts`` [(source, text)] in order.

    Returns (explicit, globs): path -> (value, source). An explicit key beats
    globs; the last assignment wins (and moves to the end); a lone "-key" keeps
    globs off the key without setting it (value None).
    """
    explicit, globs = {}, {}
    for source, text in texts:
        for line in _entries(text):
            key, sep, value = line.partition("=")
            if not sep and not key.startswith("-"):
                continue
            key = sysctl_path(key)
            value = value.strip() if sep else None
            table = globs if any(c in key for c in "*?[") else explicit
            if table is globs and value is None:
                continue
            table.pop(key, None)
            table[key] = (value, source)
    return explicit, globs


def boot_value(name, explicit, globs):
    """(value, source) the configuration gives sysctl ``name`` at boot, or (None, None)."""
    key = sysctl_path(name)
    if key in explicit:
        return explicit[key]
    found = (None, None)
    parts = key.split("/")
    for pattern, setting in globs.items():
        pat = pattern.split("/")
        if len(pat) == len(parts) and all(map(fnmatchcase, parts, pat)):
            found = setting
    return found


def boot_modules(modules_load_texts, cmdline):
    """Modules the configuration loads at boot (modules-load.d, kernel command line)."""
    boot = {
        entry_name(line, "modules-load")
        for _source, text in modules_load_texts
        for line in _entries(text)
    }
    for word in (cmdline or "").split():
        name, _unused, value = word.partition("=")
        if name.replace("-", "_") in ("modules_load", "rd.modules_load"):
            boot |= {m.replace("-", "_") for m in value.split(",") if m}
    return boot


def parse_proc_modules(text):
    """/proc/modules -> {name: use count}."""
    out = {}
    for fields in map(str.split, (text or "").splitlines()):
        if len(fields) > 2:
            out[fields[0]] = int(fields[2]) if fields[2].isdigit() else 1
    return out


def parse_builtin(text):
    """modules.builtin (kernel/net/ipv4/ipip.ko per line) -> module names."""
    return {
        os.path.basename(line.strip())[: -len(".ko")].replace("-", "_")
        for line in (text or "").splitlines()
        if line.strip().endswith(".ko")
    }


def links_of(links_json, kinds, fallback):
    """Links of ``kinds`` in ``ip -d -j link show`` output, but the kernel's fallback devices."""
    return sorted(
        link["ifname"]
        for link in json.loads(links_json or "[]")
        if (link.get("linkinfo") or {}).get("info_kind") in kinds
        and link.get("ifname") not in fallback
    )


def sysctl_lines(values):
    return "".join(f"{name} = {value}\n" for name, value in values)


# --------------------------------------------------------------------------
# the gateway


class Runner:
    """Commands through AnsibleModule.run_command; tests inject a fake."""

    def __init__(self, module):
        self.module = module

    def run(self, argv):
        tool = self.module.get_bin_path(argv[0], required=True)
        rc, out, err = self.module.run_command([tool, *argv[1:]], check_rc=False)
        if rc != 0:
            command = " ".join(argv)
            raise KernelError(f"'{command}' failed (rc={rc}): {(err or out).strip()}", err or out)
        return out


class Host:
    """The gateway's files, /proc and commands, below ``root`` ("/" on a gateway)."""

    def __init__(self, module, runner, root="/"):
        self.module, self.runner, self.root = module, runner, root

    def path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def read(self, path):
        try:
            with open(self.path(path), encoding="utf-8") as fh:
                return fh.read()
        except (OSError, UnicodeDecodeError):
            return None

    def write(self, path, text):
        write_atomic(self.module, self.path(path), text)

    def remove(self, path):
        os.unlink(self.path(path))

    def realpath(self, path):
        return os.path.realpath(self.path(path))

    def config_files(self, kind, planned=()):
        """The kind.d/*.conf files systemd reads, in its order: by file name, a name
        in an earlier directory masking the same name in later ones. ``planned``:
        files this run writes, counted even before they exist (check mode)."""
        found = {}
        for directory in CONFIG_DIRS:
            folder = f"{directory}/{kind}.d"
            try:
                names = set(os.listdir(self.path(folder)))
            except OSError:
                names = set()
            names |= {os.path.basename(p) for p in planned if os.path.dirname(p) == folder}
            for name in sorted(names):
                if name.endswith(".conf"):
                    found.setdefault(name, f"{directory}/{kind}.d/{name}")
        paths = [found[name] for name in sorted(found)]
        # sysctl --system reads /etc/sysctl.conf last (Debian links it as 99-sysctl.conf).
        if kind == "sysctl":
            real = {self.realpath(p) for p in paths}
            if self.realpath("/etc/sysctl.conf") not in real:
                paths.append("/etc/sysctl.conf")
        return paths

    def config(self, kind, overrides, planned=()):
        """[(path, text)] of the configuration; ``overrides``: realpath -> text after this run."""
        out = []
        for path in self.config_files(kind, planned):
            real = self.realpath(path)
            out.append((path, overrides[real] if real in overrides else self.read(path)))
        return out

    def sysctl(self, name):
        value = self.read("/proc/sys/" + sysctl_path(name))
        return None if value is None else " ".join(value.split())

    def set_sysctl(self, name, value):
        path = "/proc/sys/" + sysctl_path(name)
        try:
            with open(self.path(path), "w", encoding="utf-8") as fh:
                fh.write(value + "\n")
        except OSError as exc:
            raise KernelError(f"setting {name} to {value} ({path}): {exc}") from exc

    def loaded(self):
        return parse_proc_modules(self.read("/proc/modules"))

    def builtin(self):
        release = (self.read("/proc/sys/kernel/osrelease") or "").strip()
        return parse_builtin(self.read(f"/lib/modules/{release}/modules.builtin"))

    def cmdline(self):
        return self.read("/proc/cmdline") or ""

    def links(self):
        return self.runner.run(["ip", "-d", "-j", "link", "show"])

    def modprobe(self, *args):
        self.runner.run(["modprobe", *args])


# --------------------------------------------------------------------------
# the run


class Run:
    """One module run: what it did (or would do), what it kept, and the diff."""

    def __init__(self, module, host, params):
        self.module, self.host = module, host
        self.check = module.check_mode
        self.sysctl_file = params["sysctl_file"]
        self.modules_file = params["modules_file"]
        self.done, self.kept, self.warnings = [], [], []
        self.files = {}  # path -> (before, after), in the order they were planned
        self.live = []  # (name, before, after) of the sysctls set
        self.overrides = {}  # realpath -> text after this run, for reading the boot config

    def plan_file(self, path, after):
        """Note what ``path`` becomes (None: removed); returns what it is now."""
        before = self.host.read(path)
        self.files[path] = (before, after)
        self.overrides[self.host.realpath(path)] = after
        return before

    def apply_file(self, path, reason=""):
        before, after = self.files[path]
        if before == after:
            return
        if after is None:
            self.done.append(f"remove {path}{reason}")
        elif before is not None and not managed(before) and not managed(after):
            self.done.append(f"take the collection's lines out of {path}{reason}")
        else:
            self.done.append(f"write {path}{reason}")
        if self.check:
            return
        if after is None:
            self.host.remove(path)
        else:
            self.host.write(path, after)

    def set_sysctl(self, name, before, value, why=""):
        self.done.append(f"{name}: {before} -> {value}{why}")
        self.live.append((name, before, value))
        if not self.check:
            self.host.set_sysctl(name, value)

    def config(self, kind):
        """The gateway's configuration of ``kind`` as this run leaves it."""
        planned = [p for p, (_before, after) in self.files.items() if after is not None]
        return self.host.config(kind, self.overrides, planned)

    def boot_settings(self):
        return sysctl_boot_settings(self.config("sysctl"))

    def restore_sysctls(self, names, builtin):
        """Each sysctl back to its boot value from the configuration as this run leaves it."""
        explicit, globs = self.boot_settings()
        builtin = {sysctl_path(k): value_text(v) for k, v in builtin.items()}
        for name in names:
            now = self.host.sysctl(name)
            want, source = boot_value(name, explicit, globs)
            why = f" (as {source} sets it at boot)"
            if want is None:
                want, why = builtin.get(sysctl_path(name)), " (the kernel's built-in value)"
            if now is None:
                self.kept.append(f"{name}: no such sysctl now, nothing to put back")
            elif want is None:
                self.kept.append(
                    f"{name}: left at {now} (no built-in value known, none configured)"
                )
            elif not same(now, want):
                self.set_sysctl(name, now, want, why)

    def plan_legacy_modules_files(self, modules):
        """The files an earlier version wrote for ``modules`` (NAME.conf: "NAME"), to go."""
        legacy = []
        for module in modules:
            path = legacy_modules_file(module)
            if self.host.realpath(path) == self.host.realpath(self.modules_file):
                continue
            if is_legacy_modules_text(self.host.read(path), module):
                self.plan_file(path, None)
                legacy.append(path)
        return legacy

    def diff(self):
        out = [
            {"before_header": p, "after_header": p, "before": b or "", "after": a or ""}
            for p, (b, a) in self.files.items()
        ]
        if self.live:
            out.append(
                {
                    "before_header": "live sysctls",
                    "after_header": "live sysctls",
                    "before": sysctl_lines((n, b) for n, b, _a in self.live),
                    "after": sysctl_lines((n, a) for n, _b, a in self.live),
                }
            )
        return out


def _unique_sysctls(names):
    return list({sysctl_path(n): n for n in reversed(list(names))}.values())[::-1]


def present(run, params):
    host = run.host
    modules = list(dict.fromkeys(params["modules"] or []))
    sysctls = {str(k): value_text(v) for k, v in (params["sysctls"] or {}).items()}

    # 1. Modules first: some sysctls exist only once their module is loaded.
    available = set(host.loaded()) | host.builtin()
    missing = [m for m in modules if m.replace("-", "_") not in available]
    for module in missing:
        run.done.append("modprobe " + module)
        if not run.check:
            host.modprobe(module)
    old_modules_file = run.plan_file(run.modules_file, render_modules_file(modules))
    legacy = run.plan_legacy_modules_files(modules)

    # 2. Every sysctl must exist before any value or file is written.
    old_sysctl_file = run.plan_file(run.sysctl_file, render_sysctl_file(sysctls))
    live = {name: host.sysctl(name) for name in sysctls}
    unknown = [n for n, v in live.items() if v is None and not (run.check and missing)]
    if unknown:
        raise KernelError(
            "no such sysctl: " + ", ".join(f"{n} (/proc/sys/{sysctl_path(n)})" for n in unknown)
        )

    run.apply_file(run.modules_file)
    for path in legacy:
        run.apply_file(path, " (written by an earlier version)")
    for name, value in sysctls.items():
        if not same(live[name], value):
            before = live[name] if live[name] is not None else "(not there before modprobe)"
            run.set_sysctl(name, before, value)
    run.apply_file(run.sysctl_file)

    # 3. What this module set before and no longer sets: a sysctl goes back to its
    #    boot value now (not at the next reboot); a module stays loaded (tunnels use it).
    ours = {sysctl_path(n) for n in sysctls}
    dropped = [n for n in names_in(old_sysctl_file, "sysctl") if sysctl_path(n) not in ours]
    run.restore_sysctls(_unique_sysctls(dropped), params["builtin_defaults"] or {})
    for module in names_in(old_modules_file, "modules-load"):
        if module not in modules:
            run.kept.append(f"module {module}: no longer loaded at boot, left loaded now")

    # 4. Does boot give what was set? A later file of the gateway's own would win.
    explicit, globs = run.boot_settings()
    for name, value in sysctls.items():
        want, source = boot_value(name, explicit, globs)
        if not same(want, value):
            where = f"{source} sets {want}" if want is not None else "no file read sets it"
            run.warnings.append(f"{name}: at boot {where}, not {value} as in {run.sysctl_file}")


def absent(run, params):
    host = run.host
    # 1. The files: the collection's own go; an earlier version's lines leave the
    #    files it shared. Everything in the collection's own files is retired too.
    modules_text = host.read(run.modules_file)
    modules = list(
        dict.fromkeys((params["modules"] or []) + names_in(modules_text, "modules-load"))
    )
    sysctl_text = host.read(run.sysctl_file)
    names = _unique_sysctls(list(params["sysctls"] or {}) + names_in(sysctl_text, "sysctl"))
    for path, text, kind, ours in (
        (run.sysctl_file, sysctl_text, "sysctl", names),
        (run.modules_file, modules_text, "modules-load", modules),
    ):
        after = drop_ours(text, kind, ours)
        run.plan_file(path, after)
        if after is not None:
            count = len(_entries(after))
            run.kept.append(f"{path}: kept, {count} line(s) the collection did not write")
    legacy = run.plan_legacy_modules_files(modules)
    for path in [run.sysctl_file, run.modules_file, *legacy]:
        run.apply_file(path)

    # 2. The sysctls, as the gateway's own configuration gives them at boot.
    run.restore_sysctls(names, params["builtin_defaults"] or {})

    # 3. The modules, unloaded only when nothing of anyone else's needs them:
    #    unloading ipip deletes every ipip link, someone else's too.
    boot = boot_modules(run.config("modules-load"), host.cmdline())
    loaded = host.loaded()
    links = None
    for module in modules:
        name = module.replace("-", "_")
        guard = MODULE_LINKS.get(name)
        if name not in loaded:
            continue
        if guard is None:
            run.kept.append(f"module {module}: kept, retire cannot tell what else uses it")
            continue
        links = host.links() if links is None else links
        theirs = links_of(links, guard["kinds"], guard["fallback"])
        if theirs:
            run.kept.append(f"module {module}: kept, in use by {', '.join(theirs)}")
        elif name in boot:
            run.kept.append(
                f"module {module}: kept, the gateway's own configuration loads it at boot"
            )
        elif loaded[name]:
            run.kept.append(f"module {module}: kept, {loaded[name]} other user(s) hold it")
        else:
            run.done.append("modprobe -r " + module)
            if not run.check:
                host.modprobe("-r", module)


def run_module(module, runner=None, root="/"):
    """Entry point of the thin module; ``runner`` and ``root`` are injectable for tests."""
    params = module.params
    result = {
        "changed": False,
        "done": [],
        "kept": [],
        "sysctl_file": params.get("sysctl_file"),
        "modules_file": params.get("modules_file"),
    }
    errors = validate(params)
    if errors:
        module.fail_json(msg="; ".join(errors), **result)
    run = Run(module, Host(module, runner or Runner(module), root), params)
    try:
        (present if params["state"] == "present" else absent)(run, params)
    except (KernelError, OSError, ValueError) as exc:
        result.update(changed=bool(run.done) and not run.check, done=run.done, kept=run.kept)
        module.fail_json(msg=str(exc), stderr=getattr(exc, "stderr", ""), **result)
    for warning in run.warnings:
        module.warn(warning)
    result.update(changed=bool(run.done), done=run.done, kept=run.kept)
    if module._diff:
        result["diff"] = run.diff()
    module.exit_json(**result)
