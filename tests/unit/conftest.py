"""Make ``ansible_collections.sitelink.gateway`` importable from the work tree.

Collection code imports itself by its full collection path, so the tests put a
temporary ``ansible_collections/sitelink/gateway`` symlink to the repo root on
sys.path (PEP 420 namespace packages, no installed collection needed).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _install_collection_path():
    try:
        import ansible_collections.sitelink.gateway.plugins  # noqa: F401
    except ImportError:
        pass
    else:
        return  # already importable (e.g. installed or another conftest did it)
    root = tempfile.mkdtemp(prefix="sitelink-collections-")
    atexit.register(shutil.rmtree, root, True)
    os.makedirs(os.path.join(root, "ansible_collections", "sitelink"))
    os.symlink(REPO_ROOT, os.path.join(root, "ansible_collections", "sitelink", "gateway"))
    sys.path.insert(0, root)
    # A failed import above may have cached a namespace package without our path.
    for name in list(sys.modules):
        if name == "ansible_collections" or name.startswith("ansible_collections."):
            del sys.modules[name]


_install_collection_path()
