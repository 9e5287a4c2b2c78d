# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build the execution environment image with podman, offline, and check it.

    python tools/ee_image.py [--tarball build/sitelink-gateway-0.2.0.tar.gz] [--navigator]

No registry is needed and no container reaches a network (every ``podman run``
and the build run with ``--network none``):

1. The collection tarball (``--tarball``, or built here) is staged where
   execution-environment.yml takes it from.
2. The definition's base image (docker.io/library/debian:trixie) is made locally:
   mmdebstrap writes a Debian tree with every package the build installs with apt
   already in it, and its package lists kept, so the build's ``apt-get install``
   steps are no-ops; ``podman import`` tags it with the definition's name, so the
   build never pulls. The tree is cached in .cache/ee/ and remade when the package
   list changes.
3. The Python wheels the build installs (ansible-core, ansible-runner, bindep, ...)
   are downloaded on the host with a Python of the image's version, cached in
   .cache/ee/, and mounted into every build step together with a pip.conf that
   makes pip use them and no index; nothing of it stays in the image or in the
   definition.
4. ``ansible-builder build`` with podman tags sitelink-ee:VERSION and sitelink-ee:latest.
5. In the image: ``ansible-galaxy collection list`` shows the collection's version;
   ``ansible-doc`` documents every module of plugins/modules; ``plan.yml`` on the
   case study writes its plan and picture (a valid SVG), the same plan as the
   checked-in one. ``--navigator`` runs plan.yml with ansible-navigator too.

