"""R2000 "0xA0" UHF decoder against uhf/frames.jsonl, plus stream behaviour."""

from __future__ import annotations

import json

import pytest

from captures import jsonl
from drivers.codecs import Reject
from drivers.codecs import uhf_r2000 as r2k


def _decode(raw: bytes) -> list[r2k.R2000Frame | Reject]:
    dec = r2k.Decoder()
    return dec.feed(raw) + dec.flush()


def _rows(protocol_prefix: str) -> list[dict]:
    return [r for r in jsonl("uhf", "frames.jsonl") if r["protocol"].startswith(protocol_prefix)]


def test_r2000_reader_frames_match_expected() -> None:
    rows = [r for r in _rows("r2000") if r["direction"] == "reader_to_host"]
    assert len(rows) == 9
    for r in rows:
        out = _decode(bytes.fromhex(r["frame_hex"]))
        exp = r["expected"]
        if exp == "reject":
            assert len(out) == 1 and isinstance(out[0], Reject), r
            want = "truncated" if "truncated" in r["note"] else "checksum"
            assert out[0].reason == want, (r, out)
            continue
        assert len(out) == 1 and not isinstance(out[0], Reject), (r, out)
        f = out[0]
        assert (f.addr, f.cmd) == (exp["addr"], exp["cmd"]), r
        if "epc" in exp:
            assert isinstance(f, r2k.R2000Tag)
            assert f.epc == exp["epc"].upper()
            assert f.pc == int(exp["pc"], 16)
            assert (f.antenna, f.freq_index) == (exp["antenna"], exp["freq_index"])
            assert (f.rssi_raw, f.rssi_dbm) == (exp["rssi_raw"], exp["rssi_dbm"])
        elif "error_code" in exp:
            assert isinstance(f, r2k.R2000Status)
            assert (f.error_code, f.success) == (exp["error_code"], exp["ok"])
        elif "firmware" in exp:
            assert isinstance(f, r2k.R2000Firmware) and f.firmware == exp["firmware"]
        else:
            # Well framed but an unknown summary layout: kept, and no tag invented.
            assert isinstance(f, r2k.R2000Reply) and f.data.hex() == exp["data_hex"]
            assert exp["tags"] == []


def test_r2000_host_frames_parse_and_encode() -> None:
    rows = [r for r in _rows("r2000") if r["direction"] == "host_to_reader"]
    assert len(rows) == 3
    for r in rows:
        raw = bytes.fromhex(r["frame_hex"])
        cmd = r2k.parse_command(raw)
        assert isinstance(cmd, r2k.R2000Command)
        assert (cmd.addr, cmd.cmd) == (r["expected"]["addr"], r["expected"]["cmd"])
    assert r2k.encode_get_firmware_version(addr=1).hex() == "a0030172ea"
    assert r2k.encode_set_work_antenna(1, addr=1).hex() == "a004017400e7"
    assert r2k.encode_real_time_inventory(repeat=1, addr=1).hex() == "a004018901d1"


def test_r2000_fast_switch_frames() -> None:
    """0x8A as V2.2 lays it out (../shared/data/captures/SOURCES.md has the spec's
    source): the host packet, the per-antenna missing reply, the summary (Total_Read(4)
    Command_Duration(4)) never taken for a tag, the 3-byte Total_Read of other firmware,
    and a tag packet with a 2-word EPC of the same length as the summary."""
    cmd = r2k.parse_command(r2k.encode_fast_switch_inventory([1, 2, 4], repeat=3))
    assert isinstance(cmd, r2k.R2000Command) and cmd.name == "fast_switch_ant_inventory"
    assert cmd.data == bytes([0, 1, 3, 0xFF, 3]) and cmd.raw[1] == 0x08  # Len 0x08
    for bad in ([], [1, 2, 3, 4, 1], [0], [5]):
        with pytest.raises(ValueError):
            r2k.encode_fast_switch_inventory(bad)
    (end,) = _decode(r2k.encode_fast_switch_end(70_000, 1234))
    assert isinstance(end, r2k.R2000InventoryEnd) and end.raw[1] == 0x0B  # Len 0x0B
    assert (end.total_read, end.duration_ms, end.antenna) == (70_000, 1234, None)
    (short,) = _decode(r2k.encode_frame(0x8A, (5).to_bytes(3, "big") + (80).to_bytes(4, "big")))
    assert isinstance(short, r2k.R2000InventoryEnd) and short.total_read == 5
    (missing,) = _decode(r2k.encode_frame(0x8A, bytes([2, 0x22])))
    assert isinstance(missing, r2k.R2000Status) and missing.raw[1] == 0x05  # Len 0x05
    assert (missing.antenna, missing.error, missing.success) == (3, "antenna_missing_error",
                                                                 False)
    (tag,) = _decode(r2k.encode_tag("E2001234", 60, 2, cmd=0x8A))  # PC: 2 words
    assert isinstance(tag, r2k.R2000Tag) and (tag.epc, tag.antenna) == ("E2001234", 2)


def test_chafon_frames_are_another_protocol() -> None:
    """Chafon frames (CRC-16 framing, no 0xA0 head) are not R2000: never a tag here."""
    rows = _rows("chafon")
    assert rows, "chafon rows expected in frames.jsonl"
    for r in rows:
        out = _decode(bytes.fromhex(r["frame_hex"]))
        assert not any(isinstance(f, r2k.R2000Tag) for f in out), r


def test_rssi_table_rule_matches_spec_extract() -> None:
    from captures import capture

    table = json.loads(capture("uhf", "r2000_rssi_table.json").read_text())["raw_to_dbm"]
    for raw_s, dbm in table.items():
        assert r2k.rssi_dbm(int(raw_s)) == dbm
    assert r2k.rssi_dbm(30) is None and r2k.rssi_dbm(99) is None


def test_stream_resync_after_garbage_bad_check_and_cut_frame() -> None:
    tag = r2k.encode_tag("E200301666130121155074EF", rssi_raw=69, antenna=3, freq_index=5)
    bad = bytearray(tag)
    bad[-1] ^= 0xFF
    cut = tag[:11]
    end = r2k.encode_inventory_end(total_read=2, read_rate=40, antenna=3)
    missing = r2k.encode_status(r2k.CMD_REAL_TIME_INVENTORY, 0x22)
    stream = b"\x00\xff junk" + tag + bytes(bad) + cut + tag + end + missing
    out = _decode(stream)
    tags = [f for f in out if isinstance(f, r2k.R2000Tag)]
    assert [t.antenna for t in tags] == [3, 3]
    assert tags[0].freq_index == 5 and tags[0].rssi_dbm == -61
    ends = [f for f in out if isinstance(f, r2k.R2000InventoryEnd)]
    assert [(e.total_read, e.read_rate, e.antenna) for e in ends] == [(2, 40, 3)]
    st = [f for f in out if isinstance(f, r2k.R2000Status)]
    assert [(s.success, s.error) for s in st] == [(False, "antenna_missing_error")]
    reasons = {f.reason for f in out if isinstance(f, Reject)}
    assert {"garbage", "checksum"} <= reasons


def test_byte_by_byte_equals_whole() -> None:
    stream = b"".join(r2k.encode_tag(f"{i:024X}", rssi_raw=40 + i) for i in range(20))
    dec = r2k.Decoder()
    one = [f for b in stream for f in dec.feed(bytes([b]))] + dec.flush()
    assert one == _decode(stream)
    assert len(one) == 20
