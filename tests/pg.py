"""The tests' throw-away PostgreSQL: firmware_sim.postgres.LocalPostgres (the demo's and
the benches' too) with fsync off, and its fixtures.

Fixtures (tests/conftest.py loads this module as a plugin):
- ``pg_server``: one server per test session (per xdist worker), started on first use;
- ``pg_dsn``: a fresh empty database on it for each test, its DSN;
- ``backend_dsn``: the same, with the backend's migrations applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from firmware_sim.postgres import LocalPostgres, PostgresMissing

# Fast and still safe against a process kill (the page cache survives it): fsync off.
# Never synchronous_commit=off: that loses acknowledged commits on a server crash.
FAST = ("-F",)


class PgServer(LocalPostgres):
    """A LocalPostgres with fsync off unless ``flags`` say otherwise (a bench measuring
    PostgreSQL's own rate passes ``flags=()``)."""

    def __init__(self, port: int | None = None, flags: tuple[str, ...] = FAST) -> None:
        super().__init__(port, flags)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = PgServer().start()
    except PostgresMissing as e:
        pytest.fail(f"{e}: these tests need a real PostgreSQL")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    return pg_server.create_database()


@pytest.fixture
def backend_dsn(pg_dsn: str) -> str:
    from backend import migrate

    asyncio.run(migrate.apply(pg_dsn))
    return pg_dsn
