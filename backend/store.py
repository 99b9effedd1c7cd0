"""The backend's PostgreSQL storage (asyncpg): one transaction per batch, and the queries.

Writing: :meth:`Store.write` stores a batch of parsed messages (backend/ingest.py) in one
transaction and returns what was new. Events are inserted with ``ON CONFLICT (id) DO
NOTHING`` (a resend is dropped, and not counted as stored twice), in id order so two
workers of a shared subscription lock rows in the same order (no deadlock).

Reading (a stable API for the operator page and the CLI; every method returns plain
frozen dataclasses or dicts of JSON-ready values, newest first where it says so):

- ``units()``: every unit's latest status, birth and health, and when it was last seen;
- ``events(limit, kinds, unit, lane, since_id)``: stored events, newest first;
- ``emergencies(limit)``: emergency-lane events (SOS, zone alerts, roll-calls), newest first;
- ``event(id)``: one event;
- ``gaps(unit)``: gaps in each unit's seqs, explained by drop/salvage notices or not;
- ``quarantine(limit)``: messages that broke the contract, newest first;
- ``counts()``: totals (events, units, quarantined, unexplained gap seqs);
- ``listen(callback)``: live updates (PostgreSQL NOTIFY, sent at commit by triggers of
  migration 0002): ``callback(channel, payload)`` for ``kidsafe_events`` (``{"events": n,
  "units": [...], "emergency": [ids], "more_emergency": bool}``) and ``kidsafe_units``
  (``{"units": [...]}``); ``await listener.close()`` stops it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from backend.gaps import Gap, classify
from backend.ingest import EventRow, Invalid, Item, UnitMessage

INSERT_EVENTS = """
INSERT INTO events (id, unit, seq, site, kind, lane, time, recorded, reader, child, data,
                    lat, lon)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                     $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[],
                     $10::text[], $11::jsonb[], $12::float8[], $13::float8[])
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

# The events and their units' last_seen in one statement (one round trip, and without
# other statements its own transaction): the common batch. $14/$15: the batch's units,
# each once (ON CONFLICT DO UPDATE may touch a row only once per statement).
INSERT_EVENTS_SEEN = f"""
WITH seen AS (
  INSERT INTO units AS u (unit, site, last_seen)
  SELECT unit, site, now() FROM unnest($14::text[], $15::text[]) AS t(unit, site)
  ON CONFLICT (unit) DO UPDATE SET last_seen = now(), site = coalesce(excluded.site, u.site)
), ins AS ({INSERT_EVENTS.strip()})
SELECT id FROM ins
"""
# The same, when only how many were new matters (the common batch): one row back rather
# than one per event for asyncpg to decode (~5 % of the backend's time while draining).
INSERT_EVENTS_SEEN_COUNT = INSERT_EVENTS_SEEN.replace("SELECT id FROM ins",
                                                      "SELECT count(*) FROM ins")

INSERT_LOSSES = """
INSERT INTO seq_losses (event_id, unit, from_seq, to_seq, source)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[])
ON CONFLICT DO NOTHING
"""

QUARANTINE = """
INSERT INTO quarantine AS q (topic, payload, digest, unit, seq, reasons)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (digest) DO UPDATE SET last_seen = now(), times_seen = q.times_seen + 1
"""

UNIT_LOG = "INSERT INTO unit_messages (unit, kind, body) VALUES ($1, $2, $3::jsonb)"

STATUS = """
INSERT INTO units AS u (unit, state, state_reason, state_time, state_received, last_seen)
VALUES ($1, $2, $3, $4, now(), now())
ON CONFLICT (unit) DO UPDATE SET state = excluded.state, state_reason = excluded.state_reason,
  state_time = excluded.state_time, state_received = now(), last_seen = now()
"""

BIRTH = """
INSERT INTO units AS u (unit, site, birth, birth_received, software, config_version, last_seq,
                        high_water_seq, mqtt, last_seen)
VALUES ($1, $2, $3::jsonb, now(), $4, $5, $6, $7, $8, now())
ON CONFLICT (unit) DO UPDATE SET site = excluded.site, birth = excluded.birth,
  birth_received = now(), software = excluded.software,
  config_version = excluded.config_version, last_seq = excluded.last_seq,
  high_water_seq = excluded.high_water_seq, mqtt = excluded.mqtt, last_seen = now()
"""

HEALTH = """
INSERT INTO units AS u (unit, health, health_received, last_seen)
VALUES ($1, $2::jsonb, now(), now())
ON CONFLICT (unit) DO UPDATE SET health = excluded.health, health_received = now(),
  last_seen = now()
"""


@dataclass(frozen=True, slots=True)
class Written:
    """What one batch's transaction stored."""

    events: int  # new events
    duplicates: int  # valid events already stored (resends)
    quarantined: int
    unit_messages: int


