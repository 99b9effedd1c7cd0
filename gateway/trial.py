"""Commit-confirmed config changes, sans-I/O: what a config trial does when.

A config pushed by the ``config`` command is *on trial*: it is kept only if the
unit reaches the broker with it before the trial's deadline; otherwise the unit
goes back to the config it ran before (the way a router's commit-confirmed
works: a change that cuts the unit off undoes itself). The trial is persisted
as a marker file beside the config (:mod:`gateway.trialfiles` does the I/O),
with its deadline in wall-clock time, so a power cut or ``kill -9`` during a
trial cannot leave the unit on an unconfirmed config: at the next start an
expired trial rolls back.

The marker also carries what the deferred reply needs (where to send it) and,
once the outcome is known, that outcome: the reply is sent, and the marker
removed, only when the unit is connected again. The config's version is the
SHA-256 of the file's bytes (:func:`version_of`): the backend computes the same
digest of the text it pushes, and a hand edit on the unit changes it.

This module reads no file and no clock: times and versions come in, decisions
(:class:`Wait`, :class:`Keep`, :class:`RollBack`, :class:`Report`) go out.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from typing import Any

DEFAULT_CONFIRM_S = 120.0  # how long a pushed config has to reach the broker
MIN_CONFIRM_S = 10.0  # a re-exec and a TLS connect take a few seconds on a Pi
MAX_CONFIRM_S = 3600.0
# A wall clock that went back further than this during a trial (an RTC-less reboot) makes
# the elapsed time unknowable: the trial is treated as expired (rolling back is always safe).
CLOCK_BACK_S = 60.0

KEPT = 200
ROLLED_BACK = 409  # the config was valid but did not reach the broker: a conflict with reality
FAILED = 500  # interrupted, or the files could not be written: nothing changed

_HEX64 = re.compile(r"[0-9a-f]{64}")


def version_of(data: bytes) -> str:
    """A config's version: the SHA-256 (lowercase hex) of the file's exact bytes."""
    return hashlib.sha256(data).hexdigest()


def is_version(text: object) -> bool:
    return isinstance(text, str) and _HEX64.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    code: int  # KEPT, ROLLED_BACK or FAILED
    reason: str

    @property
    def kept(self) -> bool:
        return self.code == KEPT


@dataclass(frozen=True, slots=True)
class Trial:
    """A config trial as persisted in the marker file."""

    request: str  # the config command's request id
    unit: str
    version: str  # the config on trial
    previous: str  # the config to go back to
    previous_text: str  # its whole text: the rollback needs no other file
    started: float  # wall-clock epoch seconds
    deadline: float  # wall-clock epoch seconds
    reply_topic: str
    correlation: str | None = None  # MQTT 5 correlation data, hex
    digest: str = ""  # the command's digest and expiry: its reply is stored for repeats
    expires: float = 0.0
    outcome: Outcome | None = None  # set once decided; the reply is then pending

    @property
    def confirm_s(self) -> float:
        return self.deadline - self.started

    def decided(self, code: int, reason: str) -> Trial:
        return replace(self, outcome=Outcome(code, reason[:300]))  # the reply's bound


# -- decisions ------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Wait:
    """The trial runs on: confirm it on a broker connection before ``deadline``."""

    trial: Trial
    deadline: float


@dataclass(frozen=True, slots=True)
class Keep:
    """The config reached the broker: keep it (``.previous`` becomes the old one)."""

    trial: Trial  # with its outcome


@dataclass(frozen=True, slots=True)
class RollBack:
    """Write ``trial.previous_text`` back and restart on it."""

    trial: Trial  # with its outcome


@dataclass(frozen=True, slots=True)
class Report:
    """Decided before: send the stored outcome once connected, then drop the marker."""

    trial: Trial


Decision = Wait | Keep | RollBack | Report


def at_start(trial: Trial, active: str, now: float) -> Decision:
    """What a starting daemon does with a marker it finds, given the version of the config
    file as it is now (``active``) and the wall clock."""
    if trial.outcome is not None:
        return Report(trial)
    if active == trial.version != trial.previous:
        if expired(trial, now):
            return RollBack(trial.decided(
                ROLLED_BACK, f"not confirmed within {trial.confirm_s:g} s (the unit restarted "
                "during the trial and did not reach the broker in time); rolled back"))
        return Wait(trial, trial.deadline)
    if active == trial.previous:
        # The swap never happened (a crash between the marker and the rename), or a
        # rollback wrote the file and stopped before recording it.
        return Report(trial.decided(FAILED, "interrupted before the new config was in "
                                            "effect; the previous config is active"))
    # Neither: someone edited the file on the unit during the trial. Their file wins.
    return Report(trial.decided(FAILED, "the config file was changed on the unit during "
                                        "the trial; it is kept, the trial abandoned"))


def on_tick(trial: Trial, now: float, connected: bool) -> Decision:
    """The running daemon's check (every half second during a trial): ``connected`` is
    whether this process, on the trial's config, has a broker connection."""
    if connected:
        return Keep(trial.decided(KEPT, f"confirmed: connected to the broker "
                                        f"{max(0.0, now - trial.started):.1f} s after the "
                                        "change"))
    if expired(trial, now):
        return RollBack(trial.decided(
            ROLLED_BACK, f"no broker connection within {trial.confirm_s:g} s; rolled back to "
            "the previous config"))
    return Wait(trial, trial.deadline)


