# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-link keys, derived on the controller from one deployment secret.

HKDF-SHA256 (RFC 5869) over the link's two office names: each link gets its
own keys, both ends derive the same ones, and nothing but the deployment
secret has to be stored. Keys never enter the plan; the office role hands
each gateway the keys of its own links in ``office_secrets`` (no_log).

A link to an external peer (run by someone else) is keyed from that peer's own
key (``office_external_peers[].psk``) instead, never from the deployment
secret, which its administrators never see: the IPsec pre-shared key is the
peer's key as it is, and the relay key is derived from it as above, so that
they can derive it too (``external.peer_text`` says how).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Optional

SALT = b"sitelink.gateway link keys v1"  # external peers derive their relay keys with it too
# One key per purpose: the protected tunnel (IPsec PSK) and the relay's wire.
PURPOSES = ("tunnel", "relay")


def hkdf_sha256(secret: bytes, info: bytes, length: int = 32, salt: bytes = SALT) -> bytes:
    prk = hmac.new(salt, secret, hashlib.sha256).digest()
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def link_key(secret: str, a: str, b: str, purpose: str) -> str:
    """The ``purpose`` key of the link between offices ``a`` and ``b`` (order-free), hex."""
    first, second = sorted((a, b))
    info = b"\0".join((purpose.encode(), first.encode(), second.encode()))
    return hkdf_sha256(secret.encode(), info).hex()


def gateway_secrets(
    links: list[dict[str, Any]],
    secret: Optional[str],
    previous: Optional[str] = None,
    external: Optional[dict[str, Optional[str]]] = None,
    next_secret: Optional[str] = None,
) -> dict[str, Any]:
    """``office_secrets`` of one gateway: the keys of its own links only.

    ``links`` is ``office_plan.links`` (each with its id and both office names). Each
    link gets ``tunnel`` and ``relay`` from ``secret``: the keys this gateway sends
    with (and accepts). A rotation adds keys that are accepted but never sent, so that
    any two gateways understand each other whichever step of it each is at:
    ``office_tunnel_secret_next`` (``next_secret``: the first step, every gateway
    accepts the new secret's keys) and ``office_tunnel_secret_previous``
    (``previous``: the second step, every gateway sends the new ones and still accepts
    the old). Their keys are ``tunnel_accepted`` and ``relay_accepted``, lists, only
    while either is set.

    ``external`` maps each external peer's name to its own key (None: it has none). A
    link to one gets ``tunnel`` (the key's bytes, as hex) and ``relay`` (derived from
    it) when it has a key, no keys when it has none, and never anything from the
    deployment's secrets: rotating them leaves external peers alone.

    Every link of the gateway has an entry (empty when it has no key: no deployment
    secret, or an external peer without one), so that consumers can look any link up.
    """
    external = external or {}
    also = [s for s in dict.fromkeys((next_secret, previous)) if s and s != secret]
    keys: dict[str, dict[str, Any]] = {}
    for link in links:
        a, b = link["offices"]
        outside = [name for name in (a, b) if name in external]
        if outside:
            psk = external[outside[0]]
            keys[link["id"]] = (
                {} if not psk else {"tunnel": psk_hex(psk), "relay": link_key(psk, a, b, "relay")}
            )
        elif secret:
            mine = keys[link["id"]] = {p: link_key(secret, a, b, p) for p in PURPOSES}
            for purpose in PURPOSES if also else ():
                mine[f"{purpose}_accepted"] = [link_key(s, a, b, purpose) for s in also]
        else:
            keys[link["id"]] = {}
    return {"links": keys}


def psk_hex(psk: str) -> str:
    """An external peer's key as the ipsec module takes it (hex): its bytes as they are, so
    ``secret = 0x<hex>`` on our side is ``secret = "<the key>"`` on theirs."""
    return psk.encode("utf-8").hex()
