"""``roster``: enrol and unenrol children in a batch against the expected roster version.

Args (docs/schemas/commands/roster.schema.json): ``{"expected_version": int, "enrol":
[{"tag", "child", "groups"}], "unenrol": [{"child"} | {"tag"}], "term": {"id", "key"}}``,
parsed strictly by :func:`gateway.roster.parse_change`. Applied atomically on the
pipeline thread (gateway/pipeline.py ``change_roster``); the reply's data is the new
roster's summary: ``version``, ``checksum``, ``tags``, ``children``, ``term``, ``added``,
``removed``, ``state_forgotten``. A stale ``expected_version`` is 409 with the unit's
``version`` and ``checksum``; duplicates, unknown fields, bad types 400; unenrolling a
child or tag the roster does not hold 404. Nothing changes on any error.
"""

from __future__ import annotations

from gateway.commands.core import Command, Reply, ok, refuse
from gateway.commands.unit import Unit
from gateway.roster import RosterError, parse_change


def handle(unit: Unit, cmd: Command) -> Reply:
    try:
        change = parse_change(dict(cmd.args))
        data = unit.change_roster(change)
    except RosterError as e:
        return refuse(cmd, e.code, e.reason, e.data)
    return ok(cmd, data)