def expired(trial: Trial, now: float) -> bool:
    return now >= trial.deadline or now < trial.started - CLOCK_BACK_S


def reply_data(trial: Trial) -> dict[str, Any]:
    """The ``data`` of the config command's final reply."""
    kept = trial.outcome is not None and trial.outcome.kept
    return {"outcome": "kept" if kept else "rolled-back",
            "active_version": trial.version if kept else trial.previous,
            "tried_version": trial.version, "previous_version": trial.previous,
            "confirm_s": trial.confirm_s}


# -- the marker's JSON ----------------------------------------------------------------------

class MarkerError(ValueError):
    """A marker file that is not one this module wrote."""


def to_json(trial: Trial) -> bytes:
    doc: dict[str, Any] = {
        "marker": 1, "request": trial.request, "unit": trial.unit, "version": trial.version,
        "previous": trial.previous, "previous_text": trial.previous_text,
        "started": trial.started, "deadline": trial.deadline,
        "reply_topic": trial.reply_topic, "correlation": trial.correlation,
        "digest": trial.digest, "expires": trial.expires,
        "outcome": None if trial.outcome is None else
        {"code": trial.outcome.code, "reason": trial.outcome.reason},
    }
    return json.dumps(doc, sort_keys=True, ensure_ascii=False).encode()


def from_json(raw: bytes) -> Trial:
    try:
        d = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise MarkerError(f"not JSON: {e}") from None
    if not isinstance(d, dict) or d.get("marker") != 1:
        raise MarkerError("not a config trial marker")

    def text(key: str, nullable: bool = False) -> Any:
        v = d.get(key)
        if (v is None and nullable) or isinstance(v, str):
            return v
        raise MarkerError(f"{key}: expected a string")

    def number(key: str) -> float:
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise MarkerError(f"{key}: expected a number")
        return float(v)

    outcome = None
    o = d.get("outcome")
    if o is not None:
        if (not isinstance(o, dict) or not isinstance(o.get("code"), int)
                or not isinstance(o.get("reason"), str)):
            raise MarkerError("outcome: expected {code, reason}")
        outcome = Outcome(o["code"], o["reason"])
    trial = Trial(request=text("request"), unit=text("unit"), version=text("version"),
                  previous=text("previous"), previous_text=text("previous_text"),
                  started=number("started"), deadline=number("deadline"),
                  reply_topic=text("reply_topic"), correlation=text("correlation", True),
                  digest=text("digest"), expires=number("expires"), outcome=outcome)
    if not (is_version(trial.version) and is_version(trial.previous)):
        raise MarkerError("version, previous: expected SHA-256 hex digests")
    if version_of(trial.previous_text.encode()) != trial.previous:
        raise MarkerError("previous_text does not match its version")
    return trial
