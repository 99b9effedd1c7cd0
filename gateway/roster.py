"""The roster: which tags are enrolled, under which child, in which groups, and the
pseudonym term in force. Pure: parse a change, apply it, checksum the result.

Version 0 is the config's ``[[tags]]``. The backend changes the roster with the
``roster`` command (gateway/commands/roster.py): a batch of enrolments and
unenrolments against an expected version (an optimistic lock); the result gets
the next version. Once the unit holds a roster from the backend (a file beside
the buffer, :class:`RosterFile`), that roster replaces the config's tags: the
backend's enrolment records are the source of consent, the config is only the
starting point (docs/privacy.md, "Enrolment").

The checksum lets the backend check that the unit holds exactly what it thinks:
SHA-256 (hex) of the canonical JSON ``{"tags": [[tag, child, [groups...]], ...],
"term": <term id or null>}``: tags sorted by tag id, groups sorted, compact
separators, UTF-8, no key for the version (docs/privacy.md gives an example).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.durable import write_durably
from gateway.model import TagConfig, canonical_tag_id

MAX_BATCH = 10_000  # enrolments (or unenrolments) in one command
MAX_TAGS = 100_000  # tags in a roster
MAX_GROUPS = 32
MAX_TAG_ID = 128
TERM_KEY_BYTES = 32
MAX_RETIRED_TERMS = 16  # old term keys kept while the buffer may hold events named with them
FILE_FORMAT = 1
_ID_OK = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


class RosterError(Exception):
    """A change that cannot be applied; ``code`` is the command reply's (400, 404, 409)."""

    def __init__(self, code: int, reason: str, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.data: dict[str, Any] = dict(data or {})


@dataclass(frozen=True, slots=True)
class Term:
    """A pseudonym term: its id (carried by every event it names a child in) and its key
    (HMAC-SHA-256, gateway/pseudonym.py). The backend makes and keeps the keys."""

    id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Roster:
    version: int
    tags: tuple[TagConfig, ...]  # sorted by tag id
    term: Term | None = None
    retired: tuple[Term, ...] = ()  # earlier terms, newest first (erase finds their events)

    def tag_map(self) -> dict[str, TagConfig]:
        return {t.id: t for t in self.tags}

    @property
    def children(self) -> frozenset[str]:
        return frozenset(t.child for t in self.tags)

    @property
    def checksum(self) -> str:
        return checksum(self.tags, self.term.id if self.term else None)

    def summary(self) -> dict[str, Any]:
        """What status and replies show (no key, no tag id)."""
        return {"version": self.version, "checksum": self.checksum, "tags": len(self.tags),
                "children": len(self.children),
                "term": self.term.id if self.term else None}


def checksum(tags: Sequence[TagConfig], term: str | None) -> str:
    body = {"tags": [[t.id, t.child, sorted(t.groups)] for t in sorted(tags, key=lambda t: t.id)],
            "term": term}
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def from_config(tags: Sequence[TagConfig]) -> Roster:
    """Version 0: the config's ``[[tags]]``."""
    return Roster(0, tuple(sorted(tags, key=lambda t: t.id)))


# -- the command's arguments ------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Unenrol:
    """One unenrolment: every tag of a child, or one tag (a lost card)."""

    child: str | None = None
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class RosterChange:
    expected_version: int
    enrol: tuple[TagConfig, ...] = ()
    unenrol: tuple[Unenrol, ...] = ()
    term: Term | None = None


def _bad(reason: str) -> RosterError:
    return RosterError(400, reason)


def _obj(v: object, where: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _bad(f"{where}: expected an object")
    unknown = sorted(set(v) - allowed)
    if unknown:
        raise _bad(f"{where}: unknown field {unknown[0]!r}")
    missing = sorted(required - set(v))
    if missing:
        raise _bad(f"{where}: missing field {missing[0]!r}")
    return v


def _int(v: object, where: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(f"{where}: expected an integer from {lo} to {hi}")
    return v


def ident(v: object, where: str) -> str:
    """Child references, groups, term ids: 1-64 of letters, digits, '_', '.', '-'."""
    if (not isinstance(v, str) or not 1 <= len(v) <= 64 or not set(v) <= _ID_OK
            or v[0] in "_.-"):
        raise _bad(f"{where}: expected 1-64 letters, digits, '_', '.', '-'")
    return v


def _tag(v: object, where: str) -> str:
    if (not isinstance(v, str) or not v.strip() or len(v) > MAX_TAG_ID
            or any(c.isspace() or not c.isprintable() or not c.isascii() for c in v)):
        raise _bad(f"{where}: expected a tag id (1-{MAX_TAG_ID} printable characters, "
                   "no spaces)")
    return canonical_tag_id(v)


def _list(v: object, where: str, most: int) -> list[Any]:
    if not isinstance(v, list):
        raise _bad(f"{where}: expected an array")
    if len(v) > most:
        raise _bad(f"{where}: at most {most} items")
    return v


def parse_term(v: object, where: str = "term") -> Term:
    t = _obj(v, where, {"id", "key"}, {"id", "key"})
    key_text = t["key"]
    if not isinstance(key_text, str):
        raise _bad(f"{where}.key: expected base64url text")
    try:
        key = base64.urlsafe_b64decode(key_text + "=" * (-len(key_text) % 4))
    except (binascii.Error, ValueError):
        raise _bad(f"{where}.key: not base64url") from None
    if len(key) != TERM_KEY_BYTES:
        raise _bad(f"{where}.key: expected {TERM_KEY_BYTES} bytes, got {len(key)}")
    return Term(ident(t["id"], f"{where}.id"), key)


def parse_change(args: object) -> RosterChange:
    """The ``roster`` command's args (docs/schemas/commands/roster.schema.json), strictly:
    unknown fields, wrong types, duplicates -> RosterError(400)."""
    a = _obj(args, "args", {"expected_version", "enrol", "unenrol", "term"},
             {"expected_version"})
    version = _int(a["expected_version"], "expected_version", 0, 2**53)
    enrol: list[TagConfig] = []
    seen: set[str] = set()
    for i, e in enumerate(_list(a.get("enrol", []), "enrol", MAX_BATCH)):
        where = f"enrol[{i}]"
        e = _obj(e, where, {"tag", "child", "groups"}, {"tag", "child"})
        tid = _tag(e["tag"], f"{where}.tag")
        if tid in seen:
            raise _bad(f"{where}.tag: tag {tid} is enrolled twice in this batch")
        seen.add(tid)
        groups = [ident(g, f"{where}.groups[{j}]")
                  for j, g in enumerate(_list(e.get("groups", []), f"{where}.groups",
                                              MAX_GROUPS))]
        if len(set(groups)) != len(groups):
            raise _bad(f"{where}.groups: a group is listed twice")
        enrol.append(TagConfig(tid, ident(e["child"], f"{where}.child"), tuple(sorted(groups))))
    unenrol: list[Unenrol] = []
    gone: set[tuple[str, str]] = set()
    for i, u in enumerate(_list(a.get("unenrol", []), "unenrol", MAX_BATCH)):
        where = f"unenrol[{i}]"
        u = _obj(u, where, {"child", "tag"}, set())
        if len(u) != 1:
            raise _bad(f"{where}: expected exactly one of 'child' or 'tag'")
        item = (Unenrol(child=ident(u["child"], f"{where}.child")) if "child" in u
                else Unenrol(tag=_tag(u["tag"], f"{where}.tag")))
        key = ("child", item.child) if item.child else ("tag", item.tag or "")
        if key in gone:
            raise _bad(f"{where}: {key[0]} {key[1]} is unenrolled twice in this batch")
        gone.add(key)
        unenrol.append(item)
    term = parse_term(a["term"]) if "term" in a else None
    if not enrol and not unenrol and term is None:
        raise _bad("args: nothing to change (enrol, unenrol or term)")
    return RosterChange(version, tuple(enrol), tuple(unenrol), term)


# -- applying a change ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Applied:
    """The new roster and what changed (for the reply and the pipeline's switch)."""

    roster: Roster
    added: tuple[str, ...]  # tag ids
    removed: tuple[str, ...]  # tag ids
    removed_children: tuple[str, ...]  # children with no tag left


def apply(roster: Roster, change: RosterChange) -> Applied:
    """Unenrolments first, then enrolments (so one batch can move a card to another child),
    then the term. All or nothing: any problem raises RosterError and ``roster`` stands."""
    if change.expected_version != roster.version:
        raise RosterError(409, f"stale roster version: expected {change.expected_version}, "
                               f"the unit has {roster.version}", roster.summary())
    tags = roster.tag_map()
    removed: list[str] = []
    for i, u in enumerate(change.unenrol):
        if u.tag is not None:
            if u.tag not in tags:
                raise RosterError(404, f"unenrol[{i}]: tag {u.tag} is not enrolled")
            removed.append(u.tag)
            del tags[u.tag]
        else:
            mine = [tid for tid, t in tags.items() if t.child == u.child]
            if not mine:
                raise RosterError(404, f"unenrol[{i}]: child {u.child} is not enrolled")
            for tid in mine:
                del tags[tid]
            removed.extend(mine)
    added: list[str] = []
    for i, t in enumerate(change.enrol):
        if t.id in tags:
            raise RosterError(400, f"enrol[{i}].tag: tag {t.id} is already enrolled (as "
                                   "another entry; unenrol it in the same batch to move it)")
        tags[t.id] = t
        added.append(t.id)
    if len(tags) > MAX_TAGS:
        raise RosterError(400, f"the roster would hold {len(tags)} tags (at most {MAX_TAGS})")
    term, retired = roster.term, roster.retired
    if change.term is not None:
        if roster.term is not None and change.term.id == roster.term.id:
            if change.term.key != roster.term.key:
                raise RosterError(400, f"term {change.term.id} exists with another key")
        elif any(t.id == change.term.id for t in roster.retired):
            raise RosterError(400, f"term {change.term.id} is retired (terms move forward)")
        else:
            retired = ((roster.term,) if roster.term else ()) + roster.retired
            term = change.term
    children_before = roster.children
    new = Roster(roster.version + 1, tuple(sorted(tags.values(), key=lambda t: t.id)), term,
                 retired[:MAX_RETIRED_TERMS])
    return Applied(new, tuple(added), tuple(removed),
                   tuple(sorted(children_before - new.children)))


def drop_retired(roster: Roster, keep: set[str]) -> Roster:
    """The roster without the retired terms not in ``keep`` (no event in the buffer names
    a child with them any more: their keys are not needed to find them)."""
    retired = tuple(t for t in roster.retired if t.id in keep)
    return roster if retired == roster.retired else replace(roster, retired=retired)


# -- on disk ----------------------------------------------------------------------------------

def _b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def dumps(roster: Roster) -> bytes:
    def term(t: Term) -> dict[str, str]:
        return {"id": t.id, "key": _b64(t.key)}

    return json.dumps({
        "format": FILE_FORMAT, "version": roster.version,
        "tags": [{"tag": t.id, "child": t.child, "groups": list(t.groups)} for t in roster.tags],
        "term": term(roster.term) if roster.term else None,
        "retired": [term(t) for t in roster.retired],
    }, separators=(",", ":"), ensure_ascii=False).encode()


def loads(blob: bytes) -> Roster:
    """Inverse of :func:`dumps`; raises ValueError for a file that is not a roster."""
    try:
        d = json.loads(blob)
        if not isinstance(d, dict) or d.get("format") != FILE_FORMAT:
            raise ValueError("not a roster file of format 1")
        version = _int(d["version"], "version", 1, 2**53)
        tags = []
        for i, t in enumerate(d["tags"]):
            tags.append(TagConfig(_tag(t["tag"], f"tags[{i}]"), ident(t["child"], "child"),
                                  tuple(ident(g, "group") for g in t["groups"])))
        term = parse_term(d["term"]) if d["term"] is not None else None
        retired = tuple(parse_term(t, "retired") for t in d["retired"])
    except RosterError as e:
        raise ValueError(e.reason) from None
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"not a roster file: {e}") from None
    return Roster(version, tuple(sorted(tags, key=lambda t: t.id)), term, retired)


class RosterFile:
    """The roster from the backend, beside the buffer (``<buffer>.roster.json``, 0600).

    A file, not a row of the buffer's SQLite DB: it holds tag ids (card numbers) and the
    pseudonym keys, which the buffer is kept free of (a buffer moved aside as corrupt, its
    WAL and its salvage copies hold no card number: engine/persist.py); and it is
    configuration, like the config file, not data the buffer's faults may take along.
    Written temp + fsync + rename + fsync of the folder: after a power cut it is the old
    roster or the new one, never a mix.
    """

    def __init__(self, buffer_path: str) -> None:
        self.path = f"{buffer_path}.roster.json"

    def load(self) -> Roster | None:
        """The saved roster, None if there is none; ValueError if it is damaged."""
        try:
            with open(self.path, "rb") as f:
                return loads(f.read())
        except FileNotFoundError:
            return None

    def save(self, roster: Roster) -> None:
        write_durably(self.path, dumps(roster))


def effective(config_tags: Sequence[TagConfig], saved: Roster | None) -> Roster:
    """The roster in force: the backend's once there is one, else the config's."""
    return saved if saved is not None else from_config(config_tags)
