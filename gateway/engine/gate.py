"""Gate passages from RFID reads, with direction where the gate has two sides.

A reader repeats its frame while a card is in the field, and a child may
linger: reads of one tag at one gate are one *presentation* until the gate
has not read it for a while. A single-antenna gate reports the passage at
the first read (no direction to wait for). A two-sided gate (a gate_outer
and a gate_inner reader, or one UHF reader with outer/inner antennas) decides
when the presentation ends (docs/zones.md, "Gates"):

- each side's reads are summed with a weight: the received power (10^(dBm/10),
  so a -75 dBm reflection weighs 1/300 of a -50 dBm read near the antenna) or,
  without RSSI, the side's read rate (isolated stray reads weigh little);
- the weighted mean read time of each side is when the child was nearest to
  that antenna: outer before inner is an arrival;
- a side whose strongest read is FAINT_DB below the typical peak of passages
  at that side (learnt from this gate's passages; until then, below the other
  side's) never had the child pass it: reflections off a child lingering on
  the other side, a turn-back or a revisit from the far side, no crossing;
- without a crossing on both sides, the child's known side (where its last
  passage today went; outside before the first one) says whether it crossed:
  reads only on the other side mean it did (the near antenna missed), and the
  direction is marked ``direction_inferred``; reads on its own side only are a
  turn-back or a passage whose far antenna missed: no event (a null-direction
  one before its first passage of the day), remembered until a presentation on
  the far side shows it was a passage.

The event time is the estimated crossing: halfway between the last read near
the first side's antenna and the first read near the second side's.
A presentation seen on one side only waits ``gate_pair_s`` for the other side
(children dawdle between antennas); one seen on both sides ends after the
repeat window.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.engine.runtime import GateSide, Runtime
from gateway.engine.state import EngineState, KnownSide, Passage, SideReads
from gateway.model import Event, Lane, TagRead

# A read within this many dB of its side's strongest read is "near the antenna".
NEAR_DB = 10.0
# A side whose strongest read is this much weaker than the side's typical passage (or,
# until that is learnt, than the other side) was never passed: reflections off a child
# lingering on the other side, or the edge of its field.
FAINT_DB = 10.0
# Reads at this rate (reads/s, decaying over RATE_TAU_S) are near the antenna; isolated
# reads are strays (and the only sign of one without RSSI).
DENSE_RATE = 1.5
RATE_TAU_S = 1.0
# Weight of one passage in the learnt typical peak RSSI of a gate side.
PEAK_ALPHA = 0.1


def on_read(state: EngineState, runtime: Runtime, gate_side: GateSide, read: TagRead,
            t: float, events: list[Event]) -> None:
    side = gate_side.side
    if gate_side.antennas is not None:
        side = gate_side.antennas.get(read.antenna) if read.antenna is not None else None
        if side is None:
            return  # an antenna without a role: no evidence of direction
    gate = gate_side.gate
    tags = state.passages.get(gate)
    if tags is None:
        tags = state.passages[gate] = {}
    passage = tags.get(read.tag)
    if side is None:  # single antenna: report at once, swallow the repeats
        if passage is not None and t - passage.last_time <= runtime.cfg.gate_window_s:
            if t > passage.last_time:
                passage.last_time = t
            return
        passage = tags[read.tag] = Passage(t)
        passage.emitted = True
        passage.outer.reader = read.reader
        _emit(state, runtime, gate, read.tag, None, t, read.reader, 1, events)
        return
    if passage is not None and t - passage.last_time > _silence(runtime, passage):
        _close(state, runtime, gate, read.tag, passage, events)
        passage = None
    if passage is None:
        passage = tags[read.tag] = Passage(t)
    _add(passage.outer if side == "outer" else passage.inner, t, t - passage.start, read.rssi,
         read.reader)
    if t > passage.last_time:
        passage.last_time = t


def _add(side: SideReads, t: float, offset: float, rssi: float | None, reader: str) -> None:
    if side.reads:
        gap = t - side.previous
        rate = 1.0 + side.rate * math.exp(-gap / RATE_TAU_S) if gap > 0 else side.rate + 1.0
    else:
        side.reader = reader
        rate = 1.0
    side.reads += 1
    side.rate = rate
    if t > side.previous:
        side.previous = t
    if rssi is None:
        strength = weight = rate
        near = rate >= DENSE_RATE
        first = near and side.first_strength == -math.inf
    else:
        side.has_rssi = True
        strength = rssi
        weight = 10.0 ** (rssi / 10.0)
        floor = max(side.peak, strength) - NEAR_DB
        near = strength >= floor and rate >= DENSE_RATE
        # The first near read, moved on when a much stronger read shows it was not near.
        first = near and side.first_strength < floor
    if strength > side.peak:
        side.peak = strength
    if first:
        side.first_strong, side.first_strength = t, strength
    if near or side.first_strength == -math.inf:  # no near read yet: any read
        if side.reads == 1 and not near:
            side.first_strong = t
        if t > side.last_strong:
            side.last_strong = t
    side.weight += weight
    side.weighted_offset += weight * offset


def _silence(runtime: Runtime, passage: Passage) -> float:
    """How long a presentation stays open without reads."""
    # A single-antenna presentation (already emitted), or one seen on both sides.
    if passage.emitted or (passage.outer.reads and passage.inner.reads):
        return runtime.cfg.gate_window_s
    return max(runtime.settings.gate_pair_s, runtime.cfg.gate_window_s)


def _faint(side: SideReads, other: SideReads, typical: float | None) -> bool:
    """``side`` never had the tag near its antenna: weaker than the side's typical
    passage by FAINT_DB, or until that is learnt, than ``other``. (The typical peak is
    the better yardstick: a child lingering at one antenna raises that side's peak.)"""
    if not side.reads:
        return True
    if not side.has_rssi:
        return False
    if typical is not None:
        return side.peak < typical - FAINT_DB
    return other.has_rssi and side.peak < other.peak - FAINT_DB


def _learn(state: EngineState, gate: str, outer: SideReads, inner: SideReads) -> None:
    """Move the gate's typical peaks towards those of a passage read on both sides."""
    if not (outer.has_rssi and inner.has_rssi):
        return
    peaks = state.gate_peaks.get(gate)
    if peaks is None:
        state.gate_peaks[gate] = {"outer": outer.peak, "inner": inner.peak}
        return
    for name, side in (("outer", outer), ("inner", inner)):
        peaks[name] += PEAK_ALPHA * (side.peak - peaks[name])


def _close(state: EngineState, runtime: Runtime, gate: str, tag: str, passage: Passage,
           events: list[Event]) -> None:
    if passage.emitted:
        return
    passage.emitted = True
    outer, inner = passage.outer, passage.inner
    reads = outer.reads + inner.reads
    peaks = state.gate_peaks.get(gate, {})
    has_outer = not _faint(outer, inner, peaks.get("outer"))
    has_inner = not _faint(inner, outer, peaks.get("inner"))
    if not (has_outer or has_inner):
        return  # read only at the edges of the fields: it never came near the gate
    child = runtime.tags[tag].child
    if has_outer and has_inner:
        # Weighted mean read time inside minus outside: positive is an arrival.
        lag = inner.weighted_offset / inner.weight - outer.weighted_offset / outer.weight
        if lag:
            _learn(state, gate, outer, inner)
            arrival = lag > 0
            first, second = (outer, inner) if arrival else (inner, outer)
            t = _crossing(passage, first, second)
            known = _known(state, runtime, child, t)
            origin = "outer" if arrival else "inner"
            if known is not None and known.side != origin and known.pending is not None:
                _catch_up(state, runtime, gate, tag, known, origin, events)
            _emit(state, runtime, gate, tag, "arrival" if arrival else "departure", t,
                  second.reader, reads, events, inferred=False)
            return
        has_inner = inner.weight > outer.weight  # no lag at all: where it stayed
        has_outer = not has_inner
    near_side = "outer" if has_outer else "inner"
    near = outer if has_outer else inner
    t = near.first_strong if near.first_strength != -math.inf else passage.start
    known = _known(state, runtime, child, t)
    known_side = "outer" if known is None else known.side  # outside before the first passage
    if known is not None and near_side != known_side and known.pending is not None:
        # Its last presentation on its own side was a passage whose far antenna missed,
        # and this one is on the far side: a revisit, or the start of its next passage.
        _catch_up(state, runtime, gate, tag, known, near_side, events)
        known_side = near_side
    if near_side != known_side:
        # Only the side it was not on read it near the antenna: it crossed, and the
        # antenna of its own side missed. It entered the near side's field at ``t``.
        _emit(state, runtime, gate, tag, "arrival" if near_side == "inner" else "departure",
              t, near.reader, reads, events, inferred=True)
    elif not (outer.reads and inner.reads):
        # Its own side only: a turn-back, or a passage whose far antenna missed (it
        # would have crossed after the last read near its own antenna). A later
        # presentation on the far side will say it was a passage (_catch_up). Before
        # its first passage of the day its side is only assumed: say it was here.
        if known is None:
            _emit(state, runtime, gate, tag, None, t, near.reader, reads, events,
                  sides=[near_side])
        state.gate_sides[child] = KnownSide(runtime.day(t), known_side, near.last_strong,
                                            near.reader, reads)
    # Else the far side read it faintly or in passing: a turn-back or a revisit.


def _known(state: EngineState, runtime: Runtime, child: str, t: float) -> KnownSide | None:
    """Where the child went at its last passage on the local day of ``t``, if any."""
    known = state.gate_sides.get(child)
    return known if known is not None and known.day == runtime.day(t) else None


def _catch_up(state: EngineState, runtime: Runtime, gate: str, tag: str, known: KnownSide,
              side: str, events: list[Event]) -> None:
    """The passage from ``known.side`` to ``side`` that its pending presentation was."""
    assert known.pending is not None
    _emit(state, runtime, gate, tag, "arrival" if side == "inner" else "departure",
          known.pending, known.pending_reader, known.pending_reads, events, inferred=True)


def _crossing(passage: Passage, first: SideReads, second: SideReads) -> float:
    """The estimated crossing: between the last read near the first side's antenna and
    the first read near the second side's (lingering on either side does not move it)."""
    t = (first.last_strong + second.first_strong) / 2.0
    return min(max(t, passage.start), passage.last_time)


def _emit(state: EngineState, runtime: Runtime, gate: str, tag: str, direction: str | None,
          t: float, reader: str, reads: int, events: list[Event],
          sides: list[str] | None = None, inferred: bool | None = None) -> None:
    child = runtime.tags[tag].child
    day = runtime.day(t)
    first_passage = state.passed.get(child) != day
    if first_passage:
        state.passed[child] = day
    first_arrival = direction == "arrival" and state.arrived.get(child) != day
    if first_arrival:
        state.arrived[child] = day
    data: dict[str, Any] = {"gate": gate, "direction": direction, "day": day,
            "first_arrival_today": first_arrival, "first_passage_today": first_passage,
            "reads": reads}
    if sides is not None:
        data["sides"] = sides
    if inferred is not None:
        data["direction_inferred"] = inferred
    if direction is not None:
        state.gate_sides[child] = KnownSide(day, "inner" if direction == "arrival" else "outer")
    events.append(Event(kind="gate", time=t, lane=Lane.ROUTINE, reader=reader, child=child,
                        data=data))


def expire(state: EngineState, runtime: Runtime, now: float, events: list[Event]) -> None:
    """Close presentations that are over, so memory stays flat."""
    for gate, tags in state.passages.items():
        done = [(tag, passage) for tag, passage in tags.items()
                if now - passage.last_time > _silence(runtime, passage)]
        for tag, passage in done:
            _close(state, runtime, gate, tag, passage, events)
            del tags[tag]
