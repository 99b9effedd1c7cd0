"""``ping``: is the unit there and listening? Answers with a small status summary."""

from __future__ import annotations

from gateway.commands.core import Args, Command, Reply, ok
from gateway.commands.unit import Unit


def handle(unit: Unit, cmd: Command) -> Reply:
    Args(cmd.args, ())
    return ok(cmd, unit.info(), "pong")
