"""BlueZ without a radio for the BLE tests: a private system bus, python-dbusmock's
bluez5 template and the tag simulator (firmware_sim.ble), torn down in order."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from firmware_sim.ble import BleSim, BluezMock, PrivateSystemBus, missing_tools

ALERT_UUID = "5a1e0000-50e5-4a1e-8000-00805f9b34fb"
TAG_UUID = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"


def require_ble_tools() -> None:
    why = missing_tools()
    if why:
        pytest.skip(f"BLE tests need a mock BlueZ: {why}")


@contextmanager
def ble_world(workdir: Path, **sim_args: object) -> Iterator[tuple[PrivateSystemBus, BleSim]]:
    """A running bus + mock BlueZ with adapter hci0; the caller adds tags and starts the sim."""
    require_ble_tools()
    bus = PrivateSystemBus(str(workdir / "dbus")).start()
    mock: BluezMock | None = None
    sim: BleSim | None = None
    try:
        mock = BluezMock(bus).start()
        sim = BleSim(mock, "hci0", alert_uuid=ALERT_UUID, **sim_args)  # type: ignore[arg-type]
        sim.add_adapter()
        yield bus, sim
    finally:
        if sim is not None:
            sim.stop()
        if mock is not None:
            mock.stop()
        bus.stop()
