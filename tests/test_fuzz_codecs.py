"""Robustness: no input makes a decoder raise, and chunking never changes the result.

Each decoder gets 100,000 random and mutated frames (bit flips, truncations,
splices of valid frames, garbage) from a seeded random.Random, then hypothesis
checks split-invariance on valid streams.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.codecs import Reject, ble, nmea, rdm6300
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
            str(__import__("uuid").UUID(int=rng.getrandbits(128))),
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


CASES = [
    ("rdm6300", rdm6300.Decoder, _valid_rdm),
    ("uhf_r2000", r2k.Decoder, _valid_uhf),
    ("nmea", nmea.Decoder, _valid_nmea),
    ("ble", ble.Decoder, _valid_ble),
]


@pytest.mark.parametrize(("name", "factory", "valid"), CASES, ids=[c[0] for c in CASES])
def test_100k_mutated_frames_never_raise(name: str, factory: Callable, valid: Callable) -> None:
    rng = random.Random(f"kidsafe-{name}")
    dec = factory()
    t0 = time.monotonic()
    n_out = 0
    for i in range(N):
        chunk = _mutate(rng, valid)
        n_out += len(dec.feed(chunk))
        if i % 997 == 0:
            n_out += len(dec.flush())
            dec = factory()
    n_out += len(dec.flush())
    assert n_out > 0
    assert time.monotonic() - t0 < 30


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def _run(factory: Callable, parts: list[bytes]) -> list:
    dec = factory()
    out = [f for p in parts for f in dec.feed(p)]
    return out + dec.flush()


@pytest.mark.parametrize(("name", "factory", "valid"), CASES, ids=[c[0] for c in CASES])
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 10_000), max_size=30))
def test_any_split_of_valid_stream_decodes_the_same(
    name: str, factory: Callable, valid: Callable, seed: int, cuts: list[int]
) -> None:
    rng = random.Random(seed)
    stream = b"".join(valid(rng) for _ in range(rng.randint(1, 12)))
    whole = _run(factory, [stream])
    assert not any(isinstance(f, Reject) for f in whole)
    assert _run(factory, _chunks(stream, cuts)) == whole


@pytest.mark.parametrize(("name", "factory", "valid"), CASES, ids=[c[0] for c in CASES])
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(
    name: str, factory: Callable, valid: Callable, data: bytes
) -> None:
    out = _run(factory, [data])
    assert all(isinstance(f, Reject) or f is not None for f in out)


@settings(max_examples=150, deadline=None)
@given(
    md=st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=30), max_size=3),
    sd=st.dictionaries(
        st.sampled_from([ble.EDDYSTONE_UUID, "0000180f-0000-1000-8000-00805f9b34fb"]),
        st.binary(max_size=30),
        max_size=2,
    ),
)
def test_ble_dicts_never_raise(md: dict[int, bytes], sd: dict[str, bytes]) -> None:
    for f in ble.decode_advertisement(md, sd):
        assert f is not None
