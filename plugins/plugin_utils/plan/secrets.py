# Copyright: sitelink.gateway developers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-link keys, derived on the controller from one deployment secret.

HKDF-SHA256 (RFC 5869) over the link's two office names: each link gets its
own keys, both ends derive the same ones, and nothing but the deployment
secret has to be stored. Keys never enter the plan; the office role hands
each gateway the keys of its own links in ``office_secrets`` (no_log).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Optional

_SALT = b"sitelink.gateway link keys v1"
# One key per purpose: the protected tunnel (IPsec PSK) and the relay's wire.
PURPOSES = ("tunnel", "relay")


def hkdf_sha256(secret: bytes, info: bytes, length: int = 32, salt: bytes = _SALT) -> bytes:
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
    links: list[dict[str, Any]], secret: Optional[str], previous: Optional[str] = None
) -> dict[str, Any]:
    """``office_secrets`` of one gateway: the keys of its own links only.

    ``links`` is ``office_plan.links`` (each with its id and both office names). Without
    a deployment secret the channel is empty. Each link gets ``tunnel`` and ``relay``
    from ``secret`` and, while ``office_tunnel_secret_previous`` is set (``previous``),
    ``relay_previous`` from it: a rotation in two phases. With ``relay_previous`` the
    relay sends with it and accepts both (the relay role's keys file); once it is gone,
    the relay sends and accepts ``relay`` only.
    """
    keys: dict[str, dict[str, str]] = {}
    if secret:
        for link in links:
            a, b = link["offices"]
            keys[link["id"]] = {p: link_key(secret, a, b, p) for p in PURPOSES}
            if previous:
                keys[link["id"]]["relay_previous"] = link_key(previous, a, b, "relay")
    return {"links": keys}
