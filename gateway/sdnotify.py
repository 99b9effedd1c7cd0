"""systemd's notify protocol and the workers' heartbeats behind its watchdog.

:func:`notify` is sd_notify(3) written out: one datagram of ``KEY=VALUE`` lines to
the unix socket named by ``NOTIFY_SOCKET`` (a path, or an abstract name written with
a leading ``@``). It is a dozen lines, so it is done here rather than through a
package: the systemd bindings (``systemd-python``) build against libsystemd with a
C compiler, and the small pure-Python wrappers on PyPI add a dependency for the
same socket write. Outside systemd (no ``NOTIFY_SOCKET``) it does nothing.

:class:`Heartbeats` is how the daemon knows each worker still turns: every worker
(each driver, the pipeline, the publisher) gets its own :class:`BeatingClock`, a
wrapper around the injected clock that notes the time whenever the worker reads
the clock or waits on it. Every worker loop already reads its clock each turn (for
its timeouts and watchdogs) and does its long waits (back-off, ``silence_s``) on
it, so a worker that calls neither for longer than the watchdog interval is stuck
in a call that does not return (a blocked write, a device that never answers).
A wait declares a healthy idle: a worker backing off for 30 s is not late until
30 s have passed.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any

from gateway.clock import Clock


def notify(*fields: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) to systemd; False if not under it."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract socket namespace
    elif not addr.startswith("/"):
        return False  # unset, or a transport we do not speak (vsock)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(fields).encode(), addr)
    except OSError:
        return False
    return True


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """``WatchdogSec`` in seconds when systemd expects pings from this process, else None."""
    e = os.environ if env is None else env
    try:
        usec = int(e.get("WATCHDOG_USEC", "0"))
        pid = int(e.get("WATCHDOG_PID", "0"))
    except ValueError:
        return None
    if usec <= 0 or (pid and pid != os.getpid()):
        return None
    return usec / 1e6


class Heartbeats:
    """When each worker last showed a sign of life, on the real monotonic clock.

    Real time on purpose: systemd's watchdog counts real seconds, whatever clock the
    workers are given (tests hand them a FakeClock).
    """

    def __init__(self) -> None:
        # name -> real monotonic time until which the worker is known to be fine. One
        # writer per name, and a dict item assignment is atomic: no lock on this hot path
        # (the publisher and the readers read their clocks many times a second).
        self._until: dict[str, float] = {}

    def beat(self, name: str, idle_s: float = 0.0) -> None:
        """``name`` turned its loop; with ``idle_s``, it now waits that long on purpose.
        A beat never shortens a declared wait (a coroutine of the same worker may run
        while another one waits)."""
        now = time.monotonic()
        until = self._until
        if now + idle_s > until.get(name, 0.0):
            until[name] = now + idle_s

    def woke(self, name: str) -> None:
        """``name``'s wait ended (perhaps early): from now on it must turn again."""
        self._until[name] = time.monotonic()

    def clock(self, name: str, base: Clock) -> BeatingClock:
        """The clock to give worker ``name``; its reads and waits are its heartbeats."""
        self.beat(name)
        return BeatingClock(base, self, name)

    def names(self) -> list[str]:
        return list(self._until)

    def late(self, after_s: float) -> dict[str, float]:
        """Workers silent for more than ``after_s`` past their last beat (or idle), with
        the seconds since."""
        now = time.monotonic()
        return {n: round(now - t, 1) for n, t in dict(self._until).items() if now - t > after_s}


class BeatingClock:
    """A worker's clock: the injected one, noting each read and wait as a heartbeat."""

    def __init__(self, base: Clock, beats: Heartbeats, name: str) -> None:
        self.base = base
        self.beats = beats
        self.name = name

    def now(self) -> float:
        self.beats.beat(self.name)
        return self.base.now()

    def monotonic(self) -> float:
        self.beats.beat(self.name)
        return self.base.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        self.beats.beat(self.name, seconds)
        try:
            return self.base.wait(event, seconds)
        finally:
            self.beats.woke(self.name)

    async def wait_async(self, event: threading.Event, seconds: float) -> bool:
        self.beats.beat(self.name, seconds)
        try:
            return await self.base.wait_async(event, seconds)
        finally:
            self.beats.woke(self.name)

    def __getattr__(self, attr: str) -> Any:
        # Whatever else the wrapped clock offers (a FakeClock's advance, ...).
        return getattr(self.base, attr)


class Watchdog:
    """Tells systemd READY once, then WATCHDOG=1 while every worker is alive and on time.

    ``interval_s`` is systemd's ``WatchdogSec`` (None outside systemd, or without a
    watchdog): pings go out every half of it, and a worker silent for longer than it
    counts as hung, so the unit is restarted within about twice ``WatchdogSec`` of a
    hang. Without a watchdog the same checks still feed STATUS= and the log.
    """

    LATE_DEFAULT_S = 30.0

    def __init__(self, beats: Heartbeats, interval_s: float | None,
                 env: Mapping[str, str] | None = None) -> None:
        self.beats = beats
        self.interval_s = interval_s
        self.late_after_s = interval_s or self.LATE_DEFAULT_S
        self.env = env
        self.ready = False
        self._next_ping = 0.0
        self._status = ""
        self.pings = 0

    @property
    def period_s(self) -> float:
        """How often :meth:`check` should run."""
        return min(1.0, self.interval_s / 2) if self.interval_s else 1.0

    def problems(self, dead: list[str]) -> dict[str, str]:
        """Worker -> what is wrong with it (dead threads, late heartbeats)."""
        out = {n: "thread ended" for n in dead}
        for n, s in self.beats.late(self.late_after_s).items():
            out.setdefault(n, f"no sign of life for {s:.0f} s")
        return out

    def check(self, dead: list[str], status: str) -> dict[str, str]:
        """One turn: READY/WATCHDOG/STATUS as the workers deserve; returns the problems."""
        problems = self.problems(dead)
        fields = []
        if not self.ready:
            self.ready = True
            fields.append("READY=1")
        now = time.monotonic()
        if not problems and self.interval_s and now >= self._next_ping:
            self._next_ping = now + self.interval_s / 2
            fields.append("WATCHDOG=1")
            self.pings += 1
        if problems:
            status = "hung: " + ", ".join(f"{n} ({w})" for n, w in sorted(problems.items()))
        status = f"STATUS={status}"[:400]
        if status != self._status:  # systemd keeps the last one: send changes only
            self._status = status
            fields.append(status)
        if fields:
            notify(*fields, env=self.env)
        return problems

    def stopping(self) -> None:
        notify("STOPPING=1", "STATUS=stopping", env=self.env)
