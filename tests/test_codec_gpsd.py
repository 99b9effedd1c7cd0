"""gpsd JSON codec against gpsd's own regression output (the twelve ``.log.chk`` files:
gpsd's TPV/SKY/GST lines interleaved with the NMEA it read) and hand-made bad lines."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from test_codec_nmea import NAMES

from captures import capture, jsonl
from drivers.codecs import Reject
from drivers.codecs import gpsd as g


def _run(data: bytes, step: int = 0) -> list[g.GpsdFrame | Reject]:
    dec = g.Decoder()
    if not step:
        return dec.feed(data) + dec.flush()
    out = [f for i in range(0, len(data), step) for f in dec.feed(data[i : i + step])]
    return out + dec.flush()


@pytest.mark.parametrize("name", NAMES)
def test_gpsd_regression_output(name: str) -> None:
    expected = {r["log"]: r for r in jsonl("nmea", "expected.jsonl")}[f"{name}.log"]
    data = capture("nmea", f"{name}.log.chk").read_bytes()
    out = _run(data)
    assert _run(data, 997) == out
    lines = [ln for ln in data.split(b"\n") if ln.strip()]
    assert len(out) == len(lines)  # one output per non-blank line, in order
    assert all(f.raw == ln.strip() for f, ln in zip(out, lines, strict=True))

    nmea_lines = sum(ln.startswith((b"$", b"!")) for ln in lines)
    rejects = [f for f in out if isinstance(f, Reject)]
    assert sum(r.reason == "bad-json" for r in rejects) == nmea_lines
    assert all(r.detail == "an NMEA sentence" for r in rejects if r.reason == "bad-json")

    # Every TPV gpsd wrote is decoded, except a mode >= 2 one without lat/lon
    # (bu353-glonass), which is refused: a fix needs a position.
    tpv_json = [json.loads(ln) for ln in lines if ln.startswith(b'{"class":"TPV"')]
    no_pos = sum(t["mode"] >= 2 and "lat" not in t for t in tpv_json)
    tpvs = [f for f in out if isinstance(f, g.Tpv)]
    assert len(tpvs) == expected["tpv_count"] - no_pos
    assert sum(r.reason == "bad-field" for r in rejects) == no_pos
    assert len(rejects) == nmea_lines + no_pos
    assert sum(t.has_fix for t in tpvs) == expected["tpv_mode_ge2_count"] - no_pos

    last = expected["last_fix_tpv"]
    fix = [t for t in tpvs if t.has_fix][-1]
    assert (fix.lat, fix.lon) == (pytest.approx(last["lat"]), pytest.approx(last["lon"]))
    if last["time"]:
        assert fix.time == dt.datetime.fromisoformat(last["time"].replace("Z", "+00:00"))
    skies = [f for f in out if isinstance(f, g.Sky)]
    assert len(skies) == sum(ln.startswith(b'{"class":"SKY"') for ln in lines)
    assert all(s.satellites_used is None or s.satellites_used >= 0 for s in skies)
    assert all(isinstance(f, g.GpsdOther) and f.cls == "GST"
               for f in out if not isinstance(f, Reject | g.Tpv | g.Sky))


def test_session_objects_and_bad_lines() -> None:
    out = _run(
        b'{"class":"VERSION","release":"3.22","rev":"3.22","proto_major":3,"proto_minor":14}\n'
        b'{"class":"DEVICES","devices":[{"class":"DEVICE","path":"/dev/ttyGPS0"}]}\r\n'
        b'{"class":"WATCH","enable":true,"json":true}\n'
        b"\n   \n"
        b'{"class":"ERROR","message":"Unrecognized request"}\n'
        b'{"class":"SKY","hdop":0.8,"uSat":7,"satellites":[{"used":true}]}\n'
        b'{"class":"SKY","hdop":1e9,"satellites":[{"used":true},{"used":false},{"used":1}]}\n'
        b'{"class":"TPV","mode":3,"status":2,"lat":37.5,"lon":126.9,"speed":1.5,'
        b'"time":"2025-06-01T12:00:00.000Z"}\n'
        b'{"class":"TPV","mode":1,"time":"2025-06-01T12:00:01Z","lat":1.0,"lon":2.0}\n'
        b"not json at all\n"
        b'["a list"]\n'
        b"\xff\xfe{}\n"
        b'{"class":"TPV","mode":3,"lat":"37.5","lon":126.9}\n'
        b'{"class":"TPV","mode":3,"lat":NaN,"lon":126.9}\n'
        b'{"class":"TPV","mode":true}\n'
        b'{"class":"TPV","mode":2,"lat":1.0,"lon":2.0,"time":"yesterday"}\n'
        b'{"class":"TPV","mode":0}'  # no LF at the end: decoded by flush
    )
    v, d, w, e, sky1, sky2, fix, nofix, *bad, last = out
    assert v == g.Version("3.22", 3, 14, v.raw)
    assert d.paths == ("/dev/ttyGPS0",) and w == g.GpsdOther("WATCH", w.raw)  # type: ignore[union-attr]
    assert e == g.GpsdError("Unrecognized request", e.raw)
    assert (sky1.satellites_used, sky1.hdop) == (7, 0.8)  # type: ignore[union-attr]
    assert (sky2.satellites_used, sky2.hdop) == (1, None)  # type: ignore[union-attr]
    assert isinstance(fix, g.Tpv) and (fix.lat, fix.lon, fix.fix_quality, fix.mode) == (
        37.5, 126.9, 2, 3)
    assert fix.time == dt.datetime(2025, 6, 1, 12, tzinfo=dt.UTC) and fix.speed_mps == 1.5
    assert isinstance(nofix, g.Tpv) and (nofix.lat, nofix.fix_quality, nofix.has_fix) == (
        None, 0, False)
    assert [(r.reason, r.detail) for r in bad] == [  # type: ignore[union-attr]
        ("bad-json", "not JSON"), ("bad-json", "not a JSON object"), ("bad-json", "not JSON"),
        ("bad-field", "a fix without a usable lat/lon"),
        ("bad-field", "a fix without a usable lat/lon"), ("bad-field", "mode"),
        ("bad-field", "time")]
    assert isinstance(last, g.Tpv) and last.mode == 0 and last.time is None


def test_too_long_line_is_one_reject_however_it_arrives() -> None:
    good = b'{"class":"TPV","mode":1}\n'
    long_line = b'{"class":"SKY","x":"' + b"a" * (g.MAX_LINE + 10) + b'"}\n'
    stream = good + long_line + good
    for step in (0, 1000, 4096, g.MAX_LINE, len(stream)):
        out = _run(stream, step)
        assert [f.reason if isinstance(f, Reject) else type(f).__name__ for f in out] == [
            "Tpv", "too-long", "Tpv"], step
        assert out[1].raw == long_line[: g.MAX_LINE]
    # A last line that never ends is dropped after the one reject.
    out = _run(good + long_line[:-1], 4096)
    assert [type(f).__name__ for f in out] == ["Tpv", "Reject"]
