"""Gaps in a unit's seqs, explained or not, without I/O.

A unit numbers its events 1, 2, 3, ... and never reuses a number (docs/mqtt.md). A seq
the backend has not stored is either still on its way (a backlog draining, a lane behind
another), or lost: then the unit said so, in a ``buffer_drop`` event (dropped from a
full buffer) or a ``buffer_salvage`` event (lost with a damaged buffer file), whose
``ranges`` the backend keeps in ``seq_losses``. :func:`classify` splits every gap (from
the ``seq_gaps`` view) into the parts those ranges cover (explained) and the rest
(unexplained: on its way, or lost without notice, which would be a bug worth an alarm).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Gap:
    unit: str
    from_seq: int
    to_seq: int
    explained_by: str | None  # "buffer_drop" / "buffer_salvage", or None: unexplained

    @property
    def count(self) -> int:
        return self.to_seq - self.from_seq + 1


def classify(gaps: Iterable[tuple[str, int, int]],
             losses: Iterable[tuple[str, int, int, str]]) -> list[Gap]:
    """Each gap (unit, from, to) split at the loss ranges (unit, from, to, source) into
    explained and unexplained parts, in unit and seq order."""
    by_unit: dict[str, list[tuple[int, int, str]]] = {}
    for unit, lo, hi, source in losses:
        by_unit.setdefault(unit, []).append((lo, hi, source))
    for ranges in by_unit.values():
        ranges.sort()
    out: list[Gap] = []
    for unit, lo, hi in sorted(gaps):
        at = lo
        for rlo, rhi, source in by_unit.get(unit, ()):
            if rhi < at or rlo > hi:
                continue
            if rlo > at:
                out.append(Gap(unit, at, rlo - 1, None))
            end = min(rhi, hi)
            if out and out[-1].unit == unit and out[-1].explained_by == source \
                    and out[-1].to_seq + 1 >= max(at, rlo):
                prev = out.pop()
                out.append(Gap(unit, prev.from_seq, end, source))
            else:
                out.append(Gap(unit, max(at, rlo), end, source))
            at = end + 1
            if at > hi:
                break
        if at <= hi:
            out.append(Gap(unit, at, hi, None))
    return out


@dataclass(frozen=True, slots=True)
class Summary:
    unit: str
    gaps: int
    explained_seqs: int
    unexplained_seqs: int
    unexplained: tuple[tuple[int, int], ...]  # the first few unexplained ranges


def summarise(gaps: list[Gap], show: int = 5) -> list[Summary]:
    units: dict[str, list[Gap]] = {}
    for g in gaps:
        units.setdefault(g.unit, []).append(g)
    out = []
    for unit, gs in sorted(units.items()):
        bad = [g for g in gs if g.explained_by is None]
        out.append(Summary(unit, len(gs), sum(g.count for g in gs if g.explained_by),
                           sum(g.count for g in bad),
                           tuple((g.from_seq, g.to_seq) for g in bad[:show])))
    return out
