"""The MQTT contract with the backend: topic names and the non-event payloads.

Every topic a unit publishes sits under ``<prefix>/<unit id>/`` so one broker
ACL pattern confines a unit to its own subtree (docs/mqtt.md). Event payloads
are built by the outbox when they are committed (gateway.outbox).
"""

from __future__ import annotations

from typing import Any

from gateway import __version__

SCHEMA_VERSION = 1


class Topics:
    def __init__(self, prefix: str, unit: str) -> None:
        self.base = f"{prefix}/{unit}"
        self.status = f"{self.base}/status"  # retained online/offline, also the last will
        self.birth = f"{self.base}/birth"
        self.health = f"{self.base}/health"
        self.commands = f"{self.base}/cmd/#"

    def of(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"


def status_payload(unit: str, online: bool, time_iso: str | None, reason: str) -> dict[str, Any]:
    """Retained status. The last will has no time: the broker sends it, not the unit."""
    return {"unit": unit, "state": "online" if online else "offline", "time": time_iso,
            "reason": reason}


def birth_payload(unit: str, site: str, config_version: str, last_seq: int, time_iso: str,
                  protocol: str) -> dict[str, Any]:
    return {
        "unit": unit,
        "site": site,
        "software": __version__,
        "schema": SCHEMA_VERSION,
        "config_version": config_version,
        "last_seq": last_seq,
        "mqtt": protocol,
        "time": time_iso,
    }
