"""BLE beacon decoding against ble/vectors.jsonl (48 vectors) plus the stream form."""

from __future__ import annotations

import json

from captures import jsonl
from drivers.codecs import Reject, ble


def _dicts(v: dict) -> tuple[dict[int, bytes], dict[str, bytes]]:
    mfr = {int(k): bytes.fromhex(x) for k, x in v.get("manufacturer_data", {}).items()}
    svc = {k: bytes.fromhex(x) for k, x in v.get("service_data", {}).items()}
    return mfr, svc


def _check(v: dict, out: list) -> None:
    exp = v["expected"]
    assert len(out) == 1, (v["source"], out)
    (f,) = out
    if exp == "reject":
        assert isinstance(f, Reject) and f.reason, (v["source"], f)
        return
    assert not isinstance(f, Reject), (v["source"], f)
    for key, want in exp.items():
        assert getattr(f, key) == want, (v["source"], key, getattr(f, key), want)


def test_all_vectors() -> None:
    vectors = jsonl("ble", "vectors.jsonl")
    assert len(vectors) == 48
    for v in vectors:
        _check(v, ble.decode_advertisement(*_dicts(v)))


def test_adv_hex_matches_bleak_dicts() -> None:
    with_adv = [v for v in jsonl("ble", "vectors.jsonl") if "adv_hex" in v]
    assert with_adv
    for v in with_adv:
        parsed = ble.parse_ad_structures(bytes.fromhex(v["adv_hex"]))
        assert not isinstance(parsed, Reject)
        _check(v, ble.decode_advertisement(*parsed))


def test_stream_decoder_reads_vector_lines_and_adv_hex() -> None:
    vectors = jsonl("ble", "vectors.jsonl")
    dec = ble.Decoder()
    lines = b"".join(json.dumps(v).encode() + b"\n" for v in vectors)
    out = dec.feed(lines[:1000]) + dec.feed(lines[1000:]) + dec.flush()
    assert len(out) == 48
    for v, f in zip(vectors, out, strict=True):
        _check(v, [f])
    out = ble.Decoder().feed(b"# comment\n\nzz\n0201060303aafe\n")
    assert [f.reason for f in out if isinstance(f, Reject)] == ["not-hex", "no-beacon"]


def test_tag_ids_and_button() -> None:
    ib = ble.decode_ibeacon(
        0x004C, ble.encode_ibeacon("FDA50693-A4E2-4FB1-AFCF-C6EB07647825", 1, 2)[0x004C]
    )
    assert isinstance(ib, ble.IBeacon)
    assert ble.tag_id(ib) == "ibeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825:1:2"
    uid = ble.decode_eddystone(
        ble.encode_eddystone_uid("00112233445566778899", "AABBCCDDEEFF")[ble.EDDYSTONE_UUID]
    )
    assert ble.tag_id(uid) == "eddystone:00112233445566778899:aabbccddeeff"  # type: ignore[arg-type]
    alert = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
    pressed = ble.decode_ibeacon(0x004C, ble.encode_ibeacon(alert, 1, 2)[0x004C])
    assert ble.is_button_press(pressed, alert.upper()) and not ble.is_button_press(ib, alert)
    assert not ble.is_button_press(pressed, None)


def test_encoders_roundtrip() -> None:
    tlm = ble.decode_eddystone(
        ble.encode_eddystone_tlm(3000, -0.5, 1024, 10000)[ble.EDDYSTONE_UUID]
    )
    assert tlm == ble.EddystoneTlm(3000, -0.5, 1024, 10000)
    na = ble.decode_eddystone(ble.encode_eddystone_tlm(0, None, 7, 5)[ble.EDDYSTONE_UUID])
    assert isinstance(na, ble.EddystoneTlm) and na.temperature_c is None and na.uptime_s == 0.5
    adv = ble.encode_adv_hex(ble.encode_ibeacon("fda50693-a4e2-4fb1-afcf-c6eb07647825", 7, 9), {})
    (f,) = ble.Decoder().feed(adv.encode() + b"\n")
    assert isinstance(f, ble.IBeacon) and (f.major, f.minor, f.tx_power) == (7, 9, -59)
