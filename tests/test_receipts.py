"""Receipts without a broker: admission of a signed receipt, the outbox's receipt reads and
deletes, the [delivery] config and the city sample, `gatewayd status`'s line."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import contract
from gateway import config, status
from gateway.model import Event, Lane
from gateway.outbox import Outbox
from gateway.receipts import Receipt, ReceiptRefused, admit
from gateway.signing import TYP_COMMAND, TYP_RECEIPT, Keyring, sign
from harness import GOOD_CONFIG, gatewayd

REPO = Path(__file__).resolve().parents[1]
KEY = Ed25519PrivateKey.generate()
RING = Keyring.of(KEY.public_key())
T = "2026-12-01T08:30:00.120Z"


def token(body: Any, key: Ed25519PrivateKey = KEY, typ: str = TYP_RECEIPT) -> bytes:
    return sign(json.dumps(body).encode(), key, typ)


def refused(tok: bytes, ring: Keyring = RING) -> str:
    with pytest.raises(ReceiptRefused) as e:
        admit(tok, ring, "gw-1")
    return e.value.reason


def test_a_signed_receipt_is_admitted() -> None:
    r = admit(token({"unit": "gw-1", "ranges": [[1, 4], [9, 9]], "upto": 3, "time": T}),
              RING, "gw-1")
    assert isinstance(r, Receipt)
    assert r.ranges == ((1, 4), (9, 9)) and r.upto == 3 and r.time == T
    assert admit(token({"unit": "gw-1", "ranges": [], "upto": 7,
                        "time": "2026-12-01T08:30:00+00:00"}), RING, "gw-1").upto == 7


@pytest.mark.parametrize(("tok", "reason"), [
    (token({"unit": "gw-1", "ranges": [[1, 2]], "time": T}, Ed25519PrivateKey.generate()),
     "unknown key id"),
    (token({"unit": "gw-1", "ranges": [[1, 2]], "time": T}, typ=TYP_COMMAND), "wrong typ"),
    (json.dumps({"unit": "gw-1", "ranges": [[1, 2]], "time": T}).encode(), "signature"),
    (token({"unit": "gw-2", "ranges": [[1, 2]], "time": T}), "another unit"),
    (token({"unit": "gw-1", "ranges": [[1, 2]], "time": T, "x": 1}), "unknown field"),
    (token({"unit": "gw-1", "ranges": [[2, 1]], "time": T}), "range"),
    (token({"unit": "gw-1", "ranges": [[0, 1]], "time": T}), "range"),
    (token({"unit": "gw-1", "ranges": [[1, True]], "time": T}), "range"),
    (token({"unit": "gw-1", "ranges": [[1, 2.0]], "time": T}), "range"),
    (token({"unit": "gw-1", "ranges": [[1, 2, 3]], "time": T}), "range"),
    (token({"unit": "gw-1", "ranges": {"1": 2}, "time": T}), "ranges"),
    (token({"unit": "gw-1", "ranges": [], "upto": -1, "time": T}), "upto"),
    (token({"unit": "gw-1", "ranges": [], "upto": "7", "time": T}), "upto"),
    (token({"unit": "gw-1", "ranges": [[1, 2]], "time": "yesterday"}), "time"),
    (token({"unit": "gw-1", "ranges": [[1, 2]], "time": "2026-12-01T08:30:00"}), "time"),
    (token({"unit": "gw-1", "ranges": [[1, 2]]}), "time"),
    (token(["gw-1"]), "object"),
    (sign(b"\xff\xfe", KEY, TYP_RECEIPT), "JSON"),
    (b"x" * 70_000, "too large"),
])
def test_what_is_not_a_receipt_is_refused(tok: bytes, reason: str) -> None:
    assert reason in refused(tok)


def test_no_keys_no_receipts() -> None:
    assert "no keys" in refused(token({"unit": "gw-1", "ranges": [[1, 2]], "time": T}),
                                Keyring())


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                              lambda c: st.lists(c, max_size=4)
                              | st.dictionaries(st.sampled_from(
                                  ["unit", "ranges", "upto", "time", "x"]), c, max_size=5),
                              max_leaves=12).map(lambda b: token(b))))
def test_admit_raises_nothing_but_a_refusal(tok: bytes) -> None:
    try:
        r = admit(tok, RING, "gw-1")
    except ReceiptRefused:
        return
    assert all(1 <= a <= b for a, b in r.ranges)


# -- the outbox's receipt region ------------------------------------------------------------

def events(n: int, lane: Lane = Lane.ROUTINE) -> list[Event]:
    return [Event(kind="gate", time=1.0, lane=lane, reader="r", child=f"c-{i}") for i in range(n)]


def test_outbox_deletes_receipted_ranges_and_reads_back_by_seq(tmp_path: Path) -> None:
    ob = Outbox(str(tmp_path / "buf.db"), "gw-1", "site")
    try:
        ob.add(events(6))
        ob.add(events(3, Lane.EMERGENCY))
        assert [r.seq for r in ob.fetch_seqs([9, 2, 5, 100])] == [2, 5, 9]
        assert ob.delete_ranges([(2, 3), (8, 20)]) == [2, 3, 8, 9]
        assert ob.depth() == 5 and ob.depth_by_lane() == {"emergency": 1, "routine": 4,
                                                          "telemetry": 0}
        assert ob.delete_ranges([(2, 3)]) == []  # again: nothing left to delete
        assert [r.seq for r in ob.fetch_seqs(range(1, 10))] == [1, 4, 5, 6, 7]
    finally:
        ob.close()


# -- config ---------------------------------------------------------------------------------

def test_delivery_defaults_to_broker_mode() -> None:
    cfg = config.parse(_toml(GOOD_CONFIG))
    assert cfg.delivery == config.DeliveryConfig(mode="broker", receipt_timeout_s=60.0,
                                                 max_awaiting=10_000)


@pytest.mark.parametrize(("extra", "key"), [
    ('[delivery]\nmode = "receipts"\n', "delivery.mode"),
    ('[delivery]\nmode = "receipt"\n', "delivery.mode"),  # no [commands] public_keys
    ('[delivery]\nreceipt_timeout_s = 0.2\n', "delivery.receipt_timeout_s"),
    ('[delivery]\nmax_awaiting = 0\n', "delivery.max_awaiting"),
    ('[delivery]\nreceipt_timeout_s = 60\nreceipt_timeout_max_s = 30\n',
     "delivery.receipt_timeout_max_s"),  # below the base
    ('[delivery]\nreceipt_timeout = 30\n', "delivery.receipt_timeout"),  # did you mean
])
def test_delivery_config_is_strict(extra: str, key: str) -> None:
    with pytest.raises(config.ConfigInvalid) as e:
        config.parse(_toml(GOOD_CONFIG + extra))
    assert key in {err.key for err in e.value.errors}, e.value.errors


def test_the_city_sample_uses_receipts_and_passes_check_config() -> None:
    r = gatewayd("check-config", str(REPO / "config" / "city.toml"))
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stdout
    assert "deleted on the backend's signed receipt" in r.stdout
    cfg = config.load(REPO / "config" / "city.toml")
    assert cfg.delivery.mode == "receipt" and len(cfg.commands.keyring) == 1


def test_status_shows_events_awaiting_their_receipt() -> None:
    cfg = config.parse(_toml(GOOD_CONFIG))
    doc: dict[str, Any] = {"buffer": {"depth": 12, "awaiting_receipt": 9},
           "mqtt": {"receipts": 4, "receipts_refused": 1}}
    lines = status.render(doc, cfg)
    assert any("9 awaiting the backend's receipt" in ln and "refused 1" in ln for ln in lines)
    doc["buffer"]["awaiting_receipt"] = None  # broker mode: no such line
    assert not any("receipt" in ln for ln in status.render(doc, cfg))


def _toml(text: str) -> dict[str, Any]:
    return tomllib.loads(text)


def test_the_receipt_schema_and_the_parser_agree() -> None:
    """docs/schemas/receipt.schema.json (what the backend builds) against admit(): what the
    schema takes the unit admits; what the unit refuses the schema refuses too."""
    v = contract.validator("receipt")
    goods: list[dict[str, Any]] = [
                 {"unit": "gw-1", "ranges": [[1041, 1104], [1107, 1107]], "time": T},
                 {"unit": "gw-1", "ranges": [], "upto": 1200, "time": T},
                 {"unit": "gw-1", "ranges": [], "upto": 0, "time": T},
                 {"unit": "gw-1", "ranges": [], "time": T}]
    for good in goods:
        assert not list(v.iter_errors(good)), good
        r = admit(token(good), RING, "gw-1")
        assert r.upto == good.get("upto") and len(r.ranges) == len(good["ranges"])
    for bad in ({"unit": "gw-1", "ranges": [[0, 1]], "time": T},
                {"unit": "gw-1", "ranges": [[1, 2]], "time": T, "seqs": [1]},
                {"unit": "gw-1", "ranges": [[1, 2]]},
                {"unit": "gw-1", "ranges": [[1]], "time": T},
                {"unit": "gw-1", "ranges": [[1, 2]], "upto": -1, "time": T},
                {"unit": "gw-1", "ranges": [[1, 2]], "time": "yesterday"}):
        assert list(v.iter_errors(bad)), bad
        with pytest.raises(ReceiptRefused):
            admit(token(bad), RING, "gw-1")
