"""The one interface every reader driver implements."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

from gateway.model import ReaderState, Reading

if TYPE_CHECKING:
    from gateway.clock import Clock
    from gateway.config import ReaderConfig


class Sink(Protocol):
    """Where a driver reports to; the pipeline implements it. Must be thread-safe."""

    def reading(self, reading: Reading) -> None: ...

    def reject(self, reader: str, reason: str) -> None: ...

    def state(self, reader: str, state: ReaderState, detail: str = "") -> None: ...


class Driver(ABC):
    """Runs in its own thread; never raises out of :meth:`run` for device trouble."""

    def __init__(self, cfg: ReaderConfig, sink: Sink, clock: Clock) -> None:
        self.cfg = cfg
        self.sink = sink
        self.clock = clock
        self._reported: tuple[ReaderState, str] | None = None

    def _report(self, state: ReaderState, detail: str = "") -> None:
        """Tell the pipeline the reader's state, once per change (watchdogs call it often)."""
        if self._reported != (state, detail):
            self._reported = (state, detail)
            self.sink.state(self.cfg.id, state, detail)

    @classmethod
    def check_options(cls, cfg: ReaderConfig) -> list[tuple[str, str]]:
        """(key, message) for each problem in this reader's config section."""
        return []

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Read until ``stop`` is set, reconnecting by itself."""
