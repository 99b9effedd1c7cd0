"""The R2000 polling protocol without a port, a thread or a sleep: frames and time in,
commands, counts, states and "reopen" out (drivers/_uhf_poll.py)."""

from __future__ import annotations

from typing import Any

from drivers._uhf_poll import Action, Count, Poller, Reopen, Report, Send
from drivers.codecs import Reject
from drivers.codecs import uhf_r2000 as r2k
from gateway.model import ReaderState

EPC = "E2000017221101441890ABCD"
ANT_MISSING = 0x22
NO_TAG = 0x36


def reply(raw: bytes) -> Any:
    """A reader reply as the driver hands it over: decoded by the real codec."""
    (frame,) = r2k.Decoder().feed(raw)
    assert not isinstance(frame, Reject), frame
    return frame


def antenna_ok() -> Any:
    return reply(r2k.encode_status(r2k.CMD_SET_WORK_ANTENNA, 0x10))


def inventory_end(antenna: int, n: int = 0) -> Any:
    return reply(r2k.encode_inventory_end(n, 0, antenna))


def inventory_error(code: int) -> Any:
    return reply(r2k.encode_status(r2k.CMD_REAL_TIME_INVENTORY, code))


def sent(actions: list[Action]) -> list[tuple[str, bytes]]:
    """The commands in ``actions``: (name, data) as the reader would parse them."""
    out = []
    for a in actions:
        if isinstance(a, Send):
            cmd = r2k.parse_command(a.data)
            assert not isinstance(cmd, Reject)
            out.append((cmd.name, cmd.data))
    return out


def reports(actions: list[Action]) -> list[tuple[ReaderState, str]]:
    return [(a.state, a.detail) for a in actions if isinstance(a, Report)]


def counts(actions: list[Action]) -> list[str]:
    return [a.reason for a in actions if isinstance(a, Count)]


def poller(antennas: list[int], **kw: Any) -> Poller:
    return Poller(antennas, reply_timeout_s=0.5, silence_s=3.0, where="/dev/ttyUHF0", **kw)


def test_cycles_antennas_setting_each_before_its_round() -> None:
    p = poller([1, 2])
    assert sent(p.start(0.0)) == [("set_work_antenna", b"\x00")]
    out = p.frame(antenna_ok(), 0.1)
    assert reports(out) == [(ReaderState.ONLINE, "/dev/ttyUHF0")]  # the first reply
    assert sent(out) == [("real_time_inventory", b"\x01")]
    assert sent(p.frame(reply(r2k.encode_tag(EPC, 60, 1)), 0.12)) == []  # tags: no command
    assert sent(p.frame(inventory_end(1, n=1), 0.15)) == [("set_work_antenna", b"\x01")]
    assert sent(p.frame(antenna_ok(), 0.2)) == [("real_time_inventory", b"\x01")]
    assert sent(p.frame(inventory_end(2), 0.25)) == [("set_work_antenna", b"\x00")]
    assert p.tick(0.3) == []  # within the reply timeout: nothing to do


def test_one_antenna_is_set_once_then_only_polled() -> None:
    p = poller([3], repeat=2)
    assert sent(p.start(0.0)) == [("set_work_antenna", b"\x02")]
    assert sent(p.frame(antenna_ok(), 0.1)) == [("real_time_inventory", b"\x02")]
    for t in (0.2, 0.3, 0.4):
        out = p.frame(inventory_end(3), t)
        assert sent(out) == [("real_time_inventory", b"\x02")]
        assert reports(out) == []  # reported with the first reply; a round changed nothing
    assert sent(p.frame(inventory_error(NO_TAG), 0.5)) == [("real_time_inventory", b"\x02")]
    assert counts(p.frame(inventory_error(NO_TAG), 0.6)) == []  # "no tag" is not a fault


