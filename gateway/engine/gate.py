"""Gate passages from RFID reads.

A reader repeats its frame while a card is held, and a child may linger at
the gate: reads of one tag at one reader closer together than the repeat
window are one presentation, so one event. The window slides with each read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import TagConfig
from gateway.model import Event, Lane, TagRead


@dataclass(slots=True)
class GateState:
    last_read: dict[tuple[str, str], float] = field(default_factory=dict)


def step(state: GateState, read: TagRead, tag: TagConfig, window_s: float) -> list[Event]:
    key = (read.reader, read.tag)
    last = state.last_read.get(key)
    state.last_read[key] = read.time if last is None else max(last, read.time)
    if last is not None and read.time - last <= window_s:
        return []
    return [Event(kind="gate", time=read.time, lane=Lane.ROUTINE, reader=read.reader,
                  child=tag.child, data={"direction": None})]


def expire(state: GateState, now: float, window_s: float) -> None:
    """Forget presentations that are over, so memory stays flat."""
    old = [k for k, t in state.last_read.items() if now - t > window_s]
    for k in old:
        del state.last_read[k]
