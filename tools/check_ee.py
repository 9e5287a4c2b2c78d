# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write and check the execution environment's build context, without a container engine.

    python tools/check_ee.py --tarball build/sitelink-gateway-0.2.0.tar.gz --context build/ee

1. Stages the collection tarball where execution-environment.yml takes it from
   (its ``additional_build_files`` entry, build/ee-src/sitelink-gateway.tar.gz).
2. Writes a fresh build context with ``ansible-builder create`` (no podman or docker).
3. Checks the context: the Containerfile installs ansible-core (the pin of the
   newest requirements/core-X.Y.txt, within meta/runtime.yml's requires_ansible)
   and ansible-runner;
   _build/requirements.yml names the staged tarball, which is there and is the one given;
   the context's bindep and pip files list every controller dependency.
4. Runs the image build's galaxy stage (``ansible-galaxy collection install -r
   requirements.yml`` from _build, into a temporary directory), then ansible-builder's
   introspection on the installed collection, as a collection author would
   (``ansible-builder introspect --sanitize``) and as the builder stage does (the
   context's own introspect.py with the Containerfile's arguments): the collection's
   declared system and Python dependencies come out, and nothing else.

One line per check; exit status 1, naming what is missing, when any fails. Then
``make ee-image`` (tools/ee_image.py) builds the image with podman, offline, and
checks it; with a registry, ``ansible-builder build`` (or ``podman build -f
CONTEXT/Containerfile CONTEXT``) builds it from debian:trixie, fetching everything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

import yaml

# tools/ is not a package: the matrix's releases come from its sibling.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import core_matrix  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
NAMESPACE, NAME = "sitelink", "gateway"
# What the controller side needs from the system, per package family of the base
# image: Graphviz's dot for plan.yml's picture, the SSH client for the gateways.
REQUIRED_SYSTEM = {
    "rpm": ("graphviz", "openssh-clients"),
    "dpkg": ("graphviz", "openssh-client"),
}
# The profiles bindep sees on each family (`bindep` with no profile asks for "default").
PLATFORMS = {
    "rpm": {"platform:rpm", "platform:redhat", "platform:fedora", "default"},
    "dpkg": {"platform:dpkg", "platform:debian", "default"},
}
# The collection's own dependency files (meta/execution-environment.yml points at them).
META_FILES = ("meta/execution-environment.yml", "meta/ee-requirements.txt", "bindep.txt")
CONTEXT_MARKERS = ("_build", "Containerfile", "Dockerfile")


class Checks:
    """Prints one line per check and remembers the failures."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.count = 0

    def check(self, ok: bool, what: str, why: str = "") -> bool:
        self.count += 1
        if ok:
            print(f"ok    {what}")
        else:
            self.failed.append(f"{what}: {why}" if why else what)
            print(f"FAIL  {what}" + (f": {why}" if why else ""))
        return ok

    def summary(self, subject: str, detail: str) -> int:
        """The closing lines (the failures again, if any) and the exit status."""
        if self.failed:
            print(f"\n{subject} NOT ok ({len(self.failed)} failed; {detail}):")
            for failure in self.failed:
                print(f"  - {failure}")
            return 1
        print(f"\n{subject} ok: {self.count} checks; {detail}")
        return 0


class Fatal(Exception):
    """A step after which nothing else can be checked."""


def tool(name: str) -> str:
    """The venv's own copy first (the Makefile runs .venv/bin/python), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise Fatal(f"{name} not found (run `make setup`)")
    return found


def run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 300)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    except subprocess.TimeoutExpired:
        raise Fatal(f"{what}: no answer in {kwargs['timeout']} s: {shlex.join(cmd)}") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise Fatal(f"{what} failed (exit {result.returncode}): {shlex.join(cmd)}\n{output}")
    return result


def without_comment(line: str) -> str:
    """A pip or bindep line without its ``#`` comment, stripped."""
    return re.sub(r"(^|\s)#.*$", "", line).strip()


