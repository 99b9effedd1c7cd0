from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from firmware_sim.broker import BrokerMissing, LocalBroker
from firmware_sim.vserial import VirtualSerial

# tests/pg.py: the throw-away PostgreSQL fixtures (pg_server, pg_dsn, backend_dsn).
pytest_plugins = ["pg"]


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Workers for `-n auto` (pyproject's addopts): two per CPU, at most 8. The tests mostly
    wait on subprocesses (a serial run: ~32 s of CPU in ~240 s); on 2 busy cores the whole
    suite took 123 s with 4 workers and 158 s with 2."""
    return min(8, 2 * len(os.sched_getaffinity(0)))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    try:
        b = LocalBroker(str(tmp_path / "broker")).start()
    except BrokerMissing as e:
        pytest.fail(f"{e}: the test suite needs a real broker")
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[VirtualSerial]:
    """A plugged pseudo-terminal for a simulated serial gate reader (the daemon's port)."""
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    yield port
    port.close()
