# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a role reads of its gateway's plan and keys, through the contract.

``plan_section``: one section of ``office_plan``, checked against the contract.
``link_keys``: the keys of this gateway's links, for one use (ipsec, relay).
``relay_authenticates``: whether a relay configuration authenticates anything.
``relay_keys_file``: the relay's keys file, for the peers that need a key.
``relay_path``: one of the relay's files, as its configuration names it.

The shapes and rules are ``module_utils/contract.py``'s, the one place the planner,
the roles, the gateway modules and the relay program share; these only call it.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.sitelink.gateway.plugins.module_utils import contract

PURPOSES = ("tunnel", "relay")
RELAY_PATHS = {
    "keys_file": contract.RELAY_KEYS_FILE,
    "state_dir": contract.RELAY_STATE_DIR,
    "status_file": contract.RELAY_STATUS_FILE,
    "metrics_file": contract.RELAY_METRICS_FILE,
}


def plan_section(plan, name):
    """Section ``name`` of ``office_plan`` as the contract declares it (a role's input),
    or the standalone one when there is no plan (None); fails naming what is wrong."""
    try:
        return contract.section(plan, name)
    except contract.ContractError as exc:
        raise AnsibleFilterError(f"{exc} (set by the office role of this collection)") from None


def link_keys(plan, secrets, purpose):
    """This gateway's link keys for ``purpose``: ``tunnel``, the pre-shared keys of each
    link by link id, a list (the one sent first, then those accepted besides during a
    rotation); ``relay``, ``relay`` and ``relay_accepted`` by peer relay address.
    Links without such a key are left out. No plan or no secrets: none."""
    if purpose not in PURPOSES:
        raise AnsibleFilterError(f"link_keys: purpose must be one of {', '.join(PURPOSES)}")
    if plan is None or secrets is None:
        return {}
    problems = []
    contract.OFFICE_SECRETS.check(secrets, "office_secrets", problems)
    if problems:  # names fields, never a value: check() shows values of scalars only
        raise AnsibleFilterError("office_secrets does not match the contract")
    keys = secrets["links"]
    links = contract.section(plan, "links")
    if purpose == "tunnel":
        return {
            link["id"]: [keys[link["id"]]["tunnel"], *keys[link["id"]].get("tunnel_accepted", ())]
            for link in links
            if "tunnel" in keys.get(link["id"], {})
        }
    return {
        link["peer_address"]: {k: v for k, v in keys[link["id"]].items() if k.startswith("relay")}
        for link in links
        if "relay" in keys.get(link["id"], {})
    }


def relay_authenticates(config):
    """Whether the relay configured by ``config`` speaks the authenticated wire itself
    or to a peer: then it has a keys file."""
    return contract.relay_needs_keys(config or {})


def relay_keys_file(keys, config):
    """The keys file of the relay configured by ``config``, from ``keys`` (``link_keys``
    of purpose relay); None when it authenticates nothing. Fails naming the peers
    without a key (never a key)."""
    if not contract.relay_needs_keys(config):
        return None
    try:
        return contract.relay_keys_document(contract.relay_keyed_peers(config), keys or {})
    except contract.ContractError as exc:
        raise AnsibleFilterError(f"relay_keys: {exc}; is office_tunnel_secret set?") from None


def relay_path(config, name):
    """The relay's file ``name`` (keys_file, state_dir, status_file, metrics_file) as
    ``config`` names it, else where the relay keeps it by default."""
    if name not in RELAY_PATHS:
        raise AnsibleFilterError(f"relay_path: name must be one of {', '.join(RELAY_PATHS)}")
    return (config or {}).get(name) or RELAY_PATHS[name]


class FilterModule:
    def filters(self):
        return {
            "plan_section": plan_section,
            "link_keys": link_keys,
            "relay_authenticates": relay_authenticates,
            "relay_keys_file": relay_keys_file,
            "relay_path": relay_path,
        }
