# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The office inventory schema: written once, here.

Every ``office_*`` variable is declared below with its type, default and
documentation. The office role's ``meta/argument_specs.yml``, its
``defaults/main.yml`` and the README's table are generated from ``FIELDS``
(``make schema``; a unit test fails when they drift), and ``check_types``
is the only type check: Ansible's per-host argument-spec check is not used
for office variables, so every problem comes out in one message.

No imports from Ansible or the rest of the collection: the generator loads
this file on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

OFFICE = "office"  # set per office (host variable)
DEPLOYMENT = "deployment"  # set once for every office (group variable of the offices group)

TOPOLOGIES = ("hub-and-spoke", "mesh", "links")
ROLES = ("hub", "branch")
PROTECTIONS = ("ipsec", "none")
RELAY_WIRES = ("authenticated", "raw")
POLICIES = ("accept", "drop")
# Facts the office role sets on each gateway: not inventory variables.
OUTPUT_FACTS = ("office_plan", "office_secrets")


@dataclass(frozen=True)
class Field:
    """One variable: what argument specs, defaults and the README say about it."""

    name: str
    type: str  # str, int, bool, list, dict, raw
    description: tuple[str, ...]
    scope: str = OFFICE
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    elements: Optional[str] = None
    secret: bool = False
    options: tuple[Field, ...] = ()
    # The README table's one-line "meaning" column.
    summary: str = ""
    # Shown in the README table instead of the default value.
    default_text: Optional[str] = None
    # The release it first appeared in, for the docs; None: the first release (0.1.0).
    version_added: Optional[str] = None


def _relay_rule_options(target_help: str) -> tuple[Field, ...]:
    return (
        Field("port", "int", ("UDP port of the broadcasts.",), required=True),
        Field("to", "list", (target_help,), elements="str"),
        Field(
            "groups",
            "list",
            (
                "IPv4 multicast groups (in 224.0.0.0/4) relayed on this port as well as the "
                "LAN broadcasts, e.g. C(239.255.255.250) for SSDP on port 1900.",
                "Every gateway the port's datagrams cross (sender, hubs, receivers) relays "
                "the union of the groups configured for that port.",
            ),
            elements="str",
            version_added="0.2.0",
        ),
    )


