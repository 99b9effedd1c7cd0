"""Zone calibration: the estimator, the config edit, and `gatewayd calibrate` end to end."""

from __future__ import annotations

import json
import math
import random
import tomllib
from pathlib import Path

import pytest

from gateway import calibrate, cli
from gateway import config as configmod

CONFIG = """\
# a site config: comments and order are kept by a calibration
[unit]
id = "unit-1"
site = "park"

[broker]
host = "127.0.0.1"

[buffer]
path = "buffer.db"

[[readers]]
id = "ble-yard"
kind = "rdm6300"   # any kind: calibration reads a recording
role = "zone"
port = "/dev/null"

[[zones]]
id = "hall"
enter_dbm = -70.0
exit_dbm = -80.0

[[zones]]
# the yard: 20 m around the reader
id = "yard"
radius_m = 20.0
enter_dbm = -75.0   # a hand-set value, replaced
dwell_s = 4.0

[[tags]]
id = "C0FFEE000001"
child = "c-1"
"""
REF_TAG = "CA11B0000001"


def samples(rnd: random.Random, mean: float, n: int, sigma: float = 6.0) -> list[float]:
    """RSSI with slow fades (an AR(1) of 3 s) plus 3 dB per advert, as a BLE tag gives."""
    x, out = rnd.gauss(0, 5), list[float]()
    for _ in range(n):
        x = 0.72 * x + math.sqrt(1 - 0.72 ** 2) * 5 * rnd.gauss(0, 1)
        out.append(round(mean + x + rnd.gauss(0, 3)))
    return out


def test_estimate_recovers_the_boundary_level_and_exponent() -> None:
    errors = []
    for seed in range(40):
        rnd = random.Random(seed)
        exponent = rnd.uniform(2.0, 2.7)
        boundary = -60 - 10 * exponent * math.log10(25)
        est = calibrate.estimate(samples(rnd, boundary, 90), samples(rnd, -60, 90), 25.0)
        assert est.exponent is not None
        errors.append((est.boundary_dbm - boundary, est.exponent - exponent))
        assert 3.0 < est.spread_db < 9.0 and 0.8 < est.stderr_db < 2.5
    # The median of 90 adverts: within about 2 dB, the exponent within about 0.2.
    assert sorted(abs(b) for b, _ in errors)[35] < 2.5
    assert sorted(abs(n) for _, n in errors)[35] < 0.2


def test_too_short_or_inverted_recordings_are_refused() -> None:
    with pytest.raises(calibrate.CalibrationError, match="hold the tag there longer"):
        calibrate.estimate([-80.0] * 10, None, 20.0)
    with pytest.raises(calibrate.CalibrationError, match="not stronger"):
        calibrate.estimate([-80.0] * 40, [-85.0] * 40, 20.0)


def test_thresholds_widen_only_for_an_uncertain_calibration() -> None:
    good = calibrate.Estimate(20.0, -85.0, 5.0, 90, 1.2)
    assert calibrate.thresholds(good) == calibrate.Thresholds(-85.0, -79.0, -89.5)
    shaky = calibrate.Estimate(20.0, -85.0, 9.0, 30, 3.0)
    assert calibrate.thresholds(shaky) == calibrate.Thresholds(-85.0, -77.0, -91.5)


def test_edit_zone_replaces_only_the_calibration_keys_of_that_zone() -> None:
    lines = ["boundary_dbm = -85.0", "enter_dbm = -82.0", "exit_dbm = -89.5",
             'calibration = { date = "2026-12-01", samples = 90 }']
    new = calibrate.edit_zone(CONFIG, "yard", lines)
    old_lines, new_lines = CONFIG.splitlines(), new.splitlines()
    assert [x for x in old_lines if x not in new_lines] == [
        "enter_dbm = -75.0   # a hand-set value, replaced"]
    assert [x for x in new_lines if x not in old_lines] == lines
    raw = tomllib.loads(new)
    assert raw["zones"][0] == {"id": "hall", "enter_dbm": -70.0, "exit_dbm": -80.0}
    assert raw["zones"][1]["enter_dbm"] == -82.0 and raw["zones"][1]["dwell_s"] == 4.0
    with pytest.raises(KeyError):
        calibrate.edit_zone(CONFIG, "car-park", lines)
    # The id as the very last line of a file without a final newline.
    tail = calibrate.edit_zone('[[zones]]\nid = "yard"', "yard", lines[:1])
    assert tail == '[[zones]]\nid = "yard"\nboundary_dbm = -85.0\n'


