"""``erase``: remove a child's data from the unit, answered with a signed receipt.

Args (docs/schemas/commands/erase.schema.json): ``{"child": <enrolment id>}``. The
unit removes the child's engine state (last sighting, zone presence, RSSI windows,
gate and battery records) and its undelivered events (those about the child are
deleted; roll-calls listing it lose its entries), whether or not it is still
enrolled (unenrolment is the ``roster`` command's). A child the unit knows nothing of
is erased too, with zero counts: the unit keeps no list of former children to tell
them apart.

Reply data: ``{"child", "counts": {"state_entries", "events_deleted",
"events_redacted"}, "ranges": [[first_seq, last_seq], ...] (the deleted seqs, so the
backend can tell these gaps from losses), "receipt": <JWS, or null where the unit could
not make its key>}``. The receipt is a JWS
(``typ: kidsafe-erasure``) signed with the unit's own Ed25519 key (its key id is in
the birth message); its payload is :func:`receipt_payload`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway.commands.core import Args, BadArgs, Command, Reply, format_time, ok, refuse
from gateway.commands.unit import Unit
from gateway.roster import RosterError, ident

COUNTS = ("state_entries", "events_deleted", "events_redacted")


def parse(args: Mapping[str, Any]) -> str:
    Args(args, ("child",))
    if "child" not in args:
        raise BadArgs("child: required")
    try:
        return ident(args["child"], "child")
    except RosterError as e:
        raise BadArgs(e.reason) from None


def receipt_payload(unit: str, request_id: str, child: str, erased: Mapping[str, Any],
                    now: float) -> bytes:
    """What the unit signs: ``{"unit", "request", "child", "time", "counts", "ranges"}``."""
    body = {"unit": unit, "request": request_id, "child": child, "time": format_time(now),
            "counts": {k: int(erased[k]) for k in COUNTS}, "ranges": erased["ranges"]}
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def handle(unit: Unit, cmd: Command) -> Reply:
    child = parse(cmd.args)
    try:
        erased = unit.erase(child)
    except RosterError as e:
        return refuse(cmd, e.code, e.reason)
    payload = receipt_payload(cmd.unit, cmd.id, child, erased, float(erased["time"]))
    signed = unit.sign_erasure(payload)
    return ok(cmd, {"child": child, "counts": {k: erased[k] for k in COUNTS},
                    "ranges": erased["ranges"],
                    "receipt": None if signed is None else signed.decode()},
              "done" if signed is not None else "done; receipt unsigned: the unit has no key")
