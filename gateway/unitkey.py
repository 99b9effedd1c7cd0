"""The unit's own signing key: Ed25519, made at the first start beside the buffer
(``<buffer>.unit-key``, PKCS#8 PEM, 0600; ``<buffer>.unit-key.pub``). The unit signs
what it vouches for with it: the erasure receipts (JWS ``typ: kidsafe-erasure``,
gateway/commands/erase.py). Its public key, as a JWK with its RFC 7638 thumbprint as
``kid``, is in the birth message (``unit_key``), so the backend learns it from the
unit's first connection (trust on first use) or from the technician who installed it
(``gatewayd`` prints the key id at start)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.signing import b64url, generate_keypair, kid_of, load_private_key


@dataclass(frozen=True, slots=True)
class UnitKey:
    key: Ed25519PrivateKey = field(repr=False)
    kid: str
    path: str

    def jwk(self) -> dict[str, Any]:
        """The public key as a JWK (RFC 8037), with ``kid``: what the birth message carries."""
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(raw), "kid": self.kid}


def load_or_create(buffer_path: str) -> tuple[UnitKey, bool]:
    """The unit's key (made now if there is none: the bool says so)."""
    path = f"{buffer_path}.unit-key"
    made = False
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        generate_keypair(path, f"{path}.pub")
        made = True
    key = load_private_key(path)
    return UnitKey(key, kid_of(key.public_key()), path), made
