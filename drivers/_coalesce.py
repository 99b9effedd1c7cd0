"""An asyncio event loop that takes its socket reads in gulps.

At a busy site BlueZ sends one D-Bus message per advert (300 a second and more), and each
one costs a whole turn of the loop: the selector's ``epoll_wait``, asyncio's
``_run_once``, dbus_fast's reader call for one message. Waiting a few milliseconds after
the first message lets the next ones arrive, and dbus_fast reads them all in that one
turn (bench/site_load.py: the BLE thread's share of a core fell by about a third at
20 ms, and by 40 % more at 50 ms, the BLE driver's default; at 5 ms, with about 1.5
adverts per 5 ms, nothing was gained).

The price is latency: a message waits at most ``gulp_s`` before it is handled. An idle
loop costs nothing more (the wait only starts once something is ready), and a loop with
work already queued (``timeout == 0``) never waits.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any


class GulpSelector(selectors.DefaultSelector):
    """The default selector, waiting ``gulp_s`` after the first ready file before it
    collects every ready one."""

    def __init__(self, gulp_s: float) -> None:
        super().__init__()
        self.gulp_s = gulp_s

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready: list[tuple[Any, int]] = super().select(timeout)
        if ready and self.gulp_s > 0 and timeout != 0:
            time.sleep(self.gulp_s)
            ready = super().select(0)
        return ready


def gulping_loop(gulp_s: float) -> asyncio.AbstractEventLoop:
    """A new event loop that reads in gulps of ``gulp_s`` (0: a plain loop)."""
    if gulp_s <= 0:
        return asyncio.new_event_loop()
    return asyncio.SelectorEventLoop(GulpSelector(gulp_s))
