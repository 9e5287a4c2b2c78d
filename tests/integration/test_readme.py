"""The README as a newcomer reads it: its commands work exactly as printed.

The quick start runs twice, in a fresh shell each time (no variable of this
run, HOME an empty directory, no ansible.cfg but the checkout's own): from a
copy of this checkout (its venv borrowed, so nothing is downloaded), and from
the collection's tarball in an empty directory, under Ansible's default
callback. The blocks run are the README's own, marked ``<!-- readme-test: NAME -->``.
The rest of the README may only name files and make targets that exist.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from playbook import BIN, ROOT

README = (ROOT / "README.md").read_text()
MARKED_BLOCK = re.compile(r"<!-- readme-test: (?P<name>[\w-]+) -->\n```\n(?P<body>.*?)```", re.S)
# A line of the case study's plan, as the console must show it: a line of its own.
PLAN_LINE = re.compile(r"^\W*sl-brooklyn to brooklyn: 172\.16\.1\.12 -> 172\.17\.2\.10", re.M)


def readme_block(name: str) -> str:
    blocks = {m["name"]: m["body"] for m in MARKED_BLOCK.finditer(README)}
    assert name in blocks, f"README has no block marked readme-test: {name}"
    return blocks[name]


def fresh_shell(script: str, cwd: Path, home: Path, path: tuple[str, ...] = ()):
    """``script`` in bash as a new login would run it: nothing inherited but a plain PATH."""
    home.mkdir(exist_ok=True)
    env = {
        "HOME": str(home),
        "PATH": os.pathsep.join([*path, "/usr/local/bin", "/usr/bin", "/bin"]),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    return subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def on_a_terminal(script: str, cwd: Path, home: Path, answer: str, deadline: float = 180):
    """``script`` in a fresh shell on a terminal, typing ``answer`` at every password
    prompt, as a user does. Returns (exit status, everything the terminal showed)."""
    home.mkdir(exist_ok=True)
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    main, terminal = pty.openpty()
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        env=env,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    shown, answered, end = b"", 0, time.monotonic() + deadline
    try:
        while time.monotonic() < end:
            ready = select.select([main], [], [], 0.5)[0]
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # the terminal closed: every process has gone
                    break
                shown += chunk
                prompts = shown.lower().count(b"password:")
                if prompts > answered:
                    os.write(main, answer.encode() + b"\n")
                    answered = prompts
            elif proc.poll() is not None:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    return proc.wait(timeout=30), shown.decode(errors="replace").replace("\r\n", "\n")


def assert_readable_plan(done: subprocess.CompletedProcess, plan_dir: Path) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    # One JSON string with escaped newlines is what the default callback makes of
    # a multi-line message: the plan must come out as lines.
    assert "\\n" not in done.stdout, done.stdout[-3000:]
    assert PLAN_LINE.search(done.stdout), done.stdout[-3000:]
    assert (plan_dir / "network.txt").is_file()
    assert (plan_dir / "gateways/manhattan-gw.txt").is_file()


def checkout_copy(dest: Path) -> None:
    """What a clean clone of this checkout holds (tracked and new files), with times kept."""
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, names.split("\0")):
        source = ROOT / name
        if source.exists() or source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name, follow_symlinks=False)


@pytest.fixture
def checkout(tmp_path):
    copy = tmp_path / "checkout"
    checkout_copy(copy)
    # make setup's venv is this one: current, so make creates nothing but the link.
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def test_quickstart_from_a_checkout(tmp_path, checkout):
    done = fresh_shell(readme_block("quickstart-checkout"), checkout, tmp_path / "home")
    assert_readable_plan(done, checkout / "plan")
    assert (checkout / "offices.yml").is_file()


def test_vaulted_secret_as_the_security_section_says(tmp_path, checkout):
    """The quick start's offices.yml, its plain-text secret deleted, the vaulted one
    made as printed: the plan needs the secret, so it passes only if the vault is read."""
    setup = (
        "make setup && . .venv/bin/activate\n"
        "cp examples/case-study/inventory.yml offices.yml\n"
        "sed -i '/^ *office_tunnel_secret:/d' offices.yml\n"
    )
    status, shown = on_a_terminal(
        setup + readme_block("vault-secret"), checkout, tmp_path / "home", "correct horse"
    )
    assert status == 0, shown[-4000:]
    assert PLAN_LINE.search(shown), shown[-3000:]
    assert shown.lower().count("password:") == 3, shown  # new, confirm, the run's
    assert not re.search(r"^ *office_tunnel_secret:", (checkout / "offices.yml").read_text(), re.M)
    vault = (checkout / "group_vars/offices/vault.yml").read_text()
    assert "$ANSIBLE_VAULT;1.1;AES256" in vault


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    out = tmp_path_factory.mktemp("tarball")
    subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        env=dict(os.environ, ANSIBLE_HOME=str(out / "ansible-home")),
    )
    (built,) = out.glob("sitelink-gateway-*.tar.gz")
    return built


@pytest.mark.parametrize("block", ["quickstart-installed", "quickstart-installed-path"])
def test_quickstart_from_the_installed_collection(tmp_path, tarball, block):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tarball, work)
    # The user's own Ansible: on PATH, with its defaults (no ansible.cfg here).
    done = fresh_shell(readme_block(block), work, tmp_path / "home", path=(str(BIN),))
    assert_readable_plan(done, work / "plan")
    # Installed where that block says, and nowhere else.
    installed = {
        "quickstart-installed": tmp_path / "home/.ansible/collections",
        "quickstart-installed-path": work / "collections",
    }
    for name, where in installed.items():
        found = (where / "ansible_collections/sitelink/gateway/galaxy.yml").exists() or (
            where / "ansible_collections/sitelink/gateway/MANIFEST.json"
        ).exists()
        assert found == (name == block), (name, where)


def test_make_help_lists_every_target():
    phony = re.search(r"^\.PHONY:(.*?)(?<!\\)\n", (ROOT / "Makefile").read_text(), re.S | re.M)
    targets = set(phony[1].replace("\\\n", " ").split()) - {"help"}
    shown = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    missing = sorted(t for t in targets if not re.search(rf"\bmake {re.escape(t)}\b", shown))
    assert missing == [], f"make help does not list: {missing}"


def test_readme_names_only_make_targets_that_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    # As code: `make x` inline, or a line of a code block.
    named = set(re.findall(r"(?:`|^)make ([a-z][\w-]*)", README, re.M))
    assert sorted(named - targets) == []


REPO_DIRS = (
    "examples/",
    "roles/",
    "plugins/",
    "relay/",
    "tools/",
    "lab/",
    "molecule/",
    "tests/",
    "docs/",
    "changelogs/",
    "playbooks/",
    "meta/",
)


def test_readme_links_and_paths_exist():
    links = re.findall(r"\]\((?!https?:|#)([^)]+)\)", README)
    paths = [
        p.rstrip("/.,")
        for p in re.findall(r"`([\w./-]+)`", README)
        # Not placeholders (<role>, x.y.z, *).
        if p.startswith(REPO_DIRS) and not re.search(r"[<*]|x\.y\.z", p)
    ]
    missing = sorted({p for p in [*links, *paths] if not (ROOT / p).exists()})
    assert missing == [], f"README names what does not exist: {missing}"
    anchors = set(re.findall(r"\]\(#([\w-]+)\)", README))
    headings = {
        re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
        for h in re.findall(r"^#+ (.*)$", README, re.M)
    }
    assert sorted(anchors - headings) == []
