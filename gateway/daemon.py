"""`gatewayd run`: wires drivers, pipeline, outbox and publisher, one thread each.

Engine time is the monotonic clock (gateway/engine/__init__.py). It restarts from
the boot's zero in a new process, so the daemon reads the saved engine state first
and gives everyone a clock whose monotonic time continues from the state's: plus
the downtime the wall clock measured when that is plausible (a wall clock stepped
while the unit was down, or one that is wrong after a boot without an RTC, counts
as no downtime, and the engine reports the step at the first reading). The
engine's silence timers move over the downtime (engine.resume): time the unit did
not listen is no evidence that a tag left or a card was taken away.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from drivers import registry
from gateway import __version__, backoff, control, logs, sdnotify, signing, sysinfo, unitkey
from gateway import roster as rostermod
from gateway import trial as tr
from gateway.clock import Clock, ShiftedClock, SystemClock
from gateway.commander import Commander
from gateway.commands import core as commands_core
from gateway.commands.config import ConfigArgs
from gateway.commands.core import Command, Reply
from gateway.commands.unit import Location
from gateway.config import Config, engine_config
from gateway.configtrial import ConfigTrials
from gateway.contract import iso_utc
from gateway.engine import Engine, EngineState, locate, resume
from gateway.outbox import Outbox
from gateway.pipeline import Pipeline, restore_state
from gateway.publisher import OutgoingReply, Publisher
from gateway.recording import Recorder
from gateway.roster import Roster, RosterChange, RosterFile

log = logging.getLogger("gateway")

MAX_DOWNTIME_S = 366 * 86400.0  # a longer (or negative) downtime is a wrong wall clock


def continued(clock: Clock, state: EngineState) -> ShiftedClock:
    """``clock`` with monotonic time shifted to continue the saved ``state``'s engine time
    (which is moved on over the downtime)."""
    if not state.clock:
        return ShiftedClock(clock, 0.0)  # nothing saved: engine time is this boot's
    down = clock.now() - (state.clock + state.wall_offset)
    if not 0.0 <= down <= MAX_DOWNTIME_S:
        log.warning("wall clock %s the saved engine state by %.0f s: downtime not counted",
                    "behind" if down < 0 else "ahead of", abs(down))
        down = 0.0
    resume(state, down)
    return ShiftedClock(clock, state.clock - clock.monotonic())


class Gateway:
    def __init__(self, cfg: Config, clock: Clock | None = None, record: str | None = None,
                 roll_call: str | None = None, trial: tr.Decision | None = None) -> None:
        self.cfg = cfg
        self.stop = threading.Event()
        # Each worker gets its own clock: its reads and waits are its heartbeats (sdnotify).
        self.beats = sdnotify.Heartbeats()
        self.clocks: dict[str, Any] = {}
        self.outbox = Outbox(cfg.buffer.path, cfg.unit.id, cfg.unit.site,
                             max_mb=cfg.buffer.max_mb, max_events=cfg.buffer.max_events,
                             reserve_mb=cfg.buffer.reserve_mb)
        # The roster in force (docs/privacy.md): the backend's, once it sent one, else the
        # config's [[tags]]; the unit's own key signs erasure receipts.
        self.roster_file = RosterFile(cfg.buffer.path)
        self.roster = roster_in_force(cfg, self.roster_file)
        self.unit_key, note = unitkey.load_or_create(cfg.buffer.path)
        if self.unit_key is None:
            log.error("%s", note)
        elif note:
            log.warning("unit key %s: %s (key id %s, in the birth message)", note,
                        self.unit_key.path, self.unit_key.kid)
        self.engine = Engine(engine_config(cfg, self.roster.tag_map()))
        state = restore_state(self.outbox, self.engine)  # before any clock is handed out
        self.clock: Clock = continued(clock or SystemClock(), state)
        self.started = self.clock.monotonic()
        # The config command's trial (commit-confirmed): what start found beside the config.
        self.trials = ConfigTrials(cfg, trial, cfg.commands.confirm_s, self.clock.now)
        self.publisher = Publisher(cfg, self.outbox, self._worker_clock("mqtt"),
                                   health=self.health, on_acked=self._acked,
                                   on_command=lambda msg: self.commander.submit(msg))
        self.publisher.config_versions = lambda: (self.trials.versions.active,
                                                  self.trials.versions.previous)
        self.last_ack: float | None = None  # wall time of the broker's last acknowledgement
        self.problems: dict[str, str] = {}  # hung or dead workers, as the watchdog sees them
        self.recorder = (Recorder(record, now=self.clock.now(), mono=self.clock.monotonic())
                         if record else None)
        self.pipeline = Pipeline(cfg, self.engine, self.outbox, self._worker_clock("pipeline"),
                                 on_committed=self.publisher.notify, record=self.recorder,
                                 state=state, roster=self.roster, roster_file=self.roster_file)
        self.publisher.unit_key = self.unit_key.jwk() if self.unit_key else None
        self.pipeline.roll_call(roll_call)
        self.commander = Commander(cfg, self.outbox, DaemonUnit(self), self.publisher.reply,
                                   self._worker_clock("commands"))
        self.drivers = [registry.driver(r.kind)(r, self.pipeline,
                                                self._worker_clock(f"reader-{r.id}"))
                        for r in cfg.readers]
        self.threads: list[threading.Thread] = []

    def _worker_clock(self, name: str) -> Any:
        self.clocks[name] = clock = self.beats.clock(name, self.clock)
        return clock

    def _acked(self, seqs: list[int]) -> None:
        self.last_ack = self.clock.now()

    def dead_workers(self) -> list[str]:
        """Worker threads that ended while the daemon is not stopping."""
        return [] if self.stop.is_set() else [t.name for t in self.threads if not t.is_alive()]

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
                # Receipt mode: PUBACKed on this connection, no receipt yet (null: broker mode).
                "awaiting_receipt": self.publisher.core.awaiting_receipt
                if self.publisher.receipt_mode else None,
            },
            "readers": st["readers"],
            "counters": st["counters"],
            "mqtt": {"sent": self.publisher.sent, "acked": self.publisher.acked,
                     "refused": self.publisher.refused, "connects": self.publisher.connects,
                     "commands": self.publisher.commands,
                     "receipts": self.publisher.receipts,
                     "receipts_refused": self.publisher.receipts_refused,
                     **self._standby_health()},
        }

    def _standby_health(self) -> dict[str, Any]:
        """The emergency lane's standby connection ([broker] standby_host), if any."""
        sb = self.publisher.standby
        if sb is None:
            return {}
        return {"standby": {"address": f"{sb.host}:{sb.port}",
                            "connected": sb.connected.is_set(), "connects": sb.connects,
                            "sent": sb.sent, "deleted": sb.deleted}}

    def status(self) -> dict[str, Any]:
        """What `gatewayd status` shows: the health message and the box around it."""
        doc = self.health()
        b = self.cfg.broker
        now = self.clock.now()
        doc["pid"] = os.getpid()
        doc["broker"] = {"address": f"{b.host}:{b.port}", "connected": self.publisher.online,
                         "protocol": self.publisher.connected_protocol or None,
                         "last_ack": iso_utc(self.last_ack) if self.last_ack else None,
                         "last_ack_age_s": round(now - self.last_ack, 1)
                         if self.last_ack else None}
        # GPS fixes whose time failed the gate (drivers/_gps.py) are counted as rejects.
        untrusted = sum(n for r in doc["readers"].values() for why, n in r["rejects"].items()
                        if why.startswith("untrusted-time"))
        doc["clock"] = {**sysinfo.clock_sync().as_dict(), "gps_untrusted": untrusted}
        disk = sysinfo.disk(self.cfg.buffer.path)
        doc["disk"] = disk.as_dict() if disk else None
        doc["workers"] = {n: self.problems.get(n, "ok") for n in self.beats.names()}
        doc["commands"] = self.commander.stats()
        doc["config"] = self.trials.info()
        doc["roster"] = self.pipeline.roster.summary()
        return doc

    def status_line(self) -> str:
        """One line for systemd's STATUS= (`systemctl status` shows it)."""
        readers = self.pipeline.stats()["readers"]
        online = sum(1 for r in readers.values() if r["state"] == "online")
        broker = "broker connected" if self.publisher.online else "broker not connected"
        return (f"{online}/{len(readers)} readers online; {self.outbox.depth()} events "
                f"buffered; {broker}")

    def tick_trial(self) -> None:
        """Confirm or roll back a config trial; send a decided one's reply (main loop)."""
        def send(topic: str, reply: Reply, correlation: bytes | None) -> None:
            self.publisher.reply(OutgoingReply(
                topic, commands_core.reply_body(reply, self.clock.now()), correlation))

        def store(request: str, digest: str, expires: float, reply: Reply) -> None:
            self.outbox.command_done(request, digest, expires, commands_core.reply_record(reply))

        self.trials.tick(self.publisher.online, send, store)
        if self.trials.restart.is_set():
            self.stop.set()

    def start(self) -> None:
        def spawn(name: str, target: Any) -> None:
            self.beats.beat(name)  # set-up time before the thread runs is not a hang
            t = threading.Thread(target=self._supervise, args=(name, target), name=name,
                                 daemon=True)
            t.start()
            self.threads.append(t)

        log.info("gatewayd %s starting: unit %s at %s, %d readers, %d enrolled tags, "
                 "buffer %s (%d events waiting)", __version__, self.cfg.unit.id,
                 self.cfg.unit.site, len(self.cfg.readers), len(self.roster.tags),
                 self.cfg.buffer.path, self.outbox.depth())
        for r in self.cfg.readers:
            where = f" on {r.options.where()}" if r.options.where() else ""
            log.info("reader %s: %s, role %s%s", r.id, r.kind, r.role, where)
        if self.recorder is not None:
            log.warning("recording readings of enrolled tags to %s: it holds their tag ids "
                        "(card numbers) in clear; delete it after use", self.recorder.path)
        spawn("mqtt", self.publisher.run)
        spawn("pipeline", self.pipeline.run)
        spawn("commands", self.commander.run)
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

        # 1, 2, 4 ... 60 s; a worker that ran for a minute starts over at 1 s. The wait is
        # on the worker's own clock: backing off is a healthy idle, not a hang.
        backoff.Restarts(self.stop, self.clocks.get(name, self.clock), failed, initial=1.0,
                         cap=60.0, jitter=0.0, healthy_s=60.0).run(lambda: target(self.stop))

    def shutdown(self, timeout: float = 5.0) -> None:
        self.stop.set()
        # Wake the workers waiting on their own timeouts (the publisher's select, the
        # pipeline's queue) so they see stop now; each still ends as a clean stop does.
        self.publisher.notify()
        self.pipeline.wake()
        self.commander.wake()
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


