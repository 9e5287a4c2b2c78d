# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An nftables table owned by the collection: validated, atomic, persistent.

The rules file replaces exactly one table in one transaction (create, delete,
define: valid whether or not the table exists), so the host's other tables are
never flushed. The table carries a comment with a digest of its definition;
reading that comment back tells whether the kernel holds the current version
without re-loading it. A boot unit loads the same file after nftables.service.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile

from ansible_collections.sitelink.gateway.plugins.module_utils.checkpoint import (
    Checkpoint,
    CheckpointError,
    format_time,
)
from ansible_collections.sitelink.gateway.plugins.module_utils.checkpoint import (
    fact as rollback_fact,
)
from ansible_collections.sitelink.gateway.plugins.module_utils.persist import (
    Systemd,
    SystemdError,
    ensure_boot_unit,
    read_file,
    remove_boot_unit,
    unit_path,
    write_atomic,
)

MARKER = "sitelink-gateway"
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
_COMMENT = re.compile(r'^\s*comment "' + MARKER + r' ([0-9a-f]+)"', re.M)


class NftError(Exception):
    def __init__(self, msg, stderr=""):
        self.stderr = stderr
        super().__init__(msg)


def validate(params):
    """Check the module parameters; return a list of problems."""
    errors = []
    if not _NAME.match(params["name"] or ""):
        errors.append(f"name: {params['name']!r} is not a table name (letters, digits, _)")
    if params["family"] not in FAMILIES:
        errors.append(f"family: {params['family']!r} must be one of {', '.join(FAMILIES)}")
    if not (params.get("path") or "").startswith("/"):
        errors.append(f"path: {params.get('path')!r} must be an absolute path")
    if params["state"] == "present" and '"' + MARKER in (params.get("body") or ""):
        errors.append("body: must not set the table comment, the module owns it")
    timeout = params.get("rollback_timeout") or 0
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 0:
        errors.append(f"rollback_timeout: {timeout!r} must be 0 (no rollback) or seconds")
    return errors


def digest(family, name, body):
    return hashlib.sha256(f"{family} {name}\n{body}".encode()).hexdigest()[:16]


def render_rules(family, name, body, unit):
    """The rules file: replaces table ``family name`` and nothing else."""
    body = "\n".join("\t" + line if line.strip() else "" for line in body.strip().splitlines())
    return (
        "#!/usr/sbin/nft -f\n"
        f"# Managed by sitelink.gateway: do not edit. Loaded at boot by {unit}.\n"
        f"# Replaces table {family} {name} only, in one transaction.\n"
        f"table {family} {name}\n"
        f"delete table {family} {name}\n"
        f"table {family} {name} {{\n"
        f'\tcomment "{MARKER} {digest(family, name, body)}"\n'
        f"{body}\n"
        "}\n"
    )


