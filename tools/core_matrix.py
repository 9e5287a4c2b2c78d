# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ansible-core releases this collection is tested with, and the tests run on each.

The matrix is the set of ``requirements/core-X.Y.txt`` files: each pins one
ansible-core release (and the ``ansible`` package built on it). ``make setup``
builds ``.venv`` on one of them (``CORE``, the newest by default); ``make test``
runs the full checks there and, through this tool, ``ansible-test sanity`` and
``units`` on every other release, each in a venv of its own with ansible-core
alone (``.cache/ansible-core/X.Y``)::

    python3 tools/core_matrix.py python 2.21     # the controller Python for a release
    python3 tools/core_matrix.py default         # the newest release (make setup's CORE)
    python3 tools/core_matrix.py check           # requires_ansible and the README say the matrix
    python3 tools/core_matrix.py run --skip 2.21 # sanity and units on the others, timed

``check`` fails when ``meta/runtime.yml``'s ``requires_ansible`` admits a minor
release the matrix does not test, or leaves out one it does, and when the README's
Requirements section names other releases. Only the standard library here: the
Makefile runs it before any venv exists.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REQUIREMENTS = REPO / "requirements"
VENVS = REPO / ".cache" / "ansible-core"
# ansible-test's copy of the collection for the matrix, apart from make sanity's.
TREE = REPO / ".cache" / "ansible-test-matrix"
# The controller Pythons each release runs on, in the order tried: ansible-core
# 2.20 dropped 3.11. 2.19 keeps 3.11, the Python it was first tested on here.
CONTROLLER_PYTHONS = {
    "2.19": ("3.11", "3.12", "3.13"),
    "2.20": ("3.12", "3.13"),
    "2.21": ("3.12", "3.13"),
}
# A release's ansible-core pin in its requirements file. Each release gets every
# sanity test on its controller Python; the gateways' Python 3.9 compile and import
# are make sanity's, on the default release.
PIN = re.compile(r"^ansible-core==(\d+\.\d+)\.\d+\s*$", re.MULTILINE)


def releases() -> list[str]:
    """X.Y of every requirements/core-X.Y.txt, oldest first."""
    found = [p.stem.removeprefix("core-") for p in REQUIREMENTS.glob("core-*.txt")]
    return sorted(found, key=lambda v: tuple(int(n) for n in v.split(".")))


def python_for(release: str) -> str:
    """A working interpreter for the release: pythonX.Y on PATH, else pyenv's."""
    wanted = CONTROLLER_PYTHONS.get(release)
    if not wanted:
        sys.exit(f"ansible-core {release}: no controller Python known (tools/core_matrix.py)")
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    for version in wanted:
        name = f"python{version}"
        installed = sorted(pyenv.glob(f"versions/{version}.*/bin/{name}"), reverse=True)
        candidates = [shutil.which(name), *installed]
        for candidate in filter(None, candidates):
            # A pyenv shim of an installed but unselected version exists and fails.
            if subprocess.run([candidate, "-V"], capture_output=True, check=False).returncode == 0:
                return str(candidate)
    sys.exit(
        f"ansible-core {release} needs Python {' or '.join(wanted)} on the controller, "
        "and none was found: install one (pyenv install, or your distribution's python3.X), "
        "or pick another release (make setup CORE=...)"
    )


def requires_ansible() -> str:
    text = (REPO / "meta" / "runtime.yml").read_text()
    match = re.search(r"^requires_ansible:\s*['\"]?([^'\"\n]+)", text, re.MULTILINE)
    if not match:
        sys.exit("meta/runtime.yml: no requires_ansible")
    return match.group(1).strip()


def admits(spec: str, version: tuple[int, ...]) -> bool:
    """PEP 440 comparison clauses (>=, >, <=, <, ==, !=) on plain X.Y.Z versions."""
    ops = {
        ">=": lambda a, b: a >= b,
        ">": lambda a, b: a > b,
        "<=": lambda a, b: a <= b,
        "<": lambda a, b: a < b,
        "==": lambda a, b: a == b,
        "!=": lambda a, b: a != b,
    }
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        match = re.fullmatch(r"(>=|<=|==|!=|>|<)\s*(\d+(?:\.\d+)*)", clause)
        if not match:
            sys.exit(f"meta/runtime.yml: requires_ansible clause {clause!r} is not understood here")
        bound = tuple(int(n) for n in match.group(2).split("."))
        bound += (0,) * (3 - len(bound))
        if not ops[match.group(1)](version, bound):
            return False
    return True