class DaemonUnit:
    """The running unit as command handlers see it (gateway/commands/unit.py). Engine
    state is read and changed on the pipeline thread only (Pipeline.control)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    @property
    def unit_id(self) -> str:
        return self.gw.cfg.unit.id

    def config_trial(self, cmd: Command, args: ConfigArgs) -> Reply:
        gw = self.gw
        msg = gw.commander.current  # the message being handled: its MQTT 5 reply route
        topic = commands_core.reply_topic(
            gw.cfg.broker.topic_prefix, gw.cfg.unit.id, cmd.id,
            msg.response_topic if msg else None, cmd.reply_to)
        reply = gw.trials.start(cmd, args, topic, msg.correlation if msg else None)
        if gw.trials.restart.is_set():  # begun: the workers stop now, not at the next tick
            gw.stop.set()
            gw.publisher.notify()
            gw.pipeline.wake()
        return reply

    def info(self) -> dict[str, Any]:
        gw = self.gw
        return {"software": __version__, "config_version": gw.trials.versions.active,
                "config_label": gw.cfg.unit.config_version,
                "uptime_s": round(gw.clock.monotonic() - gw.started, 1),
                "buffer_depth": gw.outbox.depth(),
                "mqtt": gw.publisher.connected_protocol or None}

    def rebirth(self) -> None:
        self.gw.publisher.rebirth()

    def locate(self, children: Sequence[str]) -> list[Location]:
        pipeline = self.gw.pipeline
        runtime = pipeline.engine.runtime

        def where() -> list[Location]:
            state = pipeline.engine_state
            out = []
            for child in children:  # child references only: a tag id is never looked up
                if child not in runtime.child_tags:
                    out.append(Location(child, enrolled=False, found=False))
                    continue
                d = locate(state, runtime, child)
                if not d["found"]:
                    out.append(Location(child, enrolled=True, found=False))
                    continue
                # time: wall clock (locate adds the offset); a GPS fix_time is the
                # receiver's UTC already.
                out.append(Location(child, True, True, d["reader"], d["zone"],
                                    tuple(d["zones"]), d["last_zone"], d["time"], d["rssi"],
                                    d["position"]))
            return out

        return pipeline.control(where)

    def start_alert(self, alert_id: str, interval_s: float | None) -> dict[str, Any]:
        pipeline = self.gw.pipeline
        pipeline.control(lambda: pipeline.set_roll_call(alert_id, interval_s, "command"),
                         changes=True)
        return {"alert_id": alert_id,
                "interval_s": interval_s or self.gw.cfg.engine.roll_call_interval_s}

    def stop_alert(self, alert_id: str | None) -> bool:
        pipeline = self.gw.pipeline

        def stop() -> bool:
            running = pipeline.engine_state.roll_call
            if running is None or alert_id not in (None, running.alert_id):
                return False
            return pipeline.set_roll_call(None)

        return pipeline.control(stop, changes=True)

    # roster, erase (gateway/commands/roster.py, erase.py)
    def change_roster(self, change: RosterChange) -> dict[str, Any]:
        pipeline = self.gw.pipeline
        return pipeline.control(lambda: pipeline.change_roster(change), timeout=30.0)

    def erase(self, child: str) -> dict[str, Any]:
        pipeline = self.gw.pipeline
        # The scan of the buffer (a long backlog: ~1 s per 100,000 events here) runs on
        # this thread; the pipeline thread checks the rows found and those committed since.
        outbox = self.gw.outbox
        upto = outbox.last_seq()
        found = outbox.child_rows(pipeline.erase_names(child), upto=upto)
        return pipeline.control(lambda: pipeline.erase(child, (found, upto)), timeout=30.0)

    def sign_erasure(self, payload: bytes) -> bytes | None:
        key = self.gw.unit_key
        return None if key is None else signing.sign(payload, key.key, signing.TYP_ERASURE)


def roster_in_force(cfg: Config, file: RosterFile) -> Roster:
    """The backend's roster beside the buffer, else the config's tags. A damaged roster
    file stops the start: falling back to the config could enrol withdrawn children."""
    try:
        saved = file.load()
    except (OSError, ValueError) as e:
        raise SystemExit(f"gatewayd: the roster {file.path} is not readable ({e}); it "
                         "decides who is enrolled, so the unit does not start without it. "
                         "Restore it, or delete it to start from the config's [[tags]] "
                         "(version 0) and have the backend send the roster again") from e
    if saved is not None and cfg.tags:
        log.warning("roster version %d from the backend in force (%d tags); the config's "
                    "%d [[tags]] are not used", saved.version, len(saved.tags), len(cfg.tags))
    return rostermod.effective(cfg.tags, saved)


def private_files(path: str, suffixes: tuple[str, ...] = ("", "-wal", "-shm")) -> None:
    """The buffer and its WAL/shm files readable by the daemon's user only (files made
    by an older version, or copied in, may be world-readable; SQLite gives the -wal and
    -shm it creates the mode of the database file). Also a readings recording appended
    to (suffixes ``("",)``: it holds tag ids)."""
    for suffix in suffixes:
        try:
            if os.stat(path + suffix).st_mode & 0o077:
                os.chmod(path + suffix, 0o600)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot make %s private (%s)", path + suffix, e)


def _watch(gw: Gateway, dog: sdnotify.Watchdog) -> None:
    """One turn of the main loop's watch over the workers (logged when it changes)."""
    logs.flush()  # "suppressed N lines like ..." once a flood's window has ended
    problems = dog.check(gw.dead_workers(), gw.status_line())
    for name, what in problems.items():
        if name not in gw.problems:
            log.error("worker %s: %s; %s", name, what,
                      "systemd's watchdog will restart the unit" if dog.interval_s else
                      "restart the daemon if it does not recover")
    for name in gw.problems.keys() - problems.keys():
        log.warning("worker %s: going again", name)
    gw.problems = problems


