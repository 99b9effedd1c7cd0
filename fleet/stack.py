"""The backend side of a fleet run: ``kidsafe-backend`` as a process of its own, on one
node of the cluster, storing into a PostgreSQL database the caller provides, and the
queries that count what arrived there.

The backend is a separate process (as in production; its CPU is its own figure) and
connects to the last node of the cluster; units prefer the others (fleet.unit).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from firmware_sim import procs
from firmware_sim.postgres import query
from fleet.cluster import cpu_seconds, rss_mb
from gateway import signing

PREFIX = "kidsafe/v1"


def keypair(d: Path) -> tuple[Path, Path]:
    """The backend's signing key (receipts) and its public key (the units' keyring)."""
    priv, pub = d / "backend.key", d / "backend.pub"
    if not priv.exists():
        d.mkdir(parents=True, exist_ok=True)
        signing.generate_keypair(priv, pub)
    return priv, pub


class BackendProc:
    """``python -m backend run --config FILE`` with its output in a log file."""

    def __init__(self, work: Path, port: int, dsn: str, key_file: Path | None,
                 client_id: str = "fleet-backend", inflight: int | None = None,
                 emergency_receipt_qos: int | None = None, **ingest: Any) -> None:
        self.work = Path(work)
        self.inflight = inflight
        self.work.mkdir(parents=True, exist_ok=True)
        self.config = self.work / "backend.toml"
        self.log = self.work / "backend.log"
        self.dsn = dsn
        self.config.write_text(tomli_w.dumps({
            "prefix": PREFIX,
            # inflight: the backend's receipts in flight ([broker] max_inflight; None: its
            # default). PUBACKs wait for a Raft commit on a majority of nodes (docs/fleet.md).
            "broker": {"host": "127.0.0.1", "port": port, "client_id": client_id,
                       "protocol": "3.1.1", "reconnect_max_s": 1.0,
                       **({"max_inflight": inflight} if inflight is not None else {}),
                       **({"emergency_receipt_qos": emergency_receipt_qos}
                          if emergency_receipt_qos is not None else {})},
            "database": {"dsn": dsn},
            "receipts": {"key_file": str(key_file) if key_file else ""},
            "ingest": dict(ingest),
        }))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def migrate(self) -> None:
        subprocess.run([sys.executable, "-m", "backend", "migrate", "--config", str(self.config)],
                       check=True, capture_output=True, timeout=60)

    def start(self, timeout: float = 30.0) -> BackendProc:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        argv = [sys.executable, "-m", "backend", "run", "--config", str(self.config)]
        self.proc = subprocess.Popen(
            argv,
            stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        out.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while self.log_text().count("subscribed to ") < self.starts:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"kidsafe-backend did not subscribe: {self.log_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        procs.end(self.proc, sig, timeout)

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid) if self.proc else 0.0

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid) if self.proc else 0.0


def stored_count(dsn: str) -> int:
    return int(query(dsn, "SELECT count(*) FROM events")[0][0])


def stored_seqs(dsn: str) -> dict[str, list[int]]:
    """Every stored (unit, seq), duplicates kept (a seq stored twice shows twice)."""
    out: dict[str, list[int]] = {}
    for unit, seq in query(dsn, "SELECT unit, seq FROM events"):
        out.setdefault(unit, []).append(int(seq))
    return out