def test_reply_timeout_resends_the_same_command_and_degrades() -> None:
    p = poller([1, 2])
    p.start(0.0)
    p.frame(antenna_ok(), 0.1)  # inventory sent at 0.1, due by 0.6
    assert p.tick(0.59) == []
    out = p.tick(0.6)
    assert counts(out) == ["no-reply"]
    assert reports(out) == [(ReaderState.DEGRADED, "no reply for 0.5 s")]
    assert sent(out) == [("real_time_inventory", b"\x01")]
    assert p.tick(1.0) == []  # the resend has its own deadline
    # The reply comes after all: the round ends and the cycle goes on.
    out = p.frame(inventory_end(1), 1.05)
    assert reports(out) == [(ReaderState.ONLINE, "/dev/ttyUHF0")]
    assert sent(out) == [("set_work_antenna", b"\x01")]


def test_silence_asks_for_the_port_to_be_reopened() -> None:
    p = poller([1])
    p.start(0.0)
    t = 0.0
    out: list[Action] = []
    while not any(isinstance(a, Reopen) for a in out):
        t += 0.05
        out = p.tick(round(t, 2))
        assert t < 3.1, "no reopen after silence_s"
    assert round(t, 2) == 3.0
    assert counts(out) == ["no-reply"]
    assert reports(out) == [(ReaderState.DEGRADED, "no reply for 3 s; reopening the port")]
    assert sent(out) == []  # nothing more is sent on this connection
    assert isinstance(out[-1], Reopen) and "3 s" in out[-1].reason


def test_a_mute_reader_is_never_reported_online() -> None:
    p = poller([1])
    out = p.start(0.0) + [a for k in range(1, 60) for a in p.tick(k * 0.05)]
    states = {s for s, _ in reports(out)}
    assert states == {ReaderState.DEGRADED}
    assert counts(out).count("no-reply") == 5  # one per reply timeout, up to silence_s


def test_error_replies_degrade_their_antenna_until_it_reads_again() -> None:
    p = poller([1, 2])
    p.start(0.0)
    p.frame(antenna_ok(), 0.1)
    p.frame(inventory_end(1), 0.2)
    p.frame(antenna_ok(), 0.3)
    out = p.frame(inventory_error(ANT_MISSING), 0.4)
    assert counts(out) == ["reader-error:antenna_missing_error"]
    (state, detail), = reports(out)
    assert state is ReaderState.DEGRADED
    assert detail == "antenna 2: antenna_missing_error (0x22)"
    assert sent(out) == [("set_work_antenna", b"\x00")]  # on to antenna 1 regardless
    p.frame(antenna_ok(), 0.5)
    out = p.frame(inventory_end(1), 0.6)  # antenna 1 fine, antenna 2 still failing
    assert reports(out) == []  # nothing changed: DEGRADED stands, not reported again
    p.frame(antenna_ok(), 0.7)
    out = p.frame(inventory_end(2), 0.8)
    assert reports(out) == [(ReaderState.ONLINE, "/dev/ttyUHF0")]


def test_a_refused_antenna_switch_counts_and_moves_on() -> None:
    p = poller([1, 4])
    p.start(0.0)
    p.frame(antenna_ok(), 0.1)
    p.frame(inventory_end(1), 0.2)
    out = p.frame(reply(r2k.encode_status(r2k.CMD_SET_WORK_ANTENNA, 0x41)), 0.3)
    assert counts(out) == ["reader-error:parameter_invalid"]
    assert reports(out) == [(ReaderState.DEGRADED,
                             "antenna 4: set antenna failed (parameter_invalid)")]
    # Antenna 1 is still the work antenna: straight to the inventory, no switch.
    assert sent(out) == [("real_time_inventory", b"\x01")]


def test_replies_out_of_turn_are_ignored() -> None:
    p = poller([1])
    p.start(0.0)
    p.frame(antenna_ok(), 0.1)
    assert p.frame(antenna_ok(), 0.15) == []  # a stray 0x74 status during the inventory
    assert p.frame(reply(r2k.encode_frame(r2k.CMD_GET_FIRMWARE_VERSION, bytes([1, 8]))),
                   0.2) == []
    # ... but they prove the reader is there: the command is resent on time, yet the reader
    # has not been quiet for reply_timeout_s, so it is not degraded.
    out = p.tick(0.6)
    assert counts(out) == ["no-reply"] and reports(out) == []
    assert sent(out) == [("real_time_inventory", b"\x01")]


