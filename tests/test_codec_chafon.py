"""Chafon / UHFReader18-288 codec against the frames in ../shared/data/captures/uhf
(chafon-rfid's test vectors, expected decodes in frames.jsonl), streams with noise,
and hypothesis properties (never raises, exact accounting of bytes, any chunking)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from captures import jsonl
from drivers.codecs import Reject
from drivers.codecs import chafon as cf


def _rows(direction: str) -> list[dict[str, Any]]:
    return [r for r in jsonl("uhf", "frames.jsonl")
            if r["protocol"].startswith("chafon") and r["direction"] == direction]


def _model(row: dict[str, Any]) -> str:
    return "18" if row["protocol"] == "chafon_uhfreader18" else "288"


def _run(data: bytes, model: str = "288", cuts: list[int] | None = None) -> list[Any]:
    dec = cf.Decoder(model)
    points = sorted({c % (len(data) + 1) for c in cuts or []})
    edges = [0, *points, len(data)]
    out = [f for a, b in itertools.pairwise(edges) for f in dec.feed(data[a:b])]
    return out + dec.flush()


def test_crc_is_the_manuals_crc16() -> None:
    # Preset 0xFFFF, reflected polynomial 0x8408: the catalogue's CRC-16/MCRF4XX check value.
    assert cf.crc16(b"123456789") == 0x6F91
    # The manuals' Get Reader Information command to any address: 04 FF 21 + CRC LSB first.
    assert cf.encode_command(cf.CMD_GET_READER_INFO) == bytes.fromhex("04ff211995")


def test_reader_frames_decode_as_expected() -> None:
    rows = _rows("reader_to_host")
    assert len(rows) >= 12
    for r in rows:
        raw = bytes.fromhex(r["frame_hex"])
        (f,) = _run(raw, _model(r))
        exp = r["expected"]
        if exp == "reject":
            assert isinstance(f, Reject) and f.reason in ("checksum", "truncated"), r
            assert f.raw == raw
            continue
        assert not isinstance(f, Reject), (r, f)
        assert (f.addr, f.cmd, f.status) == (exp["addr"], exp["cmd"], exp["status"])
        if "tags" in exp:
            assert isinstance(f, cf.ChafonInventory)
            assert f.antenna == exp.get("antenna")
            assert [(t.epc, t.rssi_raw, t.antenna) for t in f.tags] == [
                (t["epc"].upper(), t["rssi_raw"], t["antenna"]) for t in exp["tags"]]
            assert cf.encode_inventory([(t.epc, t.rssi_raw or 0) for t in f.tags], _model(r),
                                       f.antenna or 1, f.status, f.addr) == raw
        elif "firmware_version" in exp:
            assert isinstance(f, cf.ChafonReaderInfo)
            assert list(f.firmware_version) == exp["firmware_version"]
            assert (f.reader_type, f.power_dbm, f.scan_time) == (
                exp["reader_type"], exp["power_dbm"], exp["scan_time"])
            assert f.frequency_band == exp["frequency_band"]
            assert (f.min_freq_mhz, f.max_freq_mhz) == (exp["min_freq_mhz"], exp["max_freq_mhz"])
        else:  # a well-formed reply that is not an inventory: never tags
            assert isinstance(f, cf.ChafonReply)


def test_host_commands_decode_as_expected() -> None:
    rows = _rows("host_to_reader")
    assert rows
    for r in rows:
        raw = bytes.fromhex(r["frame_hex"])
        c = cf.decode_command(raw)
        assert isinstance(c, cf.ChafonCommand), r
        assert (c.addr, c.cmd, c.data.hex()) == (r["expected"]["addr"], r["expected"]["cmd"],
                                                 r["expected"]["data"])
        assert cf.encode_command(c.cmd, c.data, c.addr) == raw
    bad = bytearray(bytes.fromhex(rows[0]["frame_hex"]))
    bad[-1] ^= 1
    assert cf.decode_command(bytes(bad)).reason == "checksum"  # type: ignore[union-attr]


def test_r2000_frames_never_decode_as_chafon() -> None:
    data = b"".join(bytes.fromhex(r["frame_hex"]) for r in jsonl("uhf", "frames.jsonl")
                    if r["protocol"].startswith("r2000"))
    for model in cf.MODELS:
        out = _run(data, model)
        assert out and all(isinstance(f, Reject) for f in out)
        assert b"".join(f.raw for f in out) == data


def test_stream_with_noise_resynchronises() -> None:
    good = [bytes.fromhex(r["frame_hex"]) for r in _rows("reader_to_host")
            if _model(r) == "288" and r["expected"] != "reject"]
    corrupt = bytearray(good[0])
    corrupt[8] ^= 0x40  # one bit flipped inside: Len intact, CRC wrong
    stream = (b"\x00\x01\x02" + good[0] + bytes(corrupt) + good[1] + b"\x02\x03" + good[2]
              + good[3][:-3])
    out = _run(stream)
    kinds = [f.reason if isinstance(f, Reject) else type(f).__name__ for f in out]
    assert kinds == ["garbage", "ChafonInventory", "checksum", "ChafonInventory", "garbage",
                     "ChafonInventory", "truncated"]
    assert out[2].raw == bytes(corrupt)
    assert b"".join(f.raw for f in out) == stream
    for step in (1, 2, 7, 64):
        assert _run(stream, cuts=list(range(step, len(stream), step))) == out


def test_a_corrupt_len_waits_for_more_bytes_or_the_flush() -> None:
    good = cf.encode_inventory([("E2000017221101441890ABCD", 0x55)])
    bad = bytes([0xF0]) + good[1:]  # Len now claims 241 bytes
    dec = cf.Decoder()
    assert dec.feed(bad + good) == []  # could still be one long frame
    # The reader went quiet (the driver's reply time-out): what is there is all there is.
    out = dec.flush()
    assert [f.reason if isinstance(f, Reject) else _first_epc(f) for f in out] == [
        "truncated", "E2000017221101441890ABCD"]
    # Once hunting (after a bad frame), a good frame is not held up by a long candidate.
    corrupt = bytearray(good)
    corrupt[5] ^= 0x01
    out = dec.feed(bytes(corrupt) + bad + good)
    assert [f.reason if isinstance(f, Reject) else _first_epc(f) for f in out] == [
        "garbage", "E2000017221101441890ABCD"]


def _first_epc(f: object) -> str:
    assert isinstance(f, cf.ChafonInventory)
    return f.tags[0].epc


def test_tag_list_layouts() -> None:
    fast_id = cf.encode_reply(cf.CMD_INVENTORY, 0x01,
                              bytes([0x02, 1, 0x80 | 16]) + bytes(range(16)) + b"\x50")
    (f,) = _run(fast_id)
    assert isinstance(f, cf.ChafonInventory) and f.antenna == 2
    (tag,) = f.tags
    assert (tag.epc, tag.tid, tag.rssi_raw) == ("00010203", bytes(range(4, 16)).hex().upper(),
                                               0x50)
    for body, why in (
        (bytes([0x03, 0]), "antenna mask 0x03"),
        (bytes([0x01, 2, 2, 0xAB, 0xCD, 0x40]), "2 tags announced, 1 present"),
        (bytes([0x01, 1, 4, 0xAB]), "tag 1 overruns the frame"),
        (bytes([0x01, 0, 0x99]), "1 bytes after the last tag"),
    ):
        (r,) = _run(cf.encode_reply(cf.CMD_INVENTORY, 0x01, body))
        assert isinstance(r, Reject) and (r.reason, r.detail) == ("bad-layout", why)
    # The same bytes read with the UHFReader18 layout: no antenna byte, no RSSI.
    (f18,) = _run(cf.encode_inventory([("ABCD", 0)], model="18"), model="18")
    assert isinstance(f18, cf.ChafonInventory) and f18.antenna is None
    assert [(t.epc, t.rssi_raw, t.antenna) for t in f18.tags] == [("ABCD", None, 1)]
    with pytest.raises(ValueError, match="model"):
        cf.Decoder("86")


def _valid(rng: random.Random) -> bytes:
    tags = [(rng.randbytes(2 * rng.randint(1, 8)).hex(), rng.randint(0, 255))
            for _ in range(rng.randint(0, 3))]
    return cf.encode_inventory(tags, "288", rng.randint(1, 4), rng.choice([1, 2, 3, 4]))


def _check(data: bytes, out: list[Any]) -> None:
    assert b"".join(f.raw for f in out) == data  # every byte in exactly one output, in order
    for f in out:
        if isinstance(f, Reject):
            assert f.reason in cf.REASONS and f.raw
        else:
            assert f.raw[0] + 1 == len(f.raw) and cf.crc16(f.raw[:-2]) == int.from_bytes(
                f.raw[-2:], "little")
            if isinstance(f, cf.ChafonInventory) and f.antenna is not None:
                assert cf.encode_inventory([(t.epc, t.rssi_raw or 0) for t in f.tags],
                                           "288", f.antenna, f.status, f.addr) == f.raw


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=700), cuts=st.lists(st.integers(0, 700), max_size=8),
       model=st.sampled_from(cf.MODELS))
def test_arbitrary_bytes(data: bytes, cuts: list[int], model: str) -> None:
    out = _run(data, model)
    _check(data, out)
    assert _run(data, model, cuts) == out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 2000), max_size=10),
       noise=st.lists(st.tuples(st.integers(0, 2000), st.binary(min_size=1, max_size=6)),
                      max_size=3))
def test_valid_streams_with_noise(seed: int, cuts: list[int],
                                  noise: list[tuple[int, bytes]]) -> None:
    rng = random.Random(seed)
    frames = [_valid(rng) for _ in range(rng.randint(1, 8))]
    stream = b"".join(frames)
    clean = _run(stream)
    assert [f.raw for f in clean] == frames and not any(isinstance(f, Reject) for f in clean)
    noisy = bytearray(stream)
    for at, junk in noise:  # insert bytes somewhere: the frames around them must survive
        noisy[at % (len(noisy) + 1) : at % (len(noisy) + 1)] = junk
    out = _run(bytes(noisy), cuts=cuts)
    _check(bytes(noisy), out)
    intact = [f for f in frames if f in bytes(noisy)]
    decoded = [f.raw for f in out if not isinstance(f, Reject)]
    assert len(decoded) >= len(intact) - 2 * len(noise)  # a junk run costs at most its neighbours