FIELDS: tuple[Field, ...] = (
    Field(
        "office_name",
        "str",
        (
            "Short name of the office (lower-case letters, digits, C(-), C(_); at most 63).",
            "Tunnel interfaces are named after it on the other gateways (C(sl-<name>), "
            "shortened with a hash beyond 15 characters).",
        ),
        default="{{ inventory_hostname }}",
        summary="short name; tunnels to it are named `sl-<name>` (hashed beyond 15 characters)",
        default_text="inventory hostname",
    ),
    Field(
        "office_role",
        "str",
        (
            "With O(office_topology=hub-and-spoke), branches link to every hub and hubs to "
            "every office; traffic between branches goes through a hub (O(office_transit)).",
        ),
        default="branch",
        choices=ROLES,
        summary="`hub` or `branch` (see topologies)",
    ),
    Field(
        "office_lan_interface",
        "str",
        ("Gateway interface on the office LAN (e.g. C(eth0)).",),
        required=True,
        summary="LAN interface, e.g. `eth0`",
    ),
    Field(
        "office_lan_address",
        "str",
        (
            "The gateway's LAN address with the LAN prefix length, e.g. C(192.168.1.126/24).",
            "The office LAN prefix is derived from it; it is also the gateway's address "
            "inside every tunnel, and the address its relay sends from.",
        ),
        required=True,
        summary="gateway LAN address **with prefix**, e.g. `192.168.1.126/24`; the office LAN "
        "is derived from it",
    ),
    Field(
        "office_wan_interface",
        "str",
        ("Gateway interface towards the ISP (e.g. C(eth1)).",),
        required=True,
        summary="WAN interface, e.g. `eth1`",
    ),
    Field(
        "office_wan_address",
        "str",
        (
            "The gateway's public (WAN) address with prefix length, e.g. C(172.16.1.12/27).",
            "Tunnels are built between these addresses.",
        ),
        required=True,
        summary="public address with prefix, e.g. `172.16.1.12/27`; tunnels run between these",
    ),
    Field(
        "office_wan_gateway",
        "str",
        (
            "The ISP router, inside the WAN subnet. Checked, and used by the test lab; the "
            "collection does not change the gateway's default route.",
        ),
        summary="the ISP router; checked to be inside the WAN subnet, used by the lab",
        default_text="none",
    ),
    Field(
        "office_wan_mtu",
        "int",
        (
            "MTU of the WAN path. A link's tunnels get the smaller of both ends' value minus "
            "20 bytes of IPIP header.",
        ),
        default=1500,
        summary="WAN path MTU; tunnel MTU = smaller of both ends − 20",
    ),
    Field(
        "office_masquerade",
        "bool",
        (
            "SNAT traffic from the other offices' LANs to this gateway's LAN address as it "
            "leaves on the LAN interface, so servers that cannot be reconfigured see it as "
            "local and reply to the gateway.",
        ),
        default=False,
        summary="SNAT every other office's LAN to this gateway's LAN address on the LAN interface",
    ),
    Field(
        "office_broadcast_relay",
        "list",
        (
            "UDP broadcasts seen on this office's LAN that are relayed to other offices and "
            "re-broadcast on their LANs.",
            "A target may be any office reachable through the topology: through a hub, the "
            "hub fans the datagram out. No office gets a datagram twice, nor back.",
        ),
        default=[],
        elements="dict",
        options=_relay_rule_options(
            "Office names to relay to. Omit it for every office reachable from this one."
        ),
        summary="`[{port: 6799, to: [brooklyn]}]`: broadcasts on this LAN relayed to those "
        "offices (omit `to` for every reachable office); `groups: [239.255.255.250]` adds "
        "multicast groups on that port",
    ),
    Field(
        "office_firewall_input_policy",
        "str",
        (
            "Policy of the collection's firewall for traffic to the gateway itself. "
            "C(accept): only what the firewall drops on purpose is dropped (IPIP, IKE and "
            "ESP from anyone but a link peer, the relay port from anywhere but the tunnels, "
            "office LAN sources arriving from the Internet). C(drop): also everything that "
            "is not needed: SSH is then accepted only from O(office_management_sources).",
        ),
        default="accept",
        choices=POLICIES,
        summary="`accept`, or `drop` to harden (SSH only from `office_management_sources`)",
        version_added="0.2.0",
    ),
    Field(
        "office_firewall_forward_policy",
        "str",
        (
            "Policy for traffic the gateway forwards. C(drop) forwards only replies "
            "(established, related), the LAN to the offices routed over the tunnels, the "
            "tunnels to the LAN, and tunnel to tunnel (transit).",
        ),
        default="accept",
        choices=POLICIES,
        summary="`accept`, or `drop`: forward only between the LAN and the tunnels",
        version_added="0.2.0",
    ),
    Field(
        "office_management_sources",
        "list",
        (
            "Addresses or prefixes (IPv4 or IPv6) allowed to reach SSH (port 22) when "
            "O(office_firewall_input_policy=drop). Include where Ansible connects from: a "
            "push that locks it out is rolled back by the gateway "
            "(O(office_rollback_timeout)).",
        ),
        default=[],
        elements="str",
        summary="who may reach SSH when the input policy is `drop` (include the controller)",
        version_added="0.2.0",
    ),
    # ------------------------------------------------------------ deployment-wide
    Field(
        "office_topology",
        "str",
        (
            "How offices are linked. C(hub-and-spoke): branches link to every hub, hubs to "
            "every office. C(mesh): every pair. C(links): only the pairs in O(office_links).",
            "O(office_links) adds links to the other two as well.",
        ),
        scope=DEPLOYMENT,
        default="hub-and-spoke",
        choices=TOPOLOGIES,
        summary="`hub-and-spoke`, `mesh` or `links` (see topologies)",
    ),
    Field(
        "office_transit",
        "bool",
        (
            "Route between offices that have no link of their own through offices that do "
            "(shortest path, ties broken by name): in hub-and-spoke, branch to branch "
            "through a hub. Gateways forward between their tunnels.",
            "With C(false) an office reaches only the offices it has a link with.",
        ),
        scope=DEPLOYMENT,
        default=True,
        summary="route office to office through intermediate gateways (branch → hub → branch)",
        version_added="0.2.0",
    ),
    Field(
        "office_links",
        "list",
        (
            "Links between two offices, by office name: the only links with "
            "O(office_topology=links), extra ones otherwise.",
            "C(mtu) overrides the link's tunnel MTU on both ends.",
        ),
        scope=DEPLOYMENT,
        default=[],
        elements="dict",
        options=(
            Field("between", "list", ("The two office names.",), required=True, elements="str"),
            Field("mtu", "int", ("Tunnel MTU of this link (default from the WAN MTUs).",)),
        ),
        summary="`[{between: [a, b], mtu: 1400}]`: explicit links",
        version_added="0.2.0",
    ),
    Field(
        "office_external_peers",
        "list",
        (
            "Offices outside the inventory, run by someone else. They get tunnels, routes "
            "and relay rules on this collection's side only, and never carry transit.",
        ),
        scope=DEPLOYMENT,
        default=[],
        elements="dict",
        options=(
            Field("name", "str", ("Office name, as for O(office_name).",), required=True),
            Field(
                "wan_address",
                "str",
                ("Its public address (the tunnel's remote end).",),
                required=True,
            ),
            Field(
                "lan_address",
                "str",
                (
                    "Its gateway's LAN address with prefix length: the LAN routed to it, "
                    "and the address its relay sends from.",
                ),
                required=True,
            ),
            Field("role", "str", ("C(hub) or C(branch).",), default="branch", choices=ROLES),
            Field("wan_mtu", "int", ("MTU of its WAN path.",), default=1500),
            Field(
                "broadcast_relay",
                "list",
                ("What its relay sends to our offices, as O(office_broadcast_relay).",),
                default=[],
                elements="dict",
                options=_relay_rule_options("Office names its broadcasts are relayed to."),
            ),
            Field(
                "relay_wire",
                "str",
                (
                    "What its relay speaks with ours: C(authenticated) (it runs C(sitelink-relay) "
                    "with each link's relay key, derived from its O(office_external_peers[].psk)) "
                    "or C(raw) (payloads as they are, e.g. C(udp-proxy), the hand-built setup's "
                    "C relay). Default: O(office_relay_wire).",
                ),
                choices=RELAY_WIRES,
            ),
            Field(
                "protection",
                "str",
                (
                    "C(ipsec): its links' IPIP travels inside IPsec ESP, as between our offices, "
                    "authenticated with its own O(office_external_peers[].psk). C(none): plain "
                    "IPIP, readable and forgeable by anyone on the path (plan.yml and verify.yml "
                    "warn). Default: O(office_tunnel_protection).",
                ),
                choices=PROTECTIONS,
                version_added="0.2.0",
            ),
            Field(
                "psk",
                "str",
                (
                    "This peer's own key, agreed with its administrators and vaulted (e.g. "
                    'C("{{ vault_partner_psk }}"); C(openssl rand -base64 32)): at least 16 '
                    "printable ASCII characters without spaces, quotes or backslashes, not "
                    "starting with C(0x) or C(0s). Nothing derived from O(office_tunnel_secret) "
                    "is ever used on its links.",
                    "It is the IPsec pre-shared key of each of its links as it is, and each "
                    "link's relay key (authenticated wire) is derived from it (HKDF-SHA256 over "
                    "the two office names). plan.yml writes C(external/<name>.txt) with what its "
                    "administrators configure on their side (the key never appears there).",
                    "Required while its O(office_external_peers[].protection) is C(ipsec), or "
                    "while its relay exchanges datagrams with ours on the authenticated wire.",
                ),
                secret=True,
                version_added="0.2.0",
            ),
        ),
        summary="`[{name, wan_address, lan_address, psk}]`: peers run by someone else, each "
        "with its own key (`psk`, vaulted) or `protection: none`; `relay_wire: raw` for one "
        "that runs `udp-proxy`, the hand-built setup's C relay",
        version_added="0.2.0",
    ),
    Field(
        "office_tunnel_protection",
        "str",
        (
            "C(ipsec): every link's IPIP travels inside IPsec ESP (transport mode, IKEv2, "
            "strongSwan) between the two public addresses, keyed from "
            "O(office_tunnel_secret); IPIP that is not inside ESP from the link's peer is "
            "dropped. C(none): plain IPIP, readable and forgeable by anyone "
            "on the path (plan.yml and verify.yml warn).",
        ),
        scope=DEPLOYMENT,
        default="ipsec",
        choices=PROTECTIONS,
        summary="`ipsec` (ESP around every tunnel, keyed from the secret) or `none` (plain IPIP)",
        version_added="0.2.0",
    ),
    Field(
        "office_tunnel_secret",
        "str",
        (
            "The deployment secret (keep it in Ansible Vault; at least 16 characters). Each "
            "link's own keys (its IPsec pre-shared key, its relay key) are derived from it on "
            "the controller (HKDF over the two office names) and handed only to that link's "
            "two gateways in C(office_secrets), a fact set under C(no_log).",
            "Required while O(office_tunnel_protection=ipsec) or "
            "O(office_relay_wire=authenticated) (the defaults).",
        ),
        scope=DEPLOYMENT,
        secret=True,
        summary="deployment secret the per-link keys are derived from (vault it); required "
        "with `ipsec` or an `authenticated` relay wire",
        default_text="none",
        version_added="0.2.0",
    ),
    Field(
        "office_tunnel_secret_next",
        "str",
        (
            "The first step of a rotation of O(office_tunnel_secret): the new secret (vault "
            "it too; at least 16 characters). Every gateway accepts the keys derived from it "
            "(IPsec and relay) and still sends with those of O(office_tunnel_secret). Once "
            "C(site.yml) has run over every office, make it O(office_tunnel_secret) and the "
            "old one O(office_tunnel_secret_previous) (the README's Key rotation).",
        ),
        scope=DEPLOYMENT,
        secret=True,
        summary="rotation, step 1: the new secret, accepted but not sent yet",
        default_text="none",
        version_added="0.2.0",
    ),
    Field(
        "office_tunnel_secret_previous",
        "str",
        (
            "The second step of a rotation of O(office_tunnel_secret): the old secret (vault "
            "it too; at least 16 characters). Every gateway sends with the keys of "
            "O(office_tunnel_secret), the new one, and still accepts those derived from this "
            "one, so that gateways not updated yet still understand it. Once C(site.yml) has "
            "run over every office, remove it (the README's Key rotation).",
        ),
        scope=DEPLOYMENT,
        secret=True,
        summary="rotation, step 2: the old secret, still accepted but no longer sent",
        default_text="none",
        version_added="0.2.0",
    ),
    Field(
        "office_relay_wire",
        "str",
        (
            "How relays talk to each other through the tunnels. C(authenticated): each "
            "datagram carries its origin office and a sequence number and is signed with the "
            "link's relay key (HMAC-SHA256, derived from O(office_tunnel_secret)); forged, "
            "replayed or duplicated datagrams are dropped and counted. C(raw): payloads as "
            "they are, the behaviour of C(udp-proxy), the hand-built setup's C relay "
            "(plan.yml warns).",
            "An external peer may differ (O(office_external_peers[].relay_wire)).",
        ),
        scope=DEPLOYMENT,
        default="authenticated",
        choices=RELAY_WIRES,
        summary="`authenticated` (relay datagrams signed with the link's key, replays "
        "dropped) or `raw` (payload as is, like `udp-proxy`, the hand-built setup's C relay)",
        version_added="0.2.0",
    ),
    Field(
        "office_rollout_batch",
        "raw",
        (
            "How many branches C(site.yml) configures at a time, after every hub (hubs go "
            "one at a time, and a failing hub stops the run before any branch is touched).",
            'A number, a percentage of the branches (C("25%")), or a list of them for '
            "growing batches: the default configures one branch first (a canary), then ten "
            "at a time.",
        ),
        scope=DEPLOYMENT,
        default=[1, 10],
        summary='branches configured at a time, after the hubs: a number, `"25%"`, or a '
        "list (`[1, 10]`: one canary, then ten at a time)",
        version_added="0.2.0",
    ),
    Field(
        "office_rollout_max_fail_percentage",
        "int",
        (
            "The run stops before the next batch of branches when more than this "
            "percentage of the current batch failed (unreachable counts as failed); the "
            "branches that failed are named in the recap. C(0): any failure stops it.",
        ),
        scope=DEPLOYMENT,
        default=20,
        summary="stop before the next batch when more than this % of a batch failed",
        version_added="0.2.0",
    ),
    Field(
        "office_rollback_timeout",
        "int",
        (
            "Seconds a gateway waits for C(site.yml) to reconnect over a new SSH connection "
            "after a firewall, tunnel or IPsec change. Without that confirmation it restores "
            "its previous rules, tunnels and IPsec configuration by itself, so a push that "
            "cuts Ansible off undoes itself. It must cover the rest of the gateway's play "
            "after its first change (about a minute). C(0) turns the safety net off.",
        ),
        scope=DEPLOYMENT,
        default=300,
        summary="a change not confirmed over a new connection within this many seconds is "
        "rolled back by the gateway (0: off)",
        version_added="0.2.0",
    ),
    Field(
        "office_group",
        "str",
        ("Inventory group holding every office gateway.",),
        scope=DEPLOYMENT,
        default="offices",
        summary="the inventory group of office gateways",
    ),
)

