"""A throw-away PostgreSQL (Debian's postgresql-15, loopback only): the demo's, the
tests' (tests/pg.py: fixtures on this class, fsync off) and the benches'.

Like LocalBroker: its own data dir in a temp dir, a free port, the postmaster our direct
child (never `pg_ctl start`, which daemonizes: in a container without an init a dead
server stays a zombie and its lock blocks the next start;
../shared/notes/backend-and-fleet.md). As root it runs as user postgres (initdb and
postgres refuse root). ``stop`` keeps the data (a test restarts the server on it),
``close`` stops and removes it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from firmware_sim import procs
from firmware_sim.broker import free_port

PGBIN = Path(os.environ.get("KIDSAFE_PGBIN", "/usr/lib/postgresql/15/bin"))


class PostgresMissing(RuntimeError):
    pass


class PortTaken(RuntimeError):
    pass


class LocalPostgres:
    """One PostgreSQL server in its own temp dir; ``flags`` go to the postmaster (the
    default: PostgreSQL's own settings, fsync on, as a real deployment keeps them)."""

    _names = itertools.count(1)

    def __init__(self, port: int | None = None, flags: tuple[str, ...] = (),
                 prefix: str = "kidsafe-pg-") -> None:
        if not (PGBIN / "postgres").exists():
            raise PostgresMissing(f"{PGBIN}/postgres not found: Debian package postgresql-15 "
                                  "(./dev.sh setup installs it)")
        # Its own temp dir (not pytest's tmp_path, whose parents are 0700 root): postgres
        # must traverse every parent of its data dir.
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.dir / "data"
        self.log_path = self.dir / "server.log"
        self.port = port or free_port()
        self.flags = flags
        self.user = "postgres"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = {"user": "postgres", "group": "postgres", "extra_groups": []}

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30.0) -> Self:
        """initdb (the first time), then the server; a port taken between choosing and
        binding it (other programs choose free ports too) is replaced, five times at most."""
        for _ in range(5):
            try:
                return self._start(timeout)
            except PortTaken:
                self.port = free_port()
        return self._start(timeout)

    def _start(self, timeout: float) -> Self:
        if not self.data.exists():
            subprocess.run([str(PGBIN / "initdb"), "-D", str(self.data), "-U", self.user,
                            "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                           check=True, cwd="/", capture_output=True, timeout=60, **self._as)
        out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        # Started as user postgres directly (not through runuser, which ignores SIGINT).
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
            # pg_isready: accepting connections, ours (a bare TCP connect could be another
            # program's listener on the same port, or a server still starting up).
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

    def sql(self, statement: str, db: str = "postgres") -> list[Any]:
        """Run one statement (asyncpg, a fresh connection) and return its rows."""
        return query(self.dsn(db), statement)

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (``name``, or a fresh one); its DSN."""
        name = name or f"t{os.getpid()}_{next(self._names)}"
        self.sql(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self, sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
        """SIGINT: fast shutdown (SIGTERM would wait for clients); SIGKILL: a crash. The
        data dir stays: ``start`` runs the server on it again."""
        procs.end(self.proc, sig, timeout=timeout)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def query(dsn: str, sql: str, *args: Any) -> list[Any]:
    """One statement on a connection of its own (asyncpg records): for the demo, the tests,
    the benches and the fleet, which look into the backend's database from outside."""
    import asyncpg

    async def go() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())
