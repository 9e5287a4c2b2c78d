"""Running the collection's playbooks against gateways that cannot be reached.

The gateways point at a closed port on loopback, so a run that got past
planning would fail to connect (UNREACHABLE) rather than change anything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CASE_STUDY = ROOT / "examples/case-study/inventory.yml"
HUB_AND_BRANCHES = ROOT / "examples/hub-and-branches/inventory.yml"


def unreachable(hosts: dict) -> str:
    """A connection layer that sends every office of ``hosts`` ({host: its vars}) to a
    closed port on loopback."""
    connection = {"ansible_host": "127.0.0.1", "ansible_port": 9, "ansible_connection": "ssh"}
    return yaml.safe_dump({"offices": {"vars": connection, "hosts": hosts}})


UNREACHABLE = unreachable({"manhattan-gw": {}, "brooklyn-gw": {}})


def run_playbook(
    playbook: Path | str,  # a path, or a collection playbook (sitelink.gateway.plan)
    tmp_path: Path,
    *extra: str,
    connection: str = UNREACHABLE,
    cwd: Path = ROOT,
    inventory: Path = CASE_STUDY,
    env: Optional[dict] = None,
) -> subprocess.CompletedProcess:
    """ansible-playbook: ``inventory`` (the case study), then ``connection``, then ``extra``;
    with the checkout's ansible.cfg, or in ``env`` when given (the whole environment)."""
    (tmp_path / "connection.yml").write_text(connection)
    if env is None:
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
        env["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / ".cache/collections")
        env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    return subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(inventory),
            "-i",
            str(tmp_path / "connection.yml"),
            str(playbook),
            *extra,
        ],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
