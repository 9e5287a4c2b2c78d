# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""IPsec around every link's IPIP, with strongSwan's swanctl: one file, one reload.

Each link is one IKEv2 connection between the two public addresses, with one
CHILD_SA in transport mode for IP protocol 4 only, keyed by the link's own
pre-shared key. ``start_action = trap|start``: the kernel policies are installed
as soon as the connection is loaded, before any SA exists, so IPIP to the peer
never leaves in clear and IPIP from the peer that is not inside ESP is dropped
by the kernel; and charon initiates at once (at every load of a new or changed
connection, and at boot), because a trap alone keys a link only when its first
packet arrives, and the kernel drops that packet (and the next ones, for the
seconds IKE takes). ``trap|start`` is strongSwan 5.9.6's (older ones refuse the
file): before it (Debian 11 has 5.9.1) the file says ``start_action = trap``,
and only the initiation at boot is lost, since ``bring_up`` initiates the links
at the end of every run all the same. The version is asked of ``swanctl
--version`` once per call (unknown: taken for a recent one).

Links are up when the module returns (``bring_up``): it initiates the links
that are down and idle, and waits, for all of them at once and within one
deadline, until each is up, or its peer refused, or its peer did not answer
IKE at all within a few seconds (a peer not configured yet in a rolling apply:
that end initiates when its own run loads the link, so that run sees it up).
When both ends initiate at the same moment, both IKE_SAs complete (strongSwan
tells no such race apart, whatever ``unique`` says); the module closes the one
both ends agree on, all but the lowest initiator SPI. ``unique = replace``
deals with the case strongSwan does see: an IKE_SA set up while an older one
with the same peer is established (a retransmitted IKE_SA_INIT from the time
the peer was not ready) replaces the older one. The two rules can pick
different IKE_SAs, and a link can lose both: so a link whose duplicate was
closed counts as up only once a later poll sees it up with no duplicate left,
and is initiated again (within the same deadline) if it went idle.

The collection owns one file in ``/etc/swanctl/conf.d`` (mode 0600, it holds
the keys). ``strongswan.service`` (charon-systemd) loads it at boot; after a
change ``swanctl --load-all`` loads it now and unloads connections that left
it, and their SAs are closed. The diff shows the file with every key hidden.

