"""EM4100/RDM6300 decoder against the shared real-world frames (rfid/rdm6300.jsonl)."""

from __future__ import annotations

from captures import jsonl
from drivers.codecs import Reject, rdm6300


def _decode(raw: bytes) -> list[rdm6300.Em4100Frame | Reject]:
    dec = rdm6300.Decoder()
    return dec.feed(raw) + dec.flush()


def test_single_frames_match_expected() -> None:
    rows = [r for r in jsonl("rfid", "rdm6300.jsonl") if "frame_hex" in r]
    assert len(rows) == 20
    for r in rows:
        out = _decode(bytes.fromhex(r["frame_hex"]))
        frames = [f for f in out if isinstance(f, rdm6300.Em4100Frame)]
        if r["valid"] is True:
            assert out == frames and len(frames) == 1, r
            f = frames[0]
            assert f.card_id == r["expected_tag"], r
            assert f.tag == r["tag_hex"], r
            assert f.version == r["version"], r
        elif r["valid"] is False:
            assert not frames and out, r
        else:
            # Lowercase hex: implementation-defined; this decoder is lenient (documented).
            assert [f.card_id for f in frames] == [r["expected_tag_if_lenient"]], r
            assert frames[0].tag == frames[0].tag.upper()


def test_stream_gives_strict_list() -> None:
    (row,) = [r for r in jsonl("rfid", "rdm6300.jsonl") if "stream_hex" in r]
    out = _decode(bytes.fromhex(row["stream_hex"]))
    tags = [f.card_id for f in out if isinstance(f, rdm6300.Em4100Frame)]
    assert tags == row["expected_tags_strict"]
    reasons = [f.reason for f in out if isinstance(f, Reject)]
    assert reasons[0] == "garbage"  # the leading fragment without STX
    assert "checksum" in reasons


def test_encode_roundtrip() -> None:
    raw = rdm6300.encode("62E3086CED")
    assert raw.hex() == "0236324533303836434544303803"
    (f,) = _decode(raw)
    assert isinstance(f, rdm6300.Em4100Frame) and f.card_id == 3808980205
