"""The engine state as it is saved: no tag id in clear (docs/operations.md, "Privacy").

EM4100 card numbers are clonable, and the saved state is a file on an SD card; so
what :func:`~gateway.engine.state.state_to_dict` keys by tag id is re-keyed here, on
the way to disk, by the child the tag is enrolled under: ``<kind>:<index>:<child>``,
where kind is the tag id's scheme (``card`` for plain hex ids: EM4100 and UHF EPC;
``ibeacon``...) and index the tag's place among that child's tags of that kind,
sorted by tag id (0 unless a child has a spare of one kind, which check-config warns
about). The kind never holds a colon and the index is digits, so keys are
unambiguous whatever the child reference holds. At restore the keys are mapped back
through the enrolled tags; entries of a tag or child no longer enrolled are dropped.
Tag ids exist only in memory (the running engine's state) and in the config.

This is a mapping layer around the serialiser (a function pair applied to the
``state_to_dict`` form), so the serialiser can change without this; what it must
know is which parts of that form are keyed by tag id (TAG_KEYED, TAG_KEYED_INNER).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.engine.state import EngineState, state_from_dict, state_to_dict
from gateway.model import TagConfig, canonical_tag_id

SCHEME_KEY = "tag_keys"  # marks a saved state keyed by child reference
SCHEME = "child/1"
TAG_KEYED = ("seen", "last_zone", "sos", "battery")  # tag -> ...
TAG_KEYED_INNER = ("rssi", "zones", "passages")  # reader / zone / gate -> tag -> ...


def tag_kind(tag_id: str) -> str:
    """``card`` for a plain (hex) id, else the id's scheme: ``ibeacon:...`` -> ``ibeacon``."""
    return tag_id.split(":", 1)[0] if ":" in tag_id else "card"


def saved_keys(tags: Mapping[str, TagConfig]) -> dict[str, str]:
    """Tag id -> the key it is saved under (see the module's docstring)."""
    by_child_kind: dict[tuple[str, str], list[str]] = {}
    for tid in sorted(tags):
        by_child_kind.setdefault((tags[tid].child, tag_kind(tid)), []).append(tid)
    return {tid: f"{kind}:{index}:{child}"
            for (child, kind), tids in by_child_kind.items()
            for index, tid in enumerate(tids)}


@dataclass(frozen=True, slots=True)
class Restored:
    """What :func:`reveal` did: ``migrated`` (an old state keyed by tag id) and how many
    entries it ``dropped`` (their tag or child is no longer enrolled)."""

    migrated: bool = False
    dropped: int = 0


def _rekey(entries: Mapping[str, Any], keys: Mapping[str, str]) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    for key, value in entries.items():
        new = keys.get(key)
        if new is not None:
            out[new] = value
    return out, len(entries) - len(out)


def _map(data: Mapping[str, Any], keys: Mapping[str, str]) -> tuple[dict[str, Any], int]:
    out = dict(data)
    dropped = 0
    for name in TAG_KEYED:
        if name in data:
            out[name], n = _rekey(data[name], keys)
            dropped += n
    for name in TAG_KEYED_INNER:
        if name in data:
            inner: dict[str, Any] = {}
            for outer, entries in data[name].items():
                inner[outer], n = _rekey(entries, keys)
                dropped += n
            out[name] = inner
    return out, dropped


def conceal(data: Mapping[str, Any], keys: Mapping[str, str]) -> dict[str, Any]:
    """The ``state_to_dict`` form re-keyed for disk (``keys`` from :func:`saved_keys`).
    A tag without a key (not enrolled: the pipeline never lets one in) is left out
    rather than written in clear."""
    out, _ = _map(data, keys)
    out[SCHEME_KEY] = SCHEME
    return out


def reveal(data: Mapping[str, Any], tags: Mapping[str, TagConfig]
           ) -> tuple[dict[str, Any], Restored]:
    """Inverse of :func:`conceal`, through the tags enrolled now. A state saved before
    (keyed by tag id, no SCHEME_KEY) is migrated: its enrolled tags kept, the rest
    dropped. Raises ValueError for a scheme it does not know."""
    scheme = data.get(SCHEME_KEY)
    if scheme is None:  # keyed by tag id (saved before this layer existed)
        keys = {tid: tid for tid in tags}
        canonical = {name: {canonical_tag_id(k): v for k, v in data[name].items()}
                     for name in TAG_KEYED if name in data}
        canonical.update({name: {outer: {canonical_tag_id(k): v for k, v in entries.items()}
                                 for outer, entries in data[name].items()}
                          for name in TAG_KEYED_INNER if name in data})
        out, dropped = _map({**data, **canonical}, keys)
        return out, Restored(migrated=True, dropped=dropped)
    if scheme != SCHEME:
        raise ValueError(f"saved engine state keyed by {scheme!r}, expected {SCHEME!r}")
    back = {key: tid for tid, key in saved_keys(tags).items()}
    out, dropped = _map(data, back)
    del out[SCHEME_KEY]
    return out, Restored(dropped=dropped)


def dumps(state: EngineState, keys: Mapping[str, str]) -> bytes:
    """The state as saved in the buffer: compact JSON, no tag id in it.

    orjson, not json: the state goes with every commit of events (power cuts must not
    re-decide them), and its thousands of floats made json.dumps the largest cost of the
    pipeline thread at a site (docs/architecture.md, "Cost at a site"); orjson writes the
    same JSON (shortest round-trip floats) about 20 times faster. json.loads reads it
    back. The form is finite by construction (``state_to_dict``: no NaN or infinity,
    which orjson would write as null)."""
    return orjson.dumps(conceal(state_to_dict(state), keys), option=orjson.OPT_NON_STR_KEYS)


def loads(blob: bytes | str, tags: Mapping[str, TagConfig]) -> tuple[EngineState, Restored]:
    """Inverse of :func:`dumps`; raises ValueError, KeyError or TypeError for a state
    that is not usable."""
    data = json.loads(blob)
    if not isinstance(data, dict):
        raise TypeError(f"saved engine state is a {type(data).__name__}, not an object")
    revealed, restored = reveal(data, tags)
    return state_from_dict(revealed), restored
