"""The R2000 polling protocol as a state machine without I/O (no port, no clock, no sleep).

Inputs: :meth:`Poller.start` when the port opens, :meth:`Poller.frame` for each
decoded frame, :meth:`Poller.tick` after every read (empty or not), each with
the monotonic time. Outputs: what to do, in order: bytes to send, a reject to
count, the reader's state, or "reopen the port". The driver does the I/O.

The cycle (see :mod:`drivers.uhf_r2000` for the protocol): per antenna in turn,
``0x74`` set work antenna (skipped when the reader already works on it), then
``0x89`` real-time inventory until its end-of-round summary or error. With
``fast_switch`` (several antennas), one ``0x8A`` instead runs a round on every
antenna in turn, the reader switching itself: one command and one summary per
cycle instead of a set-antenna and an inventory exchange per antenna; an antenna
missing is named in the cycle's own replies. A reply
missing for ``reply_timeout_s`` resends the same command (counted
``no-reply``; DEGRADED once the reader has been quiet that long); quiet for
``silence_s`` asks for the port to be reopened. An antenna answering with an
error is DEGRADED until a round on it succeeds again.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from drivers.codecs import uhf_r2000 as r2k
from gateway.model import ReaderState

NO_TAG = 0x36  # "no tag": an empty round, not a fault


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Count:
    """A reject to count in the reader's health (``no-reply``, ``reader-error:...``)."""

    reason: str


@dataclass(frozen=True)
class Report:
    state: ReaderState
    detail: str


@dataclass(frozen=True)
class Reopen:
    """The reader is not answering: close the port and open it again."""

    reason: str


Action = Send | Count | Report | Reopen


class Phase(enum.Enum):
    SET_ANTENNA = 1
    INVENTORY = 2
    FAST_SWITCH = 3  # 0x8A in flight: a round on every antenna


