"""Gate passages from RFID reads, with direction where the gate has two sides.

A reader repeats its frame while a card is in the field, and a child may
linger: reads of one tag at one gate are one *presentation* until the gate
has not read it for a while. A single-antenna gate reports the passage at
the first read (no direction to wait for). A two-sided gate (a gate_outer
and a gate_inner reader, or one UHF reader with outer/inner antennas) decides
when the presentation ends: reads are missed at random and the other antenna
picks up stray reads, so the order of the first reads is not reliable, but
the *mean time* of each side's reads is: outer before inner is an arrival.
A presentation seen on one side only waits ``gate_pair_s`` for the other side
(children dawdle between antennas); one seen on both sides ends after the
repeat window.
"""

from __future__ import annotations

from typing import Any

from gateway.engine.runtime import GateSide, Runtime
from gateway.engine.state import EngineState, Passage
from gateway.model import Event, Lane, TagRead


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
        passage.reader_out = read.reader
        _emit(state, runtime, gate, read.tag, None, t, read.reader, 1, events)
        return
    if passage is not None and t - passage.last_time > _silence(runtime, passage):
        _close(state, runtime, gate, read.tag, passage, events)
        passage = None
    if passage is None:
        passage = tags[read.tag] = Passage(t)
    offset = t - passage.start
    if side == "outer":
        if not passage.reads_out:
            passage.first_out, passage.reader_out = t, read.reader
        passage.reads_out += 1
        passage.offsets_out += offset
    else:
        if not passage.reads_in:
            passage.first_in, passage.reader_in = t, read.reader
        passage.reads_in += 1
        passage.offsets_in += offset
    if t > passage.last_time:
        passage.last_time = t


def _silence(runtime: Runtime, passage: Passage) -> float:
    """How long a presentation stays open without reads."""
    # A single-antenna presentation (already emitted), or one seen on both sides.
    if passage.emitted or (passage.reads_out and passage.reads_in):
        return runtime.cfg.gate_window_s
    return max(runtime.settings.gate_pair_s, runtime.cfg.gate_window_s)


def _close(state: EngineState, runtime: Runtime, gate: str, tag: str, passage: Passage,
           events: list[Event]) -> None:
    if passage.emitted:
        return
    passage.emitted = True
    reads_out, reads_in = passage.reads_out, passage.reads_in
    reads = reads_out + reads_in
    if reads_out and reads_in:
        # Mean read time inside minus mean read time outside: positive is an arrival.
        lag = passage.offsets_in / reads_in - passage.offsets_out / reads_out
        if lag > 0:
            _emit(state, runtime, gate, tag, "arrival", passage.first_in, passage.reader_in, reads,
                  events)
            return
        if lag < 0:
            _emit(state, runtime, gate, tag, "departure", passage.first_out, passage.reader_out,
                  reads, events)
            return
    side = "outer" if reads_out else "inner"
    t = passage.first_out if reads_out else passage.first_in
    reader = passage.reader_out if reads_out else passage.reader_in
    _emit(state, runtime, gate, tag, None, t, reader, reads, events,
          sides=["outer", "inner"] if reads_out and reads_in else [side])


def _emit(state: EngineState, runtime: Runtime, gate: str, tag: str, direction: str | None,
          t: float, reader: str, reads: int, events: list[Event],
          sides: list[str] | None = None) -> None:
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
