# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the controller and the gateways agree on: the one place for it.

The planner (``plugins/plugin_utils/plan``) produces ``office_plan``, one per gateway;
the roles, the gateway modules and the relay program consume it. Everything both
sides must read the same way is declared here, once:

- ``OFFICE_PLAN``: the shape of ``office_plan``, section by section, versioned
  (``VERSION``), with one validator (``problems``); ``section`` hands a consumer
  one section that validates, or raises naming what is wrong.
- ``OFFICE_SECRETS``: the shape of ``office_secrets`` (the keys of a gateway's own
  links; never in a plan).
- The relay's facts: its wire names, the office id on the wire, its configuration
  and keys-file versions, its files and which peers it authenticates.

Module_utils is the one place both controller plugins and gateway modules import;
``tools/build_relay.py`` packs this very file into the relay program
(``relay/sitelink_relay/contract.py`` is a link to it). Standard library only,
Python 3.9+: it runs on gateways.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional

# The version of the office_plan shape. A consumer given a plan of another version
# (a gateway module from another collection version) says so instead of guessing.
VERSION = 1

# ----------------------------------------------------------------------------- names
# An office name's longest (the planner's pattern; the relay's configuration checks
# it too), and an interface name's (the kernel's IFNAMSIZ, 16, less its NUL): the
# tunnel names the planner makes are what the relay's configuration accepts.
OFFICE_NAME_MAX = 63
IFNAME_MAX = 15

# ----------------------------------------------------------------------------- relay
# The relay's wire names, as its configuration spells them. The planner's input says
# "authenticated" or "raw" (office_relay_wire); the configuration says these.
WIRE_RAW = "raw"
WIRE_SITELINK1 = "sitelink1"
WIRE_FORMATS = (WIRE_RAW, WIRE_SITELINK1)
# How the authenticated wire names an office: the first OFFICE_ID_BYTES of the SHA-256
# of its name. The planner refuses two offices with one id.
OFFICE_ID_BYTES = 4
# The relay configuration file's versions: the planner writes RELAY_CONFIG_VERSION,
# the relay reads every one of RELAY_CONFIG_VERSIONS (version 1: raw wire only).
RELAY_CONFIG_VERSION = 2
RELAY_CONFIG_VERSIONS = (1, 2)
RELAY_KEYS_VERSION = 1
# Where the relay's files are. The keys are written by the relay role and read by the
# relay through systemd's credentials; systemd keeps the state directory (epoch and
# replay windows) across restarts (StateDirectory=), and the run directory while it
# runs (RuntimeDirectory=).
RELAY_KEYS_FILE = "/etc/sitelink/relay-keys.json"
RELAY_STATE_DIR = "/var/lib/sitelink-relay"
RELAY_STATUS_FILE = "/run/sitelink-relay/status.json"
RELAY_METRICS_FILE = "/run/sitelink-relay/metrics.prom"
RELAY_UNIT = "sitelink-relay.service"
# In the state directory: {"senders": [...] or "all"}, written by root (relay_service),
# read and deleted by the relay at start and on SIGHUP.
RELAY_FORGET_FILE = "forget"
# In the state directory: the keys file's copy that a running relay reads on SIGHUP
# (systemd copies the credential only at start), so that new keys (a rotation) need
# no restart, which would lose the broadcasts of its seconds. Written by root
# (relay_service) beside every change of the keys file, owned by the relay, 0600.
RELAY_LIVE_KEYS_FILE = "keys.json"


def office_id(name: str) -> bytes:
    """The bytes that stand for office ``name`` on the authenticated wire."""
    return hashlib.sha256(name.encode("utf-8")).digest()[:OFFICE_ID_BYTES]


def relay_peer_wire(config: dict[str, Any], address: str) -> str:
    """The wire the peer relay at ``address`` speaks: its own (an external peer's
    choice), else the configuration's (raw when it names none, as the relay reads it)."""
    return config["peers"][address].get("wire", config.get("wire", WIRE_RAW))


