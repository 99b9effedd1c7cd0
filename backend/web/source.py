"""The page's reads from the backend's PostgreSQL (tables from backend/migrations), for
backend.views.build_state. One small pool; every query is bounded by an index:
alerts and roll-calls are emergency-lane events (partial index ``events_emergency``),
units one row each, a child's last sighting ``events_child_time``.

When to read: the ingest's commits NOTIFY ``kidsafe_events`` / ``kidsafe_units``
(migration 0002); one pooled connection LISTENs, so the page reads right after a commit
instead of polling. Without it (the connection lost) the page polls."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from backend.store import CHANNELS
from backend.views import ALERT_KINDS, Row
from backend.web.config import WebConfig

EMERGENCY = """
SELECT id, unit, site, kind, time, reader, child, data, received
FROM events
WHERE lane = 'emergency' AND kind = ANY($1::text[]) AND received > now() - make_interval(secs => $2)
ORDER BY time DESC
LIMIT 2000
"""
UNITS = "SELECT unit, site, state, last_seen, health, health_received FROM units"
LAST_UNIT = "SELECT unit FROM events WHERE child = $1 ORDER BY time DESC LIMIT 1"


async def _codecs(conn: Any) -> None:
    for t in ("json", "jsonb"):
        await conn.set_type_codec(t, encoder=json.dumps, decoder=json.loads,
                                  schema="pg_catalog")


class PgSource:
    """backend.web.app.Source on asyncpg."""

    def __init__(self, dsn: str, password: str | None = None) -> None:
        self.dsn = dsn
        self.password = password
        self.pool: Any = None
        self._listening: Any = None  # the connection holding LISTEN
        self._notified = asyncio.Event()

    async def _pool(self) -> Any:
        if self.pool is None:
            self.pool = await asyncpg.create_pool(self.dsn, password=self.password, min_size=1,
                                                  max_size=3, init=_codecs, command_timeout=10)
        return self.pool

    async def rows(self, cfg: WebConfig) -> tuple[Sequence[Row], Sequence[Row], Sequence[Row]]:
        pool = await self._pool()
        window = max(cfg.alert_window_s, cfg.roll_call_window_s)
        async with pool.acquire() as conn:
            emergency = [dict(r) for r in await conn.fetch(EMERGENCY,
                                                           [*ALERT_KINDS, "roll_call"], window)]
            units = [dict(r) for r in await conn.fetch(UNITS)]
        now = time.time()
        alerts = [r for r in emergency if r["kind"] in ALERT_KINDS
                  and r["received"].timestamp() > now - cfg.alert_window_s]
        calls = [r for r in emergency if r["kind"] == "roll_call"
                 and r["received"].timestamp() > now - cfg.roll_call_window_s]
        return alerts, calls, units

    def _notify(self, *_args: Any) -> None:
        self._notified.set()

    async def _listen(self) -> bool:
        conn = self._listening
        if conn is not None and not conn.is_closed():
            return True
        try:
            pool = await self._pool()
            conn = await pool.acquire()
            for ch in CHANNELS:
                await conn.add_listener(ch, self._notify)
        except (OSError, asyncpg.PostgresError):
            return False
        self._listening = conn
        return True

    async def changed(self, timeout: float) -> bool:
        """Wait until the ingest committed something (True) or ``timeout`` passed."""
        if not await self._listen():
            await asyncio.sleep(timeout)
            return False
        try:
            await asyncio.wait_for(self._notified.wait(), timeout)
        except TimeoutError:
            return False
        self._notified.clear()
        return True

    async def last_unit(self, child: str) -> str | None:
        pool = await self._pool()
        async with pool.acquire() as conn:
            unit = await conn.fetchval(LAST_UNIT, child)
        return str(unit) if unit is not None else None

    async def close(self) -> None:
        if self._listening is not None and self.pool is not None:
            if not self._listening.is_closed():
                for ch in CHANNELS:
                    await self._listening.remove_listener(ch, self._notify)
            await self.pool.release(self._listening)
            self._listening = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
