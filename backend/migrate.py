"""Versioned schema migrations: plain numbered SQL files, applied in order, once each.

Why plain SQL and not a migration tool (alembic, yoyo, sqitch): the schema is written in
PostgreSQL's own language, which any operator, DBA or other backend can read and apply
with psql; there is no ORM model to generate it from, and one dependency fewer. The
runner is small: ``backend/migrations/NNNN_name.sql``, applied in number order, all
pending ones in one transaction together with their rows in ``schema_migrations``
(PostgreSQL's DDL is transactional: a failing migration leaves nothing behind). A
transaction-level advisory lock keeps two backends started at once from both applying.
Applied files must never be edited: a changed file is reported (its SHA-256 is kept).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK = 0x6B1D5AFE  # pg_advisory_xact_lock key: "kidsafe migrations"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    """The migrations shipped in backend/migrations, in version order."""
    found = []
    for entry in resources.files("backend.migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {[m.name for m in found]}")
    return found


class MigrationError(RuntimeError):
    pass


async def apply(dsn: str) -> list[str]:
    """Apply the pending migrations; return their names (empty: the schema is current)."""
    conn = await asyncpg.connect(dsn)
    try:
        return await apply_on(conn)
    finally:
        await conn.close()


async def apply_on(conn: asyncpg.Connection) -> list[str]:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,"
            " applied timestamptz NOT NULL DEFAULT now())")
        done = {r["version"]: r for r in await conn.fetch(
            "SELECT version, name, sha256 FROM schema_migrations")}
        applied = []
        for m in available():
            row = done.get(m.version)
            if row is not None:
                if row["sha256"] != m.digest:
                    raise MigrationError(
                        f"{m.name} was changed after it was applied (as {row['name']}): "
                        "add a new migration instead of editing an applied one")
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, sha256) VALUES ($1, $2, $3)",
                m.version, m.name, m.digest)
            applied.append(m.name)
        return applied


async def current(conn: asyncpg.Connection) -> int:
    """The highest applied version (0: none)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))