def relay_keyed_peers(config: dict[str, Any]) -> list[str]:
    """The peer relays of a relay configuration that speak the authenticated wire:
    the keys file has one entry for each, and only for them."""
    return [a for a in config.get("peers", {}) if relay_peer_wire(config, a) == WIRE_SITELINK1]


def relay_needs_keys(config: dict[str, Any]) -> bool:
    """Whether the relay configured by ``config`` authenticates anything: then it has a
    keys file (empty of peers when only its own wire is sitelink1)."""
    return config.get("wire", WIRE_RAW) == WIRE_SITELINK1 or bool(relay_keyed_peers(config))


def relay_keys_document(
    keyed_peers: list[str], link_keys: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """The relay's keys file for ``keyed_peers``, from each peer's link keys
    (``relay``, and ``relay_accepted`` during a rotation, hex), by peer address.

    The relay sends with ``relay`` and accepts it and, during a rotation, the keys of
    the secret being rotated in or out (``relay_accepted``). Raises ``ContractError``
    naming the peers that have no key (never a key).
    """
    keyless = [a for a in keyed_peers if not (link_keys.get(a) or {}).get("relay")]
    if keyless:
        raise ContractError(
            "no key for the peer relay(s) {}, which speak the authenticated wire ({})".format(
                ", ".join(keyless), WIRE_SITELINK1
            )
        )
    peers = {}
    for address in keyed_peers:
        keys = link_keys[address]
        accept = [keys["relay"], *keys.get("relay_accepted", ())]
        peers[address] = {"send": keys["relay"], "accept": accept}
    return {"version": RELAY_KEYS_VERSION, "peers": peers}


# ----------------------------------------------------------------------------- shapes
class ContractError(ValueError):
    """A plan, a section or a keys file that does not match the contract."""


class Shape:
    """A declared shape: ``check`` appends "path: problem" for every mismatch."""

    def check(self, value: Any, path: str, out: list[str]) -> None:
        raise NotImplementedError

    def paths(self, path: str) -> list[str]:
        """Every path this shape declares below ``path`` (``[]`` a list item, ``*`` any key)."""
        return [path]


class Scalar(Shape):
    def __init__(self, kind: str, choices: tuple = (), nullable: bool = False):
        self.kind, self.choices, self.nullable = kind, choices, nullable

    def check(self, value: Any, path: str, out: list[str]) -> None:
        if value is None and self.nullable:
            return
        if self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind == "bool":
            ok = isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            kind = {"int": "an int", "bool": "true or false"}.get(self.kind, "a string")
            out.append(f"{path}: {value!r} is not {kind}")
        elif self.choices and value not in self.choices:
            out.append(f"{path}: {value!r} is not one of {', '.join(map(str, self.choices))}")


class ListOf(Shape):
    def __init__(self, item: Shape):
        self.item = item

    def check(self, value: Any, path: str, out: list[str]) -> None:
        if not isinstance(value, list):
            out.append(f"{path}: must be a list")
            return
        for index, item in enumerate(value):
            self.item.check(item, f"{path}[{index}]", out)

    def paths(self, path: str) -> list[str]:
        return [path, *self.item.paths(path + "[]")]


class MapOf(Shape):
    """A dict whose keys are data (addresses, names), all with one value shape."""

    def __init__(self, value: Shape):
        self.value = value

    def check(self, value: Any, path: str, out: list[str]) -> None:
        if not isinstance(value, dict):
            out.append(f"{path}: must be a mapping")
            return
        for key, item in value.items():
            if not isinstance(key, str):
                out.append(f"{path}: key {key!r} is not a string")
            self.value.check(item, f"{path}[{key!r}]", out)

    def paths(self, path: str) -> list[str]:
        return [path, *self.value.paths(path + ".*")]


class Record(Shape):
    """A dict with declared fields: ``fields`` always there, ``optional`` maybe."""

    def __init__(self, fields: dict[str, Shape], optional: Optional[dict[str, Shape]] = None):
        self.fields, self.optional = fields, optional or {}

    def check(self, value: Any, path: str, out: list[str]) -> None:
        if not isinstance(value, dict):
            out.append(f"{path}: must be a mapping")
            return
        missing = [name for name in self.fields if name not in value]
        if missing:
            out.append(f"{path}: missing {', '.join(missing)}")
        unknown = sorted(set(value) - set(self.fields) - set(self.optional))
        if unknown:
            out.append(f"{path}: not in the contract: {', '.join(unknown)}")
        for name, shape in (*self.fields.items(), *self.optional.items()):
            if name in value:
                shape.check(value[name], f"{path}.{name}", out)

    def paths(self, path: str) -> list[str]:
        found = [path]
        for name, shape in (*self.fields.items(), *self.optional.items()):
            found += shape.paths(f"{path}.{name}")
        return found


STR = Scalar("str")
INT = Scalar("int")
BOOL = Scalar("bool")
NAMES = ListOf(STR)
PROTECTION = Scalar("str", ("ipsec", "none"))
POLICY = Scalar("str", ("accept", "drop"))
WIRE = Scalar("str", WIRE_FORMATS)

# What each role takes as its input, one section each.
TUNNELS = ListOf(
    Record(
        {
            "name": STR,
            "local": STR,
            "remote": STR,
            "address": STR,
            "routes": NAMES,
            "mtu": INT,
            "ttl": INT,
            "description": STR,
        },
        # the tunnel that carries this one's routes while its link is down (two hubs)
        {"backup": STR},
    )
)
IPSEC = Record(
    {
        "protection": PROTECTION,
        # one IKEv2 connection per protected link
        "connections": ListOf(
            Record(
                {"name": STR, "link": STR, "peer": STR, "local": STR, "remote": STR},
                # the link's state moves routes between hubs (tunnels[].backup): its
                # SAs run the failover hook, and come back by themselves
                {"failover": BOOL},
            )
        ),
        # links to external peers that chose no protection
        "unprotected": ListOf(Record({"name": STR, "peer": STR, "remote": STR})),
        # how each external peer's link is keyed, as the texts show it
        "external": MapOf(STR),
    }
)
FIREWALL = Record(
    {
        "wan_interface": STR,
        "lan_interface": STR,
        "protection": PROTECTION,
        "input_policy": POLICY,
        "forward_policy": POLICY,
        "management_sources": NAMES,
        "link_peers": NAMES,
        "ipsec_peers": NAMES,
        "plain_peers": NAMES,
        "office_lans": NAMES,
        "tunnels": ListOf(Record({"name": STR, "sources": NAMES, "relay_peer": STR, "mtu": INT})),
        "relay_ports": ListOf(INT),
    }
)
MASQUERADE = Record({"interface": STR, "address": STR, "sources": NAMES})
# The relay's own configuration file (RELAY_CONFIG_VERSION), as the planner writes it.
# The relay reads more (hand-written files: storm limits, siblings, version 1): its
# parser (relay/sitelink_relay/config.py) is the judge of those.
RELAY = Record(
    {
        "version": Scalar("int", (RELAY_CONFIG_VERSION,)),
        "office": STR,
        "lan": Record({"interface": STR, "address": STR}),
        "own_addresses": NAMES,
        "wire": WIRE,
        "keys_file": STR,
        "state_dir": STR,
        "peers": MapOf(Record({"office": STR, "interface": STR}, {"wire": WIRE})),
        "rules": ListOf(
            Record(
                {"port": INT, "forward_to": NAMES, "accept_from": NAMES},
                {"transit": MapOf(NAMES), "multicast_groups": NAMES},
            )
        ),
        "status_file": STR,
        "metrics_file": STR,
    }
)

SECTIONS: dict[str, Shape] = {
    "tunnels": TUNNELS,
    "ipsec": IPSEC,
    "firewall": FIREWALL,
    "masquerade": MASQUERADE,
    "relay": RELAY,
}
OFFICE_PLAN = Record(
    {
        "contract": Scalar("int", (VERSION,)),
        "office": STR,
        "role": Scalar("str", ("hub", "branch")),
        "peers": NAMES,
        # each link's peer LAN address is what verify.yml pings through the tunnel
        "links": ListOf(
            Record({"id": STR, "offices": NAMES, "peer": STR, "peer_address": STR, "tunnel": STR})
        ),
        "lan": Record(
            {"interface": STR, "address": STR, "cidr": STR, "network": STR, "broadcast": STR}
        ),
        "wan": Record(
            {
                "interface": STR,
                "address": STR,
                "cidr": STR,
                "gateway": Scalar("str", nullable=True),
                "mtu": INT,
            }
        ),
        "protection": PROTECTION,
        "rollback_timeout": INT,
        **SECTIONS,
    }
)
# office_secrets: the keys of this gateway's own links, by link id (an entry for
# every link, empty where it has no key). Hex strings: the one each link sends with,
# and during a rotation the ones it accepts besides (*_accepted).
OFFICE_SECRETS = Record(
    {
        "links": MapOf(
            Record(
                {},
                {
                    "tunnel": STR,
                    "relay": STR,
                    "tunnel_accepted": ListOf(STR),
                    "relay_accepted": ListOf(STR),
                },
            ),
        )
    }
)

# A section as a role gets it when the gateway has no plan (the role used on its
# own): nothing to build. The run still stops on a plan whose section is wrong.
STANDALONE: dict[str, Any] = {
    "tunnels": [],
    "ipsec": {"protection": "ipsec", "connections": [], "unprotected": [], "external": {}},
    "firewall": {
        "wan_interface": "",
        "lan_interface": "",
        "protection": "ipsec",
        "input_policy": "accept",
        "forward_policy": "accept",
        "management_sources": [],
        "link_peers": [],
        "ipsec_peers": [],
        "plain_peers": [],
        "office_lans": [],
        "tunnels": [],
        "relay_ports": [],
    },
    "masquerade": {"interface": "", "address": "", "sources": []},
    # no rules: the relay is stopped and disabled
    "relay": {
        "version": RELAY_CONFIG_VERSION,
        "lan": {},
        "own_addresses": [],
        "wire": WIRE_RAW,
        "peers": {},
        "rules": [],
        "keys_file": RELAY_KEYS_FILE,
        "state_dir": RELAY_STATE_DIR,
    },
    "rollback_timeout": 0,
}


def problems(plan: Any) -> list[str]:
    """Every way ``plan`` differs from the declared ``office_plan``: [] when it matches."""
    other = _other_version(plan)
    if other:
        return [other]
    out: list[str] = []
    OFFICE_PLAN.check(plan, "office_plan", out)
    return out


def _other_version(plan: Any) -> Optional[str]:
    """What to say of a plan made by another version of the contract, or None."""
    if isinstance(plan, dict) and plan.get("contract", VERSION) != VERSION:
        return (
            f"office_plan: contract version {plan['contract']!r}, this collection reads "
            f"{VERSION}: plan with the same collection version"
        )
    return None


def section(plan: Any, name: str) -> Any:
    """Section ``name`` of ``plan`` (a field of ``office_plan``), checked against the
    contract; the standalone one when there is no plan (None). Raises ContractError
    naming every problem of that section."""
    if name not in OFFICE_PLAN.fields:
        raise ContractError(f"office_plan has no section {name!r} in the contract")
    if plan is None:
        if name not in STANDALONE:
            raise ContractError(f"office_plan.{name}: there is no plan (run the office role)")
        return STANDALONE[name]
    if not isinstance(plan, dict):
        raise ContractError("office_plan: must be a mapping, as the office role sets it")
    other = _other_version(plan)
    if other:
        raise ContractError(other)
    if name not in plan:
        raise ContractError(f"office_plan: missing {name}")
    out: list[str] = []
    OFFICE_PLAN.fields[name].check(plan[name], f"office_plan.{name}", out)
    if out:
        raise ContractError("; ".join(out))
    return plan[name]


def declared_paths() -> frozenset[str]:
    """Every path ``office_plan`` declares, e.g. ``office_plan.relay.peers.*.wire``."""
    return frozenset(OFFICE_PLAN.paths("office_plan"))
