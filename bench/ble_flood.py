"""Hostile radio: RSS growth of the BLE driver under adverts with random ids (issue 11).

A BLE scanner hears whatever is in range; someone walking past with a phone
app that advertises iBeacons with a fresh uuid/major/minor and a random
address every frame must not grow the gateway. The adverts go through
:meth:`drivers.ble.BleDriver.on_advertisement` in-process (bleak's
callback, no D-Bus), with one enrolled tag among them, and the figure is the
growth of the process's resident set (VmRSS) over the flood, after a
warm-up. Target: <= 5 MB after 1,000,000 adverts.

Run from the repo root: ``python -m bench.ble_flood [count]``.
"""

from __future__ import annotations

import gc
import random
import sys
from pathlib import Path
from typing import Any

TARGETS = {"ble_flood_rss_growth_mb": ("<=", 5.0)}
ENROLLED = "ibeacon:f7826da6-4fa2-4e98-8024-bc5b71e0893e:7:42"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class _Sink:
    """The pipeline's side, reduced to what the driver sees: the enrolled set."""

    def __init__(self) -> None:
        self.enrolled = frozenset({ENROLLED})
        self.readings = 0
        self.rejects = 0

    def reading(self, reading: Any) -> None:
        self.readings += 1  # the pipeline drops tags that are not enrolled, uncounted by id

    def reject(self, reader: str, reason: str) -> None:
        self.rejects += 1

    def state(self, reader: str, state: Any, detail: str = "") -> None:
        pass


def flood(driver: Any, count: int, seed: int = 11) -> None:
    """``count`` iBeacon adverts with random uuid/major/minor from random addresses; every
    tenth a press of the button uuid with a random major/minor."""
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

    rng = random.Random(seed)
    button = bytes.fromhex(driver.button_uuid.replace("-", "")) if driver.button_uuid else None
    for i in range(count):
        addr = ":".join(f"{b:02X}" for b in rng.randbytes(6))
        uuid = button if button is not None and i % 10 == 0 else rng.randbytes(16)
        payload = b"\x02\x15" + uuid + rng.randbytes(4) + b"\xc5"
        adv = AdvertisementData(None, {0x004C: payload}, {}, [], None, -60, ())
        driver.on_advertisement(BLEDevice(addr, None, None), adv)


def bench_ble_flood(count: int = 1_000_000) -> float:
    """RSS growth in MB over ``count`` random-id adverts through the driver."""
    from drivers.ble import BleDriver
    from gateway.clock import FakeClock
    from gateway.config import reader_config

    cfg = reader_config({"id": "ble-1", "kind": "ble", "role": "zone",
                         "button_uuid": "a0a0a0a0-0000-4000-8000-00000000a1a1"})
    driver = BleDriver(cfg, _Sink(), FakeClock())
    flood(driver, min(count, 20_000), seed=1)  # warm-up: imports, caches, allocator pools
    gc.collect()
    before = rss_mb()
    flood(driver, count)
    gc.collect()
    return max(0.0, rss_mb() - before)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(f"ble_flood_rss_growth_mb after {n:,} adverts: {bench_ble_flood(n):.1f}")
