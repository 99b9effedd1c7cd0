"""Signed messages between the backend and a unit: JWS compact serialization, EdDSA.

A signed message is a JWS (RFC 7515) in compact form, ``header.payload.signature``
(each part base64url without padding), signed with Ed25519 (``alg: "EdDSA"``, RFC
8037) through ``cryptography``. JWS because any JOSE library on the backend makes
one, and the signature covers the exact payload bytes: no JSON canonicalization.

The header is ``{"alg":"EdDSA","kid":<RFC 7638 thumbprint>,"typ":<typ>}``. ``typ``
names the use (``kidsafe-command``, ``kidsafe-receipt``, ``kidsafe-erasure``) so a
message signed for one use cannot be replayed as another. ``kid`` picks the key out
of a :class:`Keyring`; two keys are valid at once during a key change.

:func:`verify` takes untrusted bytes from the network: it returns a :class:`Verified`
or raises :class:`SignatureError`, never anything else (tests/test_signing.py fuzzes it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

ALG = "EdDSA"
TYP_COMMAND = "kidsafe-command"
TYP_RECEIPT = "kidsafe-receipt"
TYP_ERASURE = "kidsafe-erasure"

MAX_HEADER_BYTES = 1024  # ours is ~110; a longer header is not one we made
_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class SignatureError(Exception):
    """A token that is not a valid signed message for this keyring and use."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyFileError(ValueError):
    """A key file that cannot be read as the Ed25519 key it should hold."""


@dataclass(frozen=True, slots=True)
class Verified:
    kid: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Keyring:
    """The public keys a unit trusts, by key id (RFC 7638 thumbprint)."""

    keys: Mapping[str, Ed25519PublicKey] = field(
        default_factory=lambda: MappingProxyType({}))

    @classmethod
    def of(cls, *public_keys: Ed25519PublicKey) -> Keyring:
        return cls(MappingProxyType({kid_of(k): k for k in public_keys}))

    def __len__(self) -> int:
        return len(self.keys)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(part: bytes) -> bytes:
    """Strict base64url: the alphabet only, no padding, canonical (one encoding per value)."""
    if len(part) % 4 == 1 or not _B64URL.issuperset(part):
        raise SignatureError("malformed: not base64url")
    try:
        raw = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise SignatureError("malformed: not base64url") from None
    if b64url(raw).encode("ascii") != part:  # non-zero trailing bits: another encoding
        raise SignatureError("malformed: not canonical base64url")
    return raw


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid_of(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key."""
    # The required members of an OKP JWK, sorted, no whitespace (RFC 7638 section 3.2).
    x = b64url(_raw_public(public_key))
    jwk = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return b64url(hashlib.sha256(jwk.encode("ascii")).digest())


def sign(payload: bytes, key: Ed25519PrivateKey, typ: str) -> bytes:
    """``payload`` as a compact JWS signed with ``key`` for the use ``typ`` (ASCII bytes)."""
    header = json.dumps({"alg": ALG, "kid": kid_of(key.public_key()), "typ": typ},
                        separators=(",", ":"), sort_keys=True).encode("ascii")
    signing_input = f"{b64url(header)}.{b64url(payload)}".encode("ascii")
    return signing_input + b"." + b64url(key.sign(signing_input)).encode("ascii")


def verify(token: bytes, keys: Keyring, typ: str) -> Verified:
    """The payload of ``token`` if a key of ``keys`` signed it for ``typ``.

    Raises :class:`SignatureError` (and nothing else) for anything else.
    """
    if not isinstance(token, bytes | bytearray | memoryview):
        raise SignatureError("malformed: not bytes")
    token = bytes(token)
    parts = token.split(b".")
    if len(parts) != 3:
        raise SignatureError("malformed: not a compact JWS")
    head_b64, body_b64, sig_b64 = parts
    if len(head_b64) > MAX_HEADER_BYTES * 4 // 3 + 4:
        raise SignatureError("malformed: header too long")
    header_raw = _unb64url(head_b64)
    try:
        header = json.loads(header_raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise SignatureError("malformed: header is not JSON") from None
    if not isinstance(header, dict):
        raise SignatureError("malformed: header is not an object")
    if "crit" in header:  # RFC 7515 4.1.11: extensions we do not understand must fail
        raise SignatureError("unsupported: crit header")
    if header.get("alg") != ALG:
        raise SignatureError("wrong alg")
    if header.get("typ") != typ:
        raise SignatureError("wrong typ")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise SignatureError("malformed: no kid")
    public = keys.keys.get(kid)
    if public is None:
        raise SignatureError("unknown key id")
    signature = _unb64url(sig_b64)
    payload = _unb64url(body_b64)
    if len(signature) != 64:
        raise SignatureError("bad signature")
    try:
        public.verify(signature, head_b64 + b"." + body_b64)
    except InvalidSignature:
        raise SignatureError("bad signature") from None
    return Verified(kid=kid, payload=payload)


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def load_keyring(paths: Iterable[str | os.PathLike[str]]) -> Keyring:
    """The keyring of the PEM public keys in ``paths`` (raises :class:`KeyFileError`)."""
    return Keyring.of(*(load_public_key(p) for p in paths))


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_keypair(private_path: str | os.PathLike[str],
                     public_path: str | os.PathLike[str]) -> str:
    """A new Ed25519 key pair as PEM files (the private one 0600, never overwritten).

    Returns the key id.
    """
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    # O_EXCL: an existing private key is someone's signing identity; never clobber it.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    Path(public_path).write_bytes(public_pem(key.public_key()))
    return kid_of(key.public_key())
