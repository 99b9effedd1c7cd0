"""``rebirth``: publish birth and status again (a backend that lost its retained view)."""

from __future__ import annotations

from gateway.commands.core import Args, Command, Reply, ok
from gateway.commands.unit import Unit


def handle(unit: Unit, cmd: Command) -> Reply:
    Args(cmd.args, ())
    unit.rebirth()
    return ok(cmd)
