"""Log lines a technician can follow: bounded, rate-limited with a "suppressed N"
summary; reconnect failures with their reason and next delay; backlog progress; GPS
time trust. The flood and backlog cases run on the real daemon and mosquitto."""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers._gps import GpsTimeGate
from firmware_sim.broker import LocalBroker
from gateway import backoff, logs
from gateway.clock import FakeClock
from gateway.model import Event, Lane
from gateway.outbox import Outbox
from harness import GatewayProcess, Subscriber, wait_until, write_config


class Ticker:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _records(throttle: logs.Throttle) -> tuple[logging.Logger, list[str]]:
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep()
    handler.addFilter(throttle)
    logger = logging.getLogger(f"test.logs.{id(throttle)}")
    logger.propagate = False
    logger.handlers = [handler]
    logger.setLevel(logging.INFO)
    return logger, lines


def test_throttle_limits_each_call_site_and_summarises() -> None:
    tick = Ticker()
    throttle = logs.Throttle(max_chars=100, burst=3, rate=0.5, monotonic=tick)
    logger, lines = _records(throttle)
    for i in range(50):
        logger.warning("command %s received", f"cmd/{i}")
    logger.info("another call site %d", 1)  # its own budget
    assert lines == ["command cmd/0 received", "command cmd/1 received",
                     "command cmd/2 received", "another call site 1"]
    assert throttle.suppressed_total == 47
    # Two seconds later the bucket has one line again; it carries the count.
    tick.t = 2.0
    logger.warning("command %s received", "cmd/x")
    logger.warning("command %s received", "cmd/y")
    assert lines[-1] == "command cmd/x received [47 similar lines suppressed before this one]"
    # A steady flood gets through at the rate, each line with its count.
    for second in range(3, 13):
        tick.t = float(second)
        for i in range(100):
            logger.warning("command %s received", f"cmd/{second}.{i}")
    flood = lines[-5:]
    assert len(lines) == 4 + 1 + 5 and all("similar lines suppressed" in x for x in flood)
    # A flood that stops is summarised by flush() once it has been quiet a while (the
    # daemon's main loop calls it), or at once when the daemon stops.
    assert throttle.pending() == []
    tick.t = 12.0 + logs.QUIET_S
    [(level, template, n)] = throttle.pending()
    assert (level, template) == (logging.WARNING, "command %s received") and n > 0
    assert throttle.pending() == []
    logger.warning("command %s received", "again")
    tick.t += 0.1
    for _ in range(10):
        logger.warning("command %s received", "again")
    assert throttle.pending(final=True)[0][2] > 0


def test_ordinary_lines_pass_untouched() -> None:
    # One line per decided event at a busy gate: well under the rate, nothing suppressed.
    tick = Ticker()
    throttle = logs.Throttle(monotonic=tick)
    logger, lines = _records(throttle)
    for i in range(600):  # ten minutes of one event a second
        tick.t = float(i)
        logger.info("event %s seq=%d child=%s", "gate", i, "c-1")
    assert len(lines) == 600 and throttle.suppressed_total == 0


def test_throttle_bounds_length() -> None:
    throttle = logs.Throttle(max_chars=100, burst=10, rate=1.0, monotonic=Ticker())
    logger, lines = _records(throttle)
    logger.warning("topic %s", "x" * 60_000)
    assert len(lines[0]) < 130 and lines[0].endswith("…(+59906 chars)")


def test_clip_escapes_and_bounds() -> None:
    assert logs.clip("cmd/reboot") == "cmd/reboot"
    assert logs.clip("a\nb\x1b[31m", 80) == "a\\nb\\x1b[31m"
    long = logs.clip("t" * 60_000, 80)
    assert long == "t" * 80 + "…(+59920 chars)"