def render_unit(family, name, path):
    return (
        "# Managed by sitelink.gateway: do not edit.\n"
        "[Unit]\n"
        f"Description=sitelink.gateway nftables table {family} {name}\n"
        "DefaultDependencies=no\n"
        "# After nftables.service, whose 'flush ruleset' would wipe the table; PartOf\n"
        "# loads it again whenever nftables.service is restarted.\n"
        "After=nftables.service local-fs.target\n"
        "PartOf=nftables.service\n"
        "Before=network-pre.target shutdown.target\n"
        "Wants=network-pre.target\n"
        "Conflicts=shutdown.target\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=nft -f {path}\n"
        f"ExecReload=nft -f {path}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def live_digest(listing):
    """The digest comment of a listed table, or None."""
    match = _COMMENT.search(listing or "")
    return match.group(1) if match else None


class Nft:
    """nft through AnsibleModule.run_command; tests inject a fake."""

    def __init__(self, module):
        self.module = module
        self.nft = module.get_bin_path("nft", required=True)

    def run(self, *args):
        return self.module.run_command([self.nft, *args], check_rc=False)

    def listing(self, family, name):
        rc, out, _err = self.run("list", "table", family, name)
        return out if rc == 0 else None

    def check(self, text):
        """Validate a rules file with ``nft -c`` (a dry-run transaction in the kernel)."""
        fd, tmp = tempfile.mkstemp(prefix=".sitelink-nft.", suffix=".nft")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            rc, out, err = self.run("-c", "-f", tmp)
        finally:
            os.unlink(tmp)
        if rc != 0:
            raise NftError("nft -c rejected the rules: " + (err or out).strip(), err or out)

    def load(self, path):
        rc, out, err = self.run("-f", path)
        if rc != 0:
            raise NftError(f"'nft -f {path}' failed: " + (err or out).strip(), err or out)

    def delete(self, family, name):
        rc, out, err = self.run("delete", "table", family, name)
        if rc != 0:
            raise NftError(f"'nft delete table {family} {name}' failed: {(err or out).strip()}")


def _converge(module, nft, systemd, params, listing, new_rules, unit, dry, steps):
    """Bring the table, its file and its unit to ``params``; ``dry`` only lists the steps.

    Appends to ``steps`` as it goes (so a failure reports what ran); returns
    (old_rules, old_unit, new_unit).
    """
    family, name, path = params["family"], params["name"], params["path"]
    old_rules = read_file(path)
    if params["state"] == "absent":
        if listing is not None:
            steps.append(f"nft delete table {family} {name}")
            if not dry:
                nft.delete(family, name)
        _changed, unit_steps = remove_boot_unit(module, systemd, unit, dry)
        steps.extend(unit_steps)
        if old_rules is not None:
            steps.append("remove " + path)
            if not dry:
                os.unlink(path)
        return old_rules, None, None
    current = live_digest(listing) == live_digest(new_rules)
    if old_rules != new_rules:
        steps.append("write " + path)
        if not dry:
            write_atomic(module, path, new_rules)
    new_unit = render_unit(family, name, path)
    _changed, old_unit, unit_steps = ensure_boot_unit(module, systemd, unit, new_unit, dry)
    steps.extend(unit_steps)
    if not current:
        steps.append(f"nft -f {path}")
        if not dry:
            nft.load(path)
    # The unit reports the table as loaded; start it once (loads again, atomically).
    if not systemd.is_active(unit):
        steps.append("systemctl start " + unit)
        if not dry:
            systemd.run("start", unit)
    return old_rules, old_unit, new_unit


def rollback_plan(family, name, listing, unit, unit_active, nft_bin="nft", systemctl="systemctl"):
    """What ``Checkpoint.arm`` needs to put table ``family name`` back as it is now.

    Returns (files, commands, blobs): the rules file and the boot unit with its
    enablement link come back as files (the caller adds the rules path); systemd
    re-reads them and the unit is started or stopped as it was; then the table is
    loaded from its saved listing in one transaction (create, delete, define), or
    deleted when it did not exist (create then delete: succeeds either way).
    """
    files = [unit_path(unit), unit_path("multi-user.target.wants/" + unit)]
    blob = f"table {family} {name}\ndelete table {family} {name}\n"
    if listing is not None:
        blob += listing if listing.endswith("\n") else listing + "\n"
    commands = [
        [systemctl, "daemon-reload"],
        [systemctl, "start" if unit_active else "stop", unit],
        [nft_bin, "-f", "{dir}/table.nft"],
    ]
    return files, commands, {"table.nft": blob}


def run_module(module, nft=None, systemd=None, checkpoint=None):
    params = module.params
    errors = validate(params)
    if errors:
        module.fail_json(msg="; ".join(errors))
    family, name, path = params["family"], params["name"], params["path"]
    unit = params["unit"] or name.replace("_", "-") + ".service"
    timeout = params.get("rollback_timeout") or 0
    check_mode = module.check_mode
    nft = nft or Nft(module)
    systemd = systemd or Systemd(module)
    result = {"changed": False, "table": f"{family} {name}", "path": path, "unit": unit}
    steps = []
    if timeout and not check_mode and checkpoint is None:
        # Before the read: a rollback that runs meanwhile makes arm() refuse.
        checkpoint = Checkpoint(module, systemd=systemd)
    listing = nft.listing(family, name)

    try:
        new_rules = ""
        if params["state"] == "present":
            new_rules = render_rules(family, name, params["body"] or "", unit)
            nft.check(new_rules)
        if timeout and not check_mode:
            due = []
            _converge(module, nft, systemd, params, listing, new_rules, unit, True, due)
            if due:
                files, commands, blobs = rollback_plan(
                    family,
                    name,
                    listing,
                    unit,
                    systemd.is_active(unit),
                    getattr(nft, "nft", "nft"),
                    getattr(systemd, "systemctl", "systemctl"),
                )
                armed = checkpoint.arm(
                    f"nft {family} {name}", [path] + files, commands, timeout, blobs
                )
                result["rollback"] = armed
                result["ansible_facts"] = rollback_fact(armed)
        old_rules, old_unit, new_unit = _converge(
            module, nft, systemd, params, listing, new_rules, unit, check_mode, steps
        )
    except CheckpointError as exc:
        module.fail_json(msg=f"arming the rollback: {exc}", steps=steps, **result)
    except (NftError, SystemdError, OSError) as exc:
        msg = str(exc)
        if "rollback" in result:
            msg += "; the gateway restores its previous state by itself at {} ({})".format(
                format_time(result["rollback"]["deadline"]), result["rollback"]["unit"]
            )
        module.fail_json(msg=msg, steps=steps, stderr=getattr(exc, "stderr", ""), **result)

    result["changed"] = bool(steps)
    result["steps"] = steps
    if module._diff:
        result["diff"] = [
            {
                "before_header": path,
                "after_header": path,
                "before": old_rules or "",
                "after": new_rules,
            },
        ]
        if params["state"] == "present":
            result["diff"].append(
                {
                    "before_header": unit_path(unit),
                    "after_header": unit_path(unit),
                    "before": old_unit or "",
                    "after": new_unit,
                }
            )
    module.exit_json(**result)
