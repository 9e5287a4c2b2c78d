"""verify.yml reports an unreachable gateway as an unhealthy office, never skips it.

The gateways point at a closed port on loopback, so every check is UNREACHABLE:
the run must still print the table and write the JSON report naming both
offices, and exit non-zero naming each of them.
"""

from __future__ import annotations

import json

from playbook import ROOT, run_playbook


def run_verify(tmp_path, *extra: str):
    # ./verify-report.json is relative to the directory ansible-playbook runs in.
    return run_playbook(ROOT / "verify.yml", tmp_path, *extra, cwd=tmp_path)


def table_rows(output: str) -> dict[str, list[str]]:
    """The table's rows by office, as the debug task prints them."""
    rows = {}
    for line in output.splitlines():
        cells = line.strip().strip('",').split()
        # 9 columns; a hidden-output "ok: [a -> b]" line also has 9 words.
        if len(cells) == 9 and cells[1].endswith("-gw") and not cells[0].endswith(":"):
            rows[cells[0]] = cells
    return rows


def test_unreachable_gateways_are_unhealthy_offices(tmp_path):
    done = run_verify(tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    # The report play ran although no gateway answered.
    assert table_rows(output) == {
        "brooklyn": ["brooklyn", "brooklyn-gw", "-", "-", "-", "-", "-", "-", "UNREACHABLE"],
        "manhattan": ["manhattan", "manhattan-gw", "-", "-", "-", "-", "-", "-", "UNREACHABLE"],
    }, output[-3000:]
    assert "0 of 2 offices healthy" in output
    # The failure names each office and what failed.
    assert "brooklyn: unreachable (Failed to connect to the host via ssh" in output
    assert "manhattan: unreachable (Failed to connect to the host via ssh" in output

    report = json.loads((tmp_path / "verify-report.json").read_text())
    assert report["healthy"] is False
    assert report["counts"] == {"offices": 2, "healthy": 0, "unhealthy": 2}
    assert [(o["office"], o["host"], o["verdict"]) for o in report["offices"]] == [
        ("brooklyn", "brooklyn-gw", "unreachable"),
        ("manhattan", "manhattan-gw", "unreachable"),
    ]
    assert [p.split(":")[0] for p in report["problems"]] == ["brooklyn", "manhattan"]


def test_report_path_is_a_variable_and_limit_keeps_the_report(tmp_path):
    # --limit must not skip the report (a localhost play would be) and pass unchecked.
    target = tmp_path / "reports/health.json"
    done = run_verify(
        tmp_path, "--check", "--limit", "brooklyn-gw", "-e", f"sitelink_verify_report={target}"
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert not (tmp_path / "verify-report.json").exists()
    report = json.loads(target.read_text())
    assert [(o["office"], o["verdict"]) for o in report["offices"]] == [("brooklyn", "unreachable")]
    assert list(table_rows(output)) == ["brooklyn"]


def test_a_report_path_that_is_not_a_file_is_refused(tmp_path):
    """The report is written by rename: a directory (or a device) there is never replaced."""
    target = tmp_path / "taken"
    target.mkdir()
    done = run_verify(tmp_path, "-e", f"sitelink_verify_report={target}")
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"the report {target} is not a file" in output, output[-3000:]
    assert target.is_dir()
