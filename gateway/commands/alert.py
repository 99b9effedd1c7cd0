"""``alert/start``, ``alert/stop``: a disaster alert starts or ends the roll-call.

Args: ``{"alert_id": str, "interval_s": number (optional, 5..3600; the config's
[roll_call] interval_s if absent)}``; stop takes ``alert_id`` optional (whichever runs).
The roll-call is engine state: it is saved with it and survives a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.commands.core import Args, Code, Command, CommandError, Reply, ok
from gateway.commands.unit import Unit

MIN_INTERVAL_S = 5.0
MAX_INTERVAL_S = 3600.0


@dataclass(frozen=True, slots=True)
class StartArgs:
    alert_id: str
    interval_s: float | None


@dataclass(frozen=True, slots=True)
class StopArgs:
    alert_id: str | None


def parse_start(args: Any) -> StartArgs:
    a = Args(args, ("alert_id", "interval_s"))
    return StartArgs(a.text("alert_id", max_chars=64) or "",
                     a.number("interval_s", MIN_INTERVAL_S, MAX_INTERVAL_S))


def parse_stop(args: Any) -> StopArgs:
    a = Args(args, ("alert_id",))
    return StopArgs(a.text("alert_id", required=False, max_chars=64))


def start(unit: Unit, cmd: Command) -> Reply:
    args = parse_start(cmd.args)
    return ok(cmd, unit.start_alert(args.alert_id, args.interval_s), "roll-call on")


def stop(unit: Unit, cmd: Command) -> Reply:
    args = parse_stop(cmd.args)
    if not unit.stop_alert(args.alert_id):
        raise CommandError(Code.NOT_FOUND, "no such roll-call running")
    return ok(cmd, {"alert_id": args.alert_id}, "roll-call off")
