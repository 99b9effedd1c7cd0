"""Hostile radio (issue 11): the BLE driver's per-tag memory stays bounded and keeps no id
of a tag that is not enrolled. In-process through bleak's callback; no D-Bus needed."""

from __future__ import annotations

from typing import Any

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from bench.ble_flood import ENROLLED, _Sink, flood
from drivers.ble import MAX_REMEMBERED, BleDriver
from drivers.codecs import ble as codec
from gateway.clock import FakeClock
from gateway.config import reader_config

BUTTON = "a0a0a0a0-0000-4000-8000-00000000a1a1"
UUID, MAJOR, MINOR = ENROLLED.split(":")[1], 7, 42


def _driver(sink: Any) -> BleDriver:
    cfg = reader_config({"id": "ble-1", "kind": "ble", "role": "zone", "button_uuid": BUTTON})
    return BleDriver(cfg, sink, FakeClock())


def _advert(drv: BleDriver, addr: str, mfr: dict[int, bytes]) -> None:
    drv.on_advertisement(BLEDevice(addr, None, None),
                         AdvertisementData(None, mfr, {}, [], None, -60, ()))


def test_random_ids_keep_nothing_but_enrolled_tags() -> None:
    sink = _Sink()
    drv = _driver(sink)
    _advert(drv, "C0:00:00:00:00:01", codec.encode_ibeacon(UUID, MAJOR, MINOR))
    flood(drv, 20_000)
    assert dict(drv._by_addr) == {"C0:00:00:00:00:01": ENROLLED}
    assert dict(drv._by_major_minor) == {(MAJOR, MINOR): ENROLLED}
    # The enrolled tag's press from another address is still attributed through major/minor.
    got: list[Any] = []
    drv._hand_over()  # what the flood left in the driver's batch goes to the old sink
    sink.reading = got.append  # type: ignore[method-assign,assignment]
    _advert(drv, "C0:00:00:00:00:99", codec.encode_ibeacon(BUTTON, MAJOR, MINOR))
    assert [(r.tag, r.button) for r in got] == [(ENROLLED, True)]


def test_without_an_enrolled_set_the_maps_are_capped() -> None:
    class Bare(_Sink):
        def __init__(self) -> None:
            super().__init__()
            del self.enrolled

    drv = _driver(Bare())
    assert drv.enrolled is None
    flood(drv, 3 * MAX_REMEMBERED)
    assert len(drv._by_addr) == MAX_REMEMBERED
    assert len(drv._by_major_minor) <= MAX_REMEMBERED


def test_device_trouble_after_stop_is_one_line_not_a_traceback(caplog: Any) -> None:
    """A bleak/dbus_fast task whose bus went away reports EOFError when collected, after
    the driver stopped: one debug line, no asyncio traceback (issue 11)."""
    import asyncio
    import logging

    drv = _driver(_Sink())
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(drv._loop_exception)

        async def bus_gone() -> None:
            raise EOFError

        task = loop.create_task(bus_gone())
        loop.run_until_complete(asyncio.sleep(0))
        assert task.done()
        with caplog.at_level(logging.DEBUG):
            del task  # never retrieved: asyncio reports it through the loop's handler
            import gc

            gc.collect()
    finally:
        loop.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("bus went away" in r.getMessage() and "EOFError" in r.getMessage()
               for r in caplog.records)
