"""Robustness: no input makes a decoder raise, chunking never changes the result, and
every output is something real.

Each decoder gets 100,000 random and mutated frames (bit flips, truncations,
splices of valid frames, garbage) from a seeded random.Random, then hypothesis
checks split-invariance on valid streams and arbitrary bytes. On every output,
:func:`_check_outputs` asserts: a reject has a reason the codec declares
(``REASONS``); a frame is one of the codec's frame types and satisfies its
invariants (re-encoding round-trips where an encoder exists, checksums hold,
values in range); and the input bytes are accounted for (the byte codecs' frames
and rejects tile the input, a text codec skips only blanks between lines).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from operator import xor
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.codecs import Reject, ble, gpsd, nmea, rdm6300
from drivers.codecs import chafon as cf
from drivers.codecs import uhf_r2000 as r2k

N = 100_000


def _valid_rdm(rng: random.Random) -> bytes:
    return rdm6300.encode(f"{rng.getrandbits(40):010X}")


def _valid_uhf(rng: random.Random) -> bytes:
    k = rng.random()
    if k < 0.7:
        return r2k.encode_tag(
            rng.randbytes(2 * rng.randint(1, 8)).hex(),
            rng.randint(0, 255),
            rng.randint(1, 4),
            rng.randint(0, 63),
        )
    if k < 0.85:
        return r2k.encode_inventory_end(
            rng.randint(0, 9999), rng.randint(0, 500), rng.randint(1, 4)
        )
    return r2k.encode_status(rng.choice([0x89, 0x74, 0x76]), rng.choice([0x10, 0x11, 0x22, 0x36]))


_NMEA_BODIES = [
    b"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,",
    b"GNRMC,074157.799,A,3114.8902,N,12135.2443,E,0.32,4.94,250215,,,A",
    b"GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1",
    b"GNGNS,074159.799,3114.8943,N,12135.2444,E,AANN,08,1.2,25.0,10.0,,",
    b"GPGLL,4916.45,N,12311.12,W,225444,A,",
    b"GPZDA,010203.05,06,07,2008,-08,30",
    b"GPVTG,77.5,T,93.3,M,5.2,N,9.7,K",
    b"GPGSV,3,1,11,08,75,303,44,07,66,172,51,11,51,055,36,28,39,325,36",
    b"PMTK010,001",
]


def _nmea(body: bytes) -> bytes:
    x = 0
    for b in body:
        x ^= b
    return b"$" + body + b"*%02X\r\n" % x


def _valid_nmea(rng: random.Random) -> bytes:
    return _nmea(rng.choice(_NMEA_BODIES))


def _valid_ble(rng: random.Random) -> bytes:
    k = rng.random()
    if k < 0.4:
        md = ble.encode_ibeacon(
            str(uuid.UUID(int=rng.getrandbits(128))),
            rng.randint(0, 65535),
            rng.randint(0, 65535),
            rng.randint(-100, 20),
        )
        return ble.encode_adv_hex(md, {}).encode() + b"\n"
    if k < 0.7:
        sd = ble.encode_eddystone_uid(rng.randbytes(10).hex(), rng.randbytes(6).hex())
    else:
        sd = ble.encode_eddystone_tlm(
            rng.randint(0, 4000),
            rng.choice([None, 21.5, -3.25]),
            rng.getrandbits(32),
            rng.getrandbits(32),
        )
    return ble.encode_adv_hex({}, sd).encode() + b"\n"


def _valid_gpsd(rng: random.Random) -> bytes:
    k = rng.random()
    if k < 0.5:
        obj: dict[str, Any] = {"class": "TPV", "device": "/dev/ttyACM0", "mode": rng.randint(0, 3),
                               "time": f"2025-06-01T12:{rng.randint(0, 59):02d}:00.000Z"}
        if obj["mode"] >= 2:
            obj |= {"lat": rng.uniform(-90, 90), "lon": rng.uniform(-180, 180),
                    "speed": rng.uniform(0, 40), "status": rng.choice([1, 2])}
    elif k < 0.8:
        obj = {"class": "SKY", "hdop": round(rng.uniform(0.5, 5), 2),
               "satellites": [{"PRN": i, "used": rng.random() < 0.5}
                              for i in range(rng.randint(0, 12))]}
    elif k < 0.9:
        obj = {"class": "VERSION", "release": "3.22", "proto_major": 3, "proto_minor": 14}
    else:
        obj = {"class": "DEVICES", "devices": [{"class": "DEVICE", "path": "/dev/ttyACM0"}]}
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _mutate(rng: random.Random, valid: Callable[[random.Random], bytes]) -> bytes:
    k = rng.randrange(6)
    f = valid(rng)
    if k == 0:  # bit flips
        b = bytearray(f)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if k == 1:  # truncation
        return f[: rng.randrange(len(f))]
    if k == 2:  # splice of two valid frames
        g = valid(rng)
        return f[: rng.randrange(len(f) + 1)] + g[rng.randrange(len(g)) :]
    if k == 3:  # garbage
        return rng.randbytes(rng.randint(0, 40))
    if k == 4:  # byte insert/delete
        i = rng.randrange(len(f))
        return f[:i] + rng.randbytes(rng.randint(0, 3)) + f[i + 1 :]
    return f


# ---------------------------------------------------------------- what must hold


def _check_rdm6300(f: object) -> None:
    assert isinstance(f, rdm6300.Em4100Frame)
    assert rdm6300.encode(f.tag) == f.raw.upper()  # round trip (clones may send lowercase)
    assert f.card_id == int(f.tag[2:], 16) and f.version == int(f.tag[:2], 16)


def _check_uhf(f: object) -> None:
    assert isinstance(f, r2k.R2000Tag | r2k.R2000InventoryEnd | r2k.R2000Status
                      | r2k.R2000Firmware | r2k.R2000Reply)
    raw = f.raw
    assert raw[0] == r2k.HEAD and len(raw) == raw[1] + 2 and sum(raw) & 0xFF == 0
    assert (f.addr, f.cmd) == (raw[2], raw[3])
    if isinstance(f, r2k.R2000Tag):
        assert 1 <= f.antenna <= 4 and 0 <= f.freq_index <= 63
        assert f.rssi_dbm is None or -99 <= f.rssi_dbm <= -31
        if f.epc:
            assert r2k.encode_tag(f.epc, f.rssi_raw, f.antenna, f.freq_index, f.pc, f.addr,
                                  f.cmd) == raw
    elif isinstance(f, r2k.R2000Status):
        assert f.success is (f.error_code == 0x10)


def _check_nmea(f: object) -> None:
    assert isinstance(f, nmea.Gga | nmea.Rmc | nmea.Gsa | nmea.Gns | nmea.Gll | nmea.Zda
                      | nmea.Vtg | nmea.NmeaOther)
    raw = f.raw
    assert raw[:1] == b"$" and raw[-3:-2] == b"*" and len(raw) <= nmea.MAX_LINE
    assert reduce(xor, raw[1:-3], 0) == int(raw[-2:], 16)  # only checksum-valid sentences
    lat, lon = getattr(f, "lat", None), getattr(f, "lon", None)
    assert (lat is None or -90 <= lat <= 90) and (lon is None or -180 <= lon <= 180)
    t = getattr(f, "time", None)
    assert t is None or t.tzinfo is not None
    for name in ("hdop", "speed_mps", "altitude_m", "course_deg"):
        v = getattr(f, name, None)
        assert v is None or math.isfinite(v)


def _check_ble(f: object) -> None:
    match f:
        case ble.IBeacon():
            md = ble.encode_ibeacon(f.uuid, f.major, f.minor, f.tx_power)
            assert ble.decode_advertisement(md, {}) == [f]
        case ble.EddystoneUid():
            sd = ble.encode_eddystone_uid(f.namespace, f.instance, f.tx_power_0m)
            assert ble.decode_advertisement({}, sd) == [f]
        case ble.EddystoneTlm():
            sd = ble.encode_eddystone_tlm(f.battery_mv, f.temperature_c, f.adv_count,
                                          f.sec_cnt_raw)
            assert ble.decode_advertisement({}, sd) == [f]
        case ble.EddystoneUrl():
            assert f.url.startswith(("http://", "https://"))
        case ble.EddystoneEid():
            assert len(f.eid) == 16 and int(f.eid, 16) >= 0
        case ble.EddystoneTlmEncrypted():
            assert len(f.etlm) == 12
        case _:
            raise AssertionError(f"not a BLE frame: {f!r}")


def _check_gpsd(f: object) -> None:
    assert isinstance(f, gpsd.Tpv | gpsd.Sky | gpsd.Version | gpsd.Devices | gpsd.GpsdError
                      | gpsd.GpsdOther)
    assert f.raw and f.raw == f.raw.strip() and b"\n" not in f.raw
    assert gpsd.decode_line(f.raw) == f  # the line alone decodes the same
    if isinstance(f, gpsd.Tpv):
        assert 0 <= f.mode <= 3 and f.has_fix is (f.lat is not None) is (f.lon is not None)
        assert f.lat is None or -90 <= f.lat <= 90
        assert f.lon is None or -180 <= f.lon <= 180
        assert f.time is None or f.time.tzinfo is not None
        assert f.fix_quality == 0 or f.has_fix
    elif isinstance(f, gpsd.Sky):
        assert f.hdop is None or 0 <= f.hdop <= 100
        assert f.satellites_used is None or isinstance(f.satellites_used, int)


@dataclass(frozen=True)
class Case:
    name: str
    codec: ModuleType
    valid: Callable[[random.Random], bytes]
    check: Callable[[object], None]
    # How input bytes are accounted for: "tile" (raws cover the input in order, each
    # starting where the one before ended, or where the codec re-hunts after a bad
    # candidate), "lines" (raws in order, only blanks between them), "count" (ble:
    # raws are decoded bytes, so at least one output per non-blank, non-comment line).
    accounting: str
    head: int | None = None  # the start byte a "tile" codec re-hunts for inside a bad frame

    @property
    def factory(self) -> Callable[[], Any]:
        return self.codec.Decoder


CASES = [
    Case("rdm6300", rdm6300, _valid_rdm, _check_rdm6300, "tile"),
    Case("uhf_r2000", r2k, _valid_uhf, _check_uhf, "tile", r2k.HEAD),
    Case("gps_nmea", nmea, _valid_nmea, _check_nmea, "lines"),
    Case("ble", ble, _valid_ble, _check_ble, "count"),
    Case("gpsd", gpsd, _valid_gpsd, _check_gpsd, "lines"),
]
IDS = [c.name for c in CASES]
_BLANKS = b" \t\r\n\x0b\x0c"


def _next_start(case: Case, f: object, k: int, end: int) -> int:
    """Where a "tile" codec's next output starts, given this one at ``k``..``end``."""
    if case.head is not None and isinstance(f, Reject):
        if f.reason == "bad-length" and len(f.raw) == 2:
            return k + 1  # a Len byte below the minimum: hunt again one byte on
        if f.reason == "checksum":
            j = f.raw.find(case.head, 1)  # a cut frame may have swallowed the next head
            return k + j if j > 0 else end
    return end


