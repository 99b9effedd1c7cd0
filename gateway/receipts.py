"""The backend's receipts: what a unit accepts as proof that events are in the database.

A receipt arrives on ``<prefix>/<unit>/receipt`` (docs/mqtt.md, "Receipts"): a compact
JWS (gateway/signing.py, ``typ: kidsafe-receipt``) signed with a key of the
``[commands] public_keys`` keyring, whose payload is
``{"unit", "ranges": [[from, to], ...], "upto"?, "time"}``. :func:`admit` checks all
of it, bytes in, a :class:`Receipt` or :class:`ReceiptRefused` out (no I/O); the
publisher feeds what it admits to the delivery core (gateway/delivery.py), which
deletes only seqs the unit has sent.

Strict like the commands: an unknown field, a range the wrong way round or a seq that
is not a positive integer refuses the whole receipt (a half-understood receipt must
delete nothing). No expiry: seqs are never reused (the high-water mark), so an old
receipt replayed only covers events the backend stored long ago.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from gateway.signing import TYP_RECEIPT, Keyring, SignatureError, verify

MAX_BYTES = 64 * 1024  # a receipt names runs of seqs; 64 KiB is ~3,000 disjoint runs
MAX_RANGES = 4096
MAX_SEQ = 2**63 - 1  # SQLite's INTEGER PRIMARY KEY
FIELDS = frozenset({"unit", "ranges", "upto", "time"})


@dataclass(frozen=True, slots=True)
class Receipt:
    unit: str
    ranges: tuple[tuple[int, int], ...]  # inclusive, every seq in them stored
    upto: int | None  # every seq <= upto stored or known lost
    time: str  # RFC 3339, when the backend sent it
    kid: str  # the key that signed it


class ReceiptRefused(Exception):
    """Not a receipt this unit may act on; nothing is deleted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _seq(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SEQ


def admit(token: bytes, keys: Keyring, unit: str) -> Receipt:
    """The receipt in ``token`` if a key of ``keys`` signed it for this ``unit``."""
    if len(token) > MAX_BYTES:
        raise ReceiptRefused(f"too large ({len(token)} bytes)")
    if not keys:
        raise ReceiptRefused("no keys configured ([commands] public_keys)")
    try:
        verified = verify(token, keys, TYP_RECEIPT)
    except SignatureError as e:
        raise ReceiptRefused(f"signature: {e.reason}") from None
    try:
        body = json.loads(verified.payload)
    except (ValueError, RecursionError):
        raise ReceiptRefused("payload is not JSON") from None
    if not isinstance(body, dict):
        raise ReceiptRefused("payload is not an object")
    unknown = set(body) - FIELDS
    if unknown:
        raise ReceiptRefused(f"unknown field {sorted(unknown)[0]!r}")
    if body.get("unit") != unit:
        raise ReceiptRefused("for another unit")
    stamp = body.get("time")
    if not isinstance(stamp, str) or not _rfc3339(stamp):
        raise ReceiptRefused("time is not an RFC 3339 time")
    raw = body.get("ranges")
    if not isinstance(raw, list) or len(raw) > MAX_RANGES:
        raise ReceiptRefused(f"ranges must be a list of at most {MAX_RANGES} pairs")
    ranges: list[tuple[int, int]] = []
    for r in raw:
        if not (isinstance(r, list) and len(r) == 2 and _seq(r[0]) and _seq(r[1])
                and r[0] <= r[1]):
            raise ReceiptRefused("a range is not [from_seq, to_seq] with 1 <= from <= to")
        ranges.append((r[0], r[1]))
    upto = body.get("upto")
    if upto is not None and not (_seq(upto) or upto == 0):  # 0: nothing stored yet
        raise ReceiptRefused("upto is not a seq (an integer >= 0)")
    return Receipt(unit=unit, ranges=tuple(ranges), upto=upto, time=stamp, kid=verified.kid)


def _rfc3339(s: str) -> bool:
    if len(s) > 40 or "T" not in s.upper():
        return False
    try:
        t = datetime.fromisoformat(s[:-1] + "+00:00" if s[-1:] in "zZ" else s)
    except ValueError:
        return False
    return t.tzinfo is not None