Keys and their rotation. Each key is owned by the peer's identity alone: charon
tries every key one of whose owners matches either end when it checks a peer's
AUTH, so a key owned by this gateway's identity too would be tried for every
link, and one branch's key would let it pass for another branch. A link may have
more than one key (a rotation): charon accepts any of them, and authenticates
itself with the one whose section it loaded last (charon keeps keys newest
first and takes the first of equal matches), which is the one sent, written
after the accepted ones. A change of keys alone changes no connection: the SAs
up stay up (their keys come from Diffie-Hellman, not from the pre-shared key),
and authenticate with the new key when they next authenticate (a restart, a
dead peer). Re-authenticating them at once would cost packets: strongSwan
installs a new IKE_SA's CHILD_SA outbound at the responder at once, before the
initiator has it inbound (a CHILD_SA rekeying waits; a re-authentication does
not), and the lab lost a ping to that.
"""

from __future__ import annotations

import ipaddress
import re
import time

from ansible_collections.sitelink.gateway.plugins.module_utils import failover
from ansible_collections.sitelink.gateway.plugins.module_utils.checkpoint import (
    Checkpoint,
    CheckpointError,
    fact,
)
from ansible_collections.sitelink.gateway.plugins.module_utils.persist import (
    Systemd,
    SystemdError,
    hidden,
    put_file,
    read_file,
)

DEFAULT_PATH = "/etc/swanctl/conf.d/sitelink-gateway.conf"
SERVICE = "strongswan.service"
HEADER = "# Managed by sitelink.gateway: do not edit. Loaded by strongswan.service."
SETTINGS_HEADER = (
    "# Managed by sitelink.gateway: do not edit. Hub failover: a dead peer is declared "
    "sooner.\n# Read by each new IKE_SA after `swanctl --reload-settings`."
)
# The module's defaults (ipsec_links), which the ipsec role keeps: what the far end
# of a link to an external peer must offer too (remote_end).
IKE_PROPOSALS = "aes256gcm16-prfsha256-x25519"
ESP_PROPOSALS = "aes256gcm16"
DPD_DELAY = 30
# Hub failover (connections with ``failover``): a shorter DPD, and charon's own
# settings for fewer, quicker retransmits (strongSwan's: 5 tries from 4 s, x1.8, so
# a dead peer is declared after 165 s). With these: 1.5 + 2.1 + 2.9 + 4.1 = 11 s
# after the DPD that goes unanswered. Global in charon, read by each new IKE_SA.
FAILOVER_DPD_DELAY = 10
SETTINGS_PATH = "/etc/strongswan.d/sitelink-gateway.conf"
RETRANSMIT = (("retransmit_tries", "3"), ("retransmit_timeout", "1.5"), ("retransmit_base", "1.4"))
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
# "strongSwan swanctl 5.9.8" (--version), or "strongSwan 5.9.8 swanctl" (its usage,
# printed after the error when charon is not running).
_VERSION = re.compile(r"\bstrongSwan (?:swanctl )?(\d+)\.(\d+)\.(\d+)")
# start_action = trap|start: strongSwan 5.9.6 and later (older ones reject the file).
TRAP_AND_START_SINCE = (5, 9, 6)
# An IKE_SA's or CHILD_SA's state in which the link carries traffic.
_UP_IKE = ("ESTABLISHED", "REKEYING")
_UP_CHILD = ("INSTALLED", "REKEYING")
# Still negotiating (an IKE_SA that has gone, or been deleted, is idle).
_OPENING_IKE = ("CREATED", "CONNECTING")
_OPENING_CHILD = ("CREATED", "INSTALLING", "RETRYING")
# A link that went idle again this soon after its (second) initiation was refused
# by its peer, or failed; a link is initiated at most this many times per call.
REFUSED_AFTER = 1.0
MAX_INITIATIONS = 2
# The SAs of a changed link are closed by charon at once, or kept (a change it takes
# for none, e.g. a comment): still up this long after the load, they are kept.
REPLACED_AFTER = 1.0
POLL_INTERVAL = 0.5


class IpsecError(Exception):
    def __init__(self, msg, stderr=""):
        self.stderr = stderr
        super().__init__(msg)


def validate(params):
    """Problems with the module's parameters (never echoing a key)."""
    errors = []
    if not str(params.get("path") or "").startswith("/"):
        errors.append(f"path: {params.get('path')!r} must be an absolute path")
    for name in ("dpd_delay", "ike_rekey_time", "child_rekey_time"):
        value = params.get(name)
        if value is not None and value < 1:
            errors.append(f"{name}: {value} must be 1 or more seconds")
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
        elif not key_list(key) or not all(
            isinstance(k, str) and _HEX.match(k) for k in key_list(key)
        ):
            errors.append(
                f"keys[{conn.get('link')!r}]: must be a hex string of 32+ digits, or a list of them"
            )
    return errors


def key_list(value):
    """A link's keys as a list, the one it authenticates with first: ``keys`` takes
    one key or a list (a rotation)."""
    return [value] if isinstance(value, str) else list(value or [])


def parse_version(text):
    """strongSwan's version, (5, 9, 8), from what ``swanctl --version`` printed; None
    if it names none."""
    match = _VERSION.search(text or "")
    return tuple(int(part) for part in match.groups()) if match else None


def initiates_at_load(version):
    """Whether this strongSwan takes ``start_action = trap|start`` (unknown: yes)."""
    return version is None or tuple(version) >= TRAP_AND_START_SINCE


