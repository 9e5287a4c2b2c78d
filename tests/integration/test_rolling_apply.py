"""site.yml's rolling apply, shown with gateways that cannot be reached.

Every gateway of the hub-and-branches example points at a closed port, so each
one site.yml tries to configure shows up UNREACHABLE in the recap; one it never
tries does not. That is enough to see the order and where a run stops. The
offices Molecule scenario shows the same on real gateways, with a branch that
fails within the tolerance while the others are configured.
"""

from __future__ import annotations

import re

from playbook import HUB_AND_BRANCHES, ROOT, run_playbook, unreachable

HOSTS = ("manhattan-gw", "brooklyn-gw", "queens-gw", "harlem-gw", "staten-island-gw")
UNREACHABLE = unreachable({host: {} for host in HOSTS})


def site(tmp_path, *extra):
    return run_playbook(
        ROOT / "site.yml", tmp_path, *extra, connection=UNREACHABLE, inventory=HUB_AND_BRANCHES
    )


def attempted(output: str) -> list[str]:
    """Gateways site.yml tried to connect to, in the order it tried."""
    return re.findall(r"^fatal: \[([^\]]+)\]: UNREACHABLE!", output, re.M)


def test_a_hub_that_fails_stops_the_run_before_any_branch(tmp_path):
    done = site(tmp_path, "-e", "office_rollout_batch=10")
    assert done.returncode != 0
    assert attempted(done.stdout) == ["manhattan-gw"], done.stdout[-3000:]
    assert "No branch configured: the hub(s) manhattan-gw failed or could not be reached" in (
        done.stdout
    )


def test_branches_go_in_batches_and_a_failed_batch_stops_the_next(tmp_path):
    """Without the hub: the first batch of two fails, so the rest is never tried."""
    done = site(
        tmp_path,
        "--limit",
        "!manhattan-gw",
        "-e",
        '{"office_rollout_batch": [2, 10], "office_rollout_max_fail_percentage": 50}',
    )
    assert done.returncode != 0
    # One batch runs in parallel: its order is not fixed.
    assert sorted(attempted(done.stdout)) == ["brooklyn-gw", "queens-gw"], done.stdout[-3000:]


def test_the_default_tries_one_canary_branch_first(tmp_path):
    done = site(tmp_path, "--limit", "!manhattan-gw")
    assert done.returncode != 0
    assert attempted(done.stdout) == ["brooklyn-gw"], done.stdout[-3000:]


def test_limit_to_branches_needs_no_hub(tmp_path):
    """A hub outside --limit is not "missed": the branch is tried."""
    done = site(tmp_path, "--limit", "harlem-gw")
    assert attempted(done.stdout) == ["harlem-gw"], done.stdout[-3000:]
    assert "No branch configured" not in done.stdout


def test_bad_batch_settings_fail_before_any_gateway(tmp_path):
    done = site(tmp_path, "-e", "office_rollout_batch=0")
    assert done.returncode != 0
    assert attempted(done.stdout) == []
    assert "deployment (every office): office_rollout_batch: '0' must be a positive number" in (
        done.stdout
    )
