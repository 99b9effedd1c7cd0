"""The unit's own signing key: Ed25519, made at the first start beside the buffer
(``<buffer>.unit-key``, PKCS#8 PEM, 0600; ``<buffer>.unit-key.pub``). The unit signs
what it vouches for with it: the erasure receipts (JWS ``typ: kidsafe-erasure``,
gateway/commands/erase.py). Its public key, as a JWK with its RFC 7638 thumbprint as
``kid``, is in the birth message (``unit_key``), so the backend learns it from the
unit's first connection (trust on first use) or from the technician who installed it
(the start-up log names the key id when it makes one).

The key never stops the unit: a damaged key file (a card that failed mid-write) is
moved aside and a new key made (the birth message announces it); where none can be
made (a read-only card), the unit runs without one and its erasure replies say that
their receipt is unsigned.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.durable import write_durably
from gateway.signing import KeyFileError, b64url, kid_of, load_private_key, public_pem


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


def load_or_create(buffer_path: str) -> tuple[UnitKey | None, str | None]:
    """The unit's key, and what happened worth a log line (None: loaded as it was)."""
    path = f"{buffer_path}.unit-key"
    note = "made"
    if os.path.exists(path):
        try:
            key = load_private_key(path)
            return UnitKey(key, kid_of(key.public_key()), path), None
        except KeyFileError as e:
            aside = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            try:
                os.replace(path, aside)
            except OSError:
                aside = "(could not be moved aside)"
            note = f"replaced: the old one was not readable ({e}); kept as {aside}"
    key = Ed25519PrivateKey.generate()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_durably(path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        write_durably(f"{path}.pub", public_pem(key.public_key()))
    except OSError as e:
        return None, f"cannot make the unit key {path} ({e.strerror or e}): erasure " \
                     "receipts are not signed until it can"
    return UnitKey(key, kid_of(key.public_key()), path), note
