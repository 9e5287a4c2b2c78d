"""The program shipped to gateways is the zipapp of the current sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import build_relay  # noqa: E402


def test_shipped_program_is_built_from_the_current_sources():
    shipped = ROOT / "roles" / "relay" / "files" / "sitelink-relay"
    assert shipped.read_bytes() == build_relay.build(), "run make relay"


def test_build_is_reproducible_and_detects_a_changed_source(tmp_path):
    package = tmp_path / "sitelink_relay"
    package.mkdir()
    for path in build_relay.PACKAGE.glob("*.py"):
        (package / path.name).write_bytes(path.read_bytes())
    assert build_relay.build(package) == build_relay.build()
    (package / "wire.py").write_text("# changed\n", encoding="utf-8")
    assert build_relay.build(package) != build_relay.build()


def test_shipped_program_runs_with_the_system_python(tmp_path):
    shipped = ROOT / "roles" / "relay" / "files" / "sitelink-relay"
    res = subprocess.run(
        [sys.executable, str(shipped), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("sitelink-relay ")
