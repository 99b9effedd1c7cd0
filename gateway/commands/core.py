"""Commands from the backend, sans-I/O: a signed MQTT message in, a Command or a Reply out.

:func:`admit` is the whole admission of one message, pure: size, signature
(``gateway.signing``, ``typ: kidsafe-command``), JSON shape, times, target unit,
and the replay check against what the caller looked up in the persisted table.
It returns a :class:`Command` to run or the :class:`Reply` to send instead
(an error, or the stored reply of a repeated request). Handlers (one module per
command family, listed in ``gateway.commands.registry``) parse their own ``args``
strictly and answer with a :class:`Reply`; :func:`dispatch` turns their
:class:`CommandError` into the error reply. docs/mqtt.md has the contract.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from types import MappingProxyType
from typing import Any

from gateway.commands.unit import Unit
from gateway.contract import iso_utc
from gateway.signing import TYP_COMMAND, Keyring, SignatureError, verify


class Code(IntEnum):
    """Reply codes, in the spirit of Kura's (HTTP's) numbers."""

    OK = 200  # done
    BAD_REQUEST = 400  # malformed, invalid arguments
    FORBIDDEN = 403  # unsigned, bad signature, unknown key, expired, not yet valid, other unit
    NOT_FOUND = 404  # unknown command, unknown child
    CONFLICT = 409  # stale version, request id re-used with other content, trial in progress
    FAILED = 500  # failed; nothing changed


MAX_BYTES = 256 * 1024
MAX_DEPTH = 16  # JSON nesting of a command's payload (the envelope is depth 1)
CLOCK_SKEW_S = 60.0
MAX_LIFETIME_S = 24 * 3600.0  # bounds how long an id is remembered
ENVELOPE = frozenset({"id", "unit", "cmd", "issued", "expires", "args", "reply_to"})
REQUIRED = ENVELOPE - {"reply_to"}
MAX_TOPIC_CHARS = 512
MAX_REASON_CHARS = 300
MAX_NAME_CHARS = 64  # a longer command name (no such command) is cut in the reply


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = MAX_BYTES
    clock_skew_s: float = CLOCK_SKEW_S
    max_lifetime_s: float = MAX_LIFETIME_S


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, slots=True)
class Command:
    """An admitted command: signed by a trusted key, for this unit, in its time window."""

    id: str
    unit: str
    name: str
    issued: float  # epoch seconds
    expires: float
    args: Mapping[str, Any]
    reply_to: str | None = None
    digest: str = ""  # SHA-256 (hex) of the JWS payload: same id, same digest = a repeat
    kid: str = ""  # the key that signed it


@dataclass(frozen=True, slots=True)
class Reply:
    id: str | None
    unit: str
    name: str
    code: int
    reason: str
    data: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    reply_to: str | None = field(default=None, compare=False)  # the signed fallback topic
    repeat: bool = field(default=False, compare=False)  # admit(): the stored reply of a repeat

    @property
    def ok(self) -> bool:
        return self.code == Code.OK


@dataclass(frozen=True, slots=True)
class Seen:
    """A request id already admitted, as persisted: its digest and the reply it got."""

    digest: str
    reply: Reply


class CommandError(Exception):
    """Raised by a handler (or its args parser): answered with ``code`` and ``reason``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = int(code)
        self.reason = reason


class BadArgs(CommandError):
    def __init__(self, reason: str) -> None:
        super().__init__(Code.BAD_REQUEST, reason)


class Args:
    """Strict reading of a command's ``args``: unknown fields and wrong types are 400.

    Handlers build their typed dataclass from it (no jsonschema at run time).
    """

    def __init__(self, args: Mapping[str, Any], allowed: Collection[str]) -> None:
        unknown = sorted(set(args) - set(allowed))
        if unknown:
            raise BadArgs(f"unknown argument: {unknown[0][:40]}")
        self.args = args

    def text(self, key: str, *, required: bool = True, max_chars: int = 128,
             default: str | None = None) -> str | None:
        if key not in self.args:
            if required:
                raise BadArgs(f"{key}: required")
            return default
        v = self.args[key]
        if not isinstance(v, str) or not v or len(v) > max_chars:
            raise BadArgs(f"{key}: not a string of 1 to {max_chars} characters")
        return v

    def number(self, key: str, lo: float, hi: float, default: float | None = None,
               *, required: bool = False) -> float | None:
        if key not in self.args:
            if required:
                raise BadArgs(f"{key}: required")
            return default
        v = self.args[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            raise BadArgs(f"{key}: not a number from {lo:g} to {hi:g}")
        return float(v)

    def texts(self, key: str, *, max_items: int, max_chars: int = 128) -> list[str]:
        v = self.args.get(key)
        if not isinstance(v, list) or not 1 <= len(v) <= max_items or not all(
                isinstance(s, str) and 0 < len(s) <= max_chars for s in v):
            raise BadArgs(f"{key}: not a list of 1 to {max_items} strings")
        return list(v)


def ok(cmd: Command, data: Mapping[str, Any] | None = None, reason: str = "done") -> Reply:
    return Reply(cmd.id, cmd.unit, cmd.name, Code.OK, reason, _frozen(data or {}), cmd.reply_to)


def refuse(cmd: Command, code: int, reason: str,
           data: Mapping[str, Any] | None = None) -> Reply:
    return Reply(cmd.id, cmd.unit, cmd.name, int(code), reason, _frozen(data or {}),
                 cmd.reply_to)


Handler = Callable[[Unit, Command], Reply]


# --- times ------------------------------------------------------------------------------

_RFC3339_UTC = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|\+00:00)", re.ASCII)


