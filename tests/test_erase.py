"""The erase command's handler and schema: the args schema agrees with the parser, and
the reply carries the counts and a receipt signed with the unit's own key that the
backend verifies with the key from the birth message (gateway/unitkey.py)."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_commands_core import FakeUnit

from gateway import unitkey
from gateway.commands import core, erase
from gateway.commands.core import Command
from gateway.commands.registry import HANDLERS
from gateway.signing import TYP_COMMAND, TYP_ERASURE, Keyring, SignatureError, verify
from gateway.unitkey import UnitKey

SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
RID = "0b8f1f4e-9a38-4c1e-8d2f-6a1c2b3d4e5f"


class ErasingUnit(FakeUnit):
    def __init__(self, key: UnitKey) -> None:
        super().__init__()
        self.key = key

    def erase(self, child: str) -> dict[str, Any]:
        return {"time": 1_790_000_000.25, "state_entries": 7, "events_deleted": 3,
                "events_redacted": 1, "ranges": [[4, 5], [9, 9]]}

    def sign_erasure(self, payload: bytes) -> bytes | None:
        from gateway.signing import sign
        return sign(payload, self.key.key, TYP_ERASURE)


def _dispatch(unit: FakeUnit, args: dict[str, Any]) -> core.Reply:
    return core.dispatch(unit, Command(RID, "gate-01", "erase", 0.0, 1.0, args), HANDLERS)


def test_schema_and_parser_agree() -> None:
    doc = json.loads((SCHEMAS / "commands" / "erase.schema.json").read_text())
    check = jsonschema.Draft202012Validator(doc)
    for ok in doc["examples"]:
        check.validate(ok)
        assert erase.parse(ok) == ok["child"]
    bads: list[dict[str, Any]] = [{}, {"child": ""}, {"child": 7},
                                  {"child": "c-1", "tag": "62E3086C01"}, {"child": "Kim Lee"},
                                  {"children": ["c-1"]}, {"child": None}]
    for bad in bads:
        assert not check.is_valid(bad), bad
        assert _dispatch(FakeUnit(), bad).code == 400, bad


def test_reply_has_counts_and_a_receipt_the_unit_key_verifies(tmp_path: Path) -> None:
    key, note = unitkey.load_or_create(str(tmp_path / "buf.db"))
    assert key is not None and note == "made"
    assert (tmp_path / "buf.db.unit-key").stat().st_mode & 0o777 == 0o600
    reply = _dispatch(ErasingUnit(key), {"child": "c-7f3a21"})
    assert reply.code == 200
    data = reply.data
    assert data["counts"] == {"state_entries": 7, "events_deleted": 3, "events_redacted": 1}
    assert data["ranges"] == [[4, 5], [9, 9]] and data["child"] == "c-7f3a21"
    # The backend has the unit's key from the birth message (a JWK): it verifies.
    jwk = key.jwk()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    raw = base64.urlsafe_b64decode(jwk["x"] + "=")
    ring = Keyring.of(Ed25519PublicKey.from_public_bytes(raw))
    got = verify(data["receipt"].encode(), ring, TYP_ERASURE)
    assert got.kid == jwk["kid"] == key.kid
    body = json.loads(got.payload)
    assert body == {"unit": "gate-01", "request": RID, "child": "c-7f3a21",
                    "time": "2026-09-21T14:13:20.250Z", "counts": data["counts"],
                    "ranges": [[4, 5], [9, 9]]}
    with pytest.raises(SignatureError):  # not replayable as another kind of message
        verify(data["receipt"].encode(), ring, TYP_COMMAND)
    # The same key at the next start, not a new one.
    again, note = unitkey.load_or_create(str(tmp_path / "buf.db"))
    assert note is None and again is not None and again.kid == key.kid


def test_a_damaged_key_is_replaced_and_a_read_only_folder_runs_without_one(
        tmp_path: Path) -> None:
    (tmp_path / "buf.db.unit-key").write_bytes(b"")  # a card that failed mid-write
    key, note = unitkey.load_or_create(str(tmp_path / "buf.db"))
    assert key is not None and note is not None and note.startswith("replaced")
    assert list(tmp_path.glob("buf.db.unit-key.damaged-*"))
    reply = _dispatch(FakeUnsigned(), {"child": "c-1"})  # no key: done, receipt unsigned
    assert reply.code == 200 and reply.data["receipt"] is None and "unsigned" in reply.reason
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("root writes anywhere: a read-only folder cannot be made here")
        key, note = unitkey.load_or_create(str(ro / "buf.db"))
        assert key is None and note is not None and "not signed" in note
    finally:
        ro.chmod(0o700)


class FakeUnsigned(FakeUnit):
    def sign_erasure(self, payload: bytes) -> bytes | None:
        return None