podman keeps everything in this checkout and /tmp: its storage in
.cache/ee/containers, its run state and temporary files in /tmp/sitelink-ee
(through CONTAINERS_CONF and CONTAINERS_STORAGE_CONF, which ansible-builder's and
ansible-navigator's podman calls inherit). The image is therefore only in that
storage: ``podman`` outside this tool does not see it (``tools/ee_image.py
--podman images`` runs podman with this tool's settings).

One line per check; exit status 1, naming what failed.
"""

from __future__ import annotations

import argparse
import glob
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
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_ee import (  # noqa: E402 (tools/ is not a package)
    NAME,
    NAMESPACE,
    Checks,
    Fatal,
    bindep_packages,
    fresh_context,
    read_lines,
    staged_tarball,
    tool,
    without_comment,
)

REPO = Path(__file__).resolve().parent.parent
IMAGE = "sitelink-ee"
CACHE = REPO / ".cache" / "ee"
# podman's run state and temporary files: short paths (sockets) that need not persist.
RUN_DIR = Path("/tmp/sitelink-ee")  # noqa: S108
# The engine options this machine needs (crun refuses its hybrid cgroups, podman's
# default ulimits are refused); also written to containers.conf for navigator.
ULIMITS = ("nofile=1024:1024", "nproc=1024:1024")
PODMAN_RUN = ["--runtime", "runc", "--network", "none"] + [
    arg for limit in ULIMITS for arg in ("--ulimit", limit)
]
# Debian release of the base image -> its Python, for the wheels.
DEBIAN_PYTHON = {"trixie": "3.13", "bookworm": "3.11"}
# Besides the definition's python_interpreter.package_system and bindep.txt's
# Debian packages: pip's and apt's TLS roots (for a later online apt or pip use).
EXTRA_BASE_PACKAGES = ("ca-certificates",)
CASE_STUDY = REPO / "examples" / "case-study"
# Inside the image (read-only and writable mounts for the plan check).
IN_INVENTORY, IN_OUT = "/sitelink/inventory", "/sitelink/out"
WHEELS_IN_BUILD = "/etc/xdg/pip"  # pip reads pip.conf there; the wheels lie beside it


# Every podman call (and ansible-builder's and ansible-navigator's) runs in a mount
# namespace of its own, so that what podman 4.3 writes where no setting reaches stays
# in /tmp and the checkout, and the host's mounts stay as they are:
# - /var/tmp: podman creates (and at once removes) temporary files there during a
#   build, whatever TMPDIR and image_copy_tmp_dir say;
# - /var/lib/containers: containers/image's blob-info cache of root (no setting);
# - /dev/mqueue: ansible-runner starts podman with --ipc=host, so ansible-navigator
#   insists on the host's /dev/mqueue, which this machine does not mount. /dev
#   becomes an overlay that holds one (the real /dev/shm, with podman's locks, and
#   /dev/pts moved over it).
# The namespace goes with the process.
NAMESPACE_SCRIPT = """set -eu
run=$1 cache=$2; shift 2
mkdir -p "$run/var-tmp" "$cache/var-lib-containers"
mount -n --bind "$run/var-tmp" /var/tmp
mkdir -p /var/lib/containers
mount -n --bind "$cache/var-lib-containers" /var/lib/containers
dev=""
if [ ! -d /dev/mqueue ]; then
  dev=$(mktemp -d "$run/dev.XXXXXX")
  mkdir "$dev/up" "$dev/work" "$dev/shm" "$dev/pts"
  mount -n --rbind /dev/shm "$dev/shm"
  mount -n --rbind /dev/pts "$dev/pts"
  mount -n -t overlay overlay -o "lowerdir=/dev,upperdir=$dev/up,workdir=$dev/work" /dev
  mount -n --move "$dev/shm" /dev/shm
  mount -n --move "$dev/pts" /dev/pts
  mkdir /dev/mqueue
  mount -n -t mqueue mqueue /dev/mqueue
fi
set +e
"$@"
rc=$?
[ -z "$dev" ] || { umount -n -l /dev; rm -rf "$dev"; }
exit $rc
"""


def say(text: str) -> None:
    print(f"      {text}", flush=True)


def elapsed(started: float) -> str:
    return f"{time.monotonic() - started:.1f} s"


class Engine:
    """podman with this tool's storage and settings (the environment carries them)."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self.conf = cache / "conf"
        self.env = dict(os.environ)
        self.started: list[str] = []

    def configure(self) -> None:
        for path in (self.conf, self.cache / "containers", RUN_DIR / "tmp"):
            path.mkdir(parents=True, exist_ok=True)
        storage = self.conf / "storage.conf"
        storage.write_text(
            "# Written by tools/ee_image.py: podman's storage inside the checkout.\n"
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.cache / "containers" / "storage"}"\n'
            f'runroot = "{RUN_DIR / "run"}"\n',
            encoding="utf-8",
        )
        containers = self.conf / "containers.conf"
        ulimits = ", ".join(f'"{limit}"' for limit in ULIMITS)
        containers.write_text(
            "# Written by tools/ee_image.py: runc, cgroupfs, the ulimits this machine\n"
            "# accepts, no network, and nothing written outside the checkout and /tmp.\n"
            "[containers]\n"
            f"default_ulimits = [{ulimits}]\n"
            'netns = "none"\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{RUN_DIR / "events.log"}"\n'
            f'tmp_dir = "{RUN_DIR / "libpod"}"\n'
            f'image_copy_tmp_dir = "{RUN_DIR / "tmp"}"\n'
            f'volume_path = "{self.cache / "containers" / "volumes"}"\n'
            "[network]\n"
            f'network_config_dir = "{RUN_DIR / "networks"}"\n',
            encoding="utf-8",
        )
        self.env.update(
            CONTAINERS_CONF=str(containers),
            CONTAINERS_STORAGE_CONF=str(storage),
            TMPDIR=str(RUN_DIR / "tmp"),
        )
        (self.conf / "namespace.sh").write_text(NAMESPACE_SCRIPT, encoding="utf-8")

    def wrap(self, cmd: list[str]) -> list[str]:
        """``cmd`` in a private mount namespace (NAMESPACE_SCRIPT)."""
        unshare = ["unshare", "--mount", "--propagation", "private", "--"]
        script = str(self.conf / "namespace.sh")
        return [*unshare, "sh", script, str(RUN_DIR), str(self.cache), *cmd]

    def run(
        self, args: list[str], what: str, timeout: int = 600, check: bool = True
    ) -> subprocess.CompletedProcess:
        cmd = self.wrap(["podman", *args])
        try:
            result = subprocess.run(
                cmd, capture_output=True, text=True, env=self.env, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise Fatal(f"{what}: no answer in {timeout} s: {shlex.join(cmd)}") from None
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr).strip()
            raise Fatal(f"{what} failed (exit {result.returncode}): {shlex.join(cmd)}\n{output}")
        return result

    def container(
        self, image: str, command: list[str], what: str, mounts: tuple = (), timeout: int = 300
    ) -> subprocess.CompletedProcess:
        """``podman run --rm`` with a name of ours, removed by that name if it hangs."""
        name = f"sitelink-ee-check-{os.getpid()}-{len(self.started)}"
        self.started.append(name)
        args = ["run", "--rm", "--name", name, *PODMAN_RUN]
        for mount in mounts:
            args += ["--volume", mount]
        try:
            return self.run([*args, image, *command], what, timeout=timeout, check=False)
        except Fatal:
            self.run(["rm", "--force", "--time", "0", name], "podman rm", check=False)
            raise

    def teardown(self) -> None:
        """Remove any container this run started that is still there (a hung check)."""
        for name in self.started:
            if self.run(["container", "exists", name], "podman", check=False).returncode == 0:
                self.run(["rm", "--force", "--time", "0", name], "podman rm", check=False)


def load_definition(ee_file: Path) -> dict:
    return yaml.safe_load(ee_file.read_text(encoding="utf-8")) or {}


def base_packages(ee: dict, repo: Path) -> list[str]:
    """What the build installs with apt: the Python packages and bindep's Debian list."""
    interpreter = ee.get("dependencies", {}).get("python_interpreter", {}) or {}
    names = str(interpreter.get("package_system") or "python3").split()
    names += bindep_packages(read_lines(repo / "bindep.txt"), "dpkg")
    names += EXTRA_BASE_PACKAGES
    return sorted(set(names))


def make_base(engine: Engine, base: str, packages: list[str]) -> float:
    """The definition's base image, made with mmdebstrap and imported under its name."""
    suite = base.rpartition(":")[2]
    if ":" not in base or suite not in DEBIAN_PYTHON:
        raise Fatal(f"base image {base}: expected a Debian image named by suite ({DEBIAN_PYTHON})")
    args = [
        "--variant=apt",
        "--format=tar",
        "--skip=cleanup/apt/lists",  # apt-get install of present packages works offline
        f"--include={','.join(packages)}",
        suite,
    ]
    key = hashlib.sha256(json.dumps(["mmdebstrap", *args]).encode()).hexdigest()[:16]
    rootfs = engine.cache / f"base-{suite}-{key}.tar"
    started = time.monotonic()
    if rootfs.exists():
        say(f"base tree cached: {rootfs.name} ({' '.join(packages)})")
    else:
        for stale in engine.cache.glob(f"base-{suite}-*.tar"):
            stale.unlink()
        if not shutil.which("mmdebstrap"):
            raise Fatal(
                "mmdebstrap not found (make ee-image installs it: apt-get install mmdebstrap)"
            )
        say(f"making the base tree: mmdebstrap {shlex.join(args)}")
        partial = rootfs.with_suffix(".tar.partial")
        result = subprocess.run(
            ["mmdebstrap", *args, str(partial)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise Fatal(f"mmdebstrap failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
        partial.rename(rootfs)
        say(f"base tree made in {elapsed(started)}")
    label = "org.sitelink.ee-base"
    found = engine.run(
        ["image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', base],
        "podman image inspect",
        check=False,
    )
    if found.returncode == 0 and found.stdout.strip() == key:
        say(f"base image {base} is current ({key})")
    else:
        engine.run(
            ["import", "--change", f"LABEL {label}={key}", str(rootfs), base],
            f"podman import {rootfs.name} as {base}",
        )
        say(f"imported {rootfs.name} as {base}")
    return time.monotonic() - started


def pip_refs(containerfile: Path, repo: Path) -> list[str]:
    """Every requirement the generated Containerfile has pip install, and the collection's."""
    text = containerfile.read_text(encoding="utf-8")
    args = dict(re.findall(r'^ARG (\w+)="([^"]*)"$', text, flags=re.M))
    refs: list[str] = []
    for line in re.findall(r"pip install --no-cache-dir (.*)$", text, flags=re.M):
        line = line.replace("$ANSIBLE_INSTALL_REFS", args.get("ANSIBLE_INSTALL_REFS", ""))
        refs += [word for word in shlex.split(line) if not word.startswith("-")]
    requirements = map(without_comment, read_lines(repo / "meta/ee-requirements.txt"))
    return refs + [line for line in requirements if line]


def wheel_python(version: str, given: Optional[str]) -> str:
    """A Python of the image's version (pip downloads wheels for the Python it runs on)."""
    candidates = [given] if given else []
    candidates += [
        shutil.which(f"python{version}") or "",
        *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python"))),
    ]
    for candidate in filter(None, candidates):
        out = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip() == version:
            return candidate
    raise Fatal(f"no Python {version} found for the image's wheels (give --wheel-python)")


def download_wheels(cache: Path, refs: list[str], python: str, version: str) -> tuple[Path, float]:
    """The wheels for ``refs`` and their dependencies, for Python ``version``, cached."""
    key = hashlib.sha256(json.dumps([version, sorted(refs)]).encode()).hexdigest()[:16]
    wheels = cache / f"wheels-{key}"
    started = time.monotonic()
    if (wheels / "pip.conf").exists():
        say(f"wheels cached: {wheels.name} ({len(list(wheels.glob('*.whl')))} wheels)")
        return wheels, time.monotonic() - started
    for stale in cache.glob("wheels-*"):
        shutil.rmtree(stale)
    say(f"downloading wheels with {python}: {' '.join(refs)}")
    cmd = [python, "-m", "pip", "download", "--quiet", "--only-binary", ":all:"]
    cmd += ["--dest", str(wheels), *refs]
    env = dict(os.environ, PIP_CACHE_DIR=str(cache / "pip-cache"))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        shutil.rmtree(wheels, ignore_errors=True)
        raise Fatal(f"pip download failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    # Written last: its presence says the directory is complete.
    (wheels / "pip.conf").write_text(
        "# tools/ee_image.py: the build's pip takes these wheels and no index.\n"
        f"[global]\nno-index = true\nfind-links = {WHEELS_IN_BUILD}\n",
        encoding="utf-8",
    )
    say(f"{len(list(wheels.glob('*.whl')))} wheels downloaded in {elapsed(started)}")
    return wheels, time.monotonic() - started


def collection_tarball(given: Optional[Path], repo: Path, workdir: Path) -> Path:
    if given:
        if not given.is_file():
            raise Fatal(f"no tarball at {given}")
        return given.resolve()
    env = dict(os.environ)
    env.setdefault("ANSIBLE_HOME", str(workdir / "ansible"))  # not ~/.ansible (make sets it)
    subprocess.run(
        [tool("ansible-galaxy"), "collection", "build", "--force", "--output-path", str(workdir)],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return next(workdir.glob(f"{NAMESPACE}-{NAME}-*.tar.gz"))


def tarball_version(tarball: Path) -> str:
    with tarfile.open(tarball) as tar:
        member = tar.extractfile("MANIFEST.json")
        manifest = json.loads(member.read() if member else b"{}")
    info = manifest.get("collection_info", {})
    if (info.get("namespace"), info.get("name")) != (NAMESPACE, NAME):
        raise Fatal(f"{tarball} is not {NAMESPACE}.{NAME}")
    return str(info["version"])


def build_image(
    engine: Engine,
    ee_file: Path,
    context: Path,
    wheels: Path,
    tags: list[str],
    log: Path,
    squash: bool = False,
) -> float:
    extra = [*PODMAN_RUN, "--pull=never", "--volume", f"{wheels}:{WHEELS_IN_BUILD}:ro"]
    cmd = [tool("ansible-builder"), "build", "-f", str(ee_file), "-c", str(context)]
    cmd += ["--output-filename", "Containerfile", "--container-runtime", "podman", "-v", "3"]
    for tag in tags:
        cmd += ["-t", tag]
    if squash:
        cmd += ["--squash", "all"]
    cmd += ["--extra-build-cli-args", shlex.join(extra)]
    say(f"ansible-builder build (log: {log})")
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        result = subprocess.run(
            engine.wrap(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=engine.env,
            timeout=1800,
            check=False,
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(encoding="utf-8").splitlines()[-40:])
        raise Fatal(f"ansible-builder build failed (exit {result.returncode}), log {log}:\n{tail}")
    # Earlier builds' intermediate images go; this build's stay, the next one's cache.
    since = time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (time.monotonic() - started))
    )
    engine.run(
        ["image", "prune", "--force", "--filter", f"until={since}"],
        "podman image prune",
        check=False,
    )
    return time.monotonic() - started


def json_out(result: subprocess.CompletedProcess) -> object:
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return None


def failure_text(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}: " + (result.stderr or result.stdout).strip()[-1500:]


def check_collection(c: Checks, engine: Engine, image: str, version: str) -> None:
    result = engine.container(
        image,
        ["ansible-galaxy", "collection", "list", f"{NAMESPACE}.{NAME}", "--format", "json"],
        "ansible-galaxy collection list",
    )
    data = json_out(result)
    found = [
        entry[f"{NAMESPACE}.{NAME}"]["version"]
        for entry in (data.values() if isinstance(data, dict) else [])
        if f"{NAMESPACE}.{NAME}" in entry
    ]
    c.check(
        found == [version],
        f"image: ansible-galaxy collection list shows {NAMESPACE}.{NAME} {version}",
        f"it shows {found or 'no such collection'}"
        + ("" if result.returncode == 0 else f" ({failure_text(result)})"),
    )


def modules(repo: Path) -> list[str]:
    return sorted(
        p.stem for p in (repo / "plugins/modules").glob("*.py") if not p.stem.startswith("_")
    )


def check_docs(c: Checks, engine: Engine, image: str, names: list[str]) -> None:
    fqcns = [f"{NAMESPACE}.{NAME}.{name}" for name in names]
    result = engine.container(
        image, ["ansible-doc", "--json", "-t", "module", *fqcns], "ansible-doc"
    )
    data = json_out(result)
    docs = data if isinstance(data, dict) else {}
    for fqcn in fqcns:
        doc = (docs.get(fqcn) or {}).get("doc") or {}
        c.check(
            bool(doc) and doc.get("module") == fqcn.rpartition(".")[2],
            f"image: ansible-doc {fqcn}",
            "no documentation" + ("" if result.returncode == 0 else f" ({failure_text(result)})"),
        )


def check_plan(c: Checks, engine: Engine, image: str, repo: Path, out: Path) -> None:
    """plan.yml on the case study writes the plan and a valid SVG, the checked-in plan."""
    inventory = repo / CASE_STUDY.relative_to(REPO)
    out.chmod(0o1777)  # the image runs as uid 1000
    result = engine.container(
        image,
        ["ansible-playbook", "-i", f"{IN_INVENTORY}/inventory.yml", f"{NAMESPACE}.{NAME}.plan"]
        + ["-e", f"sitelink_plan_dir={IN_OUT}/plan", "-e", "sitelink_plan_console=summary"],
        "ansible-playbook sitelink.gateway.plan",
        mounts=(f"{inventory}:{IN_INVENTORY}:ro", f"{out}:{IN_OUT}:rw"),
    )
    c.check(
        result.returncode == 0,
        "image: ansible-playbook sitelink.gateway.plan on the case study",
        failure_text(result),
    )
    written, expected = out / "plan", inventory / "plan"
    wanted = sorted(p.relative_to(expected) for p in expected.rglob("*") if p.is_file())
    for relative in wanted:
        path = written / relative
        if relative.suffix == ".svg":
            continue
        c.check(
            path.is_file() and path.read_bytes() == (expected / relative).read_bytes(),
            f"image: plan wrote {relative}, the checked-in one",
            "missing" if not path.is_file() else f"it differs from {expected / relative}",
        )
    svg = written / "network.svg"
    root_tag = ""
    if svg.is_file():
        try:
            root_tag = ET.parse(svg).getroot().tag  # noqa: S314 (our own file)
        except ET.ParseError as exc:
            root_tag = f"not XML: {exc}"
    c.check(
        root_tag == "{http://www.w3.org/2000/svg}svg",
        "image: plan drew network.svg (Graphviz's dot), a valid SVG",
        f"root element {root_tag!r}" if svg.is_file() else "no network.svg written",
    )


def check_navigator(c: Checks, engine: Engine, image: str, repo: Path, out: Path) -> None:
    """ansible-navigator runs plan.yml in the image (podman with this tool's settings)."""
    navigator = tool("ansible-navigator")
    inventory = repo / CASE_STUDY.relative_to(REPO)
    artifacts = out / "navigator"
    artifacts.mkdir()
    artifacts.chmod(0o1777)  # the image runs as uid 1000
    cmd = [navigator, "run", f"{NAMESPACE}.{NAME}.plan", "--mode", "stdout"]
    cmd += ["--execution-environment-image", image, "--pull-policy", "never"]
    cmd += ["--container-engine", "podman"]
    # One option per --container-options, in --opt=value form (a space would make
    # podman read "--runtime runc" as one unknown flag).
    options = [f"{a}={b}" for a, b in zip(PODMAN_RUN[::2], PODMAN_RUN[1::2])]
    cmd += [f"--container-options={option}" for option in options]
    cmd += ["--inventory", f"{IN_INVENTORY}/inventory.yml"]
    cmd += ["--execution-environment-volume-mounts", f"{inventory}:{IN_INVENTORY}:ro"]
    cmd += ["--execution-environment-volume-mounts", f"{artifacts}:{IN_OUT}:rw"]
    cmd += ["--playbook-artifact-enable", "false", "--log-file", str(out / "navigator.log")]
    cmd += ["--extra-vars", f"sitelink_plan_dir={IN_OUT}/plan"]
    cmd += ["--extra-vars", "sitelink_plan_console=summary"]
    # The host's Ansible settings (make exports ANSIBLE_COLLECTIONS_PATH, ANSIBLE_HOME)
    # are not the image's: navigator would hand them to ansible-playbook in it.
    env = {k: v for k, v in engine.env.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_NAVIGATOR_CONFIG"] = str(out / "navigator.yml")
    (out / "navigator.yml").write_text("---\nansible-navigator: {}\n", encoding="utf-8")
    say(f"navigator: {shlex.join(cmd)}")
    result = subprocess.run(
        engine.wrap(cmd), capture_output=True, text=True, env=env, cwd=out, timeout=600, check=False
    )
    written = [artifacts / "plan" / name for name in ("network.txt", "network.svg")]
    c.check(
        result.returncode == 0 and all(path.is_file() for path in written),
        "navigator: ansible-navigator run sitelink.gateway.plan in the image writes the plan",
        failure_text(result),
    )


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--tarball", type=Path, help="the built collection (default: build it)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the collection's work tree")
    parser.add_argument("--context", type=Path, help="default: REPO/build/ee-image")
    parser.add_argument("--wheel-python", help="a Python of the image's version (default: found)")
    parser.add_argument("--navigator", action="store_true", help="run plan.yml with navigator too")
    parser.add_argument("--skip-build", action="store_true", help="check the image there is")
    parser.add_argument(
        "--squash",
        action="store_true",
        help="one layer: about 60 MB smaller (apt's lists go), a slower build",
    )
    parser.add_argument(
        "--podman", nargs=argparse.REMAINDER, help="run podman with this tool's settings and exit"
    )
    args = parser.parse_args(argv)
    repo = args.repo.resolve()
    ee_file = repo / "execution-environment.yml"
    context = (args.context or repo / "build" / "ee-image").resolve()
    engine = Engine(repo / CACHE.relative_to(REPO))
    engine.configure()
    if args.podman is not None:
        podman = engine.wrap(["podman", *args.podman])
        return subprocess.run(podman, env=engine.env, check=False).returncode

    c = Checks()
    times: dict[str, float] = {}
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="ee_image.") as tmp:
            workdir = Path(tmp)
            ee = load_definition(ee_file)
            base = ee.get("images", {}).get("base_image", {}).get("name", "")
            tarball = collection_tarball(args.tarball, repo, workdir)
            version = tarball_version(tarball)
            image = f"localhost/{IMAGE}:{version}"
            if not args.skip_build:
                staged = staged_tarball(ee, ee_file)[0]
                staged.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tarball, staged)
                say(f"staged {tarball} as {staged}")
                times["base image"] = make_base(engine, base, base_packages(ee, repo))

                # The context first (for the pip lines), then the build writes it again.
                fresh_context(context)
                subprocess.run(
                    [tool("ansible-builder"), "create", "-f", str(ee_file), "-c", str(context)]
                    + ["--output-filename", "Containerfile"],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                python_version = DEBIAN_PYTHON[base.rpartition(":")[2]]
                refs = pip_refs(context / "Containerfile", repo)
                python = wheel_python(python_version, args.wheel_python)
                wheels, times["wheels"] = download_wheels(
                    engine.cache, refs, python, python_version
                )
                times["build"] = build_image(
                    engine,
                    ee_file,
                    context,
                    wheels,
                    [f"{IMAGE}:{version}", f"{IMAGE}:latest"],
                    engine.cache / "build.log",
                    squash=args.squash,
                )
                say(f"built {image} and {IMAGE}:latest in {times['build']:.1f} s")
            size = engine.run(
                ["image", "inspect", "--format", "{{.Size}}", image],
                f"podman image inspect {image}",
            ).stdout.strip()
            say(f"image {image}: {int(size) / 1e6:.0f} MB")

            checks = time.monotonic()
            check_collection(c, engine, image, version)
            check_docs(c, engine, image, modules(repo))
            out = workdir / "out"
            out.mkdir()
            check_plan(c, engine, image, repo, out)
            times["checks"] = time.monotonic() - checks
            if args.navigator:
                navigator = time.monotonic()
                check_navigator(c, engine, f"{IMAGE}:latest", repo, out)
                times["navigator"] = time.monotonic() - navigator
    except (Fatal, OSError, ValueError, yaml.YAMLError, subprocess.CalledProcessError) as exc:
        if isinstance(exc, subprocess.CalledProcessError):
            exc = Fatal(f"{shlex.join(exc.cmd)} failed (exit {exc.returncode}): {exc.stderr}")
        c.failed.append(str(exc))
        print(f"FAIL  {exc}")
    finally:
        engine.teardown()
    summary = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in times.items())
    total = time.monotonic() - started
    return c.summary("execution environment image", f"{summary}; total {total:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