# -- 0x8A fast switch: one command cycles every antenna ------------------------------------

def fast_end(n: int = 0) -> Any:
    return reply(r2k.encode_fast_switch_end(n, 62))


def fast_missing(antenna: int) -> Any:
    return reply(r2k.encode_frame(r2k.CMD_FAST_SWITCH_ANT_INVENTORY,
                                  bytes([antenna - 1, ANT_MISSING])))


FAST = ("fast_switch_ant_inventory", bytes([0, 2, 0xFF, 0xFF, 1]))  # antennas 1 and 3


def test_fast_switch_sends_one_command_per_cycle_of_every_antenna() -> None:
    p = poller([1, 3], fast_switch=True)
    assert sent(p.start(0.0)) == [FAST]  # no 0x74: the reader switches itself
    tag = reply(r2k.encode_tag(EPC, 60, 3, cmd=r2k.CMD_FAST_SWITCH_ANT_INVENTORY))
    out = p.frame(tag, 0.03)
    assert reports(out) == [(ReaderState.ONLINE, "/dev/ttyUHF0")] and sent(out) == []
    for t in (0.07, 0.14, 0.21):  # the next cycle when the summary comes; nothing to report
        out = p.frame(fast_end(1), t)
        assert sent(out) == [FAST] and reports(out) == [] and counts(out) == []
    assert p.tick(0.3) == []


def test_fast_switch_names_a_missing_antenna_until_a_cycle_reads_it_again() -> None:
    p = poller([1, 3], fast_switch=True)
    p.start(0.0)
    p.frame(fast_end(), 0.07)
    out = p.frame(fast_missing(3), 0.1)  # mid-cycle: counted, the cycle goes on
    assert counts(out) == ["reader-error:antenna_missing_error"] and sent(out) == []
    out = p.frame(fast_end(), 0.14)
    assert reports(out) == [(ReaderState.DEGRADED, "antenna 3: antenna_missing_error (0x22)")]
    assert sent(out) == [FAST]
    p.frame(fast_missing(3), 0.17)
    assert reports(p.frame(fast_end(), 0.2)) == []  # still missing: nothing new
    assert reports(p.frame(fast_end(), 0.27)) == [(ReaderState.ONLINE, "/dev/ttyUHF0")]


def test_fast_switch_failed_command_degrades_every_antenna_and_no_tag_does_not() -> None:
    p = poller([1, 3], fast_switch=True)
    p.start(0.0)
    fail = reply(r2k.encode_status(r2k.CMD_FAST_SWITCH_ANT_INVENTORY, 0x11))
    out = p.frame(fail, 0.05)
    assert counts(out) == ["reader-error:command_fail"] and sent(out) == [FAST]
    (_, _), (state, detail) = reports(out)  # the first reply: there (ONLINE), then this
    assert state is ReaderState.DEGRADED and "antenna 1" in detail and "antenna 3" in detail
    no_tag = reply(r2k.encode_status(r2k.CMD_FAST_SWITCH_ANT_INVENTORY, NO_TAG))
    out = p.frame(no_tag, 0.1)
    assert counts(out) == [] and reports(out) == [(ReaderState.ONLINE, "/dev/ttyUHF0")]


def test_fast_switch_lost_summary_resends_the_cycle() -> None:
    p = poller([1, 3], fast_switch=True)
    p.start(0.0)
    p.frame(fast_missing(1), 0.05)  # then the summary is lost: the cycle's errors go too
    out = p.tick(0.6)  # quiet for the reply timeout: resent, and degraded meanwhile
    assert counts(out) == ["no-reply"] and sent(out) == [FAST]
    assert [s for s, _ in reports(out)] == [ReaderState.DEGRADED]
    # The resent cycle is clean: antenna 1's error went with the lost summary's cycle.
    assert reports(p.frame(fast_end(), 0.7)) == [(ReaderState.ONLINE, "/dev/ttyUHF0")]
    assert p.failing == {}


def test_one_antenna_needs_no_fast_switch() -> None:
    p = poller([2], fast_switch=True)
    assert sent(p.start(0.0)) == [("set_work_antenna", b"\x01")]