def _accounted(case: Case, data: bytes, out: Sequence[object]) -> None:
    if case.accounting == "count":
        lines = [ln.strip() for ln in data.split(b"\n")]
        assert len(out) >= sum(1 for ln in lines if ln and not ln.startswith(b"#"))
        return
    pos = 0
    skip_line = False  # after a too-long reject the rest of that line is dropped unseen
    for f in out:
        raw: bytes = f.raw  # type: ignore[attr-defined]
        assert raw, f
        if case.accounting == "tile":
            assert data.startswith(raw, pos), (f, pos, data.hex())
            pos = _next_start(case, f, pos, pos + len(raw))
            continue
        k = data.find(raw, pos)
        assert k >= pos, (f, data)
        gap = data[pos:k]
        if skip_line:
            gap = gap[gap.index(b"\n"):] if b"\n" in gap else b""
        assert not gap.strip(_BLANKS), (f, gap)
        skip_line = isinstance(f, Reject) and f.reason == "too-long"
        pos = k + len(raw)
    tail = data[pos:]
    if case.accounting == "lines":
        assert skip_line or not tail.strip(_BLANKS), tail
    else:
        assert not tail, tail


def _check_outputs(case: Case, data: bytes, out: Sequence[object]) -> None:
    """Every output is a declared reject or a frame that satisfies its invariants,
    and the input is accounted for."""
    for f in out:
        if isinstance(f, Reject):
            assert f.reason in case.codec.REASONS, f
        else:
            case.check(f)
    _accounted(case, data, out)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_100k_mutated_frames_never_raise(case: Case) -> None:
    rng = random.Random(f"kidsafe-{case.name}")
    dec = case.factory()
    t0 = time.monotonic()
    n_out = 0
    fed: list[bytes] = []
    out: list[object] = []
    for i in range(N):
        chunk = _mutate(rng, case.valid)
        fed.append(chunk)
        out += dec.feed(chunk)
        if i % 997 == 0:
            out += dec.flush()
            _check_outputs(case, b"".join(fed), out)
            n_out += len(out)
            fed, out = [], []
            dec = case.factory()
    out += dec.flush()
    _check_outputs(case, b"".join(fed), out)
    n_out += len(out)
    assert n_out > N // 2
    assert time.monotonic() - t0 < 30


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _run(factory: Callable[[], Any], parts: list[bytes]) -> list[Any]:
    dec = factory()
    out = [f for p in parts for f in dec.feed(p)]
    return out + dec.flush()


