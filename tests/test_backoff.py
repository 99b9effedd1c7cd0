"""The one back-off helper and the injected clock's wait, on a FakeClock: no sleeping."""

from __future__ import annotations

import asyncio
import logging
import threading
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway import backoff
from gateway.clock import FakeClock
from gateway.daemon import Gateway
from harness import wait_until


class Work:
    """Fails ``fails`` times (each run lasting ``run_s`` on the clock), then returns."""

    def __init__(self, clock: FakeClock, fails: int, run_s: float = 0.0,
                 error: type[Exception] = OSError) -> None:
        self.clock, self.fails, self.run_s, self.error = clock, fails, run_s, error
        self.runs: list[float] = []  # monotonic start of each run

    def __call__(self) -> None:
        self.runs.append(self.clock.monotonic())
        self.clock.advance(self.run_s)
        if len(self.runs) <= self.fails:
            raise self.error(f"failure {len(self.runs)}")


def gaps(w: Work) -> list[float]:
    """Waits between runs (end of one run to the start of the next)."""
    return [round(b - a - w.run_s, 6) for a, b in zip(w.runs, w.runs[1:], strict=False)]


def test_restarts_back_off_exponentially_up_to_the_cap() -> None:
    clock, stop = FakeClock(autoadvance=True), threading.Event()
    failures: list[backoff.Failure] = []
    w = Work(clock, fails=6)
    backoff.Restarts(stop, clock, failures.append, initial=1.0, cap=8.0, jitter=0.0).run(w)
    assert gaps(w) == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert [f.attempt for f in failures] == [1, 2, 3, 4, 5, 6]
    assert [f.delay for f in failures] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert all(isinstance(f.error, OSError) for f in failures)


def test_a_long_healthy_run_starts_the_back_off_over() -> None:
    clock, stop = FakeClock(autoadvance=True), threading.Event()
    w = Work(clock, fails=4, run_s=60.0)
    backoff.Restarts(stop, clock, lambda f: None, initial=1.0, cap=60.0, jitter=0.0,
                     healthy_s=60.0).run(w)
    assert gaps(w) == [1.0, 1.0, 1.0, 1.0]


def test_jitter_stays_within_its_bound() -> None:
    clock, stop = FakeClock(autoadvance=True), threading.Event()
    w = Work(clock, fails=20)
    backoff.Restarts(stop, clock, lambda f: None, initial=0.5, cap=4.0).run(w)
    assert all(0.5 <= g <= 4.0 for g in gaps(w))
    assert gaps(w)[-1] == 4.0


def test_other_errors_propagate_and_stop_ends_the_restarts() -> None:
    clock, stop = FakeClock(autoadvance=True), threading.Event()
    with pytest.raises(KeyError):
        backoff.Restarts(stop, clock, lambda f: None, initial=1.0, cap=2.0,
                         retry_on=OSError).run(Work(clock, fails=1, error=KeyError))
    failures: list[backoff.Failure] = []

    def fail_and_stop() -> None:
        stop.set()
        raise OSError("while stopping")

    backoff.Restarts(stop, clock, failures.append, initial=1.0, cap=2.0).run(fail_and_stop)
    assert [(str(f.error), f.delay) for f in failures] == [("while stopping", None)]


def test_healthy_resets_the_count_in_the_async_flavour() -> None:
    clock, stop = FakeClock(autoadvance=True), threading.Event()
    failures: list[backoff.Failure] = []
    restarts = backoff.Restarts(stop, clock, failures.append, initial=1.0, cap=30.0,
                                jitter=0.0)
    runs = 0

    async def session() -> None:
        nonlocal runs
        runs += 1
        if runs == 3:
            restarts.healthy()  # this run got going before it failed
        if runs < 5:
            raise OSError("adapter gone")

    start = clock.monotonic()
    asyncio.run(restarts.run_async(session))
    assert [f.attempt for f in failures] == [1, 2, 1, 2]
    assert [f.delay for f in failures] == [1.0, 2.0, 1.0, 2.0]
    assert clock.monotonic() - start >= 6.0  # slept on the clock, not for real


def test_retrying_waits_on_the_injected_clock(caplog: pytest.LogCaptureFixture) -> None:
    clock, stop = FakeClock(autoadvance=True), threading.Event()
    w = Work(clock, fails=12)
    caplog.set_level(logging.WARNING)
    backoff.retrying(stop, logging.getLogger("t"), "opening x", 0.5, 2.0, clock)(w)
    assert len(w.runs) == 13 and clock.monotonic() > 12.0
    # Each failure has a reason of its own here ("failure N"), so each is logged, with the
    # delay before the next attempt (issue 11: not only the first and every tenth).
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split("attempt ")[1].split(",")[0] for line in lines] == [
        str(n) for n in range(1, 13)]
    assert all(", next in " in line for line in lines)


def test_failure_log_counts_a_repeated_reason_into_the_next_line(
        caplog: pytest.LogCaptureFixture) -> None:
    # The BLE scan's restarts log through it too: every failure, not every tenth.
    clock = FakeClock()
    note = backoff.FailureLog(logging.getLogger("t"), "reader ble-1: scanning on hci0", clock)
    caplog.set_level(logging.WARNING)
    note("adapter gone", 1, 0.5)
    for attempt in range(2, 6):
        clock.advance(1.0)
        note("adapter gone", attempt, 1.0)  # same reason within LOG_EVERY_S: counted
    clock.advance(backoff.LOG_EVERY_S)
    note("adapter gone", 6, 2.0)
    note("bus refused", 7, None)  # a new reason is logged at once
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "attempt 1, next in 0.5 s" in lines[0]
    assert "attempt 6, next in 2.0 s (4 more failures since the last line)" in lines[1]
    assert "bus refused" in lines[2] and "next in" not in lines[2]


def test_fake_clock_wait_returns_when_another_thread_moves_time() -> None:
    clock, stop = FakeClock(), threading.Event()
    woke = threading.Event()

    def sleeper() -> None:
        clock.wait(stop, 30.0)
        woke.set()

    t = threading.Thread(target=sleeper, daemon=True)
    t.start()
    clock.advance(29.0)
    assert not woke.wait(0.05)
    clock.advance(1.0)
    wait_until(woke.is_set, 5, "the waiter woke")
    assert not clock.wait(stop, 0.0)
    stop.set()
    assert clock.wait(stop, 1e9)  # a set event returns at once
    t.join(1)


def test_daemon_supervisor_logs_and_restarts_a_failing_worker(
        caplog: pytest.LogCaptureFixture) -> None:
    clock, stop = FakeClock(autoadvance=True), threading.Event()
    gw = cast(Any, SimpleNamespace(stop=stop, clock=clock, clocks={}))
    runs: list[float] = []

    def worker(s: threading.Event) -> None:
        runs.append(clock.monotonic())
        if len(runs) == 3:
            clock.advance(61.0)  # a minute of healthy work before this failure
        if len(runs) < 5:
            raise RuntimeError(f"bug {len(runs)}")

    caplog.set_level(logging.ERROR, logger="gateway")
    Gateway._supervise(gw, "pipeline", worker)
    assert [r.getMessage() for r in caplog.records] == [
        "worker pipeline failed; restarting it in 1 s",
        "worker pipeline failed; restarting it in 2 s",
        "worker pipeline failed; restarting it in 1 s",  # back to 1 s after a healthy minute
        "worker pipeline failed; restarting it in 2 s"]
    assert all(r.exc_info for r in caplog.records)  # with the traceback
    assert len(runs) == 5
