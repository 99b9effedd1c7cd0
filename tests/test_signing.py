"""gateway.signing: JWS compact / EdDSA, sign and verify, every refusal, keys on disk."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import signing
from gateway.signing import (
    TYP_COMMAND,
    TYP_RECEIPT,
    KeyFileError,
    Keyring,
    SignatureError,
    b64url,
    kid_of,
    sign,
    verify,
)

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
RING = Keyring.of(KEY.public_key())


def _reason(token: bytes, ring: Keyring = RING, typ: str = TYP_COMMAND) -> str:
    with pytest.raises(SignatureError) as e:
        verify(token, ring, typ)
    return e.value.reason


def _forge(header: dict[str, object], payload: bytes = b"{}",
           key: Ed25519PrivateKey = KEY) -> bytes:
    head = b64url(json.dumps(header).encode())
    signing_input = f"{head}.{b64url(payload)}".encode()
    return signing_input + b"." + b64url(key.sign(signing_input)).encode()


def test_round_trip() -> None:
    payload = json.dumps({"id": "x", "args": {"child": "c-1"}}).encode()
    token = sign(payload, KEY, TYP_COMMAND)
    assert token.isascii() and token.count(b".") == 2
    v = verify(token, RING, TYP_COMMAND)
    assert v.payload == payload and v.kid == kid_of(KEY.public_key())
    header = json.loads(base64.urlsafe_b64decode(token.split(b".")[0] + b"=="))
    assert header == {"alg": "EdDSA", "kid": v.kid, "typ": TYP_COMMAND}


def test_kid_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of the RFC's example Ed25519 key.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    x = base64.urlsafe_b64decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=")
    assert kid_of(Ed25519PublicKey.from_public_bytes(x)) == \
        "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rfc8037_example_signature_verifies() -> None:
    # RFC 8037 appendix A.4: header {"alg":"EdDSA"} has no kid/typ, so it is refused as
    # ours; but its signature must check with the primitive we use.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    pub = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(
        "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo="))
    signing_input = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    sig = signing._unb64url(b"hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg"
                            b"5BhVsPt9g7sVvpAr_MuM0KAg")
    pub.verify(sig, signing_input)
    token = signing_input + b"." + b64url(sig).encode()
    assert _reason(token, Keyring.of(pub)) == "wrong typ"


def test_two_keys_valid_at_once() -> None:
    ring = Keyring.of(KEY.public_key(), OTHER.public_key())
    assert len(ring) == 2
    for key in (KEY, OTHER):
        assert verify(sign(b"x", key, TYP_COMMAND), ring, TYP_COMMAND).payload == b"x"


def test_refusals() -> None:
    good = sign(b'{"a":1}', KEY, TYP_COMMAND)
    head, body, sig = good.split(b".")
    kid = kid_of(KEY.public_key())
    assert _reason(b'{"id":"unsigned json"}').startswith("malformed")
    assert _reason(b"").startswith("malformed")
    assert _reason(b"a.b").startswith("malformed")
    assert _reason(good + b".x").startswith("malformed")
    assert _reason(sign(b"x", OTHER, TYP_COMMAND)) == "unknown key id"
    assert _reason(good, typ=TYP_RECEIPT) == "wrong typ"
    assert _reason(head + b"." + b64url(b'{"a":2}').encode() + b"." + sig) == "bad signature"
    assert _reason(head + b"." + body + b"." + b64url(bytes(64)).encode()) == "bad signature"
    short = b64url(signing._unb64url(sig)[:62]).encode()
    assert _reason(head + b"." + body + b"." + short) == "bad signature"
    assert _reason(head + b"=." + body + b"." + sig).startswith("malformed")  # padding
    assert _reason(head + b"." + body + b"+" + b"." + sig).startswith("malformed")
    # The same key, but the header lies about what it is.
    assert _reason(_forge({"alg": "none", "kid": kid, "typ": TYP_COMMAND})) == "wrong alg"
    assert _reason(_forge({"alg": "HS256", "kid": kid, "typ": TYP_COMMAND})) == "wrong alg"
    assert _reason(_forge({"alg": "EdDSA", "typ": TYP_COMMAND})).startswith("malformed")
    assert _reason(_forge({"alg": "EdDSA", "kid": 7, "typ": TYP_COMMAND})).startswith(
        "malformed")
    assert _reason(_forge({"alg": "EdDSA", "kid": kid, "typ": TYP_COMMAND,
                           "crit": ["b64"], "b64": False})).startswith("unsupported")
    head_list = b64url(b"[1]").encode()
    assert _reason(head_list + b"." + body + b"." + sig).startswith("malformed")
    deep = b64url(b"[" * 100_000).encode()
    assert _reason(deep + b"." + body + b"." + sig).startswith("malformed")
    # A signature made over another header (typ changed after signing).
    forged_head = b64url(json.dumps({"alg": "EdDSA", "kid": kid,
                                     "typ": TYP_RECEIPT}).encode()).encode()
    assert _reason(forged_head + b"." + body + b"." + sig, typ=TYP_RECEIPT) == "bad signature"
    # Non-canonical base64url: same bytes, other trailing bits.
    last = sig[-1:]
    alt = bytes([b"BCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_A"[
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(last)]])
    assert _reason(head + b"." + body + b"." + sig[:-1] + alt) in (
        "bad signature", "malformed: not canonical base64url")



def test_empty_keyring_refuses_everything() -> None:
    assert _reason(sign(b"x", KEY, TYP_COMMAND), Keyring()) == "unknown key id"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_verify_never_raises_anything_else_on_bytes(token: bytes) -> None:
    with contextlib.suppress(SignatureError):
        verify(token, RING, TYP_COMMAND)


_PART = st.one_of(st.binary(max_size=80).map(lambda b: b64url(b).encode()),
                  st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.",
                          max_size=90).map(str.encode),
                  st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                               lambda c: st.lists(c, max_size=3)
                               | st.dictionaries(st.sampled_from(["alg", "kid", "typ", "crit"]),
                                                 c, max_size=4),
                               max_leaves=8).map(lambda v: b64url(json.dumps(v).encode())
                                                 .encode()))


@settings(max_examples=400, deadline=None)
@given(_PART, _PART, _PART, st.sampled_from([TYP_COMMAND, TYP_RECEIPT, ""]))
def test_verify_never_raises_anything_else_on_near_tokens(h: bytes, p: bytes, s: bytes,
                                                          typ: str) -> None:
    with contextlib.suppress(SignatureError):
        verify(h + b"." + p + b"." + s, RING, typ)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 200), st.integers(0, 255))
def test_any_flipped_byte_is_refused(payload: bytes, where: int, xor: int) -> None:
    token = bytearray(sign(payload, KEY, TYP_COMMAND))
    i = where % len(token)
    if xor == 0 or token[i] ^ xor == token[i]:
        return
    token[i] ^= xor
    try:
        v = verify(bytes(token), RING, TYP_COMMAND)
    except SignatureError:
        return
    raise AssertionError(f"a changed token verified: {v}")


def test_keys_on_disk(tmp_path: Path) -> None:
    priv, pub = tmp_path / "backend.key", tmp_path / "backend.pub"
    kid = signing.generate_keypair(priv, pub)
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    key = signing.load_private_key(priv)
    assert kid_of(key.public_key()) == kid
    ring = signing.load_keyring([pub])
    assert list(ring.keys) == [kid]
    assert verify(sign(b"p", key, TYP_COMMAND), ring, TYP_COMMAND).kid == kid
    with pytest.raises(FileExistsError):  # never overwrite a signing identity
        signing.generate_keypair(priv, tmp_path / "other.pub")
    # Two keys during a key change.
    signing.generate_keypair(tmp_path / "new.key", tmp_path / "new.pub")
    assert len(signing.load_keyring([pub, tmp_path / "new.pub"])) == 2


def test_bad_key_files(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
    ec = generate_private_key(SECP256R1())
    (tmp_path / "ec.pub").write_bytes(ec.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    (tmp_path / "ec.key").write_bytes(ec.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    (tmp_path / "junk").write_bytes(b"not a key")
    for bad in ("ec.pub", "junk", "missing"):
        with pytest.raises(KeyFileError):
            signing.load_keyring([tmp_path / bad])
    for bad in ("ec.key", "junk", "missing"):
        with pytest.raises(KeyFileError):
            signing.load_private_key(tmp_path / bad)


def test_digest_is_not_part_of_the_api() -> None:
    # Guards the contract's claim: the signature covers the exact payload bytes.
    a, b = b'{"a":1,"b":2}', b'{"b":2,"a":1}'
    assert verify(sign(a, KEY, TYP_COMMAND), RING, TYP_COMMAND).payload == a
    assert hashlib.sha256(a).digest() != hashlib.sha256(b).digest()