BY_NAME = {f.name: f for f in FIELDS}
OFFICE_FIELDS = tuple(f for f in FIELDS if f.scope == OFFICE)
DEPLOYMENT_FIELDS = tuple(f for f in FIELDS if f.scope == DEPLOYMENT)

# --------------------------------------------------------------------------- types

_TRUE = ("yes", "on", "true", "1", "y", "t")
_FALSE = ("no", "off", "false", "0", "n", "f")


def to_bool(value: Any) -> Optional[bool]:
    """Booleans as Ansible reads them ('yes', 'off', 1, ...); None if not one."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (str, int)):
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def to_int(value: Any) -> Optional[int]:
    """Integers, and strings of digits (INI inventories give strings); None if not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        return int(value)
    return None


_TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "bool": "true or false",
    "list": "a list",
    "dict": "a mapping",
}


def _convert(kind: str, value: Any) -> tuple[bool, Any]:
    if kind == "str":
        return isinstance(value, str), value
    if kind == "int":
        number = to_int(value)
        return number is not None, number
    if kind == "bool":
        flag = to_bool(value)
        return flag is not None, flag
    if kind == "list":
        return isinstance(value, list), value
    if kind == "dict":
        return isinstance(value, dict), value
    return True, value


# --------------------------------------------------------------------------- secrets in messages