@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_split_of_valid_stream_decodes_the_same(case: Case, seed: int,
                                                    cuts: list[int]) -> None:
    rng = random.Random(seed)
    frames = [case.valid(rng) for _ in range(rng.randint(1, 12))]
    stream = b"".join(frames)
    whole = _run(case.factory, [stream])
    assert not any(isinstance(f, Reject) for f in whole)
    assert len(whole) >= len(frames)  # nothing valid is lost (a BLE line may hold several)
    _check_outputs(case, stream, whole)
    assert _run(case.factory, _chunks(stream, cuts)) == whole


@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_arbitrary_bytes_give_declared_outputs(case: Case, data: bytes, cuts: list[int]) -> None:
    out = _run(case.factory, [data])
    _check_outputs(case, data, out)
    # Chunking may only change how a run of garbage is cut (and trimmed) into rejects.
    assert _merge_garbage(_run(case.factory, _chunks(data, cuts))) == _merge_garbage(out)


def _merge_garbage(out: list[Any]) -> list[Any]:
    merged: list[Any] = []
    for f in out:
        if isinstance(f, Reject) and f.reason == "garbage":
            junk = f.raw.translate(None, _BLANKS)
            if merged and isinstance(merged[-1], Reject) and merged[-1].reason == "garbage":
                junk = merged.pop().raw + junk
            merged.append(Reject("garbage", junk))
        else:
            merged.append(f)
    return merged


