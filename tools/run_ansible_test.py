"""Run ``ansible-test`` on this collection, offline and without a container engine.

ansible-test needs the collection at a real ``ansible_collections/sitelink/gateway``
path (it resolves symlinks, so the Makefile's ``.cache/collections`` link will not
do). This copies the files git knows about (tracked, plus new ones not ignored)
into ``.cache/ansible-test/ansible_collections/sitelink/gateway`` and runs
ansible-test there with the arguments given, e.g.::

    python tools/run_ansible_test.py sanity --venv --python 3.11

With ``--venv``, ansible-test bootstraps pip in each virtual environment with a
``get-pip`` script it downloads from a host these machines (and many behind a
proxy: ansible/ansible#77304) cannot reach; it uses a cached copy when there is
one. Where none is cached, this writes a stand-in that installs pip with
``ensurepip`` and then the requested packages from the configured package index.
A real cached script is never replaced.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / ".cache" / "ansible-test"
COLLECTION = TREE / "ansible_collections" / "sitelink" / "gateway"

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
    # ansible-test lists content with git from the nearest repository upwards;
    # without one of its own the copy would be an ignored part of this one.
    subprocess.run(["git", "init", "-q", str(COLLECTION)], check=True)


def pip_version() -> str:
    """The pip version ansible-test bootstraps (its ``get_venv_packages``)."""
    import ansible_test

    source = Path(ansible_test.__file__).parent / "_internal" / "python_requirements.py"
    match = re.search(r"\bpip='([\d.]+)'", source.read_text())
    if not match:
        sys.exit(f"cannot find the pip version ansible-test bootstraps in {source}")
    return match.group(1)


def ensure_get_pip() -> None:
    cache = Path.home() / ".ansible" / "test" / "cache"
    script = cache / f"get_pip_{pip_version().replace('.', '_')}.py"
    if not script.exists():
        cache.mkdir(parents=True, exist_ok=True)
        script.write_text(GET_PIP_STAND_IN)


def main(argv: list[str]) -> int:
    copy_tree()
    ensure_get_pip()
    ansible_test = shutil.which("ansible-test")
    if not ansible_test:
        sys.exit("ansible-test not found: run `make setup` first")
    env = dict(os.environ)
    # The copy is what ansible-test tests; it must not also find the work tree.
    env.pop("ANSIBLE_COLLECTIONS_PATH", None)
    return subprocess.call([ansible_test, *argv], cwd=COLLECTION, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
