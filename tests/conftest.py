from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from firmware_sim.broker import BrokerMissing, LocalBroker


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
