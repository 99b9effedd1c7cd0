"""The BLE driver follows the roster: when the pipeline swaps its enrolled set (a
roster change, gateway/pipeline.py), the driver forgets at its next advert what
attributed adverts to tags that left, and remembers tags that joined."""

from __future__ import annotations

from typing import Any

from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from bench.ble_flood import ENROLLED, _Sink
from drivers.ble import BleDriver
from drivers.codecs import ble as codec
from gateway.clock import FakeClock
from gateway.config import reader_config

UUID = ENROLLED.split(":")[1]
OTHER = f"ibeacon:{UUID}:7:43"


def _advert(drv: BleDriver, addr: str, minor: int) -> None:
    drv.on_advertisement(BLEDevice(addr, None, None),
                         AdvertisementData(None, codec.encode_ibeacon(UUID, 7, minor), {}, [],
                                           None, -60, ()))


def test_the_driver_switches_with_the_sinks_enrolled_set() -> None:
    sink: Any = _Sink()
    drv = BleDriver(reader_config({"id": "ble-1", "kind": "ble", "role": "zone"}), sink,
                    FakeClock())
    _advert(drv, "C0:00:00:00:00:01", 42)
    _advert(drv, "C0:00:00:00:00:02", 43)  # not enrolled: not remembered
    assert set(drv._by_addr.values()) == {ENROLLED}
    sink.enrolled = frozenset({OTHER})  # the roster changed: swapped whole
    _advert(drv, "C0:00:00:00:00:02", 43)
    assert set(drv._by_addr.values()) == {OTHER}  # the unenrolled tag's address forgotten
    assert set(drv._by_major_minor.values()) == {OTHER}
