"""Time, injected. Only the edge of the program reads the real clock."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """UTC wall time, seconds since the epoch (timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go backwards (intervals, timeouts)."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock tests and replays move by hand."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._t = start
        self._m = 0.0

    def now(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return self._m

    def advance(self, seconds: float) -> None:
        self._t += seconds
        self._m += seconds

    def set(self, t: float) -> None:
        self._m += max(0.0, t - self._t)
        self._t = t
