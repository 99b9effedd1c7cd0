"""SD-card wear: bytes a real gatewayd process writes to disk per delivered event.

A simulated RDM6300 on a pty reads 1,000 enrolled cards round robin (every read a new
gate passage); the daemon decides, commits, publishes to a real mosquitto and deletes on
PUBACK, all live. ``write_bytes`` from ``/proc/<pid>/io`` (bytes the process caused to be
written to the storage layer: WAL frames, checkpoints, the high-water mark) is read once
the reader and the broker are up and again when every event is delivered and deleted;
the difference over the events is ``write_bytes_per_event`` (target <= 4 KiB). The
buffer lives in a temporary folder on a real disk (not a tmpfs, where nothing is
written to storage). The SQLite settings behind the figure: docs/architecture.md.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from firmware_sim import procs
from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway.outbox import Outbox

TARGETS = {"write_bytes_per_event": ("<=", 4096.0)}
CARDS = [f"{0xC0_0000_0000 + i:010X}" for i in range(1000)]


def _write_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/<pid>/io")


def _buffer(db: Path) -> tuple[int, int]:
    """(last seq, events still buffered), read-only beside the daemon."""
    try:
        with Outbox.saved(str(db)) as saved:
            return saved.last_seq(), saved.depth()
    except Exception:  # not created yet, or busy for a moment
        return 0, -1


def _wait(pred: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def bench_wear(n: int, rate: float = 500.0) -> float:
    work = Path(tempfile.mkdtemp(prefix="kidsafe-wear-", dir="/var/tmp"))
    port = VirtualSerial(str(work / "ttyRFID0"))
    port.plug()
    db = work / "buf.db"
    try:
        with LocalBroker(str(work / "broker"), persistence=False) as broker:
            tags = "\n".join(f'[[tags]]\nid = "{t}"\nchild = "c-{i}"\n'
                             for i, t in enumerate(CARDS))
            cfg = work / "gw.toml"
            cfg.write_text(
                f'[unit]\nid = "wear-unit"\nsite = "bench-site"\n[broker]\nport = {broker.port}\n'
                f'[buffer]\npath = "{db}"\n[gate]\nrepeat_window_s = 0.2\n'
                '[health]\ninterval_s = 3600\n'
                f'[[readers]]\nid = "gate-main"\nkind = "rdm6300"\nrole = "gate"\n'
                f'port = "{port.path}"\n\n{tags}')
            # The log goes to a pipe, as to journald under systemd: journald's writes are
            # not the daemon's.
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            log: list[bytes] = []
            stderr = proc.stderr
            assert stderr is not None
            threading.Thread(target=lambda: log.extend(iter(stderr.readline, b"")),
                             daemon=True).start()
            try:
                up = _wait(lambda: b"reader gate-main: online" in b"".join(log)
                           and b"connected (MQTT" in b"".join(log), 30)
                if not up:
                    return float("nan")
                time.sleep(1.0)  # start-up writes (tables, the mark) are not per event
                before = _write_bytes(proc.pid)
                sim = threading.Thread(target=Rdm6300Sim(port).flood,
                                       args=(CARDS, n, rate), daemon=True)
                sim.start()
                sim.join(n / rate + 60)
                done = _wait(lambda: _buffer(db)[0] >= n and _buffer(db)[1] == 0, 120)
                time.sleep(0.5)  # the last acknowledgement's delete
                after = _write_bytes(proc.pid)
                last, _ = _buffer(db)
                return (after - before) / last if done and last else float("nan")
            finally:
                procs.end(proc, signal.SIGTERM, timeout=15)
    finally:
        port.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    print(f"write_bytes_per_event {bench_wear(events):.0f}")
