"""A throw-away PostgreSQL server for the tests (Debian's postgresql-15, loopback only).

Like firmware_sim.broker.LocalBroker for mosquitto: our own data dir in a temp dir, a
free port, and the postmaster as our direct child (never `pg_ctl start`, which
daemonizes: in a container without an init the dead server stays a zombie and its
socket lock blocks the next start; ../shared/notes/backend-and-fleet.md). It runs as
user postgres when we are root (initdb and postgres refuse root). Stopped with SIGINT
(fast shutdown) and waited for.

Fixtures (tests/conftest.py loads this module as a plugin):
- ``pg_server``: one server per test session (per xdist worker), started on first use;
- ``pg_dsn``: a fresh empty database on it for each test, its DSN;
- ``backend_dsn``: the same, with the backend's migrations applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PGBIN = Path(os.environ.get("KIDSAFE_PGBIN", "/usr/lib/postgresql/15/bin"))
# Fast and still safe against a process kill (the page cache survives it): fsync off.
# Never synchronous_commit=off: that loses acknowledged commits on a server crash.
FAST = ("-F",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgMissing(RuntimeError):
    pass


class PortTaken(RuntimeError):
    pass


class PgServer:
    """One PostgreSQL server in its own temp dir; ``start``/``stop``/``kill`` by pid."""

    def __init__(self, port: int | None = None, flags: tuple[str, ...] = FAST) -> None:
        if not (PGBIN / "postgres").exists():
            raise PgMissing(f"{PGBIN}/postgres not found: Debian package postgresql-15 "
                            "(./dev.sh setup installs it)")
        # Not pytest's tmp_path: its parents are 0700 root, and postgres must traverse
        # every parent of its data dir.
        self.dir = Path(tempfile.mkdtemp(prefix="kidsafe-pg-"))
        self.data = self.dir / "data"
        self.log_path = self.dir / "server.log"
        self.port = port or free_port()
        self.flags = flags
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = {"user": "postgres", "group": "postgres", "extra_groups": []}
        self.user = "postgres"

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, db: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def _run(self, *argv: str) -> None:
        subprocess.run(argv, check=True, cwd="/", capture_output=True, timeout=60, **self._as)

    def start(self, timeout: float = 30.0) -> PgServer:
        for _ in range(5):
            try:
                return self._start(timeout)
            except PortTaken:  # another process took the free port between bind and listen
                self.port = free_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> PgServer:
        if not self.data.exists():
            self._run(str(PGBIN / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
                      "-E", "UTF8", "--locale=C.UTF-8", "--no-sync")
        out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [str(PGBIN / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
             "-p", str(self.port), "-k", str(self.dir), *self.flags],
            stdout=out, stderr=out, cwd="/", start_new_session=True, **self._as)
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                if "could not create any TCP/IP sockets" in self.log_text()[-2000:]:
                    raise PortTaken(self.port)
                raise RuntimeError(f"postgres exited at start: {self.log_text()[-2000:]}")
            ready = subprocess.run([str(PGBIN / "pg_isready"), "-q", "-h", "127.0.0.1",
                                    "-p", str(self.port)], check=False, timeout=10)
            if ready.returncode == 0:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres not ready on {self.port}: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
        """SIGINT: fast shutdown (SIGTERM would wait for clients); SIGKILL: a crash."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def sql(self, statement: str, db: str = "postgres") -> list[Any]:
        """Run one statement (asyncpg, a fresh connection) and return its rows."""
        import asyncpg

        async def go() -> list[Any]:
            conn = await asyncpg.connect(self.dsn_for(db))
            try:
                return list(await conn.fetch(statement))
            finally:
                await conn.close()

        return asyncio.run(go())

    _names = itertools.count(1)

    def new_database(self) -> str:
        """A fresh empty database; its DSN."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.dsn_for(name)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = PgServer().start()
    except PgMissing as e:
        pytest.fail(f"{e}: these tests need a real PostgreSQL")
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    return pg_server.new_database()


@pytest.fixture
def backend_dsn(pg_dsn: str) -> str:
    from backend import migrate

    asyncio.run(migrate.apply(pg_dsn))
    return pg_dsn