HIDDEN = "<hidden>"


def holds_secret(spec: Field) -> bool:
    """Whether a value of ``spec`` is, or may contain, a secret (no_log): the field
    itself, or any of its sub-options at any depth (an external peer's psk)."""
    return spec.secret or any(holds_secret(o) for o in spec.options)


def without_secrets(spec: Field, value: Any) -> Any:
    """``value`` as a message may show it: every secret in it replaced by HIDDEN.

    In a field that holds a secret, only what the schema knows is no secret is kept:
    the known sub-options that hold none. A key it does not know (a misspelled psk)
    is hidden with its value, and so is a value of a shape it does not take (a string
    where a list of mappings is due: an INI inventory's, or an entry written on one
    line), which may hold a key anywhere. A mapping where a list of them is due (the
    dash forgotten) is read as one entry.
    """
    if spec.secret:
        return HIDDEN
    if not holds_secret(spec):
        return value
    if isinstance(value, dict) and spec.options:
        options = {o.name: o for o in spec.options}
        return {
            key: without_secrets(options[key], item) if key in options else HIDDEN
            for key, item in value.items()
        }
    if isinstance(value, list) and spec.type == "list":
        return [without_secrets(_entry(spec), item) for item in value]
    return HIDDEN


def _entry(spec: Field) -> Field:
    """What each element of list ``spec`` is: a mapping of its options, or its elements."""
    if spec.options:
        return Field(spec.name, "dict", (), options=spec.options)
    return Field(spec.name, spec.elements or "raw", (), secret=spec.secret)