def parse_time(text: object) -> float | None:
    """Epoch seconds of an RFC 3339 UTC time (``...Z`` or ``+00:00``), else None."""
    if not isinstance(text, str) or not _RFC3339_UTC.fullmatch(text):
        return None
    head, _, frac = text.removesuffix("Z").removesuffix("+00:00").partition(".")
    try:
        t = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    return t + (float("0." + frac) if frac else 0.0)


def format_time(t: float) -> str:
    """RFC 3339 UTC with milliseconds, the contract's one time format."""
    return iso_utc(t)


# --- JSON -------------------------------------------------------------------------------

def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            children: Collection[Any] = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        deepest = max(deepest, d)
        stack.extend((c, d + 1) for c in children)
    return deepest


def loads(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN, bounded depth; raises ValueError."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                           parse_constant=no_constant)
    except RecursionError:
        raise ValueError("nested too deep") from None
    if _depth(value) > max_depth:
        raise ValueError("nested too deep")
    return value


# --- reply topics and bodies ------------------------------------------------------------

def reply_base(prefix: str, unit: str) -> str:
    return f"{prefix}/{unit}/reply/"


def valid_reply_topic(topic: str | None, prefix: str, unit: str) -> bool:
    """A topic the unit may publish a reply to: under its own reply subtree, no wildcards."""
    base = reply_base(prefix, unit)
    return (isinstance(topic, str) and topic.startswith(base) and len(topic) > len(base)
            and len(topic) <= MAX_TOPIC_CHARS and not any(c in topic for c in "+#\0"))


def reply_topic(prefix: str, unit: str, request_id: str | None,
                response_topic: str | None, reply_to: str | None) -> str:
    """Where a reply goes: the MQTT 5 response topic, else ``reply_to``, else the default."""
    for candidate in (response_topic, reply_to):
        if candidate is not None and valid_reply_topic(candidate, prefix, unit):
            return candidate
    return reply_base(prefix, unit) + (request_id or "unknown")


def reply_dict(reply: Reply, now: float) -> dict[str, Any]:
    return {"id": reply.id, "unit": reply.unit, "cmd": reply.name, "code": reply.code,
            "reason": reply.reason[:MAX_REASON_CHARS], "time": format_time(now),
            "data": dict(reply.data)}


def reply_body(reply: Reply, now: float) -> bytes:
    return json.dumps(reply_dict(reply, now), separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False).encode()


def reply_record(reply: Reply) -> str:
    """A reply as stored in the commands table (no time: a resend is stamped anew)."""
    return json.dumps({"id": reply.id, "unit": reply.unit, "cmd": reply.name,
                       "code": reply.code, "reason": reply.reason, "data": dict(reply.data)},
                      separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def reply_from_record(text: str) -> Reply:
    d = json.loads(text)
    return Reply(d["id"], d["unit"], d["cmd"], int(d["code"]), d["reason"], _frozen(d["data"]))


# --- admission --------------------------------------------------------------------------

def _uuid(value: object) -> str | None:
    """``value`` if it is a UUID in its canonical lower-case text, else None."""
    if not isinstance(value, str) or len(value) != 36:
        return None
    try:
        return value if str(uuid.UUID(value)) == value else None
    except ValueError:
        return None


def _peek_id(token: bytes) -> str | None:
    """The request id of an unverified token, only to route its error reply (a UUID or None)."""
    try:
        parts = token.split(b".")
        if len(parts) != 3 or len(parts[1]) > 4 * MAX_BYTES:
            return None
        body = parts[1] + b"=" * (-len(parts[1]) % 4)
        payload = json.loads(base64.urlsafe_b64decode(body))
        return _uuid(payload.get("id")) if isinstance(payload, dict) else None
    except (ValueError, TypeError, RecursionError, AttributeError):
        return None


def admit(name: str, token: bytes, *, unit: str, keys: Keyring, known: Collection[str],
          now: float, seen: Callable[[str], Seen | None],
          limits: Limits = Limits()) -> Command | Reply:
    """Admit the message ``token`` published on ``<prefix>/<unit>/cmd/<name>``.

    ``seen(id)`` looks the request id up in the persisted table (a read, no change).
    A :class:`Reply` returned is sent as it is and nothing is run nor stored.
    """
    shown = name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS] + "…"
    reply_to: str | None = None  # once the payload is verified: its fallback topic

    def no(code: Code, reason: str, rid: str | None = None) -> Reply:
        return Reply(rid, unit, shown, int(code), reason, reply_to=reply_to)

    if len(token) > limits.max_bytes:
        return no(Code.BAD_REQUEST, f"too large: over {limits.max_bytes} bytes")
    try:
        verified = verify(token, keys, TYP_COMMAND)
    except SignatureError as e:
        return no(Code.FORBIDDEN, f"signature: {e.reason}", _peek_id(token))
    try:
        env = loads(verified.payload)
    except ValueError as e:
        return no(Code.BAD_REQUEST, f"malformed JSON: {str(e)[:80]}")
    if not isinstance(env, dict):
        return no(Code.BAD_REQUEST, "malformed: payload is not a JSON object")
    rid = _uuid(env.get("id"))  # None until it is one: it names a topic
    unknown = sorted(set(env) - ENVELOPE)
    if unknown:
        return no(Code.BAD_REQUEST, f"unknown field: {unknown[0][:40]}", rid)
    missing = sorted(REQUIRED - set(env))
    if missing:
        return no(Code.BAD_REQUEST, f"missing field: {missing[0]}", rid)
    if rid is None:
        return no(Code.BAD_REQUEST, "id: not a UUID")
    for key in ("unit", "cmd"):
        if not isinstance(env[key], str):
            return no(Code.BAD_REQUEST, f"{key}: not a string", rid)
    if not isinstance(env["args"], dict):
        return no(Code.BAD_REQUEST, "args: not an object", rid)
    if env.get("reply_to") is not None and not isinstance(env["reply_to"], str):
        return no(Code.BAD_REQUEST, "reply_to: not a string", rid)
    reply_to = env.get("reply_to")
    issued, expires = parse_time(env["issued"]), parse_time(env["expires"])
    if issued is None:
        return no(Code.BAD_REQUEST, "issued: not an RFC 3339 UTC time", rid)
    if expires is None:
        return no(Code.BAD_REQUEST, "expires: not an RFC 3339 UTC time", rid)
    if env["unit"] != unit:
        return no(Code.FORBIDDEN, "for another unit", rid)
    if env["cmd"] != name:
        return no(Code.BAD_REQUEST, "cmd differs from the topic", rid)
    if expires <= issued:
        return no(Code.BAD_REQUEST, "expires before issued", rid)
    if expires - issued > limits.max_lifetime_s:
        return no(Code.BAD_REQUEST, f"lifetime over {limits.max_lifetime_s:g} s", rid)
    if issued > now + limits.clock_skew_s:
        return no(Code.FORBIDDEN, "not yet valid", rid)
    if expires < now - limits.clock_skew_s:
        return no(Code.FORBIDDEN, "expired", rid)
    if name not in known:
        return no(Code.NOT_FOUND, "unknown command", rid)
    digest = hashlib.sha256(verified.payload).hexdigest()
    before = seen(rid)
    if before is not None:
        if before.digest != digest:
            return no(Code.CONFLICT, "request id re-used with other content", rid)
        return dataclasses.replace(before.reply, reply_to=reply_to, repeat=True)
    return Command(id=rid, unit=unit, name=name, issued=issued, expires=expires,
                   args=_frozen(env["args"]), reply_to=reply_to, digest=digest,
                   kid=verified.kid)


def dispatch(unit: Unit, cmd: Command, handlers: Mapping[str, Handler]) -> Reply:
    """Run the command's handler; a :class:`CommandError` becomes its error reply.

    Other exceptions propagate: the caller logs them and answers 500.
    """
    handler = handlers.get(cmd.name)
    if handler is None:
        return refuse(cmd, Code.NOT_FOUND, "unknown command")
    try:
        return handler(unit, cmd)
    except CommandError as e:
        return refuse(cmd, e.code, e.reason)