def requirement_names(lines: list[str]) -> list[str]:
    """Package names of pip requirement lines (comments and options dropped)."""
    names = []
    for line in lines:
        line = without_comment(line)
        if not line or line.startswith("-"):
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line)
        if match:
            names.append(re.sub(r"[-_.]+", "-", match.group(0)).lower())
    return names


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def bindep_packages(lines: list[str], family: str) -> list[str]:
    """Packages bindep would install on ``family`` (rpm or dpkg) with no profile asked.

    The flat selector syntax only (``name [sel !sel] <version>``), evaluated as bindep
    does: platform and user selectors apart, a positive one needs a match, a
    negative one excludes. Grouped selectors ``(a b)`` are refused.
    """
    profiles = PLATFORMS[family]
    packages = []
    for raw in lines:
        line = without_comment(raw)
        if not line:
            continue
        match = re.match(r"^(\S+)\s*(?:\[([^\]]*)\])?", line)
        if not match:
            raise ValueError(f"cannot read bindep line {raw!r}")
        name, selectors = match.group(1), (match.group(2) or "").split()
        if any("(" in s or ")" in s for s in selectors):
            raise ValueError(f"grouped bindep selectors are not evaluated here: {raw!r}")
        votes = []
        for part in (
            [s for s in selectors if s.lstrip("!").startswith("platform:")],
            [s for s in selectors if not s.lstrip("!").startswith("platform:")],
        ):
            if not part:
                votes.append(None)
                continue
            negative = any(s.startswith("!") and s[1:] in profiles for s in part)
            positives = [s for s in part if not s.startswith("!")]
            matched = any(s in profiles for s in positives)
            votes.append(not negative and (matched or not positives))
        if False not in votes:
            packages.append(name)
    return packages


def check_system_packages(
    c: Checks, lines: list[str], what: str, why: str, families: tuple = ("rpm", "dpkg")
) -> None:
    """One check per package of REQUIRED_SYSTEM: bindep ``lines`` select it on each family.

    ``what`` and ``why`` are format strings with ``{name}`` and ``{family}``.
    """
    for family in families:
        selected = bindep_packages(lines, family)
        for name in REQUIRED_SYSTEM[family]:
            c.check(
                name in selected,
                what.format(name=name, family=family),
                why.format(name=name, family=family),
            )