_KINDS = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _describe(spec: Field, value: Any) -> str:
    """``value`` as a message names it: its text, cut at 60 characters; but never a
    part of a secret, nor of a value that may hold one (a field with a secret among its
    sub-options): "the value", and what it is."""
    if spec.secret:
        return "the value"
    if holds_secret(spec):
        kind = _KINDS.get(type(value), type(value).__name__)  # exactly: a bool is no integer
        return f"the value ({kind}, not shown: it may hold a key)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- checks


def check_value(spec: Field, value: Any, where: str, bad: Callable[[str, str], None]) -> Any:
    """Type-check ``value`` against ``spec`` (recursing into options); the converted value.

    Problems go to ``bad(where, message)``; the result is then None.
    """
    shown = _describe(spec, value)  # never echo a secret back
    ok, converted = _convert(spec.type, value)
    if not ok:
        bad(where, f"{shown} is not {_TYPE_NAMES[spec.type]}")
        return None
    if spec.choices and converted not in spec.choices:
        bad(where, f"{shown} must be one of: {', '.join(spec.choices)}")
        return None
    if spec.type == "list":
        items = []
        for index, item in enumerate(converted):
            if spec.options:
                items.append(_check_options(spec, item, f"{where}[{index}]", bad))
            elif spec.elements:
                element = Field(spec.name, spec.elements, (), secret=spec.secret)
                items.append(check_value(element, item, f"{where}[{index}]", bad))
        if any(item is None for item in items):
            return None
        return items if (spec.options or spec.elements) else converted
    if spec.type == "dict" and spec.options:
        return _check_options(spec, converted, where, bad)
    return converted