def render(
    connections,
    keys,
    ike_proposals,
    esp_proposals,
    dpd_delay,
    start=True,
    ike_rekey_time=None,
    child_rekey_time=None,
):
    """The swanctl file: every connection, then every key. ``start``: initiate at load
    and at boot (``trap|start``, strongSwan 5.9.6 and later); else the trap alone.
    ``ike_rekey_time``, ``child_rekey_time``: seconds, or None for strongSwan's own
    (4 h and 1 h); set, e.g. short in a lab, they show in the connection."""
    start_action = "trap|start" if start else "trap"
    ike_rekey = [f"    rekey_time = {ike_rekey_time}s"] if ike_rekey_time else []
    child_rekey = [f"        rekey_time = {child_rekey_time}s"] if child_rekey_time else []
    lines = [HEADER, "connections {"]
    for conn in connections:
        name, local, remote = conn["name"], conn["local"], conn["remote"]
        delay, dead, hub_failover = dpd_delay, "trap", []
        if conn.get("failover"):
            # Its state moves routes between hubs (module_utils/failover.py): a dead
            # peer is noticed sooner, and re-keyed at once, with no traffic to trigger
            # the trap (its routes went to the other hub).
            delay, dead = min(dpd_delay, FAILOVER_DPD_DELAY), "restart"
            hub_failover = [f"        updown = {failover.HOOK_PATH}"]
        lines += [
            f"  {name} {{",
            f"    # link {conn['link']}",
            "    version = 2",
            f"    local_addrs = {local}",
            f"    remote_addrs = {remote}",
            f"    proposals = {ike_proposals}",
            # Dead peers are noticed, and a rebooted one is re-keyed by the trap.
            f"    dpd_delay = {delay}s",
            # A second IKE_SA with the peer replaces the first (see the docstring).
            "    unique = replace",
            # Fixed public addresses at both ends: nothing to roam. With MOBIKE, every
            # tunnel interface a hub adds made charon tell every peer its address
            # list (its LAN and tunnel addresses too): n links, n*n exchanges.
            "    mobike = no",
            # Never give up keying a link: each try that gets no answer (5 retransmits,
            # 165 s) starts the next at once. With strongSwan's one try, the kernel's
            # next acquire for the trap comes xfrm_acq_expires (165 s) after the one that
            # started the try, a moment before the try gives up, and is ignored ("
            # connection attempt pending"); the link then sat untried 165 s more, and came
            # back up to 4 minutes after its peer did.
            "    keyingtries = 0",
            *ike_rekey,
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
            *child_rekey,
            # Initiated when loaded (and at boot); the trap keys it again on
            # traffic if the peer was not ready then.
            f"        start_action = {start_action}",
            f"        dpd_action = {dead}",
            *hub_failover,
            "        close_action = trap",
            "      }",
            "    }",
            "  }",
        ]
    lines += ["}", "secrets {"]
    for conn in connections:
        sent, *accepted = key_list(keys[conn["link"]])
        for number, key in enumerate(accepted, 1):
            lines += [
                "  # accepted too, never sent: a key being rotated in or out",
                f"  ike{number}-{conn['name']} {{",
                f"    id = {conn['remote']}",
                f"    secret = 0x{key}",
                "  }",
            ]
        lines += [
            # Loaded after the accepted ones: the key charon authenticates with.
            f"  ike-{conn['name']} {{",
            # The peer's identity alone (the module's docstring says why).
            f"    id = {conn['remote']}",
            f"    secret = 0x{sent}",
            "  }",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_settings(connections):
    """charon's settings file for hub failover (see RETRANSMIT), or None without it."""
    if not any(c.get("failover") for c in connections):
        return None
    lines = [SETTINGS_HEADER, "charon {"]
    lines += [f"    {name} = {value}" for name, value in RETRANSMIT]
    return "\n".join(lines + ["}"]) + "\n"


# A key section of what render writes: ike-NAME (the key sent) or ikeN-NAME (accepted).
_KEY_SECTION = re.compile(r"^  ike\d*-(\S+) \{$", re.M)


def key_counts(text):
    """How many keys each connection accepts, from a file ``render`` wrote (more than
    one: a key rotation has not finished). Never reads a key."""
    counts = {}
    for name in _KEY_SECTION.findall(text or ""):
        counts[name] = counts.get(name, 0) + 1
    return counts


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
    return list(connection_blocks(text))


def connection_blocks(text):
    """Each connection's lines in a file this module wrote, by name: a connection
    whose block changed is one charon replaces (closing its SAs) when it is loaded."""
    blocks, depth, name = {}, 0, None
    in_connections = False
    for raw in (text or "").splitlines():
        line = raw.strip()
        if depth == 0 and line == "connections {":
            in_connections = True
        elif in_connections and depth == 1 and line.endswith("{"):
            name = line[:-1].strip()
            blocks[name] = []
        if name is not None:
            blocks[name].append(line)
        depth += line.count("{") - line.count("}")
        if depth <= 1:
            name = None
        if depth == 0:
            in_connections = False
    return {key: "\n".join(lines) for key, lines in blocks.items()}


def parse_sas(text):
    """``swanctl --list-sas --pretty`` -> each IKE_SA as a dict: its name, the vici
    keys (uniqueid, state, initiator, initiator-spi, responder-spi...) and ``children``,
    a list of its CHILD_SAs' keys (name, uniqueid, state...)."""
    events = []  # one "list-sa event" per IKE_SA, all with that same name
    stack = []
    items = None
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        if items is not None:
            if line == "]":
                items = None
            else:
                items.append(line)
        elif line.endswith("{"):
            section = {}
            if stack:
                stack[-1][line[:-1].strip()] = section
            elif line[:-1].strip() == "list-sa event":
                events.append(section)
            stack.append(section)
        elif line == "}":
            if stack:
                stack.pop()
        elif " = " in line and stack:
            key, value = line.split(" = ", 1)
            if value == "[":
                items = stack[-1][key] = []
            else:
                stack[-1][key] = value
    sas = []
    for event in events:
        for name, ike in event.items():
            if not isinstance(ike, dict):
                continue
            children = ike.get("child-sas")
            sa = {key: value for key, value in ike.items() if key != "child-sas"}
            sa["name"] = name
            sa["children"] = [c for c in (children or {}).values() if isinstance(c, dict)]
            sas.append(sa)
    return sas


def _by_name(sas):
    """The SAs of each link, grouped once per poll (not scanned again for each link)."""
    grouped = {}
    for sa in sas:
        grouped.setdefault(sa["name"], []).append(sa)
    return grouped


def _is_up(ike, name):
    return ike.get("state") in _UP_IKE and any(
        child.get("name") == name and child.get("state") in _UP_CHILD for child in ike["children"]
    )


def _answered(ike):
    """The peer has answered this IKE_SA (it initiated it, or sent its SPI back)."""
    return ike.get("initiator") != "yes" or (ike.get("responder-spi") or "0").strip("0") != ""


def link_state(sas, name, ignore=()):
    """``up`` (a CHILD_SA carries the link), ``opening`` (an IKE_SA of the link is
    still negotiating; ``answered`` whether the peer has spoken yet), or ``idle``.
    IKE_SAs whose uniqueid is in ``ignore`` (ones being replaced) are left out."""
    own = [s for s in sas if s["name"] == name and s.get("uniqueid") not in ignore]
    up = [s for s in own if _is_up(s, name)]
    # An established IKE_SA without a CHILD_SA on its way is idle: initiating the link
    # again creates the CHILD_SA in it.
    opening = [
        s
        for s in own
        if s.get("state") in _OPENING_IKE
        or (
            s.get("state") in _UP_IKE
            and not _is_up(s, name)
            and any(c.get("state") in _OPENING_CHILD for c in s["children"])
        )
    ]
    return {
        "up": up,
        "opening": opening,
        "answered": any(_answered(s) for s in opening),
    }


def duplicates(sas, name, ignore=()):
    """The established IKE_SAs of a link beyond the one both ends keep: the lowest
    initiator SPI (both ends see the same SPIs, so both pick the same one)."""
    up = sorted(
        (s for s in sas if s["name"] == name and s.get("uniqueid") not in ignore),
        key=lambda s: s.get("initiator-spi", ""),
    )
    up = [s for s in up if _is_up(s, name)]
    return up[1:]


def bring_up(
    swanctl,
    connections,
    since,
    loaded=(),
    replaced=None,
    up_timeout=15,
    answer_timeout=5,
    clock=time.monotonic,
    sleep=time.sleep,
):
    """Initiate every link of ``connections`` that is neither up nor opening, and
    wait, within one deadline for all links at once, until each link is up, or
    refused (idle again after its second initiation), or its peer has not answered
    IKE ``answer_timeout`` seconds after the link's first initiation.

    The deadline is ``up_timeout`` after ``since``, or after the first pass when that
    initiated links (a swanctl call each: it returns at once, but a process costs
    its time on a slow gateway). ``loaded``: links charon initiated itself at
    ``since`` (start_action, at load). ``replaced``: {link: uniqueids of its IKE_SAs
    from before the load}, those of changed links, which charon closes (they don't
    make the link up, unless still up ``REPLACED_AFTER`` seconds after the load).

    An up link's duplicate IKE_SAs (``duplicates``) are closed as they are seen, and
    the link counts as up only once a later poll sees it up with none left; one that
    went idle with them is initiated again (at most ``MAX_INITIATIONS`` times in
    all). Returns up, down ({link: why}), initiated, duplicates_closed and waited
    (seconds after ``since``)."""
    replaced = replaced or {}
    remote = {c["name"]: c["remote"] for c in connections}
    names = [c["name"] for c in connections]
    tries = {name: [since] for name in loaded if name in remote}
    initiated = set(tries)
    first_seen = {}
    settled = {}  # link -> why it stays down: charon would not initiate it
    closing = {}  # link -> uniqueids of the duplicate IKE_SAs this call closed
    again = {}  # link -> when it was initiated after closing a duplicate left it idle
    seen_up = {}  # link -> when a poll last saw it up
    closed = []
    wait_from = None  # the deadline's start, known after the first pass
    while True:
        initiating = False
        now = clock()
        sas = _by_name(swanctl.sas())
        waiting, down = [], {}
        for name in names:
            if name in settled:
                down[name] = settled[name]
                continue
            own = sas.get(name, [])
            ignore = replaced.get(name, ()) if now - since < REPLACED_AFTER else ()
            gone = closing.get(name)
            # A duplicate this call closed never counts, nor is it closed twice.
            skip = set(ignore) | gone if gone else ignore
            state = link_state(own, name, skip)
            attempts = tries.setdefault(name, [])
            if not state["up"] and ignore and link_state(own, name, gone or ())["up"]:
                # Its old SA, not closed yet: wait a moment to see whether it goes.
                waiting.append(name)
                down[name] = "IKE still negotiating"
                continue
            if state["up"]:
                seen_up[name] = now
                # Up. An IKE_SA the peer is negotiating beside it (both ends initiated
                # at the same moment) is waited for, so that the duplicate is closed
                # now; one the peer never answered is not.
                if state["answered"]:
                    waiting.append(name)
                    continue
                extra = duplicates(own, name, skip)
                for sa in extra:
                    swanctl.terminate_ike_id(sa["uniqueid"])
                    closing.setdefault(name, set()).add(sa.get("uniqueid"))
                    closed.append(f"{name} #{sa['uniqueid']}")
                # Up once a poll sees it up, the closed ones gone (or going).
                lingering = gone and any(_is_up(s, name) for s in own if s.get("uniqueid") in gone)
                if extra or lingering:
                    waiting.append(name)
                    down[name] = "closing its duplicate IKE_SA"
                continue
            if state["opening"]:
                if name in again:
                    first = again[name]
                else:
                    first = attempts[0] if attempts else first_seen.setdefault(name, now)
                if not state["answered"] and now - first >= answer_timeout:
                    down[name] = f"no answer from {remote[name]} in {answer_timeout} s"
                else:
                    waiting.append(name)
                    down[name] = "IKE still negotiating"
            elif len(attempts) < MAX_INITIATIONS:
                why = swanctl.initiate(name)
                attempts.append(clock())
                if gone:
                    again[name] = attempts[-1]
                initiated.add(name)
                initiating = True
                if why:
                    settled[name] = down[name] = why
                else:
                    waiting.append(name)
                    down[name] = "initiated"
            elif now - attempts[-1] >= REFUSED_AFTER:
                why = f"refused by {remote[name]}, or failed (strongSwan's log says why)"
                if gone and seen_up[name] >= attempts[-1]:
                    # Up after its last initiation, and lost when a duplicate was closed.
                    why = f"initiated {len(attempts)} times already"
                down[name] = f"down after its duplicate IKE_SA was closed: {why}" if gone else why
            else:
                waiting.append(name)
                down[name] = "initiated"
        if wait_from is None:
            wait_from = clock() if initiating else since
        left = wait_from + up_timeout - clock()
        if not waiting or left <= 0:
            break
        sleep(min(POLL_INTERVAL, left))
    return {
        "up": [name for name in names if name not in down],
        "down": down,
        "initiated": sorted(initiated),
        "duplicates_closed": closed,
        "waited": round(max(0.0, clock() - since), 1),
    }


def survey(swanctl, connections):
    """Check mode: which links are up now (none without a running charon: swanctl
    None), none initiated."""
    sas = _by_name(swanctl.sas()) if swanctl is not None else {}
    down = {
        c["name"]: "down (check mode: not initiated)"
        for c in connections
        if not link_state(sas.get(c["name"], []), c["name"])["up"]
    }
    return {
        "up": [c["name"] for c in connections if c["name"] not in down],
        "down": down,
        "initiated": [],
        "duplicates_closed": [],
        "waited": 0.0,
    }


class Swanctl:
    """swanctl through AnsibleModule.run_command; tests inject a fake."""

    def __init__(self, module):
        self.module = module
        # Not required: removing nothing must work where strongSwan was never installed.
        found = module.get_bin_path("swanctl")
        self.installed = found is not None
        self.swanctl = found or "swanctl"

    def run(self, *args, check=True):
        argv = [self.swanctl, *args]
        rc, out, err = self.module.run_command(argv, check_rc=False)
        if check and rc != 0:
            raise IpsecError(f"'{' '.join(argv)}' failed (rc={rc}): {(err or out).strip()}", err)
        return rc, out

    def version(self):
        """strongSwan's version, (5, 9, 8), or None if unknown. Read-only, and needs no
        charon: without one swanctl fails to connect but names its version all the
        same (in its usage). Not installed (check mode before the role's apt task
        ran): None, nothing run."""
        if not self.installed:
            return None
        _rc, out, err = self.module.run_command([self.swanctl, "--version"], check_rc=False)
        return parse_version(f"{out or ''}\n{err or ''}")

    def loaded(self):
        """Names of the connections charon holds now."""
        return set(_LOADED.findall(self.run("--list-conns")[1]))

    def load_all(self):
        self.run("--load-all", "--noprompt")

    def reload_settings(self):
        self.run("--reload-settings")

    def terminate(self, name):
        # Closing the SAs of a connection that left the file: their policies would
        # otherwise keep matching until they expire. Not there: nothing to do.
        # --force without --timeout: charon sends the DELETE and forgets the SA at
        # once. The peer's answer would never come: the firewall, reloaded first, no
        # longer takes IKE from a removed office, and a wait for it cost 5 s a link.
        self.run("--terminate", "--ike", name, "--force", check=False)

    def sas(self):
        """Every IKE_SA charon holds, with its CHILD_SAs (parse_sas)."""
        return parse_sas(self.run("--list-sas", "--pretty")[1])

    def initiate(self, name):
        """Start keying a link and return at once (timeout -1: charon goes on alone);
        None, or why charon would not."""
        argv = [self.swanctl, "--initiate", "--child", name, "--ike", name, "--timeout", "-1"]
        rc, out, err = self.module.run_command(argv, check_rc=False)
        if rc == 0:
            return None
        said = [line for line in (err or out or "").splitlines() if "failed:" in line]
        return f"charon would not initiate it: {(said or [str(rc)])[-1].strip()}"

    def terminate_ike_id(self, uniqueid):
        # A duplicate IKE_SA: its DELETE goes to the peer, which closes it too.
        self.run("--terminate", "--ike-id", str(uniqueid), "--timeout", "-1", check=False)


def run_module(
    module, swanctl=None, systemd=None, checkpoint=None, clock=time.monotonic, sleep=time.sleep
):
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
    new = None
    try:
        swanctl = swanctl or Swanctl(module)
        systemd = systemd or Systemd(module)
        # Whether charon initiates what it loads (strongSwan 5.9.6 and later): asked
        # once, only with a file to write, in check mode too (the same file).
        start = True
        if present and connections:
            start = initiates_at_load(swanctl.version())
            new = render(
                connections,
                params["keys"] or {},
                params["ike_proposals"],
                params["esp_proposals"],
                params["dpd_delay"],
                start=start,
                ike_rekey_time=params.get("ike_rekey_time"),
                child_rekey_time=params.get("child_rekey_time"),
            )
        old_settings, new_settings = read_file(SETTINGS_PATH), render_settings(connections)
        # The updown hook the failover links name (module_utils/failover.py).
        old_hook = read_file(failover.HOOK_PATH)
        new_hook = failover.hook_text() if new_settings else None
        running = systemd.is_active(SERVICE)
        loaded = swanctl.loaded() if running else set()
        wanted = {c["name"] for c in connections}
        # Connections our previous file had and this one has not: closed after loading.
        stale = sorted(set(connection_names(old)) - wanted)
        if new != old:
            steps.append(("write " if new is not None else "remove ") + path)
        if new_hook != old_hook:
            steps.append(("write " if new_hook else "remove ") + failover.HOOK_PATH)
        if new_settings != old_settings:
            steps.append(("write " if new_settings else "remove ") + SETTINGS_PATH)
            if running:
                steps.append("swanctl --reload-settings")
        if new is not None and not systemd.is_enabled(SERVICE):
            steps.append(f"systemctl enable {SERVICE}")
        if new is not None and not running:
            steps.append(f"systemctl start {SERVICE}")
        if running and (new != old or not wanted <= loaded):
            steps.append("swanctl --load-all")
        steps += [f"swanctl --terminate --ike {name}" for name in stale]
        # The links charon loads anew: all at a start, else the new and changed ones,
        # whose old SAs it closes; and initiates itself (start_action), if it can.
        changed = {
            name
            for name, block in connection_blocks(new).items()
            if connection_blocks(old).get(name) != block or name not in loaded
        }
        starting = set()
        if new is not None and not running:
            starting = wanted
        elif running and "swanctl --load-all" in steps:
            starting = changed & wanted
        replaced = {}
        if starting and running and not check_mode:
            for sa in swanctl.sas():
                if sa["name"] in starting:
                    replaced.setdefault(sa["name"], set()).add(sa.get("uniqueid"))
        since = clock()
        if steps and not check_mode:
            if checkpoint is not None and params["rollback_timeout"] > 0:
                # Undo: the previous file back, then loaded (and the new connections
                # unloaded) by swanctl.
                result["rollback"] = checkpoint.arm(
                    "ipsec",
                    files=[path, SETTINGS_PATH, failover.HOOK_PATH],
                    commands=[
                        [swanctl.swanctl, "--reload-settings"],
                        [swanctl.swanctl, "--load-all", "--noprompt"],
                    ],
                    timeout=params["rollback_timeout"],
                )
            # The hook and the settings first: the SAs the load starts use them.
            put_file(module, failover.HOOK_PATH, old_hook, new_hook, mode=0o755)
            put_file(module, SETTINGS_PATH, old_settings, new_settings)
            if new_settings != old_settings and running:
                swanctl.reload_settings()
            put_file(module, path, old, new, mode=0o600)
            if new is not None and not systemd.is_enabled(SERVICE):
                systemd.run("enable", SERVICE)
            if new is not None and not running:
                systemd.run("start", SERVICE)  # its ExecStartPost loads the file
            elif running:
                swanctl.load_all()
            for name in stale:
                swanctl.terminate(name)
            # The answer and up timeouts count from here: a slow load eats neither.
            since = clock()
        # Every link up before the play goes on (initiating one changes no
        # configuration: not a change); in check mode only how they are now.
        if new is not None and check_mode:
            result["links"] = survey(swanctl if running else None, connections)
        elif new is not None:
            result["links"] = bring_up(
                swanctl,
                connections,
                since,
                loaded=starting if start else (),
                replaced=replaced,
                up_timeout=params["up_timeout"],
                answer_timeout=params["answer_timeout"],
                clock=clock,
                sleep=sleep,
            )
    except (IpsecError, SystemdError, CheckpointError, OSError) as exc:
        module.fail_json(msg=str(exc), steps=steps, stderr=getattr(exc, "stderr", ""), **result)
    result["changed"] = bool(steps)
    result["steps"] = steps
    if "rollback" in result:
        result["ansible_facts"] = fact(result["rollback"])
    if module._diff:
        result["diff"] = [
            {
                "before_header": path,
                "after_header": path,
                "before": hide_keys(old),
                "after": hide_keys(new),
            }
        ]
        if new_hook != old_hook:
            result["diff"].append(
                {
                    "before_header": failover.HOOK_PATH,
                    "after_header": failover.HOOK_PATH,
                    "before": "(the failover hook)\n" if old_hook else "",
                    "after": "(the failover hook)\n" if new_hook else "",
                }
            )
        if new_settings != old_settings:
            result["diff"].append(
                {
                    "before_header": SETTINGS_PATH,
                    "after_header": SETTINGS_PATH,
                    "before": old_settings or "",
                    "after": new_settings or "",
                }
            )
    module.exit_json(**result)
