"""The edge decision engine: a pure function of (state, reading, time).

``Engine.step(state, reading, now) -> (state, events)`` and
``Engine.tick(state, now) -> (state, events)`` (time-driven decisions such as
absence timeouts) do no I/O and read no clock, so a recorded field log
replays to the same events every time. State is a plain dataclass the
caller owns; the engine may update it in place for speed and returns it.
Readings reach the engine only for enrolled tags (the pipeline filters and
counts the rest).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import Config, TagConfig
from gateway.engine import gate
from gateway.model import Event, Reading, TagRead


@dataclass(frozen=True, slots=True)
class EngineConfig:
    reader_roles: dict[str, str]
    tags: dict[str, TagConfig]
    gate_window_s: float = 3.0

    @classmethod
    def from_config(cls, cfg: Config) -> EngineConfig:
        return cls(
            reader_roles={r.id: r.role for r in cfg.readers},
            tags=cfg.tag_map(),
            gate_window_s=cfg.gate.repeat_window_s,
        )


@dataclass(slots=True)
class EngineState:
    gate: gate.GateState = field(default_factory=gate.GateState)


class Engine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg

    def initial_state(self) -> EngineState:
        return EngineState()

    def step(self, state: EngineState, reading: Reading, now: float) -> tuple[EngineState,
                                                                               list[Event]]:
        if isinstance(reading, TagRead):
            tag = self.cfg.tags.get(reading.tag)
            role = self.cfg.reader_roles.get(reading.reader)
            if tag is not None and role is not None and role.startswith("gate"):
                return state, gate.step(state.gate, reading, tag, self.cfg.gate_window_s)
        return state, []

    def tick(self, state: EngineState, now: float) -> tuple[EngineState, list[Event]]:
        gate.expire(state.gate, now, self.cfg.gate_window_s)
        return state, []
