"""Log lines a technician can follow: bounded in length, rate-limited with a summary.

:class:`Throttle` is a logging filter the CLI puts on the daemon's log handler. Each
call site (logger, level, message template) has a token bucket: ``burst`` lines at
once, then ``rate`` lines a second. Lines beyond that are counted, not written; the
next line of that site that gets through says how many were suppressed before it,
and a flood that stops is summarised by :func:`flush` (the daemon's main loop, and
on stop). Every message is cut to ``max_chars`` with the length of what was cut. A
flood of commands on the broker, a reader spewing errors, or a hostile
60,000-character topic cannot fill the journal (or the SD card under it), while the
ordinary lines (one per decided event) pass untouched.

:func:`clip` makes untrusted text (a topic, a device's answer) safe for one log
line: control characters escaped, length bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_CHARS = 1000
BURST = 20
RATE = 2.0  # lines a second per call site, once the burst is spent
QUIET_S = 5.0  # a site suppressed nothing for this long: its count is summarised
MAX_SITES = 2048  # call sites tracked; more (none expected) share one budget


def clip(text: str, limit: int = 120) -> str:
    """``text`` as one bounded, printable line: ``topic/x…(+59880 chars)``."""
    # Escape line breaks, other control characters and lone surrogates; keep other Unicode.
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit + 1])
    if len(text) <= limit and len(safe) <= limit * 4:
        return safe
    return safe[:limit] + f"…(+{len(text) - limit} chars)"


@dataclass(slots=True)
class _Site:
    tokens: float
    at: float  # when tokens was last brought up to date
    suppressed: int = 0
    last_suppressed: float = 0.0


class Throttle(logging.Filter):
    """Length bound and per-call-site rate limit for a handler (see the module doc)."""

    def __init__(self, max_chars: int = MAX_CHARS, burst: int = BURST, rate: float = RATE,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.max_chars = max_chars
        self.burst = burst
        self.rate = rate
        self.monotonic = monotonic
        self._sites: dict[tuple[str, int, str], _Site] = {}
        self._lock = threading.Lock()
        self.suppressed_total = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "throttle_summary", False):
            return True
        key = (record.name, record.levelno, str(record.msg)[:200])
        now = self.monotonic()
        with self._lock:
            site = self._sites.get(key)
            if site is None:
                if len(self._sites) >= MAX_SITES:
                    key = ("*", record.levelno, "*")
                    site = self._sites.setdefault(key, _Site(self.burst, now))
                else:
                    site = self._sites[key] = _Site(self.burst, now)
            site.tokens = min(self.burst, site.tokens + (now - site.at) * self.rate)
            site.at = now
            if site.tokens < 1.0:
                site.suppressed += 1
                site.last_suppressed = now
                self.suppressed_total += 1
                return False
            site.tokens -= 1.0
            note = (f" [{site.suppressed} similar lines suppressed before this one]"
                    if site.suppressed else "")
            site.suppressed = 0
        self._bound(record, note)
        return True

    def _bound(self, record: logging.LogRecord, note: str) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string: let logging report it as it always does
            return
        if len(msg) > self.max_chars:
            msg = msg[:self.max_chars] + f"…(+{len(msg) - self.max_chars} chars)"
        elif not note:
            return
        record.msg, record.args = msg + note, None

    def pending(self, final: bool = False) -> list[tuple[int, str, int]]:
        """Counts of floods that stopped (nothing suppressed for QUIET_S; every count if
        ``final``: the daemon stops): (level, template, n). Each is returned once."""
        now = self.monotonic()
        out = []
        with self._lock:
            for key, site in list(self._sites.items()):
                if site.suppressed and (final or now - site.last_suppressed >= QUIET_S):
                    out.append((key[1], key[2], site.suppressed))
                    site.suppressed = 0
                if not site.suppressed and now - site.at >= self.burst / self.rate:
                    del self._sites[key]  # its bucket is full again: forget it
        return out


_installed: list[Throttle] = []
_log = logging.getLogger("gateway.logs")


def install(handlers: list[logging.Handler] | None = None, *, max_chars: int = MAX_CHARS,
            burst: int = BURST, rate: float = RATE) -> Throttle:
    """Put one Throttle on the root logger's handlers (the CLI's log set-up)."""
    throttle = Throttle(max_chars, burst, rate)
    for h in handlers if handlers is not None else logging.getLogger().handlers:
        h.addFilter(throttle)
    _installed.append(throttle)
    return throttle


def flush(final: bool = False) -> None:
    """Write the "suppressed N" summaries of floods that stopped (the daemon's main loop
    calls this every turn, so a flood that stopped is still reported; ``final`` on stop)."""
    for throttle in _installed:
        for level, template, n in throttle.pending(final):
            _log.log(level, "suppressed %d more lines like: %s", n, clip(template, 200),
                     extra={"throttle_summary": True})


class Backlog:
    """Log lines for a backlog while it drains: progress every ``every_s``, then a line
    when nothing is left (the publisher, after a reconnect with events waiting)."""

    def __init__(self, log: logging.Logger, waiting: int, acked: int,
                 monotonic: Callable[[], float], every_s: float = 10.0) -> None:
        self.log = log
        self.waiting = waiting
        self.acked0 = acked
        self.monotonic = monotonic
        self.every_s = every_s
        self.start = monotonic()
        self.next = self.start + every_s
        self.done = waiting == 0

    def update(self, acked: int, waiting: int) -> None:
        """After acknowledgements: ``acked`` is the publisher's running total."""
        if self.done:
            return
        now = self.monotonic()
        sent = acked - self.acked0
        if waiting == 0:
            self.done = True
            self.log.info("backlog sent: %d events in %.0f s; nothing waiting", sent,
                          now - self.start)
        elif now >= self.next:
            self.next = now + self.every_s
            self.log.info("backlog: %d events sent since connecting, %d waiting (%.0f/s)",
                          sent, waiting, sent / max(now - self.start, 1e-3))
