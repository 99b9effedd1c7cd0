"""Typed readings (what drivers report), events (what the unit decided), and the
configured readers and tags both sides refer to.

Readings are facts from hardware, stamped at the edge with the injected clock:
``time`` is the wall clock (UTC epoch seconds, which NTP or a GPS correction can
step), ``mono`` the monotonic clock at the same moment (the engine's timers run on
it, docs/architecture.md "Engine time"). ``mono`` NaN (the default, for readings
made by hand) means "no monotonic stamp": the engine then uses ``time``.
Events are decisions; the outbox gives each one a unique id and a per-unit
sequence number when it is committed.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from gateway.options import ReaderOptions

OptionsT = TypeVar("OptionsT", bound=ReaderOptions)
_HEX_RE = re.compile(r"[0-9A-Fa-f]+")


@dataclass(frozen=True, slots=True)
class ReaderConfig(Generic[OptionsT]):
    """One configured reader; ``options`` is its driver's declared options, already checked."""

    id: str
    kind: str
    role: str
    options: OptionsT


@dataclass(frozen=True, slots=True)
class TagConfig:
    id: str  # canonical, uppercase for hex ids
    child: str  # pseudonymous child reference, never a name
    groups: tuple[str, ...] = ()


def canonical_tag_id(text: str) -> str:
    """Tag ids compare case-insensitively for hex ids; BLE ids keep their own form."""
    t = text.strip()
    return t.upper() if _HEX_RE.fullmatch(t) else t.lower()


@dataclass(frozen=True, slots=True)
class TagRead:
    """One read of an RFID tag (125 kHz EM4100 or UHF EPC) by a reader."""

    reader: str  # reader id from the config
    tag: str  # canonical tag id: uppercase hex (EM4100: 10 digits; EPC: as read)
    time: float  # UTC seconds since the epoch
    rssi: float | None = None  # dBm, where the reader reports it
    antenna: int | None = None  # 1-based, where the reader reports it
    mono: float = math.nan  # monotonic clock at ``time`` (NaN: none, the engine uses time)


@dataclass(frozen=True, slots=True)
class BleSighting:
    """One advertisement of a BLE tag, already decoded."""

    reader: str
    tag: str  # canonical tag id (see drivers.codecs.ble)
    time: float
    rssi: int
    battery_mv: int | None = None
    temperature_c: float | None = None
    button: bool = False
    mono: float = math.nan  # monotonic clock at ``time`` (NaN: none, the engine uses time)


@dataclass(frozen=True, slots=True)
class GpsFix:
    """The unit's own position from its GPS module."""

    reader: str
    time: float  # fix time (UTC) as the receiver gave it
    lat: float | None
    lon: float | None
    fix_quality: int = 0  # GGA quality: 0 none, 1 GPS, 2 DGPS, 4/5 RTK, 6 estimated
    fix_type: int = 1  # GSA: 1 none, 2 2D, 3 3D
    satellites: int | None = None
    hdop: float | None = None
    speed_mps: float | None = None
    time_trusted: bool = True
    mono: float = math.nan  # monotonic clock when the unit received the fix (NaN: none)


Reading = TagRead | BleSighting | GpsFix


class Lane(enum.IntEnum):
    """Delivery lanes, most urgent first. Order is kept within a lane."""

    EMERGENCY = 0  # SOS, child left a zone they must stay in, disaster roll-call
    ROUTINE = 1  # gate passages, zone enter/exit, geofences, low battery
    TELEMETRY = 2  # sightings and other data the backend can live without


class ReaderState(enum.StrEnum):
    STARTING = "starting"
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Event:
    """Something the unit decided happened. `data` holds the kind's own fields."""

    kind: str
    time: float  # when it happened: UTC epoch seconds on the unit's (corrected) wall clock
    lane: Lane = Lane.ROUTINE
    reader: str | None = None
    child: str | None = None  # pseudonymous child reference, never a name
    data: dict[str, Any] = field(default_factory=dict)
    term: str | None = None  # the pseudonym term ``child`` is named in (gateway/pseudonym.py)
