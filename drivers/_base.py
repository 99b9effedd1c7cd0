"""The one interface every reader driver implements.

A driver declares its options once, as ``Options`` (a frozen dataclass built with
:func:`gateway.options.opt`); the config loader validates a reader's table
against it and hands the driver the typed object as ``cfg.options``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar, Generic, Protocol, TypeVar

from gateway.model import ReaderConfig, ReaderState, Reading
from gateway.options import ReaderOptions

if TYPE_CHECKING:
    from gateway.clock import Clock

OptionsT = TypeVar("OptionsT", bound=ReaderOptions)


class Sink(Protocol):
    """Where a driver reports to; the pipeline implements it. Must be thread-safe.

    The pipeline also offers ``reading_batch(readings)`` (several readings as one item of
    its queue) and ``enrolled``; a driver that uses them looks them up and falls back to
    ``reading`` (the BLE driver), so a bare sink (driver tests) needs only these three."""

    def reading(self, reading: Reading) -> None: ...

    def reject(self, reader: str, reason: str) -> None: ...

    def state(self, reader: str, state: ReaderState, detail: str = "") -> None: ...


class Driver(ABC, Generic[OptionsT]):
    """Runs in its own thread; never raises out of :meth:`run` for device trouble."""

    Options: ClassVar[type[ReaderOptions]]  # the declared options (OptionsT), for the loader

    def __init__(self, cfg: ReaderConfig[OptionsT], sink: Sink, clock: Clock) -> None:
        if not isinstance(cfg.options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__name__}, "
                            f"not {type(cfg.options).__name__}")
        self.cfg = cfg
        self.sink = sink
        self.clock = clock
        self._reported: tuple[ReaderState, str] | None = None

    def _report(self, state: ReaderState, detail: str = "") -> None:
        """Tell the pipeline the reader's state, once per change (watchdogs call it often)."""
        if self._reported != (state, detail):
            self._reported = (state, detail)
            self.sink.state(self.cfg.id, state, detail)

    @abstractmethod
    def run(self, stop: threading.Event) -> None:
        """Read until ``stop`` is set, reconnecting by itself."""