def run(cfg: Config, record: str | None = None, roll_call: str | None = None,
        trial: tr.Decision | None = None) -> int:
    os.umask(0o077)  # everything the daemon creates (buffer, recordings, socket): owner only
    gw = Gateway(cfg, record=record, roll_call=roll_call, trial=trial)
    private_files(cfg.buffer.path)
    if record:  # an existing recording appended to keeps its mode otherwise
        private_files(record, ("",))

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        gw.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gw.start()
    dog = sdnotify.Watchdog(gw.beats, sdnotify.watchdog_interval())
    sock = control.StatusSocket(control.socket_path(cfg.buffer.path), gw.status)
    sock.open()
    try:
        while not gw.stop.is_set():
            _watch(gw, dog)
            gw.tick_trial()
            # A running trial (or a reply waiting for the broker) is looked at twice a second.
            sock.serve(0.5 if gw.trials.active or gw.trials.pending else dog.period_s)
    finally:
        sock.close()
    again = gw.trials.restart.is_set()
    if again:  # systemd: the same service reloading, READY=1 follows from the new image
        sdnotify.notify("RELOADING=1", "STATUS=restarting on a changed config")
    else:
        dog.stopping()
    gw.shutdown()
    logs.flush(final=True)
    if again and not gw.pipeline.lost:
        try:
            reexec()
        except OSError as e:  # the interpreter went away (an upgrade under way?)
            log.critical("cannot restart in place (%s): exiting for systemd to start the "
                         "unit again; the config trial goes on from its marker", e)
        return 1
    return 1 if gw.pipeline.lost else 0  # a stop that lost events is never a clean exit


def reexec() -> None:
    """Start again in this process on the config file as it is now (a config trial began
    or rolled back): the same command line, the same PID (systemd's main process), every
    thread and descriptor of the old image gone (descriptors are close-on-exec)."""
    argv = [sys.executable, *sys.orig_argv[1:]]
    log.warning("restarting in place: %s", " ".join(argv))
    logs.flush(final=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, argv)
