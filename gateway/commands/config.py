"""``config``: replace the unit's whole config, commit-confirmed.

Args (docs/schemas/commands/config.schema.json)::

    {"config": "<the whole TOML file>", "expected_version": "<SHA-256 hex>",
     "confirm_s": 120}

The config travels as its TOML text, not a JSON form of it: the file on the unit is
then byte for byte what the backend sent (comments included), so the version the
backend computes (SHA-256 of those bytes) is the one the unit reports in birth, and
no TOML writer is needed on the unit. ``expected_version`` is the version of the
config the unit runs now (birth's ``config_version``): an optimistic lock, a stale
one is 409. ``confirm_s`` (10 to 3600 s; default ``[commands] confirm_s``, else 120)
is how long the new config has to reach the broker before it is rolled back.

The reply comes once the outcome is known: 200 kept, 409 rolled back (with the
reason), 400 invalid (the checker's messages in ``data.errors``, nothing changed),
409 stale version or a trial already running, 500 the files could not be written
(nothing changed). Until then the handler's answer is :data:`PENDING` (202), which
the transport stores (a repeat of the request is told the trial runs) but does not
publish: the trial machinery (gateway/daemon.py) sends the final reply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.commands.core import Args, BadArgs, Command, Reply
from gateway.commands.unit import Unit
from gateway.trial import MAX_CONFIRM_S, MIN_CONFIRM_S, is_version

PENDING = 202  # the outcome follows in a later reply; stored, not published
MAX_CONFIG_CHARS = 190_000  # inside a 256 KiB JWS, after base64 and JSON escaping


@dataclass(frozen=True, slots=True)
class ConfigArgs:
    text: str
    expected_version: str
    confirm_s: float | None  # None: the unit's default


def parse(args: Any) -> ConfigArgs:
    a = Args(args, ("config", "expected_version", "confirm_s"))
    text = a.text("config", max_chars=MAX_CONFIG_CHARS) or ""
    if "\x00" in text:
        raise BadArgs("config: contains a NUL character")
    expected = a.text("expected_version", max_chars=64) or ""
    if not is_version(expected):
        raise BadArgs("expected_version: not a SHA-256 hex digest (64 lowercase hex digits)")
    confirm = a.number("confirm_s", MIN_CONFIRM_S, MAX_CONFIRM_S)
    return ConfigArgs(text, expected, confirm)


def handle(unit: Unit, cmd: Command) -> Reply:
    return unit.config_trial(cmd, parse(cmd.args))
