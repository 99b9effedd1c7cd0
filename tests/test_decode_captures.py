"""gateway.decode (what `gatewayd decode KIND FILE` prints) over the real captures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from pathlib import Path

from captures import capture, jsonl
from drivers import registry
from gateway.decode import decode_file, decode_stream, frame_dict, kinds, main_decode


def test_rdm6300_stream_as_binary_and_hex_dump(tmp_path: Path) -> None:
    (row,) = [r for r in jsonl("rfid", "rdm6300.jsonl") if "stream_hex" in r]
    raw = bytes.fromhex(row["stream_hex"])
    binf = tmp_path / "cap.bin"
    binf.write_bytes(raw)
    hexf = tmp_path / "cap.hex"
    text = row["stream_hex"]
    hexf.write_text(
        "\n".join(
            " ".join(text[i : i + 2] for i in range(j, min(j + 32, len(text)), 2))
            for j in range(0, len(text), 32)
        )
        + "\n"
    )
    for path in (binf, hexf):
        out = list(decode_file("rdm6300", path))
        assert [d["card_id"] for d in out if d["ok"]] == row["expected_tags_strict"]
        rej = [d for d in out if not d["ok"]]
        assert rej and all(d["reason"] and d["raw_hex"] for d in rej)
        assert {"garbage", "checksum"} <= {d["reason"] for d in rej}


def test_uhf_frames(tmp_path: Path) -> None:
    rows = [
        r
        for r in jsonl("uhf", "frames.jsonl")
        if r["protocol"].startswith("r2000") and r["direction"] == "reader_to_host"
    ]
    for r in rows:
        (d,) = list(decode_stream("uhf_r2000", r["frame_hex"].encode()))
        if r["expected"] == "reject":
            assert d["ok"] is False and d["reason"] in ("checksum", "truncated")
            assert d["raw_hex"] == r["frame_hex"]
        else:
            assert d["ok"] is True and d["addr"] == r["expected"]["addr"]
            if "epc" in r["expected"]:
                assert d["epc"] == r["expected"]["epc"].upper()
                assert d["rssi_dbm"] == r["expected"]["rssi_dbm"]
                assert d["antenna"] == r["expected"]["antenna"]
            if "error_code" in r["expected"]:
                assert d["error_code"] == r["expected"]["error_code"]
                assert d["success"] is r["expected"]["ok"]  # the reader's own verdict
            if "firmware" in r["expected"]:
                assert d["firmware"] == r["expected"]["firmware"]


def test_nmea_gpsd_log_with_header() -> None:
    out = list(decode_file("gps_nmea", capture("nmea", "triton400.log")))
    ok = [d for d in out if d["ok"]]
    assert len(ok) == 28  # 27 whole lines + the GLL recovered after the cut GGA
    assert [d["reason"] for d in out if not d["ok"]] == ["truncated"]
    rmc = [d for d in ok if d["frame"] == "Rmc"]
    assert rmc[-1]["date"] == "2013-04-01" and rmc[-1]["valid"] is True
    json.dumps(out)  # all JSON-able


def test_nmea_coldboot_rejects() -> None:
    out = list(decode_file("gps_nmea", capture("nmea", "gp-320fw-2019-04-07-coldboot.log")))
    reasons = [d["reason"] for d in out if not d["ok"]]
    assert reasons.count("checksum") == 36
    assert "bad-char" in reasons and "no-checksum" in reasons


def test_ble_vectors_file() -> None:
    path = capture("ble", "vectors.jsonl")
    out = list(decode_file("ble", path))
    vectors = jsonl("ble", "vectors.jsonl")
    assert len(out) == len(vectors)
    for v, d in zip(vectors, out, strict=True):
        assert d["ok"] is (v["expected"] != "reject"), (v["source"], d)
        if d["ok"]:
            for k, want in v["expected"].items():
                assert d[k] == want, (k, d)


def test_gpsd_json_log() -> None:
    """gpsd's regression output: its JSON lines, with the NMEA it echoed rejected."""
    expected = {r["log"]: r for r in jsonl("nmea", "expected.jsonl")}["sirfstarv-nmea.log"]
    out = list(decode_file("gpsd", capture("nmea", "sirfstarv-nmea.log.chk")))
    tpv = [d for d in out if d["ok"] and d["frame"] == "Tpv"]
    assert len(tpv) == expected["tpv_count"]
    assert {d["reason"] for d in out if not d["ok"]} == {"bad-json"}
    last = expected["last_fix_tpv"]
    assert (tpv[-1]["lat"], tpv[-1]["lon"]) == (last["lat"], last["lon"])
    assert dt.datetime.fromisoformat(tpv[-1]["time"]) == dt.datetime.fromisoformat(
        last["time"].replace("Z", "+00:00"))
    json.dumps(out)


def test_every_reader_kind_decodes(tmp_path: Path) -> None:
    """Dispatch comes from each codec's own declarations, for every kind in the registry."""
    assert kinds() == registry.names()
    for kind in kinds():
        mod = registry.codec(kind)
        assert mod.INPUT in ("binary", "lines") and kind == mod.KIND
        assert isinstance(mod.DERIVED, tuple) and isinstance(mod.REASONS, frozenset)
        assert list(decode_stream(kind, b"")) == []
        assert all(not d["ok"] and d["reason"] in mod.REASONS
                   for d in decode_stream(kind, b"\x00\x01 junk\n"))
        if mod.INPUT == "lines" and mod.COMMENT:
            assert list(decode_stream(kind, mod.COMMENT + b" a note\n")) == []


def test_main_decode_exit_codes(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main_decode("nope", tmp_path / "x", out, err) == 2 and "unknown kind" in err.getvalue()
    err = io.StringIO()
    assert main_decode("nmea", tmp_path / "x", out, err) == 2  # the codec's module name
    assert "did you mean 'gps_nmea'?" in err.getvalue()
    err = io.StringIO()
    assert main_decode("gps_nmea", tmp_path / "missing.log", out, err) == 2
    assert "cannot read" in err.getvalue()
    out = io.StringIO()
    assert main_decode("gps_nmea", capture("nmea", "bn-9015.nmea"), out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 70 and all(json.loads(x)["ok"] for x in lines)


def test_nested_frames_are_jsonable() -> None:
    """A frame holding frames (a reply listing several tags) prints as nested objects."""

    @dataclasses.dataclass(frozen=True)
    class Tag:
        epc: bytes
        seen: dt.time

    @dataclasses.dataclass(frozen=True)
    class Reply:
        tags: tuple[Tag, ...]
        raw: bytes

    d = frame_dict(Reply((Tag(b"\xe2\x00", dt.time(1, 2)),), b"\x01"))
    assert d == {"ok": True, "frame": "Reply", "tags": [{"epc": "e200", "seen": "01:02:00"}],
                 "raw_hex": "01"}
    json.dumps(d)
