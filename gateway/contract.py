"""The MQTT contract with the backend: topic names and every payload the unit sends.

Every topic a unit publishes sits under ``<prefix>/<unit id>/`` so one broker
ACL pattern confines a unit to its own subtree (docs/mqtt.md). Event payloads
are built here once, when the outbox commits an event (``event_payload``), and
stored as bytes: the publisher sends them as they are.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway import __version__
from gateway.model import Event, Lane

# The contract version (birth "schema"), raised on any change a backend must follow: the
# changes are listed in docs/mqtt.md.
SCHEMA_VERSION = 2

_ISO_SECOND: dict[int, str] = {}


def iso_utc(t: float) -> str:
    """RFC 3339 UTC with milliseconds, the one time format of the MQTT contract."""
    # Round to microseconds first, exactly as datetime.fromtimestamp does.
    frac, whole_f = math.modf(t)
    us = round(frac * 1e6)
    whole = int(whole_f)
    if us >= 1_000_000:
        whole, us = whole + 1, us - 1_000_000
    elif us < 0:
        whole, us = whole - 1, us + 1_000_000
    head = _ISO_SECOND.get(whole)
    if head is None:  # strftime is the costly part; events come many to a second
        if len(_ISO_SECOND) > 4096:
            _ISO_SECOND.clear()
        head = _ISO_SECOND[whole] = datetime.fromtimestamp(whole, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S")
    return f"{head}.{us // 1000:03d}Z"


# One encoder for every event payload: json.dumps with options builds a new one per call.
encode_json = json.JSONEncoder(separators=(",", ":"), sort_keys=True,
                               ensure_ascii=False).encode


@dataclass(frozen=True, slots=True)
class Stored:
    """An event as committed: its sequence number, id, lane, topic and finished payload."""

    seq: int
    uid: str
    lane: int
    topic: str  # below the unit's prefix, e.g. "event/gate"
    payload: bytes


class Topics:
    def __init__(self, prefix: str, unit: str) -> None:
        self.base = f"{prefix}/{unit}"
        self.status = f"{self.base}/status"  # retained online/offline, also the last will
        self.birth = f"{self.base}/birth"
        self.health = f"{self.base}/health"
        self.commands = f"{self.base}/cmd/#"
        self.receipt = f"{self.base}/receipt"  # backend -> unit: events durably stored

    def of(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"


def event_topic(kind: str) -> str:
    """An event's topic below the unit's prefix."""
    return f"event/{kind}"


def event_payload(ev: Event, seq: int, uid: str, unit: str, site: str, recorded: str) -> bytes:
    """The event message (docs/schemas/event.schema.json), compact JSON with sorted keys."""
    body: dict[str, Any] = {
        "id": uid,
        "seq": seq,
        "unit": unit,
        "site": site,
        "kind": ev.kind,
        "lane": Lane(ev.lane).name.lower(),
        "time": iso_utc(ev.time),
        "recorded": recorded,
        "reader": ev.reader,
        "child": ev.child,
        "data": ev.data,
    }
    return encode_json(body).encode()


def status_payload(unit: str, online: bool, time_iso: str | None, reason: str) -> dict[str, Any]:
    """Retained status. The last will has no time: the broker sends it, not the unit."""
    return {"unit": unit, "state": "online" if online else "offline", "time": time_iso,
            "reason": reason}


def birth_payload(unit: str, site: str, config_version: str, last_seq: int, time_iso: str,
                  protocol: str, high_water_seq: int | None = None,
                  config_previous: str | None = None, config_label: str = "") -> dict[str, Any]:
    """``high_water_seq``: no seq at or below it is assigned again, even if the buffer file
    is lost (kept beside the buffer, reserved ahead of use). ``config_version`` is the
    SHA-256 of the active config file, ``config_previous`` that of the one before the last
    change the unit kept (None: none yet), ``config_label`` its ``[unit] config_version``."""
    return {
        "unit": unit,
        "site": site,
        "software": __version__,
        "schema": SCHEMA_VERSION,
        "config_version": config_version,
        "config_previous": config_previous,
        "config_label": config_label,
        "last_seq": last_seq,
        "high_water_seq": max(last_seq, high_water_seq or 0),
        "mqtt": protocol,
        "time": time_iso,
    }