@dataclass
class Poller:
    antennas: Sequence[int]
    repeat: int = 1
    address: int = 1
    reply_timeout_s: float = 1.0
    silence_s: float = 5.0
    where: str = ""  # the detail of an ONLINE report (the port)
    fast_switch: bool = False  # 0x8A for several antennas (one antenna: 0x89 anyway)
    phase: Phase = Phase.SET_ANTENNA
    index: int = 0  # position in ``antennas`` of the antenna being worked
    work_antenna: int | None = None  # the work antenna the reader confirmed
    failing: dict[int, str] = field(default_factory=dict)  # antenna -> last error
    last_reply: float = 0.0
    deadline: float = 0.0  # when the command in flight times out
    reported: bool = False  # a state was reported on this connection (else: STARTING)
    # The health last reported may be out of date (a round's result changed ``failing``, or
    # a timeout reported DEGRADED): the next round's end reports it. Otherwise a round
    # reports nothing (~60 rounds a second; the driver would drop the repeat anyway).
    stale: bool = True
    # The commands, framed once: ~60 a second go out while polling (bench/site_load.py).
    _set_antenna: dict[int, bytes] = field(init=False, repr=False)
    _inventory: bytes = field(init=False, repr=False)
    _cycle_errors: dict[int, str] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._set_antenna = {a: r2k.encode_set_work_antenna(a, self.address)
                             for a in self.antennas}
        if self.fast_switch and len(self.antennas) > 1:
            # ``repeat``: how many times the reader runs the whole cycle per command.
            self.phase = Phase.FAST_SWITCH
            self._inventory = r2k.encode_fast_switch_inventory(
                list(self.antennas), self.repeat, self.address)
        else:
            self._inventory = r2k.encode_real_time_inventory(self.repeat, self.address)

    def start(self, mono: float) -> list[Action]:
        """The port is open: the first command."""
        self.last_reply = mono
        return [self._send(mono)]

    def frame(self, item: object, mono: float) -> list[Action]:
        """A well-formed frame from the reader (tags included: any reply proves it is there)."""
        self.last_reply = mono
        out: list[Action] = []
        if not self.reported:
            out.append(self._health())  # the first reply: the reader is there
        if self.phase is Phase.FAST_SWITCH:
            return self._fast_frame(item, mono, out)
        match item:
            case r2k.R2000InventoryEnd() if self.phase is Phase.INVENTORY:
                out += self._round_done(None)
                out.append(self._send(mono))
            case r2k.R2000Status(cmd=r2k.CMD_SET_WORK_ANTENNA) if self.phase is Phase.SET_ANTENNA:
                if item.success:
                    self.work_antenna = self.antennas[self.index]
                    self.phase = Phase.INVENTORY
                else:
                    out.append(Count(f"reader-error:{item.error}"))
                    out += self._round_done(f"set antenna failed ({item.error})")
                out.append(self._send(mono))
            case r2k.R2000Status(cmd=r2k.CMD_REAL_TIME_INVENTORY) if self.phase is Phase.INVENTORY:
                if item.error_code == NO_TAG:
                    out += self._round_done(None)
                else:
                    out.append(Count(f"reader-error:{item.error}"))
                    out += self._round_done(f"{item.error} (0x{item.error_code:02X})")
                out.append(self._send(mono))
            case _:
                pass  # tags, firmware and other replies: well framed and harmless
        return out

    def tick(self, mono: float) -> list[Action]:
        """Time passed (called after every read): reply timeouts and the silence watchdog."""
        if mono < self.deadline:
            return []
        quiet = mono - self.last_reply
        out: list[Action] = [Count("no-reply")]
        if quiet >= self.silence_s:
            out += [self._report(ReaderState.DEGRADED,
                                 f"no reply for {quiet:.0f} s; reopening the port"),
                    Reopen(f"reader not answering for {quiet:.0f} s")]
            self.stale = True
            return out
        if quiet >= self.reply_timeout_s:
            out.append(self._report(ReaderState.DEGRADED, f"no reply for {quiet:.1f} s"))
            self.stale = True
        out.append(self._send(mono))  # the same command again: a lost reply must not stall
        return out

    # -- inside ------------------------------------------------------------------------------

    def _fast_frame(self, item: object, mono: float, out: list[Action]) -> list[Action]:
        match item:
            case r2k.R2000Status(cmd=r2k.CMD_FAST_SWITCH_ANT_INVENTORY, antenna=int(ant)):
                # One antenna missing mid-cycle; the cycle goes on to the next antenna.
                out.append(Count(f"reader-error:{item.error}"))
                self._cycle_errors[ant] = f"{item.error} (0x{item.error_code:02X})"
            case r2k.R2000InventoryEnd(cmd=r2k.CMD_FAST_SWITCH_ANT_INVENTORY):
                out += self._cycle_done(self._cycle_errors)
                out.append(self._send(mono))
            case r2k.R2000Status(cmd=r2k.CMD_FAST_SWITCH_ANT_INVENTORY):
                # The whole command failed (one byte): every antenna of the cycle with it,
                # unless it only found no tag.
                errors = {}
                if item.error_code != NO_TAG:
                    out.append(Count(f"reader-error:{item.error}"))
                    errors = {a: f"{item.error} (0x{item.error_code:02X})"
                              for a in self.antennas}
                out += self._cycle_done(errors)
                out.append(self._send(mono))
            case _:
                pass  # tags, firmware and other replies: well framed and harmless
        return out

    def _cycle_done(self, errors: dict[int, str]) -> list[Action]:
        """A 0x8A cycle ended: each antenna failing or not as the cycle said."""
        if errors != self.failing:
            self.failing = dict(errors)
            self.stale = True
        return [self._health()] if self.stale else []

    def _send(self, mono: float) -> Send:
        self.deadline = mono + self.reply_timeout_s
        if self.phase is Phase.FAST_SWITCH:
            self._cycle_errors = {}  # each command (the next cycle, or a resend) starts afresh
        elif self.phase is Phase.SET_ANTENNA:
            return Send(self._set_antenna[self.antennas[self.index]])
        return Send(self._inventory)

    def _report(self, state: ReaderState, detail: str) -> Report:
        self.reported = True
        return Report(state, detail)

    def _health(self) -> Report:
        self.stale = False
        if self.failing:
            return self._report(ReaderState.DEGRADED, "; ".join(
                f"antenna {a}: {e}" for a, e in sorted(self.failing.items())))
        return self._report(ReaderState.ONLINE, self.where)

    def _round_done(self, error: str | None) -> list[Action]:
        ant = self.antennas[self.index]
        failing = self.failing
        if error is None:
            if failing.pop(ant, None) is not None:
                self.stale = True
        elif failing.get(ant) != error:
            failing[ant] = error
            self.stale = True
        self.index = (self.index + 1) % len(self.antennas)
        self.phase = (Phase.SET_ANTENNA if self.antennas[self.index] != self.work_antenna
                      else Phase.INVENTORY)
        return [self._health()] if self.stale else []
