"""A throw-away PostgreSQL for the demo (Debian's postgresql-15, loopback only).

Like LocalBroker: its own data dir in a temp dir, a free port, the postmaster our direct
child (never `pg_ctl start`, which daemonizes: in a container without an init a dead
server stays a zombie and its lock blocks the next start). As root it runs as user
postgres (initdb and postgres refuse root). tests/pg.py is the tests' fixture of the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from firmware_sim import procs
from firmware_sim.broker import free_port

PGBIN = Path(os.environ.get("KIDSAFE_PGBIN", "/usr/lib/postgresql/15/bin"))


class PostgresMissing(RuntimeError):
    pass


class LocalPostgres:
    def __init__(self, port: int | None = None) -> None:
        if not (PGBIN / "postgres").exists():
            raise PostgresMissing(f"{PGBIN}/postgres not found: Debian package postgresql-15 "
                                  "(./dev.sh setup installs it)")
        # Its own temp dir: postgres must traverse every parent of its data dir.
        self.dir = Path(tempfile.mkdtemp(prefix="kidsafe-demo-pg-"))
        self.port = port or free_port()
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self._as = {"user": "postgres", "group": "postgres", "extra_groups": []}

    def dsn(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def start(self) -> LocalPostgres:
        """initdb, then the server; a port taken between choosing and binding it (other
        programs choose free ports too) is replaced by another, twice at most."""
        for attempt in range(3):
            try:
                return self._start(initdb=attempt == 0)
            except RuntimeError as e:
                if "Address already in use" not in str(e) or attempt == 2:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _start(self, initdb: bool) -> LocalPostgres:
        data = self.dir / "data"
        if initdb:
            subprocess.run([str(PGBIN / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                           check=True, cwd="/", capture_output=True, timeout=60, **self._as)
        # Default durability (fsync on): the demo shows what a real deployment keeps.
        argv = [str(PGBIN / "postgres"), "-D", str(data), "-h", "127.0.0.1",
                "-p", str(self.port), "-k", str(self.dir)]
        out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        # Started as user postgres directly (not through runuser, which ignores SIGINT).
        self.proc = subprocess.Popen(argv, stdout=out, stderr=out, cwd="/",
                                     start_new_session=True, **self._as)
        out.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self._log()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                        0.2):
                time.sleep(0.2)  # ours, not another program's on the same port
                if self.proc.poll() is None:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres did not listen on {self.port}: {self._log()[-2000:]}")

    def _log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def create_database(self, name: str) -> str:
        subprocess.run([str(PGBIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                        "-U", "postgres", name], check=True, cwd="/", capture_output=True,
                       timeout=30)
        return self.dsn(name)

    def stop(self) -> None:
        procs.end(self.proc, signal.SIGINT, timeout=20)  # SIGINT: fast shutdown
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
