"""Reconnect back-off shared by every driver and the publisher (tenacity).

Exponential with jitter and a cap, interrupted at once by the stop event, and
logging the first failure and every tenth after it rather than each one.
"""

from __future__ import annotations

import logging
import threading

from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter


def retrying(stop: threading.Event, log: logging.Logger, what: str, initial: float = 0.5,
             cap: float = 30.0) -> Retrying:
    """Retry on OSError until success or ``stop``; re-raises the last error if stopped."""

    def before_sleep(rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        if rs.attempt_number == 1 or rs.attempt_number % 10 == 0:
            log.warning("%s failed (%s); retrying with back-off, attempt %d", what, exc,
                        rs.attempt_number)

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    return Retrying(
        wait=wait_exponential_jitter(multiplier=initial, max=cap, jitter=initial),
        retry=retry_if_exception_type(OSError),
        stop=lambda _rs: stop.is_set(),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
