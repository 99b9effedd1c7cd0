"""Back-off shared by every driver, the publisher and the daemon's workers (tenacity).

Exponential with jitter and a cap, interrupted at once by the stop event, and
timed by the injected clock (tests move a FakeClock instead of sleeping).

* :func:`retrying`: retry an operation (opening a port, connecting) until it
  succeeds, logging each failure with its reason and the delay before the next
  attempt; failures repeating the same reason faster than one per ``LOG_EVERY_S``
  are counted into the next line instead.
* :class:`Restarts`: run something that should run forever (a worker, a scan
  session) and start it again after each failure; once a run is healthy, the
  next failure waits the initial delay again.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    AttemptManager,
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    wait_exponential_jitter,
)

from gateway.clock import Clock, SystemClock
from gateway.logs import clip

Errors = type[BaseException] | tuple[type[BaseException], ...]


LOG_EVERY_S = 10.0  # the same failure again sooner than this is counted, not logged

# A lost MQTT connection is tried again after 1-1.5 s, not at once: a CONNECT that reaches a
# surviving RabbitMQ 3.10 node about 0.2-0.8 s after another node of its cluster died is
# never read (docs/fleet.md, "A CONNECT never answered"), and costs a CONNACK timeout; the
# jitter spreads a fleet's reconnects. A broker that merely restarted costs ~1 s more.
RECONNECT_AFTER_LOSS_S = 1.0
RECONNECT_JITTER_S = 0.5


def after_loss(rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait after a lost connection before its first reconnect."""
    return RECONNECT_AFTER_LOSS_S + rand() * RECONNECT_JITTER_S


def doubling(attempt: int, first: float, cap: float) -> float:
    """``first`` at attempt 0, twice as long at each next one, at most ``cap``.

    The publisher's wait for a CONNACK: a CONNECT that a broker never answers (RabbitMQ
    3.10 right after a node of its cluster died, docs/fleet.md) costs ``first``, not the
    whole ``cap``, while a broker that is only slow still gets ``cap`` on a later try.
    """
    return min(cap, first * 2.0 ** max(0, attempt))


class FailureLog:
    """Logs a failure with its reason and the delay before the next try, one line each;
    the same reason again sooner than ``LOG_EVERY_S`` is counted into the next line."""

    def __init__(self, log: logging.Logger, what: str, clock: Clock) -> None:
        self.log, self.what, self.clock = log, what, clock
        self._at = 0.0
        self._reason = ""
        self._quiet = 0  # failures since the last line

    def __call__(self, reason: str, attempt: int, next_s: float | None) -> None:
        reason = clip(reason, 300)
        now = self.clock.monotonic()
        if attempt == 1 or reason != self._reason or now - self._at >= LOG_EVERY_S:
            more = f" ({self._quiet} more failures since the last line)" if self._quiet else ""
            nxt = f", next in {next_s:.1f} s" if next_s is not None else ""
            self.log.warning("%s failed (%s); retrying with back-off, attempt %d%s%s",
                             self.what, reason, attempt, nxt, more)
            self._at, self._reason, self._quiet = now, reason, 0
        else:
            self._quiet += 1


def retrying(stop: threading.Event, log: logging.Logger, what: str, initial: float = 0.5,
             cap: float = 30.0, clock: Clock | None = None) -> Retrying:
    """Retry on OSError until success or ``stop``; re-raises the last error if stopped."""
    clock = clock or SystemClock()
    note = FailureLog(log, what, clock)

    def before_sleep(rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        note(str(exc), rs.attempt_number, rs.upcoming_sleep)

    def sleep(seconds: float) -> None:
        clock.wait(stop, seconds)

    return Retrying(
        wait=wait_exponential_jitter(multiplier=initial, max=cap, jitter=initial),
        retry=retry_if_exception_type(OSError),
        stop=lambda _rs: stop.is_set(),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )


@dataclass(frozen=True)
class Failure:
    """One failed run, as :class:`Restarts` tells its owner."""

    error: BaseException
    attempt: int  # failures since the last healthy run, 1 for the first
    delay: float | None  # seconds until the next run; None: not restarted (stopping)


class Restarts:
    """Run ``work`` until it returns or ``stop`` is set, starting it again after failures.

    A failure in ``retry_on`` is passed to ``on_failure`` (to log and report it),
    then the next run waits ``initial * 2**n`` (plus up to ``jitter``, capped at
    ``cap``) on ``clock``. :meth:`healthy`, or a run lasting ``healthy_s``, starts
    the count over. Other exceptions propagate.
    """

    def __init__(self, stop: threading.Event, clock: Clock, on_failure: Callable[[Failure], None],
                 *, initial: float, cap: float, jitter: float | None = None,
                 retry_on: Errors = Exception, healthy_s: float | None = None) -> None:
        self.stop = stop
        self.clock = clock
        self.on_failure = on_failure
        self.retry_on = retry_on
        self.healthy_s = healthy_s
        self._wait = wait_exponential_jitter(multiplier=initial, max=cap,
                                             jitter=initial if jitter is None else jitter)
        self._state: RetryCallState | None = None
        self._started = 0.0

    def healthy(self) -> None:
        """The current run reached a good state: its failure will wait ``initial`` again."""
        if self._state is not None:
            self._state.attempt_number = 1  # tenacity computes the next wait from this

    def _before_sleep(self, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        assert exc is not None  # tenacity sleeps only after a failure
        self.on_failure(Failure(exc, rs.attempt_number, rs.upcoming_sleep))

    def _stopping(self, _rs: RetryCallState) -> bool:
        return self.stop.is_set()

    def _sleep(self, seconds: float) -> None:
        self.clock.wait(self.stop, seconds)

    async def _sleep_async(self, seconds: float) -> None:
        await self.clock.wait_async(self.stop, seconds)

    def _begin(self, attempt: AttemptManager) -> None:
        self._state = attempt.retry_state
        self._started = self.clock.monotonic()

    def _end(self) -> None:
        if self.healthy_s is not None and self.clock.monotonic() - self._started >= self.healthy_s:
            self.healthy()

    def _failed_while_stopping(self, e: BaseException) -> None:
        """tenacity re-raised because ``stop`` is set: tell, do not restart, do not raise."""
        if not self.stop.is_set():
            raise e
        self.on_failure(Failure(e, self._state.attempt_number if self._state else 1, None))

    def run(self, work: Callable[[], None]) -> None:
        retry = Retrying(wait=self._wait, retry=retry_if_exception_type(self.retry_on),
                         stop=self._stopping, sleep=self._sleep, before_sleep=self._before_sleep,
                         reraise=True)
        try:
            for attempt in retry:
                with attempt:
                    self._begin(attempt)
                    try:
                        work()
                    finally:
                        self._end()
        except self.retry_on as e:
            self._failed_while_stopping(e)

    async def run_async(self, work: Callable[[], Awaitable[None]]) -> None:
        retry = AsyncRetrying(wait=self._wait, retry=retry_if_exception_type(self.retry_on),
                              stop=self._stopping, sleep=self._sleep_async,
                              before_sleep=self._before_sleep, reraise=True)
        try:
            async for attempt in retry:
                with attempt:
                    self._begin(attempt)
                    try:
                        await work()
                    finally:
                        self._end()
        except self.retry_on as e:
            self._failed_while_stopping(e)

