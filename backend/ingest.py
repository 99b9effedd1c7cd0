"""What one MQTT message means to the backend, without I/O: topic + payload in, a row out.

Sans-I/O like the gateway's delivery core: :func:`parse` turns a message into an
:class:`EventRow` (a valid event, to store once by id), a :class:`UnitMessage` (status,
birth, health), or an :class:`Invalid` (to quarantine, with every reason). The shell
(backend/service.py) batches them, writes them in one transaction (backend/store.py) and
then sends the receipts :func:`receipts` plans. tests/test_backend_core.py drives it
directly.

Trust: the broker's ACL confines a unit to ``<prefix>/<unit>/...``, so the topic names
the unit; a body naming another unit (or a topic kind other than the body's) is invalid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from backend.schemas import Contract

UNIT_MESSAGES = ("status", "birth", "health")
LOSS_KINDS = ("buffer_drop", "buffer_salvage")
MAX_REASONS = 5


@dataclass(frozen=True, slots=True)
class EventRow:
    """A valid event, as the ``events`` table stores it."""

    id: str
    unit: str
    seq: int
    site: str
    kind: str
    lane: str
    time: datetime
    recorded: datetime
    reader: str | None
    child: str | None
    data: str  # the JSON of ``data`` (jsonb)
    lat: float | None
    lon: float | None
    losses: tuple[tuple[int, int], ...]  # buffer_drop / buffer_salvage ranges


@dataclass(frozen=True, slots=True)
class UnitMessage:
    unit: str
    kind: str  # status, birth or health
    body: dict[str, Any]
    body_json: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message that broke the contract, kept byte for byte with what is wrong with it."""

    topic: str
    payload: bytes
    unit: str | None  # from the topic
    seq: int | None  # from the body, when it has an integer seq >= 1 (an event topic)
    reasons: tuple[str, ...]


Item = EventRow | UnitMessage | Invalid


def split_topic(prefix: str, topic: str) -> tuple[str, str] | None:
    """``<prefix>/<unit>/<rest>`` -> (unit, rest), else None."""
    head = prefix.rstrip("/") + "/"
    if not topic.startswith(head):
        return None
    unit, sep, rest = topic[len(head):].partition("/")
    if not unit or not sep or not rest:
        return None
    return unit, rest


def _time(s: str) -> datetime:
    # The schema's pattern (RFC 3339 UTC, "Z") holds here; 3.11's fromisoformat reads "Z".
    return datetime.fromisoformat(s)


def _position(data: dict[str, Any]) -> tuple[float | None, float | None]:
    pos = data.get("position")
    if isinstance(pos, dict):
        lat, lon = pos.get("lat"), pos.get("lon")
    else:
        lat, lon = data.get("lat"), data.get("lon")
    if isinstance(lat, int | float) and isinstance(lon, int | float) \
            and not isinstance(lat, bool) and not isinstance(lon, bool):
        return float(lat), float(lon)
    return None, None


def _ranges(data: dict[str, Any]) -> tuple[tuple[int, int], ...]:
    out = []
    for r in data.get("ranges") or ():
        if (isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r)
                and 1 <= r[0] <= r[1]):
            out.append((r[0], r[1]))
    return tuple(out)


def parse(prefix: str, contract: Contract, topic: str, payload: bytes) -> Item:
    where = split_topic(prefix, topic)
    if where is None:
        return Invalid(topic, payload, None, None, ("topic outside <prefix>/<unit>/...",))
    unit, rest = where
    kind = rest.removeprefix("event/") if rest.startswith("event/") else None
    if kind is None and rest not in UNIT_MESSAGES:
        return Invalid(topic, payload, unit, None, (f"unknown topic {rest!r}",))
    try:
        # orjson: strict RFC 8259 (no NaN or Infinity, no lone surrogates, integers within
        # 64 bits: PostgreSQL's jsonb and bigint would refuse those anyway), ~4x json's speed
        body: Any = orjson.loads(payload)
    except ValueError as e:  # orjson.JSONDecodeError; invalid UTF-8 included
        return Invalid(topic, payload, unit, None, (f"not JSON: {e}",))
    name = "event" if kind is not None else rest
    reasons = contract.check(name, body)[:MAX_REASONS]
    seq = body.get("seq") if isinstance(body, dict) and kind is not None else None
    seq = seq if type(seq) is int and seq >= 1 else None
    if isinstance(body, dict):
        if body.get("unit") != unit:
            reasons.append(f"body unit {body.get('unit')!r} is not the topic's {unit!r}")
        if kind is not None and body.get("kind") != kind:
            reasons.append(f"body kind {body.get('kind')!r} is not the topic's {kind!r}")
    if reasons:
        return Invalid(topic, payload, unit, seq, tuple(reasons))
    if kind is None:
        return UnitMessage(unit, rest, body, payload.decode())
    data = body["data"]
    lat, lon = _position(data)
    try:
        t, recorded = _time(body["time"]), _time(body["recorded"])
    except ValueError as e:
        return Invalid(topic, payload, unit, seq, (f"time: {e}",))
    return EventRow(
        id=body["id"], unit=unit, seq=body["seq"], site=body["site"], kind=kind,
        lane=body["lane"], time=t, recorded=recorded, reader=body["reader"],
        child=body["child"], data=orjson.dumps(data).decode(),
        lat=lat, lon=lon, losses=_ranges(data) if kind in LOSS_KINDS else ())


def merge(ranges: Iterable[Sequence[int]]) -> list[list[int]]:
    """Inclusive ranges, sorted and merged: [(5, 9), (1, 3), (4, 4)] -> [[1, 9]]."""
    out: list[list[int]] = []
    for lo, hi in sorted((r[0], r[1]) for r in ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


def to_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted, merged inclusive runs: {1,2,3,7,9,8} -> [[1,3],[7,9]]."""
    return merge((s, s) for s in seqs)


def receipts(items: Sequence[Item]) -> dict[str, list[list[int]]]:
    """unit -> the seq ranges a transaction holding ``items`` stored durably.

    Every valid event counts, new or a duplicate (a resend whose receipt was lost must be
    receipted again, or the unit would keep it), and so does an invalid event whose unit
    and seq are known: it is stored too (in quarantine), and sending it again cannot make
    it valid, so holding it on the unit would only fill the buffer.
    """
    per: dict[str, set[int]] = {}
    for it in items:
        if isinstance(it, EventRow | Invalid) and it.unit is not None and it.seq is not None:
            per.setdefault(it.unit, set()).add(it.seq)
    return {unit: to_ranges(seqs) for unit, seqs in per.items()}


def receipt_payload(unit: str, ranges: list[list[int]], time_iso: str,
                    upto: int | None = None) -> bytes:
    """The JWS payload of a receipt (docs/schemas/receipt.schema.json)."""
    body: dict[str, Any] = {"unit": unit, "ranges": ranges, "time": time_iso}
    if upto is not None:
        body["upto"] = upto
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
