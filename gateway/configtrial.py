"""The running daemon's side of a config trial (``config`` command, commit-confirmed).

How a pushed config takes effect: the daemon re-executes itself in place
(``os.execv`` of its own command line, gateway/daemon.py) after a clean stop, so
every reader, the pipeline and the publisher start on the new config exactly as at
boot, the buffer and the engine state are kept (saved at the stop, restored at the
start), and the process keeps its PID: under systemd ``Type=notify`` it is the same
service, which sends READY=1 again. A restart inside the process would have to
prove that every thread of the old config ended (a reader stuck in a serial write
never does); an exec ends them all.

This object holds the trial across that: :meth:`start` validates and begins it (in
the command worker), :meth:`tick` confirms or rolls it back (the main loop, every
half second while one runs), :meth:`flush_reply` sends a decided trial's reply once
the unit is connected. The decisions are :mod:`gateway.trial`'s, the files
:mod:`gateway.trialfiles`'.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import trial as tr
from gateway import trialfiles
from gateway.commands.config import PENDING, ConfigArgs
from gateway.commands.core import Code, Command, Reply, refuse
from gateway.config import Config

log = logging.getLogger("gateway.config")

SendReply = Callable[[str, Reply, bytes | None], None]  # topic, reply, correlation data
StoreReply = Callable[[str, str, float, Reply], None]  # request id, digest, expires, reply


@dataclass(frozen=True, slots=True)
class Versions:
    active: str
    previous: str | None


class ConfigTrials:
    def __init__(self, cfg: Config, found: tr.Decision | None, default_confirm_s: float,
                 now: Callable[[], float]) -> None:
        self.cfg = cfg
        self.path = cfg.file
        self.default_confirm_s = default_confirm_s
        self.now = now
        self.lock = threading.Lock()
        try:
            active, previous = trialfiles.versions(self.path)
        except OSError:  # a config not from a file (tests), or gone since it was loaded
            active, previous = "", None
        self.versions = Versions(active, previous)
        self.running: tr.Trial | None = None  # on trial in this process: confirm or roll back
        self.pending: tr.Trial | None = None  # decided: its reply goes out once connected
        match found:
            case tr.Wait(t):
                self.running = t
                self.versions = Versions(active, t.previous)
                log.warning("config %s on trial: kept only if the broker is reached within "
                            "%.0f s, else rolled back to %s", t.version[:12],
                            max(0.0, t.deadline - now()), t.previous[:12])
            case tr.Report(t):
                self.pending = t
        self.restart = threading.Event()  # set: the daemon stops and re-executes itself
        self.began = False  # a trial began in this process (before the re-exec)

    # -- the command (command worker thread) ------------------------------------------------

    def start(self, cmd: Command, args: ConfigArgs, reply_topic: str,
              correlation: bytes | None) -> Reply:
        """Validate ``args.text`` as check-config does and begin the trial; the refusal, or
        PENDING (the outcome follows from :meth:`tick` or the next process)."""
        with self.lock:
            if self.running is not None or self.pending is not None or self.began:
                return refuse(cmd, Code.CONFLICT, "a config trial is in progress")
            if trialfiles.marker_path(self.path).exists():
                return refuse(cmd, Code.CONFLICT, "a config trial is in progress")
            try:
                on_disk = trialfiles.versions(self.path)[0]
            except OSError as e:
                return refuse(cmd, Code.FAILED, f"cannot read the config file: {e}")
            if args.expected_version != self.versions.active:
                return refuse(cmd, Code.CONFLICT, "stale expected_version: the unit runs "
                              f"{self.versions.active}", {"active_version": self.versions.active})
            if on_disk != self.versions.active:
                return refuse(cmd, Code.CONFLICT, "the config file was changed on the unit "
                              "since the daemon started; restart it first",
                              {"active_version": self.versions.active})
            try:
                candidate = trialfiles.Candidate(self.path, args.text)
            except OSError as e:
                return refuse(cmd, Code.FAILED, f"cannot write beside the config: {e}")
            try:
                errors, warnings = candidate.check(self.cfg, cmd.kid)
                if errors:
                    return refuse(cmd, Code.BAD_REQUEST,
                                  f"invalid config: {len(errors)} error(s); nothing changed",
                                  {"errors": [e[:300] for e in errors[:50]],
                                   "warnings": [w[:300] for w in warnings[:50]]})
                if candidate.version == self.versions.active:
                    candidate.discard()
                    return refuse(cmd, Code.OK, "already active; nothing changed",
                                  {"outcome": "unchanged",
                                   "active_version": self.versions.active})
                now = self.now()
                confirm_s = args.confirm_s or self.default_confirm_s
                previous_text = Path(self.path).read_bytes().decode("utf-8")
                trial = tr.Trial(
                    request=cmd.id, unit=cmd.unit, version=candidate.version,
                    previous=tr.version_of(previous_text.encode("utf-8")),
                    previous_text=previous_text, started=now, deadline=now + confirm_s,
                    reply_topic=reply_topic,
                    correlation=None if correlation is None else correlation.hex(),
                    digest=cmd.digest, expires=cmd.expires)
                trialfiles.begin(candidate, trial)
            except (OSError, UnicodeDecodeError) as e:
                return refuse(cmd, Code.FAILED, f"cannot apply the config: {e}; nothing changed")
            finally:
                candidate.discard()
            self.began = True
        log.warning("config %s (request %s) applied: restarting on it; kept if the broker is "
                    "reached within %.0f s, else rolled back to %s", trial.version[:12],
                    cmd.id, confirm_s, trial.previous[:12])
        for w in warnings:
            log.warning("config %s: warning: %s", trial.version[:12], w)
        self.restart.set()
        return refuse(cmd, PENDING, "config trial started; the outcome follows",
                      {"tried_version": trial.version, "confirm_s": confirm_s})

    # -- the main loop ----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """A trial runs here: the main loop ticks every half second."""
        return self.running is not None

    def tick(self, connected: bool, send: SendReply, store: StoreReply) -> None:
        """Confirm or roll back the running trial; send a decided one's reply."""
        with self.lock:
            t = self.running
            decision = None if t is None else tr.on_tick(t, self.now(), connected)
            try:
                match decision:
                    case tr.Keep(k):
                        trialfiles.keep(self.path, k)
                    case tr.RollBack(r):
                        trialfiles.roll_back(self.path, r)
            except OSError as e:  # a full or failing card: the same decision next tick
                log.error("config trial %s: cannot write its files (%s); retrying",
                          t.request if t else "-", e)
                return
            match decision:
                case tr.Keep(k):
                    self.versions = Versions(k.version, k.previous)
                    log.warning("config %s kept: %s", k.version[:12],
                                k.outcome.reason if k.outcome else "")
                    self.running, self.pending = None, k
                case tr.RollBack(r):
                    log.error("config %s rolled back to %s: %s; restarting on it",
                              r.version[:12], r.previous[:12],
                              r.outcome.reason if r.outcome else "")
                    self.running = None
                    self.began = True  # the next process reports it
                    self.restart.set()
                    return
        if connected:
            self.flush_reply(send, store)

    def flush_reply(self, send: SendReply, store: StoreReply) -> None:
        """A decided trial's reply: stored (a repeated request gets it), sent, and the
        marker removed. Called once connected."""
        with self.lock:
            t = self.pending
            if t is None or t.outcome is None:
                return
            reply = Reply(t.request, t.unit, "config", t.outcome.code, t.outcome.reason,
                          tr.reply_data(t))
            try:
                store(t.request, t.digest, t.expires, reply)
            except Exception as e:  # a full card: the reply still goes out
                log.error("config trial %s: reply not stored (%s)", t.request, e)
            # The marker goes before the reply: whoever gets the reply finds the trial over
            # (a crash in between loses only the send; a repeated request gets it stored).
            try:
                trialfiles.remove_marker(self.path)
            except OSError as e:  # sent anyway; the next start sends it again (idempotent)
                log.error("config trial %s: marker not removed (%s)", t.request, e)
            self.pending = None
            corr = bytes.fromhex(t.correlation) if t.correlation else None
            send(t.reply_topic, reply, corr)

    def info(self) -> dict[str, Any]:
        """For birth, ping and `gatewayd status`."""
        t = self.running
        return {"version": self.versions.active, "previous": self.versions.previous,
                "label": self.cfg.unit.config_version or None,
                "trial": None if t is None else {
                    "version": t.version, "previous": t.previous, "request": t.request,
                    "deadline_s": round(max(0.0, t.deadline - self.now()), 1)}}
