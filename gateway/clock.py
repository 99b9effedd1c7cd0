"""Time, injected. Only the edge of the program reads the real clock.

Everything that waits for time to pass (watchdogs, reply timeouts, back-off)
asks the clock, so tests move a :class:`FakeClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """UTC wall time, seconds since the epoch (timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds that never go backwards (intervals, timeouts)."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait until ``event`` is set or ``seconds`` pass on this clock; True if it is set."""
        ...

    async def wait_async(self, event: threading.Event, seconds: float) -> bool:
        """:meth:`wait` for a coroutine: the same, without blocking its event loop."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))

    async def wait_async(self, event: threading.Event, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not event.is_set() and (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(0.1, left))  # a threading.Event cannot be awaited
        return event.is_set()


class FakeClock:
    """A clock tests and replays move by hand. Thread-safe.

    :meth:`wait` returns once another thread has advanced the clock far enough
    (a driver thread waits, the test moves time). With ``autoadvance`` a wait
    moves the clock itself and returns at once: for single-threaded tests, where
    nobody else would move it.
    """

    POLL_S = 0.01  # how often a waiter looks at its event (setting it does not wake us)

    def __init__(self, start: float = 1_700_000_000.0, *, autoadvance: bool = False) -> None:
        self._t = start
        self._m = 0.0
        self.autoadvance = autoadvance
        self._changed = threading.Condition()

    def now(self) -> float:
        return self._t

    def monotonic(self) -> float:
        return self._m

    def advance(self, seconds: float) -> None:
        with self._changed:
            self._t += seconds
            self._m += seconds
            self._changed.notify_all()

    def set(self, t: float) -> None:
        with self._changed:
            self._m += max(0.0, t - self._t)
            self._t = t
            self._changed.notify_all()

    def step_wall(self, delta_s: float) -> None:
        """Step the wall clock (NTP, a GPS correction); monotonic time does not move."""
        with self._changed:
            self._t += delta_s
            self._changed.notify_all()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        if self.autoadvance:
            if not event.is_set():
                self.advance(max(0.0, seconds))
            return event.is_set()
        with self._changed:
            deadline = self._m + seconds
            while not event.is_set() and self._m < deadline:
                self._changed.wait(self.POLL_S)
        return event.is_set()

    async def wait_async(self, event: threading.Event, seconds: float) -> bool:
        if self.autoadvance:
            return self.wait(event, seconds)
        deadline = self._m + seconds
        while not event.is_set() and self._m < deadline:
            await asyncio.sleep(self.POLL_S)
        return event.is_set()


class ShiftedClock:
    """``clock`` with its monotonic time moved by ``shift`` seconds (wall time and waits
    unchanged): the daemon continues engine time across a restart with it."""

    def __init__(self, clock: Clock, shift: float) -> None:
        self.clock = clock
        self.shift = shift

    def now(self) -> float:
        return self.clock.now()

    def monotonic(self) -> float:
        return self.clock.monotonic() + self.shift

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return self.clock.wait(event, seconds)

    async def wait_async(self, event: threading.Event, seconds: float) -> bool:
        return await self.clock.wait_async(event, seconds)