def _check_options(spec: Field, value: Any, where: str, bad) -> Optional[dict[str, Any]]:
    """A mapping with sub-options: unknown keys, required keys, defaults, types."""
    known = ", ".join(o.name for o in spec.options)
    if not isinstance(value, dict):
        bad(where, f"{_describe(spec, value)} must be a mapping with the keys: {known}")
        return None
    failed = False

    def sub_bad(at: str, message: str) -> None:
        nonlocal failed
        failed = True
        bad(at, message)

    unknown = sorted(str(k) for k in value if k not in {o.name for o in spec.options})
    if unknown:
        sub_bad(where, f"unknown key(s) {', '.join(unknown)} (known: {known})")
    result: dict[str, Any] = {}
    for option in spec.options:
        raw = value.get(option.name)
        if raw is None:
            if option.required:
                sub_bad(f"{where}.{option.name}", "is required")
            result[option.name] = _copy_default(option.default)
            continue
        result[option.name] = check_value(option, raw, f"{where}.{option.name}", sub_bad)
    return None if failed else result


def _copy_default(default: Any) -> Any:
    return list(default) if isinstance(default, list) else default


def default_of(spec: Field, host: str) -> Any:
    if spec.name == "office_name":
        return host
    return _copy_default(spec.default)


def check_types(
    host: str, raw: dict[str, Any], bad: Callable[[str, str], None], fields=OFFICE_FIELDS
) -> dict[str, Any]:
    """One office's variables: unknown names, missing values, types and choices.

    Returns every field of ``fields`` with defaults applied; a field that failed
    its check is None. An unset (null) variable means "use the default", as with
    role defaults; an empty string is "not set" for required ones.
    """
    values: dict[str, Any] = {}
    for name in sorted(raw):
        if name.startswith("office_") and name not in BY_NAME and name not in OUTPUT_FACTS:
            close = _closest(name)
            hint = f" (did you mean {close}?)" if close else ""
            bad(name, f"unknown office variable{hint}")
    for spec in fields:
        value = raw.get(spec.name)
        if value is None or (spec.required and value == ""):
            if spec.required:
                bad(spec.name, "is required")
                values[spec.name] = None
            else:
                values[spec.name] = default_of(spec, host)
            continue
        values[spec.name] = check_value(spec, value, spec.name, bad)
    return values


