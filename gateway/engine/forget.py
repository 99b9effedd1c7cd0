"""Forgetting: every trace of tags (and children) the engine no longer may or need to
keep, in place. Used when tags are unenrolled (consent withdrawn), when a child is
erased, and by the retention job for tags unseen for longer than retention allows
(docs/privacy.md)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from gateway.engine.state import EngineState
from gateway.model import TagConfig

CHILD_KEYED = ("arrived", "passed", "gate_sides")  # child -> ...


def forget(state: EngineState, tags: Collection[str], children: Collection[str] = ()) -> int:
    """Remove every entry of ``tags`` and the child-keyed entries of ``children`` from
    ``state``; returns how many entries went."""
    n = 0
    if tags:
        for part in (state.seen, state.last_zone, state.sos, state.battery):
            for tid in tags:
                if part.pop(tid, None) is not None:
                    n += 1
        for inner in (state.rssi, state.zones, state.passages):
            for entries in inner.values():
                for tid in tags:
                    if entries.pop(tid, None) is not None:
                        n += 1
    for child_part in (state.arrived, state.passed, state.gate_sides):
        for child in children:
            if child_part.pop(child, None) is not None:
                n += 1
    return n


def tags_of(children: Collection[str], tags: Mapping[str, TagConfig]) -> set[str]:
    want = set(children)
    return {tid for tid, t in tags.items() if t.child in want}


def stale(state: EngineState, before: float) -> set[str]:
    """Tags last seen before engine time ``before`` (retention), and tags with entries but
    no sighting at all."""
    old = {tid for tid, s in state.seen.items() if s.time < before}
    for part in (state.last_zone, state.sos, state.battery):
        old.update(tid for tid in part if tid not in state.seen)
    for inner in (state.rssi, state.zones, state.passages):
        for entries in inner.values():
            old.update(tid for tid in entries if tid not in state.seen)
    return old


def orphan_children(state: EngineState, tags: Mapping[str, TagConfig]) -> set[str]:
    """Children with child-keyed entries but no enrolled tag, or none seen any more."""
    seen_children = {tags[tid].child for tid in state.seen if tid in tags}
    keyed = set(state.arrived) | set(state.passed) | set(state.gate_sides)
    return keyed - seen_children