def test_retrying_logs_each_failure_with_reason_and_next_delay(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(autoadvance=True)
    stop = threading.Event()
    log = logging.getLogger("test.backoff")
    attempts = 0

    def connect() -> None:
        nonlocal attempts
        attempts += 1
        if attempts < 12:
            raise ConnectionRefusedError(111, "Connection refused")

    with caplog.at_level(logging.WARNING, "test.backoff"):
        backoff.retrying(stop, log, "connecting to broker b:1883", 0.5, 30.0, clock)(connect)
    lines = [r.getMessage() for r in caplog.records]
    # 0.5, 1, 2, 4 s ...: the quick first retries are counted into the next line; from
    # the point where retries are 10 s apart, every one has its own line.
    assert lines[0].startswith("connecting to broker b:1883 failed ([Errno 111] Connection "
                               "refused); retrying with back-off, attempt 1, next in ")
    assert all("next in" in line for line in lines)
    assert any("more failures since the last line" in line for line in lines)
    assert 4 <= len(lines) < 11
    assert lines[-1].startswith("connecting to broker b:1883 failed") and "attempt 11" in \
        lines[-1]


def test_backlog_progress_lines(caplog: pytest.LogCaptureFixture) -> None:
    tick = Ticker()
    log = logging.getLogger("test.backlog")
    with caplog.at_level(logging.INFO, "test.backlog"):
        b = logs.Backlog(log, waiting=3000, acked=0, monotonic=tick)
        for sent in range(100, 3001, 100):
            tick.t += 1.0
            b.update(sent, 3000 - sent)
        b.update(3100, 0)  # done already: nothing more
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["backlog: 1000 events sent since connecting, 2000 waiting (100/s)",
                     "backlog: 2000 events sent since connecting, 1000 waiting (100/s)",
                     "backlog sent: 3000 events in 30 s; nothing waiting"]


class _Sink:
    def __init__(self) -> None:
        self.rejects: list[str] = []

    def reject(self, reader: str, reason: str) -> None:
        self.rejects.append(reason)

    def reading(self, r: Any) -> None:
        pass


def test_gps_time_trust_lines(caplog: pytest.LogCaptureFixture) -> None:
    gate = GpsTimeGate("gps1", _Sink())
    now = 1_780_000_000.0

    def fix(offset: float | None, at: float) -> None:
        when = None if offset is None else dt.datetime.fromtimestamp(at + offset, dt.UTC)
        gate.fix(when, at, at, lat=1.0, lon=2.0, fix_quality=1, fix_type=3, satellites=7,
                 hdop=1.0, speed_mps=0.0)

    with caplog.at_level(logging.INFO, "gateway.driver"):
        fix(None, now)  # no time yet
        fix(0.4, now + 1)
        fix(0.5, now + 2)  # still trusted, no step: no line
        fix(30.5, now + 3)  # the receiver (or the unit's clock) stepped 30 s
        fix(-3 * 86400, now + 4)  # 3 days in the past: not trusted
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "reader gps1: GPS time not trusted (no-time)",
        "reader gps1: GPS time trusted (receiver +0.4 s from the unit's clock)",
        "reader gps1: GPS time stepped by +30.0 s against the unit's clock (receiver now "
        "+30.5 s from it)",
        "reader gps1: GPS time not trusted (in-past)",
    ]


def test_command_flood_is_bounded_in_the_daemon_log(tmp_path: Path,
                                                    broker: LocalBroker) -> None:
    buf = tmp_path / "buf.db"
    # A backlog waiting from before: 3,000 events committed while the broker was away.
    ob = Outbox(str(buf), "unit-t1", "test-site")
    t0 = time.time() - 600
    ob.add([Event(kind="gate", time=t0 + i * 0.1, lane=Lane.ROUTINE, reader="gate-main",
                  child="c-1", data={"direction": None}) for i in range(3000)], now=t0)
    ob.close()
    cfg = write_config(tmp_path / "gw.toml", broker_port=broker.port, buffer=buf, readers=[],
                       tags=[{"id": "62E3086CED", "child": "c-1"}])
    sub = Subscriber(broker.port, check_schemas=False).start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    backend = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flooder",
                          protocol=mqtt.MQTTv5)
    try:
        gw.wait_log("3000 events to send")
        gw.wait_log("backlog sent: 3000 events in", timeout=60)
        backend.connect("127.0.0.1", broker.port)
        backend.loop_start()
        long_topic = "kidsafe/v1/unit-t1/cmd/" + "x" * 60_000
        for i in range(5000):
            topic = long_topic if i % 2 else f"kidsafe/v1/unit-t1/cmd/c{i}"
            backend.publish(topic, b"{}", qos=0)
        wait_until(lambda: _commands_seen(sub) >= 5000, 60, "health counting 5000 commands")
    finally:
        backend.loop_stop()
        backend.disconnect()
        gw.stop()
        sub.stop()
    text = gw.log_text()
    lines = text.splitlines()
    command_lines = [line for line in lines if "gateway.commands: command " in line]
    # A burst of 20, then 2 a second while the flood lasts (it takes a few seconds).
    assert 20 <= len(command_lines) <= 60, len(command_lines)
    assert max(len(line) for line in lines) < 1200
    assert "x" * 200 not in text  # the 60,000-character topic is clipped
    assert "…(+" in text
    # The rest is counted: in the lines that got through, and in the summaries.
    counted = sum(int(n) for n in re.findall(r"\[(\d+) similar lines suppressed", text))
    counted += sum(int(n) for n in re.findall(r"suppressed (\d+) more lines like: command",
                                              text))
    assert len(command_lines) + counted == 5000
    assert "Traceback" not in text


def _commands_seen(sub: Subscriber) -> int:
    healths = sub.on("/health")
    return max((h["mqtt"]["commands"] for h in healths), default=0)