def version_tuple(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def satisfies(version: str, spec: str) -> bool:
    """``version`` against a simple comma-separated specifier (``>=2.16.0,<2.21``)."""
    ops = {
        ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b,
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
        ">": lambda a, b: a > b,
        "<": lambda a, b: a < b,
    }
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        op = next((o for o in ops if clause.startswith(o)), None)
        if op is None or not ops[op](version_tuple(version), version_tuple(clause[len(op) :])):
            return False
    return True


def introspection_data(stdout: str) -> dict:
    """The YAML document ``introspect`` prints after its ``---`` line."""
    text = "\n" + stdout
    if "\n---\n" not in text:
        raise Fatal(f"no YAML document in the introspection output:\n{stdout}")
    return yaml.safe_load(text.split("\n---\n", maxsplit=1)[1]) or {}


def from_collection(lines: list[str], source: str) -> list[str]:
    return [line for line in lines if line.endswith(f"# from collection {source}")]


def fresh_context(context: Path) -> None:
    """ansible-builder create never removes stale files: start from an empty directory.

    Only a directory that is empty or already holds a build context is removed.
    """
    if context.exists():
        entries = {p.name for p in context.iterdir()}
        if entries and not entries & set(CONTEXT_MARKERS):
            raise Fatal(f"{context} is not empty and holds no build context: not removing it")
        shutil.rmtree(context)
    context.parent.mkdir(parents=True, exist_ok=True)


def staged_tarball(ee: dict, ee_file: Path) -> tuple[Path, str]:
    """Where execution-environment.yml takes the tarball from, and its name in _build."""
    entries = [
        e
        for e in ee.get("additional_build_files") or []
        if str(e.get("src", "")).endswith(".tar.gz")
    ]
    if len(entries) != 1 or any(c in entries[0]["src"] for c in "*?["):
        raise Fatal(
            f"{ee_file}: expected one additional_build_files entry with a plain "
            "*.tar.gz src (the staged collection tarball)"
        )
    src = Path(entries[0]["src"])
    source = src if src.is_absolute() else ee_file.parent / src
    return source, str(Path(entries[0]["dest"]) / src.name)


def tar_member(tar: tarfile.TarFile, name: str) -> Optional[bytes]:
    try:
        member = tar.extractfile(name)
    except KeyError:
        return None
    return member.read() if member else None


def check_tarball(c: Checks, tarball: Path, repo: Path) -> dict:
    with tarfile.open(tarball) as tar:
        manifest = json.loads(tar_member(tar, "MANIFEST.json") or b"{}")
        info = manifest.get("collection_info", {})
        c.check(
            (info.get("namespace"), info.get("name")) == (NAMESPACE, NAME),
            f"tarball {tarball.name} is {NAMESPACE}.{NAME} {info.get('version')}",
            f"MANIFEST.json names {info.get('namespace')}.{info.get('name')}",
        )
        for name in META_FILES:
            inside = tar_member(tar, name)
            if not c.check(
                inside is not None,
                f"tarball has {name} (introspection reads it)",
                "missing: is it in galaxy.yml's build_ignore?",
            ):
                continue
            here = (repo / name).read_bytes() if (repo / name).exists() else None
            c.check(
                inside == here,
                f"tarball's {name} is the work tree's",
                "it differs: the tarball is stale, rebuild it (make build)",
            )
    return info


def default_core_pin(repo: Path) -> tuple[Optional[str], str]:
    """The ansible-core ``make setup`` installs by default, and the file that pins it:
    the newest release of the matrix (tools/core_matrix.py), requirements/core-X.Y.txt."""
    path = repo / "requirements" / f"core-{core_matrix.releases()[-1]}.txt"
    for line in read_lines(path):
        if re.match(r"ansible-core\s*==", line):
            return without_comment(line).partition("==")[2].strip(), str(path.relative_to(repo))
    return None, str(path.relative_to(repo))


def check_containerfile(c: Checks, containerfile: Path, ee: dict, repo: Path) -> str:
    text = containerfile.read_text(encoding="utf-8") if containerfile.exists() else ""
    c.check(bool(text), f"{containerfile} written", "ansible-builder create wrote none")
    args = dict(re.findall(r'^ARG (\w+)="([^"]*)"$', text, flags=re.M))
    base = ee.get("images", {}).get("base_image", {}).get("name")
    c.check(
        args.get("EE_BASE_IMAGE") == base and "FROM $EE_BASE_IMAGE AS base" in text,
        f"Containerfile builds FROM {base}",
        f"EE_BASE_IMAGE is {args.get('EE_BASE_IMAGE')!r}",
    )
    refs = args.get("ANSIBLE_INSTALL_REFS", "").split()
    installs = "RUN $PYCMD -m pip install --no-cache-dir $ANSIBLE_INSTALL_REFS" in text
    core = next((r for r in refs if re.match(r"ansible-core\b", r)), "")
    c.check(
        bool(core) and installs, f"Containerfile installs {core or 'ansible-core'}", "it does not"
    )
    runner = next((r for r in refs if re.match(r"ansible-runner\b", r)), "")
    c.check(
        bool(runner) and installs,
        f"Containerfile installs {runner or 'ansible-runner'}",
        "it does not (AWX runs jobs with ansible-runner)",
    )
    core_version = core.partition("==")[2]
    pinned, source = default_core_pin(repo)
    c.check(
        bool(pinned) and core_version == pinned,
        f"ansible-core {core_version} is {source}'s pin (make setup's default)",
        f"{source} pins {pinned or 'nothing'}, the EE {core_version or 'nothing'}",
    )
    base_is_debian = re.search(r"(^|/)(debian|ubuntu):", str(base or "")) is not None
    if base_is_debian:
        c.check(
            args.get("PKGMGR") == "/usr/bin/apt-get",
            f"Containerfile installs system packages with apt-get on {base}",
            f"PKGMGR is {args.get('PKGMGR')!r} (options.package_manager_path)",
        )
    runtime = yaml.safe_load((repo / "meta/runtime.yml").read_text(encoding="utf-8")) or {}
    requires = str(runtime.get("requires_ansible", ""))
    c.check(
        bool(core_version) and satisfies(core_version, requires),
        f"ansible-core {core_version} meets meta/runtime.yml's requires_ansible {requires}",
        "it does not (pin an exact ansible-core==X.Y.Z in execution-environment.yml)",
    )
    c.check(
        "RUN /output/scripts/check_ansible $PYCMD" in text,
        "final stage checks ansible and ansible-runner",
        "options.skip_ansible_check is set",
    )
    c.check(
        re.search(r"ansible-galaxy collection install .*-r requirements\.yml", text) is not None,
        "galaxy stage installs _build/requirements.yml",
        "no `ansible-galaxy collection install -r requirements.yml` step",
    )
    introspect = next(
        (line for line in text.splitlines() if "/output/scripts/introspect.py introspect" in line),
        "",
    )
    c.check(bool(introspect), "builder stage runs introspect.py", "no introspection step")
    return introspect


def check_context_files(c: Checks, build: Path, tarball: Path, in_build: str, repo: Path) -> list:
    reqs = yaml.safe_load((build / "requirements.yml").read_text(encoding="utf-8")) or {}
    entries = [e for e in reqs.get("collections") or [] if isinstance(e, dict)]
    c.check(
        any(e.get("name") == in_build and e.get("type") == "file" for e in entries),
        f"_build/requirements.yml installs {in_build} (type: file)",
        f"it lists {entries}",
    )
    copied = build / in_build
    c.check(copied.is_file(), f"_build/{in_build} is in the context", "missing")
    if copied.is_file():
        same = hashlib.sha256(copied.read_bytes()).digest()
        c.check(
            same == hashlib.sha256(tarball.read_bytes()).digest(),
            f"_build/{in_build} is {tarball}",
            "a different file: stale staging",
        )
    check_system_packages(
        c,
        read_lines(build / "bindep.txt"),
        "_build/bindep.txt installs {name} on {family}",
        "not for platform:{family} (bindep.txt)",
    )
    wanted = requirement_names(read_lines(repo / "meta/ee-requirements.txt"))
    listed = requirement_names(read_lines(build / "requirements.txt"))
    for name in wanted:
        c.check(name in listed, f"_build/requirements.txt lists {name}", "missing")
    if not wanted:
        c.check(
            not listed,
            "meta/ee-requirements.txt declares no Python package, _build/requirements.txt none",
            f"the context lists {listed}",
        )
    return wanted


def check_introspection(
    c: Checks, context: Path, introspect_line: str, wanted: list[str], workdir: Path
) -> None:
    build = context / "_build"
    collections = workdir / "collections"
    env = dict(os.environ)
    env.update(
        ANSIBLE_COLLECTIONS_PATH=str(collections),  # ignore copies installed elsewhere
        ANSIBLE_GALAXY_DISABLE_GPG_VERIFY="1",
        ANSIBLE_CONFIG=str(workdir / "none.cfg"),
        ANSIBLE_LOCAL_TEMP=str(workdir / "tmp"),
    )
    run(
        [tool("ansible-galaxy"), "collection", "install", "-r", "requirements.yml"]
        + ["--collections-path", str(collections)],
        "galaxy stage (ansible-galaxy collection install -r _build/requirements.yml)",
        cwd=build,
        env=env,
    )
    installed = collections / "ansible_collections" / NAMESPACE / NAME
    c.check(
        (installed / "MANIFEST.json").exists(),
        f"galaxy stage installs {NAMESPACE}.{NAME} from _build/requirements.yml",
        f"nothing at {installed}",
    )

    # As a collection author checks it: what any EE that includes the collection gets.
    out = run(
        [tool("ansible-builder"), "introspect", "--sanitize", str(collections)],
        "ansible-builder introspect",
        env=env,
    ).stdout
    data = introspection_data(out)
    source = f"{NAMESPACE}.{NAME}"
    system = from_collection(data.get("system") or [], source)
    python = requirement_names(from_collection(data.get("python") or [], source))
    check_system_packages(
        c,
        system,
        f"introspection: {source} declares {{name}} on {{family}}",
        "missing from bindep.txt or meta/execution-environment.yml",
    )
    c.check(
        sorted(python) == sorted(wanted),
        f"introspection: {source} declares Python {sorted(wanted) or 'nothing'}",
        f"it declares {sorted(python)} (meta/execution-environment.yml must point at "
        "meta/ee-requirements.txt, or introspection takes the root requirements.txt)",
    )

    # As the image's builder stage runs it: the lists bindep and pip get.
    args = shlex.split(introspect_line.partition("introspect.py introspect")[2])
    out_dir = workdir / "src"
    args = [a.replace("/tmp/src/", f"{out_dir}/") for a in args]  # noqa: S108 (the image's path)
    run(
        [sys.executable, str(build / "scripts/introspect.py"), "introspect", str(collections)]
        + args,
        "builder stage introspection",
        cwd=build,
        env=env,
    )
    check_system_packages(  # the base image is Debian: apt-get, dpkg selectors
        c,
        read_lines(out_dir / "bindep.txt"),
        "builder stage: the image's apt-get installs {name}",
        "missing from the combined bindep list",
        families=("dpkg",),
    )
    combined_pip = requirement_names(read_lines(out_dir / "requirements.txt"))
    c.check(
        sorted(set(combined_pip)) == sorted(set(wanted)),
        f"builder stage: the image's pip installs {sorted(set(wanted)) or 'nothing'} more",
        f"it installs {sorted(set(combined_pip))}",
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--tarball", required=True, type=Path, help="the built collection")
    parser.add_argument("--context", required=True, type=Path, help="build context to write")
    parser.add_argument("--repo", type=Path, default=REPO, help="the collection's work tree")
    parser.add_argument("--ee-file", type=Path, help="default: REPO/execution-environment.yml")
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    ee_file = (args.ee_file or repo / "execution-environment.yml").resolve()
    tarball, context = args.tarball.resolve(), args.context.resolve()
    started = time.monotonic()
    c = Checks()
    try:
        if not tarball.is_file():
            raise Fatal(f"no tarball at {tarball} (make build)")
        ee = yaml.safe_load(ee_file.read_text(encoding="utf-8")) or {}
        c.check(ee.get("version") == 3, f"{ee_file.name} is an ansible-builder v3 definition")
        check_tarball(c, tarball, repo)

        staged, in_build = staged_tarball(ee, ee_file)
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tarball, staged)
        print(f"      staged {tarball} as {staged}")
        fresh_context(context)
        run(
            [tool("ansible-builder"), "create", "-f", str(ee_file), "-c", str(context)]
            + ["--output-filename", "Containerfile"],
            "ansible-builder create",
            cwd=repo,
        )
        introspect_line = check_containerfile(c, context / "Containerfile", ee, repo)
        wanted = check_context_files(c, context / "_build", tarball, in_build, repo)
        if introspect_line:
            with tempfile.TemporaryDirectory(prefix="check_ee.") as tmp:
                check_introspection(c, context, introspect_line, wanted, Path(tmp))
    except (Fatal, OSError, ValueError, yaml.YAMLError) as exc:
        c.failed.append(str(exc))
        print(f"FAIL  {exc}")
    if c.summary("execution environment context", f"{time.monotonic() - started:.1f} s"):
        return 1
    print("build the image offline with podman and check it: make ee-image")
    print(f"or, with a registry: podman build -t sitelink-ee -f {context}/Containerfile {context}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