@settings(max_examples=150, deadline=None)
@given(
    md=st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=30), max_size=3),
    sd=st.dictionaries(
        st.sampled_from([ble.EDDYSTONE_UUID, "0000180f-0000-1000-8000-00805f9b34fb"]),
        st.binary(max_size=30),
        max_size=2,
    ),
)
def test_ble_dicts_give_declared_outputs(md: dict[int, bytes], sd: dict[str, bytes]) -> None:
    out = ble.decode_advertisement(md, sd)
    # One output per Apple/iBeacon-shaped manufacturer entry and per Eddystone entry.
    wanted = sum(c == ble.APPLE or d[:2] == b"\x02\x15" for c, d in md.items())
    assert len(out) == wanted + (ble.EDDYSTONE_UUID in sd)
    for f in out:
        if isinstance(f, Reject):
            assert f.reason in ble.REASONS, f
        else:
            _check_ble(f)


_JSON_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-5, 200),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))


@settings(max_examples=300, deadline=None)
@given(
    mode=st.one_of(st.integers(-1, 4), _JSON_VALUE),
    lat=st.one_of(st.floats(-100, 100), _JSON_VALUE),
    lon=st.one_of(st.floats(-200, 200), _JSON_VALUE),
    when=st.one_of(st.datetimes(timezones=st.just(dt.UTC)).map(
        lambda t: t.isoformat().replace("+00:00", "Z")), _JSON_VALUE),
    present=st.sets(st.sampled_from(["mode", "lat", "lon", "time"])),
)
def test_gpsd_tpv_is_decoded_exactly_when_valid(mode: Any, lat: Any, lon: Any, when: Any,
                                                present: set[str]) -> None:
    """A TPV decodes to a Tpv carrying its values, or to a bad-field reject, by the rules."""
    obj = {k: v for k, v in (("mode", mode), ("lat", lat), ("lon", lon), ("time", when))
           if k in present}
    line = json.dumps({"class": "TPV", **obj}).encode()
    (f,) = _run(gpsd.Decoder, [line + b"\n"])

    def number(v: Any, bound: float) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and -bound <= v <= bound

    m = obj.get("mode", 0)
    mode_ok = isinstance(m, int) and not isinstance(m, bool) and 0 <= m <= 3
    pos_ok = number(obj.get("lat"), 90) and number(obj.get("lon"), 180)
    time_ok = "time" not in obj or (isinstance(obj["time"], str) and _parses(obj["time"]))
    if mode_ok and (m < 2 or pos_ok) and time_ok:
        assert isinstance(f, gpsd.Tpv) and f.mode == m
        assert (f.lat, f.lon) == ((obj["lat"], obj["lon"]) if m >= 2 else (None, None))
        assert (f.time is None) is ("time" not in obj)
    else:
        assert isinstance(f, Reject) and f.reason == "bad-field", (obj, f)
    _check_outputs(CASES[-1], line, [f])


