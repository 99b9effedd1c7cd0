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


def on_read(state: EngineState, rt: Runtime, gs: GateSide, r: TagRead,
            events: list[Event]) -> None:
    side = gs.side
    if gs.antennas is not None:
        side = gs.antennas.get(r.antenna) if r.antenna is not None else None
        if side is None:
            return  # an antenna without a role: no evidence of direction
    t = r.time
    tags = state.passages.get(gs.gate)
    if tags is None:
        tags = state.passages[gs.gate] = {}
    p = tags.get(r.tag)
    if side is None:  # single antenna: report at once, swallow the repeats
        if p is not None and t - p.last_t <= rt.cfg.gate_window_s:
            if t > p.last_t:
                p.last_t = t
            return
        p = tags[r.tag] = Passage(t)
        p.emitted = True
        p.reader_out = r.reader
        _emit(state, rt, gs.gate, r.tag, None, t, r.reader, 1, events)
        return
    if p is not None and t - p.last_t > _silence(rt, p):
        _close(state, rt, gs.gate, r.tag, p, events)
        p = None
    if p is None:
        p = tags[r.tag] = Passage(t)
    dt = t - p.start
    if side == "outer":
        if not p.n_out:
            p.first_out, p.reader_out = t, r.reader
        p.n_out += 1
        p.sum_out += dt
    else:
        if not p.n_in:
            p.first_in, p.reader_in = t, r.reader
        p.n_in += 1
        p.sum_in += dt
    if t > p.last_t:
        p.last_t = t


def _silence(rt: Runtime, p: Passage) -> float:
    """How long a presentation stays open without reads."""
    if p.emitted or (p.n_out and p.n_in):  # single-antenna, or both sides seen
        return rt.cfg.gate_window_s
    return max(rt.s.gate_pair_s, rt.cfg.gate_window_s)


def _close(state: EngineState, rt: Runtime, gate: str, tag: str, p: Passage,
           events: list[Event]) -> None:
    if p.emitted:
        return
    p.emitted = True
    n = p.n_out + p.n_in
    if p.n_out and p.n_in:
        d = p.sum_in / p.n_in - p.sum_out / p.n_out
        if d > 0:
            _emit(state, rt, gate, tag, "arrival", p.first_in, p.reader_in, n, events)
            return
        if d < 0:
            _emit(state, rt, gate, tag, "departure", p.first_out, p.reader_out, n, events)
            return
    side = "outer" if p.n_out else "inner"
    t = p.first_out if p.n_out else p.first_in
    _emit(state, rt, gate, tag, None, t, p.reader_out if p.n_out else p.reader_in, n, events,
          sides=["outer", "inner"] if p.n_out and p.n_in else [side])


def _emit(state: EngineState, rt: Runtime, gate: str, tag: str, direction: str | None,
          t: float, reader: str, reads: int, events: list[Event],
          sides: list[str] | None = None) -> None:
    tc = rt.tags[tag]
    day = rt.day(t)
    first_passage = state.passed.get(tc.child) != day
    if first_passage:
        state.passed[tc.child] = day
    first_arrival = direction == "arrival" and state.arrived.get(tc.child) != day
    if first_arrival:
        state.arrived[tc.child] = day
    data: dict[str, Any] = {"gate": gate, "direction": direction, "day": day,
            "first_arrival_today": first_arrival, "first_passage_today": first_passage,
            "reads": reads}
    if sides is not None:
        data["sides"] = sides
    events.append(Event(kind="gate", time=t, lane=Lane.ROUTINE, reader=reader, child=tc.child,
                        data=data))


def expire(state: EngineState, rt: Runtime, now: float, events: list[Event]) -> None:
    """Close presentations that are over, so memory stays flat."""
    for gate, tags in state.passages.items():
        done = [(tag, p) for tag, p in tags.items() if now - p.last_t > _silence(rt, p)]
        for tag, p in done:
            _close(state, rt, gate, tag, p, events)
            del tags[tag]
