# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan's typed model: offices, links, and what each gateway holds; and how
problems with the inventory are worded (``PlanError``, ``describe_problems``).

Nothing here knows a feature: each feature module (``tunnels``, ``ipsec``,
``firewall``, ``masquerade``, ``relay``) plans from these types and writes its own
section, and ``gateway.office_plan`` assembles what a gateway receives.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ansible_collections.sitelink.gateway.plugins.module_utils import contract

from . import schema

# How a check reports a problem: bad(variable, message).
Bad = Callable[[str, str], None]


class PlanError(ValueError):
    """Invalid office inventory. ``errors`` lists every problem found, office by office.

    The message says each problem once: the same problem at several offices (a
    group variable, most often) is one line naming how many (``describe_problems``;
    ``groups`` and ``values`` as there). ``warnings``: what was noticed besides,
    already described (a misspelled variable often explains a missing one).
    """

    def __init__(
        self,
        errors: list[str],
        groups: Sequence[tuple[str, frozenset[str]]] = (),
        values: Optional[dict[str, dict[str, Any]]] = None,
        warnings: Sequence[str] = (),
    ):
        self.errors = errors
        self.warnings = list(warnings)
        lines = describe_problems(errors, groups, values)
        counted = "" if len(lines) == len(errors) else f", {len(errors)} counted office by office"
        super().__init__(
            "invalid office inventory ({} problem{}{}):\n  - {}".format(
                len(lines), "" if len(lines) == 1 else "s", counted, "\n  - ".join(lines)
            )
        )


# "office 'name' (host h): variable: message", as every per-office problem reads.
_PER_OFFICE = re.compile(
    r"office (?P<office>'[^']*'|\"[^\"]*\") \(host (?P<host>[^)]+)\): "
    r"(?P<field>[^:\s]+): (?P<message>.*)",
    re.DOTALL,
)
SHARED_NAMES_SHOWN = 3  # offices named in a problem shared by many; the rest are counted
CANNOT_BE_READ = object()  # in ``values``: a variable that could not be templated
_UNSET = object()


def describe_problems(
    problems: list[str],
    groups: Sequence[tuple[str, frozenset[str]]] = (),
    values: Optional[dict[str, dict[str, Any]]] = None,
) -> list[str]:
    """``problems`` with each one that several offices share said once, where it first came.

    Shared: the same variable and the same message, apart from which office and
    host it is. A typo in a group variable of 100 offices is one line, naming
    the variable, the count and a few of the offices, not 100 lines.

    ``groups``: (name, the office hosts in it), most specific first; a shared
    problem names the first group whose offices are exactly the ones that have
    it. ``values``: every office's variables ({host: {name: value}}); when the
    offices with the problem are exactly the ones that give the variable the same
    value, it is most likely one group variable, and the line says so (never of a
    deployment-wide variable: one setting everywhere by design, it tells nothing).
    """
    shared: dict[tuple[str, str], list[tuple[str, str]]] = {}
    order: list[Any] = []  # a problem as it is, or the key of a shared one
    for problem in problems:
        match = _PER_OFFICE.fullmatch(problem)
        if match is None:
            order.append(problem)
            continue
        key = (match["field"], match["message"])
        if key not in shared:
            shared[key] = []
            order.append(key)
        shared[key].append((match["office"], match["host"]))
    lines = []
    for item in order:
        if isinstance(item, str):
            lines.append(item)
            continue
        where = shared[item]
        if len(where) == 1:
            (office, host), (field, message) = where[0], item
            lines.append(f"office {office} (host {host}): {field}: {message}")
            continue
        lines.append(_shared_problem(*item, where, groups, values))
    return lines


def _shared_problem(
    field: str,
    message: str,
    where: list[tuple[str, str]],
    groups: Sequence[tuple[str, frozenset[str]]],
    values: Optional[dict[str, dict[str, Any]]],
) -> str:
    hosts = frozenset(host for _office, host in where)
    group = next((name for name, members in groups if members == hosts), None)
    how = [f"the same at {len(where)} offices"]
    if group is not None:
        how.append(f"every office of group {group!r}")
    variable = re.split(r"[\[.]", field, maxsplit=1)[0]
    spec = schema.BY_NAME.get(variable)
    deployment = spec is not None and spec.scope == schema.DEPLOYMENT
    if values is not None and not deployment and _one_setting(variable, hosts, values):
        how.append("likely one group variable")
    named = ", ".join(f"{office} (host {host})" for office, host in where[:SHARED_NAMES_SHOWN])
    more = len(where) - SHARED_NAMES_SHOWN
    if more > 0:
        named += f" and {more} more"
    return f"{field}: {message}; {', '.join(how)}: {named}"


def _one_setting(variable: str, hosts: frozenset[str], values: dict[str, dict[str, Any]]) -> bool:
    """Whether exactly ``hosts`` give ``variable`` one and the same value."""

    def value(host: str) -> Any:
        raw = values.get(host, {}).get(variable, _UNSET)
        if raw is _UNSET or raw is CANNOT_BE_READ:
            return raw
        return json.dumps(raw, sort_keys=True, default=str)

    seen = {value(host) for host in hosts}
    if len(seen) != 1 or _UNSET in seen:
        return False
    (shared,) = seen
    return all(value(host) != shared for host in values if host not in hosts)


@dataclass(frozen=True)
class RelayRequest:
    """One ``office_broadcast_relay`` entry: broadcasts on ``port`` go to ``to``."""

    port: int
    to: Optional[tuple[str, ...]]  # None: every office reachable
    index: int  # position in the variable, for messages
    groups: tuple[str, ...] = ()  # multicast groups relayed on the port too