def check() -> int:
    problems = []
    matrix = releases()
    for release in matrix:
        pins = PIN.findall((REQUIREMENTS / f"core-{release}.txt").read_text())
        if pins != [release]:
            pinned = pins or "nothing"
            problems.append(f"requirements/core-{release}.txt pins ansible-core {pinned}")
        if release not in CONTROLLER_PYTHONS:
            problems.append(f"ansible-core {release}: no controller Python in tools/core_matrix.py")
    spec = requires_ansible()
    # A minor release is claimed when any of its patch releases is admitted.
    claimed = [
        f"2.{minor}"
        for minor in range(0, 100)
        if any(admits(spec, (2, minor, patch)) for patch in (0, 5, 99, 999))
    ]
    if any(admits(spec, (major, 0, 0)) for major in (3, 4, 10)):
        problems.append(f"requires_ansible {spec!r} claims ansible-core 3 and later, never tested")
    if untested := sorted(set(claimed) - set(matrix), key=lambda v: int(v.split(".")[1])):
        shown = untested if len(untested) < 6 else [*untested[:3], "...", untested[-1]]
        problems.append(
            f"requires_ansible {spec!r} claims ansible-core {', '.join(shown)}, "
            "which the matrix (requirements/core-*.txt) does not test"
        )
    if unclaimed := sorted(set(matrix) - set(claimed)):
        left_out = ", ".join(unclaimed)
        problems.append(f"requires_ansible {spec!r} leaves out {left_out}, which is tested")
    listed = f"{', '.join(matrix[:-1])} and {matrix[-1]}" if matrix[1:] else matrix[0]
    said = f"ansible-core {listed}"
    readme = (REPO / "README.md").read_text()
    section = re.search(r"^## Requirements\n(.*?)(?=^## )", readme, re.MULTILINE | re.DOTALL)
    if not section or said not in " ".join(section.group(1).split()):
        problems.append(f"README.md's Requirements section does not say {said!r}")
    for problem in problems:
        print(f"core matrix: {problem}", file=sys.stderr)
    if not problems:
        print(f"core matrix: {said}, and requires_ansible {spec!r} claims exactly those")
    return 1 if problems else 0


def venv_for(release: str) -> Path:
    """ansible-core alone (ansible-test comes with it), rebuilt when its pin changes."""
    venv = VENVS / release
    pins = REQUIREMENTS / f"core-{release}.txt"
    stamp = venv / ".installed"
    if stamp.exists() and stamp.read_text() == pins.read_text():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([python_for(release), "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    # The release's file as constraints: its ansible-core pin, without the big
    # `ansible` package, which ansible-test does not use.
    subprocess.run([*pip, "ansible-core", "-c", str(pins)], check=True)
    stamp.write_text(pins.read_text())
    return venv


def run(skip: list[str]) -> int:
    """ansible-test sanity and units on each release but the skipped, with timings."""
    rows = []
    for release in releases():
        if release in skip:
            continue
        venv = venv_for(release)
        python = Path(python_for(release)).name.removeprefix("python")
        env = dict(os.environ, PATH=f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
        # A copy of the collection of its own, so that it can run beside make sanity.
        env["SITELINK_ANSIBLE_TEST_TREE"] = str(TREE)
        tool = [str(venv / "bin" / "python"), str(REPO / "tools" / "run_ansible_test.py")]
        for test in ("sanity", "units"):
            print(f"== ansible-core {release}: ansible-test {test} --python {python}", flush=True)
            began = time.monotonic()
            done = subprocess.run([*tool, test, "--venv", "--python", python], env=env, check=False)
            rows.append((release, test, python, time.monotonic() - began, done.returncode))
    for release, test, python, seconds, code in rows:
        result = "passed" if code == 0 else "FAILED"
        print(f"ansible-core {release} {test:6} Python {python}: {result} in {seconds:.0f} s")
    return 1 if any(row[-1] for row in rows) else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("python").add_argument("release")
    sub.add_parser("default")
    sub.add_parser("check")
    sub.add_parser("run").add_argument("--skip", action="append", default=[])
    args = parser.parse_args(argv)
    if args.command == "python":
        print(python_for(args.release))
        return 0
    if args.command == "default":
        print(releases()[-1])
        return 0
    if args.command == "check":
        return check()
    return run(args.skip)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