def _parses(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- Chafon UHFReader18/288

# Fewer than N: with no start byte the Chafon codec tries a CRC at every offset of noise
# (about 10 kB/s of mutated input here), so 100,000 frames would take minutes.
CHAFON_N = 5_000


def _valid_chafon(model: str) -> Callable[[random.Random], bytes]:
    def valid(rng: random.Random) -> bytes:
        k = rng.random()
        if k < 0.75:
            tags = [(rng.randbytes(2 * rng.randint(1, 8)).hex(), rng.randint(0, 255))
                    for _ in range(rng.randint(0, 4))]
            return cf.encode_inventory(tags, model, rng.randint(1, 4), rng.choice([1, 2, 3, 4]),
                                       rng.randint(0, 255))
        if k < 0.9:
            return cf.encode_reply(cf.CMD_INVENTORY, 0xF8)
        return cf.encode_reply(cf.CMD_GET_READER_INFO, 0, rng.randbytes(12))
    return valid


def _check_chafon(model: str, out: Sequence[object], fed: bytes) -> None:
    """Every output is a declared reject or a CRC-valid frame, and together they are the input."""
    assert b"".join(f.raw for f in out) == fed  # type: ignore[attr-defined]
    for f in out:
        if isinstance(f, Reject):
            assert f.reason in cf.REASONS and f.raw
            continue
        assert isinstance(f, cf.ChafonInventory | cf.ChafonReaderInfo | cf.ChafonReply)
        raw = f.raw
        assert len(raw) == raw[0] + 1 and cf.crc16(raw[:-2]) == int.from_bytes(raw[-2:], "little")
        assert (f.addr, f.cmd, f.status) == (raw[1], raw[2], raw[3])
        if isinstance(f, cf.ChafonInventory) and not any(t.tid for t in f.tags):
            assert cf.encode_inventory([(t.epc, t.rssi_raw or 0) for t in f.tags], model,
                                       f.antenna or 1, f.status, f.addr) == raw


@pytest.mark.parametrize("model", cf.MODELS)
def test_chafon_mutated_frames_decode_to_what_was_sent(model: str) -> None:
    rng = random.Random(f"kidsafe-uhf_chafon-{model}")
    valid = _valid_chafon(model)
    dec, fed, out = cf.Decoder(model), bytearray(), []
    t0 = time.monotonic()
    for i in range(CHAFON_N):
        chunk = _mutate(rng, valid)
        fed += chunk
        out += dec.feed(chunk)
        if i % 997 == 0:
            out += dec.flush()
            _check_chafon(model, out, bytes(fed))
            dec, fed, out = cf.Decoder(model), bytearray(), []
    out += dec.flush()
    _check_chafon(model, out, bytes(fed))
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("model", cf.MODELS)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_chafon_any_split_of_valid_stream_decodes_the_same(model: str, seed: int,
                                                          cuts: list[int]) -> None:
    rng = random.Random(seed)
    frames = [_valid_chafon(model)(rng) for _ in range(rng.randint(1, 12))]
    factory = lambda: cf.Decoder(model)  # noqa: E731
    whole = _run(factory, [b"".join(frames)])
    assert [f.raw for f in whole] == frames and not any(isinstance(f, Reject) for f in whole)
    assert _run(factory, _chunks(b"".join(frames), cuts)) == whole