def _closest(name: str) -> Optional[str]:
    """The known variable a typo most likely meant (edit distance at most 3)."""
    best, best_distance = None, 4
    for candidate in BY_NAME:
        distance = _distance(name, candidate)
        if distance < best_distance:
            best, best_distance = candidate, distance
    return best


def _distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


# --------------------------------------------------------------------------- generated files


def _spec_entry(spec: Field) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": spec.type}
    if spec.required:
        entry["required"] = True
    if spec.default is not None:
        entry["default"] = spec.default
    if spec.choices:
        entry["choices"] = list(spec.choices)
    if spec.elements:
        entry["elements"] = spec.elements
    if spec.secret:
        entry["no_log"] = True
    if spec.version_added:
        entry["version_added"] = spec.version_added
    entry["description"] = list(spec.description)
    if spec.options:
        entry["options"] = {o.name: _spec_entry(o) for o in spec.options}
    return entry


ARGUMENT_SPEC_ENTRY_POINT = "inventory"


def argument_specs() -> dict[str, Any]:
    """roles/office/meta/argument_specs.yml, as data.

    The entry point is named ``inventory``, not ``main``: Ansible would otherwise
    insert its own check before the role runs, host by host, stopping at the
    first host with a generic message and unable to see across offices. The
    planner checks the same schema for every office at once.
    """
    return {
        "argument_specs": {
            ARGUMENT_SPEC_ENTRY_POINT: {
                "short_description": "The office inventory: one office per gateway host",
                "version_added": "0.1.0",
                "description": [
                    "The variables that describe each office (host variables of its gateway) "
                    "and the deployment (group variables of O(office_group)).",
                    "The role itself runs on the controller only: it validates every office of "
                    "O(office_group) at once - not only the hosts of the play - and fails before "
                    "any gateway is touched, with one message that names the office, its host "
                    "and the variable of every problem. Then each gateway gets its own plan in "
                    "C(office_plan) and its own link keys in C(office_secrets) (no_log), which "
                    "the collection's other roles take by default.",
                    "These specs are checked by the planner, not by Ansible's per-host "
                    "argument validation, so they are published under this entry point rather "
                    "than C(main).",
                ],
                "options": {f.name: _spec_entry(f) for f in FIELDS},
            }
        }
    }


def defaults() -> dict[str, Any]:
    """roles/office/defaults/main.yml, as data: every field that has a default."""
    return {f.name: f.default for f in FIELDS if f.default is not None or not f.required}


def readme_tables() -> str:
    """The README's two inventory tables (per office, deployment-wide), as Markdown."""

    def default_cell(spec: Field) -> str:
        if spec.default_text is not None:
            return spec.default_text
        if spec.default in (None, ""):
            return ""
        if isinstance(spec.default, bool):
            return f"`{str(spec.default).lower()}`"
        return f"`{spec.default}`" if spec.default != [] else "`[]`"

    lines = [
        "| variable | required | default | meaning |",
        "|---|---|---|---|",
    ]
    for spec in OFFICE_FIELDS:
        required = "yes" if spec.required else ""
        lines.append(f"| `{spec.name}` | {required} | {default_cell(spec)} | {spec.summary} |")
    lines += [
        "",
        "Deployment-wide (group variables of `offices`, the same for every office):",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for spec in DEPLOYMENT_FIELDS:
        lines.append(f"| `{spec.name}` | {default_cell(spec)} | {spec.summary} |")
    return "\n".join(lines) + "\n"
