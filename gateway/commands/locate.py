"""``locate``: where is a child (or each of a list)? Answered from the engine's memory.

Args: ``{"child": ref}`` or ``{"children": [ref, ...]}`` (child references, never tag
ids). One child that is not enrolled is 404; in a list it is an entry with
``"enrolled": false``, like a tag that was never enrolled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.commands.core import Args, BadArgs, Code, Command, CommandError, Reply, format_time, ok
from gateway.commands.unit import Location, Unit

MAX_CHILDREN = 200


@dataclass(frozen=True, slots=True)
class LocateArgs:
    children: tuple[str, ...]
    single: bool


def parse(args: Any) -> LocateArgs:
    a = Args(args, ("child", "children"))
    if ("child" in args) == ("children" in args):
        raise BadArgs("give either child or children")
    if "child" in args:
        return LocateArgs((a.text("child") or "",), True)
    return LocateArgs(tuple(dict.fromkeys(a.texts("children", max_items=MAX_CHILDREN))),
                      False)


def location_dict(loc: Location) -> dict[str, Any]:
    position = None
    if loc.position is not None:
        position = {k: v for k, v in loc.position.items() if k != "fix_time"}
        if loc.position.get("fix_time") is not None:
            position["fix_time"] = format_time(loc.position["fix_time"])
    return {"child": loc.child, "enrolled": loc.enrolled, "found": loc.found,
            "reader": loc.reader, "zone": loc.zone, "zones": list(loc.zones),
            "last_zone": loc.last_zone,
            "time": None if loc.time is None else format_time(loc.time),
            "rssi": loc.rssi, "position": position}


def handle(unit: Unit, cmd: Command) -> Reply:
    args = parse(cmd.args)
    found = unit.locate(args.children)
    if args.single and not found[0].enrolled:
        raise CommandError(Code.NOT_FOUND, "unknown child")
    return ok(cmd, {"children": [location_dict(loc) for loc in found]})