def event_columns(rows: Sequence[EventRow]) -> list[list[Any]]:
    """The 13 parallel arrays INSERT_EVENTS takes (rows sorted by id by the caller)."""
    return [[r.id for r in rows], [r.unit for r in rows], [r.seq for r in rows],
            [r.site for r in rows], [r.kind for r in rows], [r.lane for r in rows],
            [r.time for r in rows], [r.recorded for r in rows], [r.reader for r in rows],
            [r.child for r in rows], [r.data for r in rows], [r.lat for r in rows],
            [r.lon for r in rows]]


def _opt_time(s: Any) -> datetime | None:
    if not isinstance(s, str):
        return None
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        return None


def _digest(topic: str, payload: bytes) -> bytes:
    return hashlib.sha256(topic.encode() + b"\0" + payload).digest()


@dataclass(frozen=True, slots=True)
class UnitRow:
    unit: str
    site: str | None
    state: str | None
    state_reason: str | None
    state_time: datetime | None
    last_seen: datetime
    software: str | None
    config_version: str | None
    last_seq: int | None
    high_water_seq: int | None
    mqtt: str | None
    birth_received: datetime | None
    health: dict[str, Any] | None
    health_received: datetime | None
    stored_max_seq: int | None  # the highest seq stored for it


@dataclass(frozen=True, slots=True)
class StoredEvent:
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
    data: dict[str, Any]
    lat: float | None
    lon: float | None
    received: datetime


@dataclass(frozen=True, slots=True)
class Quarantined:
    id: int
    topic: str
    payload: bytes
    unit: str | None
    seq: int | None
    reasons: list[str]
    first_seen: datetime
    last_seen: datetime
    times_seen: int


_EVENT_COLS = ("id::text, unit, seq, site, kind, lane, time, recorded, reader, child, data, "
               "lat, lon, received")


def _event(r: asyncpg.Record) -> StoredEvent:
    return StoredEvent(r["id"], r["unit"], r["seq"], r["site"], r["kind"], r["lane"], r["time"],
                       r["recorded"], r["reader"], r["child"], json.loads(r["data"]), r["lat"],
                       r["lon"], r["received"])


CHANNELS = ("kidsafe_events", "kidsafe_units")


class Listener:
    """A pooled connection held for LISTEN; ``close()`` gives it back."""

    def __init__(self, pool: asyncpg.Pool, conn: asyncpg.Connection,
                 handler: Callable[..., None]) -> None:
        self.pool, self.conn, self.handler = pool, conn, handler

    async def close(self) -> None:
        for ch in CHANNELS:
            await self.conn.remove_listener(ch, self.handler)
        await self.pool.release(self.conn)


