# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IPsec around every link's IPIP, with strongSwan's swanctl: one file, one reload.

Each link is one IKEv2 connection between the two public addresses, with one
CHILD_SA in transport mode for IP protocol 4 only, keyed by the link's own
pre-shared key. ``start_action = trap`` installs the kernel policies as soon as
the connection is loaded, before any SA exists: an IPIP packet to the peer is
held until IKE has keyed ESP, and IPIP from the peer that is not inside ESP
matches the inbound policy without an SA and is dropped by the kernel.

The collection owns one file in ``/etc/swanctl/conf.d`` (mode 0600, it holds
the keys). ``strongswan.service`` (charon-systemd) loads it at boot; after a
change ``swanctl --load-all`` loads it now and unloads connections that left
it, and their SAs are closed. The diff shows the file with every key hidden.
"""

from __future__ import annotations

import ipaddress
import os
import re

from ansible_collections.sitelink.gateway.plugins.module_utils.checkpoint import (
    Checkpoint,
    CheckpointError,
    fact,
)
from ansible_collections.sitelink.gateway.plugins.module_utils.persist import (
    Systemd,
    SystemdError,
    hidden,
    read_file,
    write_atomic,
)

DEFAULT_PATH = "/etc/swanctl/conf.d/sitelink-gateway.conf"
SERVICE = "strongswan.service"
HEADER = "# Managed by sitelink.gateway: do not edit. Loaded by strongswan.service."
# The module's defaults (ipsec_links), which the ipsec role keeps: what the far end
# of a link to an external peer must offer too (remote_end).
IKE_PROPOSALS = "aes256gcm16-prfsha256-x25519"
ESP_PROPOSALS = "aes256gcm16"
DPD_DELAY = 30
# What the far end of an external peer's link writes instead of its key.
REMOTE_KEY_PLACEHOLDER = "<the key you were given>"
REMOTE_HEADER = (
    "# For the administrators of the far end: the same connections as sitelink.gateway\n"
    "# configures on its side, seen from yours (strongSwan's swanctl.conf)."
)
_REMOTE_MARK = "0" * 32  # stands for the key while the file is made (hex, as render wants)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{32,}$")
_SECRET_LINE = re.compile(r"^(\s*secret = )(.*)$", re.M)
_LOADED = re.compile(r"^([^\s:]+): IKEv", re.M)


class IpsecError(Exception):
    def __init__(self, msg, stderr=""):
        self.stderr = stderr
        super().__init__(msg)


def validate(params):
    """Problems with the module's parameters (never echoing a key)."""
    errors = []
    if not str(params.get("path") or "").startswith("/"):
        errors.append(f"path: {params.get('path')!r} must be an absolute path")
    keys = params.get("keys") or {}
    seen = set()
    for index, conn in enumerate(params.get("connections") or []):
        where = f"connections[{index}]"
        name = conn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            errors.append(f"{where}.name: {name!r} is not a connection name (letters, digits, _.-)")
        elif name in seen:
            errors.append(f"{where}.name: {name!r} is listed twice")
        seen.add(name)
        for field in ("local", "remote"):
            try:
                ipaddress.IPv4Address(str(conn.get(field)))
            except ValueError:
                errors.append(f"{where}.{field}: {conn.get(field)!r} is not an IPv4 address")
        key = keys.get(conn.get("link"))
        if key is None:
            errors.append(f"{where}.link: no key for link {conn.get('link')!r} in keys")
        elif not isinstance(key, str) or not _HEX.match(key):
            errors.append(f"keys[{conn.get('link')!r}]: must be a hex string of 32+ digits")
    return errors