def recording(path: Path, rssi: list[float], t0: float = 1_764_590_000.0,
              tag: str = REF_TAG) -> str:
    with path.open("a") as f:
        f.write(json.dumps({"type": "start", "t": t0}) + "\n")
        for i, v in enumerate(rssi):
            f.write(json.dumps({"type": "ble", "t": t0 + i * 1.25, "reader": "ble-yard",
                                "tag": tag.lower(), "rssi": int(v)}) + "\n")
            if i % 7 == 0:  # another tag, heard meanwhile: not the reference
                f.write(json.dumps({"type": "ble", "t": t0 + i * 1.25 + 0.5,
                                    "reader": "ble-yard", "tag": "C0FFEE000001",
                                    "rssi": -50}) + "\n")
    return str(path)


def test_calibrate_command_prints_then_writes_a_valid_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(CONFIG)
    rnd = random.Random(5)
    boundary = recording(tmp_path / "b.jsonl", samples(rnd, -88.0, 90))
    one_m = recording(tmp_path / "m.jsonl", samples(rnd, -60.0, 60))
    args = ["calibrate", "yard", "--config", str(cfg), "--tag", REF_TAG,
            "--boundary", boundary, "--one-m", one_m]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "path-loss exponent" in out and "boundary_dbm = " in out
    assert cfg.read_text() == CONFIG  # printed, not written

    assert cli.main([*args, "--write"]) == 0
    assert "wrote the thresholds" in capsys.readouterr().out
    zone = next(z for z in configmod.load(cfg).engine.zones if z.id == "yard")
    assert abs(zone.boundary_dbm + 88.0) < 3.0
    assert zone.enter_dbm == pytest.approx(zone.boundary_dbm + 6.0)
    assert zone.exit_dbm <= zone.boundary_dbm - 4.5 and zone.dwell_s == 4.0
    table = tomllib.loads(cfg.read_text())["zones"][1]["calibration"]
    assert table["samples"] == 90 and 2.0 < table["exponent"] < 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl", "gw.toml", "m.jsonl"]


def test_calibrate_command_leaves_the_config_alone_on_errors(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(CONFIG.replace("dwell_s = 4.0", "dwell_s = -1.0"))  # already broken
    rnd = random.Random(6)
    boundary = recording(tmp_path / "b.jsonl", samples(rnd, -88.0, 90))
    base = ["calibrate", "yard", "--config", str(cfg), "--tag", REF_TAG, "--boundary", boundary]
    assert cli.main([*base, "--write"]) == 2  # the config does not load: nothing to edit
    cfg.write_text(CONFIG)
    assert cli.main([*base[:-1], recording(tmp_path / "s.jsonl", [-88.0] * 5), "--write"]) == 1
    assert "hold the tag there longer" in capsys.readouterr().err
    assert cli.main(["calibrate", "hall", *base[2:], "--write"]) == 2  # no radius_m
    assert "give --radius" in capsys.readouterr().err
    assert cfg.read_text() == CONFIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl", "gw.toml", "s.jsonl"]


def test_an_edit_that_would_not_load_is_not_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(CONFIG)
    boundary = recording(tmp_path / "b.jsonl", samples(random.Random(7), -88.0, 90))
    monkeypatch.setattr(calibrate, "snippet", lambda *_: ["enter_dbm = -90.0",
                                                          "exit_dbm = -80.0"])
    assert cli.main(["calibrate", "yard", "--config", str(cfg), "--tag", REF_TAG,
                     "--boundary", boundary, "--write"]) == 1
    assert "would not load" in capsys.readouterr().err
    assert cfg.read_text() == CONFIG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.jsonl", "gw.toml"]


def test_several_reference_tags_are_pooled(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(CONFIG)
    rec = tmp_path / "b.jsonl"
    recording(rec, [-86.0] * 40)  # this tag's radio is 4 dB stronger than the other's
    recording(rec, [-90.0] * 40, t0=1_764_590_000.6, tag="CA11B0000002")
    assert cli.main(["calibrate", "yard", "--config", str(cfg), "--tag", REF_TAG,
                     "--tag", "ca11b0000002", "--boundary", str(rec)]) == 0
    out = capsys.readouterr().out
    assert "tag(s) CA11B0000001, CA11B0000002" in out
    assert "boundary  -88.0 dBm (median of 80 adverts)" in out