@dataclass(frozen=True)
class Office:
    name: str
    host: Optional[str]  # None: an external peer, run by someone else
    role: str
    lan: ipaddress.IPv4Interface
    wan: ipaddress.IPv4Interface
    wan_mtu: int
    lan_interface: Optional[str] = None
    wan_interface: Optional[str] = None
    wan_gateway: Optional[ipaddress.IPv4Address] = None
    masquerade: bool = False
    relay: tuple[RelayRequest, ...] = ()
    firewall_input_policy: str = "accept"
    firewall_forward_policy: str = "accept"
    management_sources: tuple[str, ...] = ()
    index: int = 0  # position in office_external_peers, for messages
    relay_wire: str = contract.WIRE_SITELINK1  # what its relay speaks (a contract.WIRE_*)
    # An external peer's own choice (office_external_peers[].protection): "ipsec" or
    # "none". None for our offices: the deployment's office_tunnel_protection applies.
    protection: Optional[str] = None
    # An external peer's own key (office_external_peers[].psk). Never in a repr, a
    # comparison or a gateway's plan: only secrets.gateway_secrets reads it.
    psk: Optional[str] = field(default=None, repr=False, compare=False)

    @property
    def external(self) -> bool:
        return self.host is None

    @property
    def where(self) -> str:
        return f"office_external_peers[{self.index}]"

    def label(self) -> str:
        if self.host is None:
            return f"office {self.name!r} (external peer)"
        return f"office {self.name!r} (host {self.host})"

    def variable(self, name: str) -> str:
        """Where its ``name`` was set: office_<name>, or its office_external_peers entry's."""
        return f"office_{name}" if self.host else f"{self.where}.{name}"


@dataclass(frozen=True)
class LinkEnd:
    office: str
    tunnel: str  # interface name at this end
    routes: tuple[str, ...]  # prefixes this end routes into the tunnel
    # The tunnel at this end that takes those routes while this link is down (two hubs).
    backup: Optional[str] = None


@dataclass(frozen=True)
class Link:
    """Two offices joined by a pair of IPIP tunnels."""

    a: LinkEnd
    b: LinkEnd
    mtu: int

    @property
    def id(self) -> str:
        # "+" cannot appear in an office name, so ids never clash.
        return f"{self.a.office}+{self.b.office}"

    def end(self, office: str) -> LinkEnd:
        return self.a if office == self.a.office else self.b

    def other(self, office: str) -> LinkEnd:
        return self.b if office == self.a.office else self.a


@dataclass
class RelayPort:
    """One port of one gateway's relay: where its datagrams go."""

    port: int
    forward_to: set[str] = field(default_factory=set)  # LAN broadcasts -> these relays
    accept_from: set[str] = field(default_factory=set)  # re-broadcast what these send
    transit: dict[str, set[str]] = field(default_factory=dict)  # from -> onward relays
    multicast_groups: set[str] = field(default_factory=set)  # relayed besides broadcasts


@dataclass(frozen=True)
class RelayFlow:
    """Where one office's broadcasts on one port travel: the edges of its tree."""

    origin: str
    port: int
    targets: tuple[str, ...]
    hops: tuple[tuple[str, str], ...]  # (from office, to office), parents first
    groups: tuple[str, ...] = ()  # multicast groups the origin relays on the port too


@dataclass
class GatewayPlan:
    office: Office
    links: list[Link]
    peers: dict[str, Office]  # the office at the other end of each link
    masquerade_sources: list[str]
    relay: dict[int, RelayPort]

    protection: str = "ipsec"
    rollback_timeout: int = 0
    # Every office's LAN, collapsed (one list, shared by every gateway of the plan).
    office_lans: list[str] = field(default_factory=list)
    relay_wire: str = contract.WIRE_SITELINK1  # the deployment's; a peer's own is on its Office

    def protection_to(self, peer: Office) -> str:
        """How this gateway's link to ``peer`` is protected: "ipsec" or "none"."""
        return link_protection(self.protection, peer)


@dataclass
class NetworkPlan:
    topology: str
    transit: bool
    offices: dict[str, Office]  # by name, external peers included
    links: list[Link]
    gateways: dict[str, GatewayPlan]  # by host
    flows: list[RelayFlow]
    warnings: list[str]
    protection: str = "ipsec"
    relay_wire: str = contract.WIRE_SITELINK1

    def link_protection(self, link: Link) -> str:
        """How ``link`` is protected: "ipsec" or "none"."""
        return link_protection(
            self.protection, self.offices[link.a.office], self.offices[link.b.office]
        )

    # external_keys(), made at its first call: every gateway's handout asks for it.
    _external_keys: Optional[dict[str, Optional[str]]] = field(
        default=None, init=False, repr=False, compare=False
    )

    def external_keys(self) -> dict[str, Optional[str]]:
        """Each external peer's own key (None: it has none), by office name: what
        ``secrets.gateway_secrets`` keys its links with. Never rendered anywhere."""
        if self._external_keys is None:
            self._external_keys = {n: o.psk for n, o in self.offices.items() if o.external}
        return self._external_keys


def link_protection(deployment: str, *ends: Office) -> str:
    """A link's protection: an external peer's own choice at one of its ``ends``,
    else the deployment's (office_tunnel_protection)."""
    for office in ends:
        if office.external and office.protection is not None:
            return office.protection
    return deployment
