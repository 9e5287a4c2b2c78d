"""Run ``ansible-test`` on this collection, offline and without a container engine.

ansible-test needs the collection at a real ``ansible_collections/sitelink/gateway``
path (it resolves symlinks, so the Makefile's ``.cache/collections`` link will not
do). This copies the files git knows about (tracked, plus new ones not ignored)
into ``.cache/ansible-test/ansible_collections/sitelink/gateway`` and runs
ansible-test there with the arguments given, e.g.::

    python tools/run_ansible_test.py sanity --venv --python 3.12

``--relay`` first tests the relay program instead. Gateways run it with their own
python3 (3.9 on Debian 11), but ansible-test holds only modules and module_utils
to the older Pythons. So the relay's package is put where ansible-test looks for
code that runs on managed nodes, in a collection of its own made for the run
(``sitelink.relay_view``, ``plugins/module_utils/sitelink_relay``), e.g.::

    python tools/run_ansible_test.py --relay sanity --venv --python 3.9 --test compile --test import

With ``--venv``, ansible-test bootstraps pip in each virtual environment with a
``get-pip`` script it downloads from a host these machines (and many behind a
proxy: ansible/ansible#77304) cannot reach; it uses a cached copy when there is
one. Where none is cached, this writes a stand-in that installs pip with
``ensurepip`` and then the requested packages from the configured package index.
A real cached script is never replaced.

ansible-test keeps its virtual environments and that cache under ``~/.ansible/test``
(hard-coded), so it runs with ``HOME`` set to ``.cache/ansible-test/home``: nothing
is written outside the checkout. pip's own user configuration (a package mirror,
say) is still read, from where the real home has it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# SITELINK_ANSIBLE_TEST_TREE gives a run a tree of its own: make test runs the
# ansible-core matrix (tools/core_matrix.py) beside make sanity and make unit.
TREE = Path(os.environ.get("SITELINK_ANSIBLE_TEST_TREE") or REPO / ".cache" / "ansible-test")
COLLECTION = TREE / "ansible_collections" / "sitelink" / "gateway"
RELAY_VIEW = TREE / "ansible_collections" / "sitelink" / "relay_view"
# __main__.py only starts the program (it would run it on import).
RELAY_VIEW_SKIP = {"__main__.py"}
# ansible-test's HOME (see above).
TEST_HOME = TREE / "home"

GET_PIP_STAND_IN = '''\
"""Offline stand-in for get-pip.py, written by sitelink.gateway's tools/run_ansible_test.py.

ansible-test runs it as ``python get_pip_X_Y.py PIP-OPTIONS PACKAGES``: pip comes
from ensurepip, the packages from the configured index.
"""
import subprocess
import sys

GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}
args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade", "--default-pip"])
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *args]))
'''


def git_init(path: Path) -> None:
    # ansible-test lists content with git from the nearest repository upwards;
    # without one of its own the copy would be an ignored part of this one.
    subprocess.run(["git", "init", "-q", str(path)], check=True)


def collection_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (REPO / name).exists()]


def copy_tree() -> None:
    """A fresh copy each run, so files removed from the work tree are gone here too."""
    if COLLECTION.exists():
        shutil.rmtree(COLLECTION)
    for name in collection_files():
        target = COLLECTION / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target, follow_symlinks=False)
    git_init(COLLECTION)


def copy_relay_view() -> Path:
    """The relay's package as module_utils of a throwaway collection."""
    if RELAY_VIEW.exists():
        shutil.rmtree(RELAY_VIEW)
    package = RELAY_VIEW / "plugins" / "module_utils" / "sitelink_relay"
    package.mkdir(parents=True)
    for source in sorted((REPO / "relay" / "sitelink_relay").glob("*.py")):
        if source.name not in RELAY_VIEW_SKIP:
            shutil.copy2(source, package / source.name)
    (RELAY_VIEW / "meta").mkdir()
    (RELAY_VIEW / "meta" / "runtime.yml").write_text('---\nrequires_ansible: ">=2.19.0"\n')
    (RELAY_VIEW / "tests").mkdir()
    (RELAY_VIEW / "tests" / "config.yml").write_text("---\nmodules:\n  python_requires: '>=3.9'\n")
    (RELAY_VIEW / ".gitignore").write_text("/tests/output/\n")
    git_init(RELAY_VIEW)
    return RELAY_VIEW


def pip_version() -> str:
    """The pip version ansible-test bootstraps (its ``get_venv_packages``)."""
    import ansible_test

    source = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
    match = re.search(r"\bpip='([\d.]+)'", source.read_text())
    if not match:
        sys.exit(f"cannot find the pip version ansible-test bootstraps in {source}")
    return match.group(1)


def ensure_get_pip() -> None:
    cache = TEST_HOME / ".ansible" / "test" / "cache"
    script = cache / f"get_pip_{pip_version().replace('.', '_')}.py"
    if not script.exists():
        cache.mkdir(parents=True, exist_ok=True)
        script.write_text(GET_PIP_STAND_IN)


def python_on_path(argv: list[str], env: dict[str, str]) -> None:
    """Make ``pythonX.Y`` of ``--python X.Y`` runnable, for ansible-test looks it up on PATH.

    A pyenv shim for a version that is installed but not selected fails; the
    interpreter itself is then linked into a directory put first on PATH.
    """
    if "--python" not in argv:
        return
    version = argv[argv.index("--python") + 1]
    name = f"python{version}"
    found = shutil.which(name, path=env["PATH"])
    if found and subprocess.run([found, "-V"], capture_output=True, check=False).returncode == 0:
        return
    pyenv_root = Path(env.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = sorted(pyenv_root.glob(f"versions/{version}.*/bin/{name}"))
    if not candidates:
        sys.exit(f"Python {version} is needed (ansible-test --python {version}) and not found")
    links = TREE / "bin"
    links.mkdir(parents=True, exist_ok=True)
    link = links / name
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(candidates[-1])
    env["PATH"] = f"{links}{os.pathsep}{env['PATH']}"


def keep_pip_config(env: dict[str, str]) -> None:
    """pip finds the user's configuration through HOME, which the run replaces."""
    if "PIP_CONFIG_FILE" in env:
        return
    config_home = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    for candidate in (config_home / "pip" / "pip.conf", Path.home() / ".pip" / "pip.conf"):
        if candidate.is_file():
            env["PIP_CONFIG_FILE"] = str(candidate)
            return


def main(argv: list[str]) -> int:
    if argv[:1] == ["--relay"]:
        argv, root = argv[1:], copy_relay_view()
    else:
        copy_tree()
        root = COLLECTION
    ensure_get_pip()
    ansible_test = shutil.which("ansible-test")
    if not ansible_test:
        sys.exit("ansible-test not found: run `make setup` first")
    env = dict(os.environ)
    # The copy is what ansible-test tests; it must not also find the work tree.
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    python_on_path(argv, env)
    keep_pip_config(env)
    env["HOME"] = str(TEST_HOME)
    return subprocess.call([ansible_test, *argv], cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