def render(connections, keys, ike_proposals, esp_proposals, dpd_delay):
    """The swanctl file: every connection, then every key."""
    lines = [HEADER, "connections {"]
    for conn in connections:
        name, local, remote = conn["name"], conn["local"], conn["remote"]
        lines += [
            f"  {name} {{",
            f"    # link {conn['link']}",
            "    version = 2",
            f"    local_addrs = {local}",
            f"    remote_addrs = {remote}",
            f"    proposals = {ike_proposals}",
            # Dead peers are noticed, and a rebooted one is re-keyed by the trap.
            f"    dpd_delay = {dpd_delay}s",
            "    local {",
            "      auth = psk",
            f"      id = {local}",
            "    }",
            "    remote {",
            "      auth = psk",
            f"      id = {remote}",
            "    }",
            "    children {",
            f"      {name} {{",
            "        mode = transport",
            # IP protocol 4 (IPIP) between the two public addresses, nothing else.
            "        local_ts = dynamic[4]",
            "        remote_ts = dynamic[4]",
            f"        esp_proposals = {esp_proposals}",
            "        start_action = trap",
            "        dpd_action = trap",
            "        close_action = trap",
            "      }",
            "    }",
            "  }",
        ]
    lines += ["}", "secrets {"]
    for conn in connections:
        lines += [
            f"  ike-{conn['name']} {{",
            f"    id-1 = {conn['local']}",
            f"    id-2 = {conn['remote']}",
            f"    secret = 0x{keys[conn['link']]}",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def remote_end(
    connections, ike_proposals=IKE_PROPOSALS, esp_proposals=ESP_PROPOSALS, dpd_delay=DPD_DELAY
):
    """The swanctl file the far end of ``connections`` needs: ``render``'s own, with
    each connection's two ends swapped and each key a placeholder (the key itself is
    given to its administrators apart, and the pre-shared key our side writes as hex,
    0x..., is the same bytes as theirs written as text between double quotes)."""
    swapped = [{**conn, "local": conn["remote"], "remote": conn["local"]} for conn in connections]
    text = render(
        swapped,
        {conn["link"]: _REMOTE_MARK for conn in connections},
        ike_proposals,
        esp_proposals,
        dpd_delay,
    )
    return text.replace(HEADER, REMOTE_HEADER, 1).replace(
        f"secret = 0x{_REMOTE_MARK}", f'secret = "{REMOTE_KEY_PLACEHOLDER}"'
    )


def hide_keys(text):
    """The file as the diff may show it: each key replaced by a short fingerprint."""
    return _SECRET_LINE.sub(lambda match: match.group(1) + hidden(match.group(2)), text or "")


def connection_names(text):
    """Connection names in a file this module wrote."""
    names, depth = [], 0
    in_connections = False
    for raw in (text or "").splitlines():
        line = raw.strip()
        if depth == 0 and line == "connections {":
            in_connections = True
        elif in_connections and depth == 1 and line.endswith("{"):
            names.append(line[:-1].strip())
        depth += line.count("{") - line.count("}")
        if depth == 0:
            in_connections = False
    return names


class Swanctl:
    """swanctl through AnsibleModule.run_command; tests inject a fake."""

    def __init__(self, module):
        self.module = module
        # Not required: removing nothing must work where strongSwan was never installed.
        self.swanctl = module.get_bin_path("swanctl") or "swanctl"

    def run(self, *args, check=True):
        argv = [self.swanctl, *args]
        rc, out, err = self.module.run_command(argv, check_rc=False)
        if check and rc != 0:
            raise IpsecError(f"'{' '.join(argv)}' failed (rc={rc}): {(err or out).strip()}", err)
        return rc, out

    def loaded(self):
        """Names of the connections charon holds now."""
        return set(_LOADED.findall(self.run("--list-conns")[1]))

    def load_all(self):
        self.run("--load-all", "--noprompt")

    def terminate(self, name):
        # Closing the SAs of a connection that left the file: their policies would
        # otherwise keep matching until they expire. Not there: nothing to do.
        self.run("--terminate", "--ike", name, "--force", "--timeout", "5", check=False)


def run_module(module, swanctl=None, systemd=None, checkpoint=None):
    params = module.params
    errors = validate(params)
    if errors:
        module.fail_json(msg="; ".join(errors))
    path, check_mode = params["path"], module.check_mode
    present = params["state"] == "present"
    connections = params["connections"] if present else []
    result = {"changed": False, "path": path, "connections": [c["name"] for c in connections]}
    steps = []
    # Opened before the live state is read: a rollback in between makes arm() refuse.
    if checkpoint is None and params["rollback_timeout"] > 0 and not check_mode:
        checkpoint = Checkpoint(module)
    old = read_file(path)
    new = (
        render(
            connections,
            params["keys"] or {},
            params["ike_proposals"],
            params["esp_proposals"],
            params["dpd_delay"],
        )
        if present and connections
        else None
    )
    try:
        swanctl = swanctl or Swanctl(module)
        systemd = systemd or Systemd(module)
        running = systemd.is_active(SERVICE)
        loaded = swanctl.loaded() if running else set()
        wanted = {c["name"] for c in connections}
        # Connections our previous file had and this one has not: closed after loading.
        stale = sorted(set(connection_names(old)) - wanted)
        if new != old:
            steps.append(("write " if new is not None else "remove ") + path)
        if new is not None and not systemd.is_enabled(SERVICE):
            steps.append(f"systemctl enable {SERVICE}")
        if new is not None and not running:
            steps.append(f"systemctl start {SERVICE}")
        if running and (new != old or not wanted <= loaded):
            steps.append("swanctl --load-all")
        steps += [f"swanctl --terminate --ike {name}" for name in stale]
        if steps and not check_mode:
            if checkpoint is not None and params["rollback_timeout"] > 0:
                # Undo: the previous file back, then loaded (and the new connections
                # unloaded) by swanctl.
                result["rollback"] = checkpoint.arm(
                    "ipsec",
                    files=[path],
                    commands=[[swanctl.swanctl, "--load-all", "--noprompt"]],
                    timeout=params["rollback_timeout"],
                )
            if new is None:
                if old is not None:
                    os.unlink(path)
            elif new != old:
                write_atomic(module, path, new, mode=0o600)
            if new is not None and not systemd.is_enabled(SERVICE):
                systemd.run("enable", SERVICE)
            if new is not None and not running:
                systemd.run("start", SERVICE)  # its ExecStartPost loads the file
            elif running:
                swanctl.load_all()
            for name in stale:
                swanctl.terminate(name)
    except (IpsecError, SystemdError, CheckpointError, OSError) as exc:
        module.fail_json(msg=str(exc), steps=steps, stderr=getattr(exc, "stderr", ""), **result)
    result["changed"] = bool(steps)
    result["steps"] = steps
    if "rollback" in result:
        result["ansible_facts"] = fact(result["rollback"])
    if module._diff:
        result["diff"] = {
            "before_header": path,
            "after_header": path,
            "before": hide_keys(old),
            "after": hide_keys(new),
        }
    module.exit_json(**result)
