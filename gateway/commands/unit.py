"""What a command handler may ask of the running unit (the daemon implements it).

Handlers see the unit only through this Protocol, so they are tested against a
small fake and the daemon's threads stay its own business: a method that reads or
changes engine state is queued to the pipeline thread and waits (bounded) for it.
Each command family adds the methods it needs here, in its own block. Methods run on the
command worker thread and must return within seconds (it is watched like every worker):
long work (a config trial) is started here and finished elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the handlers' own types; they import this module
    from gateway.commands.config import ConfigArgs
    from gateway.commands.core import Command, Reply


@dataclass(frozen=True, slots=True)
class Location:
    """A child's last sighting as the engine knows it (no tag id: children only)."""

    child: str
    enrolled: bool
    found: bool
    reader: str | None = None
    zone: str | None = None  # a zone the child is in now (the first, sorted)
    zones: tuple[str, ...] = ()
    last_zone: str | None = None
    time: float | None = None  # wall-clock epoch seconds of the sighting
    rssi: float | None = None
    position: dict[str, Any] | None = None  # {"lat", "lon", "source"[, "fix_time"]}


class Unit(Protocol):
    @property
    def unit_id(self) -> str: ...

    # ping, rebirth (gateway/commands/ping.py, rebirth.py)
    def info(self) -> dict[str, Any]:
        """A small status summary for ``ping``: software, config version, uptime, backlog."""
        ...

    def rebirth(self) -> None:
        """Publish birth and status again."""
        ...

    # locate, alert (gateway/commands/locate.py, alert.py): through the pipeline thread
    def locate(self, children: Sequence[str]) -> list[Location]: ...

    def start_alert(self, alert_id: str, interval_s: float | None) -> dict[str, Any]:
        """Start (or keep) the roll-call of ``alert_id``; returns its state."""
        ...

    def stop_alert(self, alert_id: str | None) -> bool:
        """End the roll-call (of ``alert_id``, or whichever runs); False if none ran."""
        ...

    # config (gateway/commands/config.py; the daemon's side is gateway/configtrial.py)
    def config_trial(self, cmd: Command, args: ConfigArgs) -> Reply:
        """Validate the pushed config as check-config does and start its trial: the
        refusal (400, 409, 500), or PENDING (202) when the outcome follows later."""
        ...
