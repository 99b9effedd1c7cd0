"""The reader kinds this gateway knows, one line each.

A kind is its driver, its pure codec and (where there is one) its simulator.
This module only *names* them; nothing is imported until a kind is used, so
listing the kinds costs nothing and a broken optional module (the BLE stack,
say) only fails the kind that needs it. The simulator is named as a module of
``firmware_sim`` (a layer above this one), never imported from here.

Adding a reader kind: write ``drivers/<kind>.py`` (defining ``DRIVER``), its
codec in ``drivers/codecs/`` (defining ``Decoder``), its simulator in
``firmware-sim/`` (defining ``SIMULATOR``), and add one line to ``KINDS``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from drivers._base import Driver


@dataclass(frozen=True, slots=True)
class Kind:
    name: str  # the config's ``kind``, the simulator's ``kind``, ``gatewayd decode``'s KIND
    driver: str  # module defining DRIVER
    codec: str  # module of drivers.codecs defining Decoder
    simulator: str | None  # module of firmware_sim defining SIMULATOR, or None
    summary: str  # one line for listings and docs


KINDS: tuple[Kind, ...] = (
    Kind("rdm6300", "drivers.rdm6300", "drivers.codecs.rdm6300", "firmware_sim.rdm6300",
         "125 kHz EM4100 gate reader (RDM6300/RDM630 class), serial"),
    Kind("uhf_r2000", "drivers.uhf_r2000", "drivers.codecs.uhf_r2000", "firmware_sim.uhf_r2000",
         "UHF EPC Gen2 reader, R2000 0xA0 protocol (IND903/YR903 class), serial"),
    Kind("uhf_chafon", "drivers.uhf_chafon", "drivers.codecs.chafon", "firmware_sim.uhf_chafon",
         "UHF EPC Gen2 reader, Chafon UHFReader18/288 protocol (CF-RU5xxx class), serial"),
    Kind("ble", "drivers.ble", "drivers.codecs.ble", "firmware_sim.ble",
         "BLE tags (iBeacon, Eddystone-UID/TLM) through BlueZ on D-Bus"),
    Kind("gps_nmea", "drivers.gps_nmea", "drivers.codecs.nmea", "firmware_sim.gps_nmea",
         "GPS module speaking NMEA 0183, serial"),
    Kind("gpsd", "drivers.gpsd", "drivers.codecs.gpsd", None,
         "GPS owned by gpsd (its JSON on TCP)"),
)

_BY_NAME = {k.name: k for k in KINDS}


def names() -> list[str]:
    """Every kind, in the order above."""
    return [k.name for k in KINDS]


def get(name: str) -> Kind:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown reader kind {name!r} (known: {', '.join(names())})") from None


def driver(name: str) -> type[Driver[Any]]:
    module = importlib.import_module(get(name).driver)
    cls: type[Driver[Any]] = module.DRIVER
    return cls


def codec(name: str) -> ModuleType:
    return importlib.import_module(get(name).codec)