class Store:
    """A pool of connections to the backend's database."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def open(cls, dsn: str, min_size: int = 1, max_size: int = 4, **kwargs: Any) -> Store:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, **kwargs)
        assert pool is not None
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    # -- writing ---------------------------------------------------------------------------

    async def write(self, items: Sequence[Item]) -> Written:
        """Store a batch in one transaction; return what was new."""
        events = sorted((it for it in items if isinstance(it, EventRow)), key=lambda r: r.id)
        bad = [it for it in items if isinstance(it, Invalid)]
        unit_msgs = [it for it in items if isinstance(it, UnitMessage)]
        new_ids: set[str] = set()
        seen = sorted({ev.unit: ev.site for ev in events}.items())
        args = [*event_columns(events), [u for u, _ in seen], [s for _, s in seen]]
        async with self.pool.acquire() as conn:
            if events and not bad and not unit_msgs and not any(ev.losses for ev in events):
                # The common batch: one statement, its own transaction, one round trip.
                new = await conn.fetchval(INSERT_EVENTS_SEEN_COUNT, *args)
                return Written(new, len(events) - new, 0, 0)
            async with conn.transaction():
                if events:
                    rows = await conn.fetch(INSERT_EVENTS_SEEN, *args)
                    new_ids = {str(r["id"]) for r in rows}
                    losses = [(ev.id, ev.unit, lo, hi, ev.kind) for ev in events
                              if ev.losses and ev.id.lower() in new_ids for lo, hi in ev.losses]
                    if losses:
                        await conn.execute(INSERT_LOSSES, *map(list, zip(*losses, strict=True)))
                if bad:
                    await conn.executemany(QUARANTINE, [
                        (b.topic, b.payload, _digest(b.topic, b.payload), b.unit, b.seq,
                         list(b.reasons)) for b in bad])
                for m in unit_msgs:  # arrival order: the last status / birth / health wins
                    await self._unit_message(conn, m)
        return Written(len(new_ids), len(events) - len(new_ids), len(bad), len(unit_msgs))

    async def _unit_message(self, conn: asyncpg.Connection, m: UnitMessage) -> None:
        b = m.body
        await conn.execute(UNIT_LOG, m.unit, m.kind, m.body_json)
        if m.kind == "status":
            await conn.execute(STATUS, m.unit, b["state"], b["reason"], _opt_time(b["time"]))
        elif m.kind == "birth":
            await conn.execute(BIRTH, m.unit, b["site"], m.body_json, b["software"],
                               b["config_version"], b["last_seq"], b["high_water_seq"],
                               b["mqtt"])
        else:
            await conn.execute(HEALTH, m.unit, m.body_json)

    # -- reading (the page's API) ------------------------------------------------------------

    async def units(self) -> list[UnitRow]:
        rows = await self.pool.fetch(
            "SELECT u.*, (SELECT max(seq) FROM events e WHERE e.unit = u.unit) AS max_seq "
            "FROM units u ORDER BY u.unit")
        return [UnitRow(r["unit"], r["site"], r["state"], r["state_reason"], r["state_time"],
                        r["last_seen"], r["software"], r["config_version"], r["last_seq"],
                        r["high_water_seq"], r["mqtt"], r["birth_received"],
                        json.loads(r["health"]) if r["health"] else None,
                        r["health_received"], r["max_seq"]) for r in rows]

    async def events(self, limit: int = 100, kinds: Sequence[str] | None = None,
                     unit: str | None = None, lane: str | None = None) -> list[StoredEvent]:
        """Stored events, newest first (by the unit's ``time``)."""
        rows = await self.pool.fetch(
            f"SELECT {_EVENT_COLS} FROM events WHERE ($1::text[] IS NULL OR kind = ANY($1)) "
            "AND ($2::text IS NULL OR unit = $2) AND ($3::text IS NULL OR lane = $3) "
            "ORDER BY time DESC, seq DESC LIMIT $4",
            list(kinds) if kinds is not None else None, unit, lane, limit)
        return [_event(r) for r in rows]

    async def emergencies(self, limit: int = 100) -> list[StoredEvent]:
        return await self.events(limit, lane="emergency")

    async def event(self, event_id: str) -> StoredEvent | None:
        r = await self.pool.fetchrow(f"SELECT {_EVENT_COLS} FROM events WHERE id = $1::uuid",
                                     event_id)
        return _event(r) if r else None

    async def seqs(self, unit: str) -> list[int]:
        """Every stored seq of a unit, in order (tests, tools)."""
        return [r["seq"] for r in await self.pool.fetch(
            "SELECT seq FROM events WHERE unit = $1 ORDER BY seq", unit)]

    async def gaps(self, unit: str | None = None) -> list[Gap]:
        gaps = await self.pool.fetch(
            "SELECT unit, from_seq, to_seq FROM seq_gaps WHERE $1::text IS NULL OR unit = $1",
            unit)
        losses = await self.pool.fetch(
            "SELECT unit, from_seq, to_seq, source FROM seq_losses "
            "WHERE $1::text IS NULL OR unit = $1", unit)
        return classify([(r["unit"], r["from_seq"], r["to_seq"]) for r in gaps],
                        [(r["unit"], r["from_seq"], r["to_seq"], r["source"]) for r in losses])

    async def quarantine(self, limit: int = 100) -> list[Quarantined]:
        rows = await self.pool.fetch(
            "SELECT id, topic, payload, unit, seq, reasons, first_seen, last_seen, times_seen "
            "FROM quarantine ORDER BY last_seen DESC, id DESC LIMIT $1", limit)
        return [Quarantined(r["id"], r["topic"], bytes(r["payload"]), r["unit"], r["seq"],
                            list(r["reasons"]), r["first_seen"], r["last_seen"],
                            r["times_seen"]) for r in rows]

    async def prune(self, keep_days: float) -> int:
        """Delete status/birth/health history older than ``keep_days``; rows deleted."""
        done = await self.pool.execute(
            "DELETE FROM unit_messages WHERE received < now() - make_interval(secs => $1)",
            keep_days * 86400.0)
        return int(done.split()[-1])

    async def listen(self, callback: Callable[[str, dict[str, Any]], None]) -> Listener:
        """Call ``callback(channel, payload)`` for every committed change (see above)."""
        conn = await self.pool.acquire()

        def handler(_conn: Any, _pid: int, channel: str, payload: str) -> None:
            callback(channel, json.loads(payload))

        for ch in CHANNELS:
            await conn.add_listener(ch, handler)
        return Listener(self.pool, conn, handler)

    async def counts(self) -> dict[str, int]:
        r = await self.pool.fetchrow(
            "SELECT (SELECT count(*) FROM events) AS events, "
            "(SELECT count(*) FROM units) AS units, "
            "(SELECT count(*) FROM quarantine) AS quarantined, "
            "(SELECT coalesce(sum(times_seen), 0) FROM quarantine) AS quarantined_messages")
        assert r is not None
        unexplained = sum(g.count for g in await self.gaps() if g.explained_by is None)
        return {**{k: int(v) for k, v in r.items()}, "unexplained_gap_seqs": unexplained}
