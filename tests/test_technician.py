"""What a technician tripped over (issue 11): times people can read, the [[tags]] id from
`gatewayd decode ble`, help texts."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from drivers.codecs import ble
from gateway import cli
from gateway.decode import decode_stream
from gateway.model import TagRead
from gateway.recording import Recorder
from gateway.replay import main_locate, main_replay
from harness import GOOD_CONFIG

T0 = 1_796_000_000.25  # 2026-11-30T00:53:20.250Z = 09:53:20.250 in Seoul

CONFIG = GOOD_CONFIG + '\n[engine]\ntimezone = "Asia/Seoul"\n'


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[str, str]:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(CONFIG)
    rec_path = tmp_path / "readings.jsonl"
    with Recorder(rec_path, now=T0 - 1) as rec:
        rec(TagRead("gate-a", "62E3086CED", T0))
        rec.control("tick", T0 + 60)
    return str(cfg), str(rec_path)


def test_replay_prints_rfc3339_utc_and_local_times(recorded: tuple[str, str]) -> None:
    buf = io.StringIO()
    assert main_replay(*recorded, buf) == 0
    events = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert events
    for e in events:
        assert e["time_utc"].endswith("Z") and e["time_local"].endswith("+09:00")
    gate = next(e for e in events if e["time"] == T0)
    assert gate["time_utc"] == "2026-11-30T00:53:20.250Z"
    assert gate["time_local"] == "2026-11-30T09:53:20.250+09:00"


def test_locate_prints_rfc3339_utc_and_local_times(recorded: tuple[str, str]) -> None:
    buf = io.StringIO()
    assert main_locate(recorded[0], recorded[1], "c-1", buf) == 0
    answer = json.loads(buf.getvalue())
    assert answer["time"] == T0
    assert answer["time_utc"] == "2026-11-30T00:53:20.250Z"
    assert answer["time_local"] == "2026-11-30T09:53:20.250+09:00"


def test_decode_ble_shows_the_id_to_enrol() -> None:
    uuid = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
    lines = [ble.encode_adv_hex(ble.encode_ibeacon(uuid, 7, 42), {}),
             ble.encode_adv_hex({}, ble.encode_eddystone_uid("edd1ebeac04e5defa017",
                                                             "0000000000a2"))]
    out = list(decode_stream("ble", ("\n".join(lines) + "\n").encode()))
    assert [d.get("tag_id") for d in out] == [
        f"ibeacon:{uuid}:7:42", "eddystone:edd1ebeac04e5defa017:0000000000a2"]
    assert out[0]["major"] == 7 and out[0]["minor"] == 42  # the fields stay


def test_run_options_have_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    assert "the unit's TOML config" in text
    assert "least severe log lines shown" in text


def test_sim_help_shows_no_raw_markup(capsys: pytest.CaptureFixture[str]) -> None:
    from firmware_sim import cli as sim_cli

    with pytest.raises(SystemExit):
        sim_cli.main(["--help"])
    text = capsys.readouterr().out
    assert "kidsafe-sim run SCENARIO.toml" in text and "``" not in text


def test_gate_event_log_lines_carry_the_direction(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from gateway import config as configmod
    from gateway.clock import FakeClock
    from gateway.engine import Engine
    from gateway.model import Event, Lane
    from gateway.outbox import Outbox
    from gateway.pipeline import Pipeline

    cfg = configmod.parse({
        "unit": {"id": "u-1", "site": "s"}, "broker": {},
        "buffer": {"path": str(tmp_path / "b.db")},
        "readers": [{"id": "g", "kind": "rdm6300", "port": "/dev/null"}],
        "tags": [{"id": "62E3086CED", "child": "c-1"}],
    })
    pipe = Pipeline(cfg, Engine(configmod.engine_config(cfg)), Outbox(cfg.buffer.path, "u-1", "s"),
                    FakeClock())
    with caplog.at_level(logging.INFO, logger="gateway.pipeline"):
        pipe.commit([Event("gate", 1.7e9, Lane.ROUTINE, "g", "c-1", {"direction": "arrival"}),
                     Event("gate", 1.7e9 + 1, Lane.ROUTINE, "g", "c-1", {"direction": None}),
                     Event("zone_enter", 1.7e9 + 2, Lane.ROUTINE, "g", "c-1", {"zone": "z"})])
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event ")]
    assert lines[0].endswith("lane=routine direction=arrival")
    assert lines[1].endswith("lane=routine direction=-")
    assert lines[2].endswith("lane=routine")


@pytest.mark.timeout(90)
def test_the_demo_shows_its_noise_rejected_and_counted(tmp_path: Path) -> None:
    """`kidsafe-sim demo` (gate only): the garbage, the bad checksum and the visitor's card it
    feeds in are named, then shown counted in the gateway's health message."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "firmware_sim", "demo", "--workdir",
                        str(tmp_path)], capture_output=True, text=True, timeout=80)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "noise fed in on the way: 24 garbage bytes" in out
    assert "a frame with a bad checksum" in out and "a visitor's card 1234567890" in out
    line = next(ln for ln in out.splitlines() if "the gateway's health message" in ln)
    assert "checksum" in line and "garbage" in line
    assert "not enrolled (counted only" in line and " 0 read(s)" not in line
