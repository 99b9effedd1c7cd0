"""`gatewayd run`: wires drivers, pipeline, outbox and publisher, one thread each."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from drivers import registry
from gateway import __version__, backoff
from gateway.clock import Clock, SystemClock
from gateway.config import Config, engine_config
from gateway.contract import iso_utc
from gateway.engine import Engine
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline
from gateway.publisher import Publisher
from gateway.recording import Recorder

log = logging.getLogger("gateway")


class Gateway:
    def __init__(self, cfg: Config, clock: Clock | None = None, record: str | None = None,
                 roll_call: str | None = None) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.started = self.clock.monotonic()
        self.stop = threading.Event()
        self.outbox = Outbox(cfg.buffer.path, cfg.unit.id, cfg.unit.site,
                             max_mb=cfg.buffer.max_mb, max_events=cfg.buffer.max_events,
                             reserve_mb=cfg.buffer.reserve_mb)
        self.engine = Engine(engine_config(cfg))
        self.publisher = Publisher(cfg, self.outbox, self.clock, health=self.health)
        self.recorder = Recorder(record, now=self.clock.now()) if record else None
        self.pipeline = Pipeline(cfg, self.engine, self.outbox, self.clock,
                                 on_committed=self.publisher.notify, record=self.recorder)
        self.pipeline.roll_call(roll_call)
        self.drivers = [registry.driver(r.kind)(r, self.pipeline, self.clock) for r in cfg.readers]
        self.threads: list[threading.Thread] = []

    def health(self) -> dict[str, Any]:
        now = self.clock.now()
        oldest = self.outbox.oldest_created()
        st = self.pipeline.stats()
        return {
            "unit": self.cfg.unit.id,
            "time": iso_utc(now),
            "uptime_s": round(self.clock.monotonic() - self.started, 1),
            "software": __version__,
            "buffer": {
                "depth": self.outbox.depth(),
                "depth_by_lane": self.outbox.depth_by_lane(),
                "oldest_unsent_age_s": round(now - oldest, 1) if oldest else 0.0,
                "last_seq": self.outbox.last_seq(),
                "dropped": self.outbox.drops(),
                # free disk, reserve, WAL, high-water mark, what happened to the file
                **self.outbox.disk(),
                "acks_not_recorded": self.publisher.core.undeleted,
            },
            "readers": st["readers"],
            "counters": st["counters"],
            "mqtt": {"sent": self.publisher.sent, "acked": self.publisher.acked,
                     "refused": self.publisher.refused, "connects": self.publisher.connects,
                     "commands": self.publisher.commands},
        }

    def start(self) -> None:
        def spawn(name: str, target: Any) -> None:
            t = threading.Thread(target=self._supervise, args=(name, target), name=name,
                                 daemon=True)
            t.start()
            self.threads.append(t)

        log.info("gatewayd %s starting: unit %s at %s, %d readers, %d enrolled tags, "
                 "buffer %s (%d events waiting)", __version__, self.cfg.unit.id,
                 self.cfg.unit.site, len(self.cfg.readers), len(self.cfg.tags),
                 self.cfg.buffer.path, self.outbox.depth())
        for r in self.cfg.readers:
            where = f" on {r.options.where()}" if r.options.where() else ""
            log.info("reader %s: %s, role %s%s", r.id, r.kind, r.role, where)
        if self.recorder is not None:
            log.info("recording readings of enrolled tags to %s", self.recorder.path)
        spawn("mqtt", self.publisher.run)
        spawn("pipeline", self.pipeline.run)
        for d in self.drivers:
            spawn(f"reader-{d.cfg.id}", d.run)

    def _supervise(self, name: str, target: Any) -> None:
        """A bug in one worker must not silently end it: log it and start it again."""

        def failed(f: backoff.Failure) -> None:
            if f.delay is None:
                log.error("worker %s failed while stopping", name, exc_info=f.error)
            else:
                log.error("worker %s failed; restarting it in %.0f s", name, f.delay,
                          exc_info=f.error)

        # 1, 2, 4 ... 60 s; a worker that ran for a minute starts over at 1 s.
        backoff.Restarts(self.stop, self.clock, failed, initial=1.0, cap=60.0, jitter=0.0,
                         healthy_s=60.0).run(lambda: target(self.stop))

    def shutdown(self, timeout: float = 5.0) -> None:
        self.stop.set()
        # Wake the workers waiting on their own timeouts (the publisher's select, the
        # pipeline's queue) so they see stop now; each still ends as a clean stop does.
        self.publisher.notify()
        self.pipeline.wake()
        deadline = time.monotonic() + timeout  # real time: this waits on threads, not the clock
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.outbox.close()
        if self.recorder is not None:
            self.recorder.close(self.pipeline.last_tick)
        if self.pipeline.lost:
            log.critical("gatewayd stop was NOT clean: %d decided events lost this run "
                         "(see the errors above)", self.pipeline.lost)
        else:
            log.info("gatewayd stopped")


def run(cfg: Config, record: str | None = None, roll_call: str | None = None) -> int:
    gw = Gateway(cfg, record=record, roll_call=roll_call)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        gw.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gw.start()
    while not gw.stop.wait(1.0):
        pass
    gw.shutdown()
    return 1 if gw.pipeline.lost else 0  # a stop that lost events is never a clean exit
