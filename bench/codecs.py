"""Decoder throughput on large realistic in-memory streams (frames per second).

Run from the repo root: ``python -m bench.codecs``. Each bench decodes its
stream in 4 KiB chunks (like serial reads) for about ``seconds`` and reports
decoded frames (including rejects) per second of CPU wall time.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable

from drivers.codecs import ble, nmea, rdm6300
from drivers.codecs import uhf_r2000 as r2k

CHUNK = 4096


def _measure(factory: Callable[[], object], stream: bytes, seconds: float) -> float:
    frames = 0
    t0 = time.perf_counter()
    elapsed = 0.0
    while elapsed < seconds:
        dec = factory()
        for i in range(0, len(stream), CHUNK):
            frames += len(dec.feed(stream[i : i + CHUNK]))  # type: ignore[attr-defined]
        frames += len(dec.flush())  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - t0
    return frames / elapsed


def rdm6300_stream(n: int = 20_000) -> bytes:
    rng = random.Random(1)
    tags = [f"{rng.getrandbits(40):010X}" for _ in range(50)]
    return b"".join(rdm6300.encode(rng.choice(tags)) for _ in range(n))


def uhf_stream(n: int = 20_000) -> bytes:
    """Mostly 96-bit EPC tag packets from 4 antennas, an end-of-round every 50."""
    rng = random.Random(2)
    epcs = [rng.randbytes(12).hex() for _ in range(200)]
    parts = []
    for i in range(n):
        if i % 50 == 49:
            parts.append(r2k.encode_inventory_end(49, 120, 1 + i % 4))
        else:
            parts.append(
                r2k.encode_tag(
                    rng.choice(epcs), rng.randint(40, 90), rng.randint(1, 4), rng.randint(0, 50)
                )
            )
    return b"".join(parts)


def nmea_stream(epochs: int = 2_000) -> bytes:
    """A 1 Hz multi-GNSS receiver: RMC, VTG, GGA, 2x GSA, 3x GSV, GLL per epoch."""
    out = []
    for t in range(epochs):
        hh, mm, ss = (t // 3600) % 24, (t // 60) % 60, t % 60
        ts = f"{hh:02d}{mm:02d}{ss:02d}.00"
        bodies = [
            f"GNRMC,{ts},A,4807.0381,N,01131.0001,E,0.12,84.4,230325,,,A",
            "GNVTG,84.4,T,,M,0.12,N,0.22,K,A",
            f"GNGGA,{ts},4807.0381,N,01131.0001,E,1,12,0.8,545.4,M,46.9,M,,",
            "GNGSA,A,3,04,05,09,12,24,25,29,,,,,,1.4,0.8,1.1,1",
            "GNGSA,A,3,65,66,72,81,,,,,,,,,1.4,0.8,1.1,2",
            "GPGSV,3,1,11,04,75,303,44,05,66,172,51,09,51,055,36,12,39,325,36",
            "GPGSV,3,2,11,24,31,254,51,25,13,295,51,29,12,322,36,31,12,046,51",
            "GPGSV,3,3,11,32,09,138,36,13,04,183,51,20,03,113,44",
            f"GNGLL,4807.0381,N,01131.0001,E,{ts},A,A",
        ]
        for b in bodies:
            x = 0
            for c in b.encode():
                x ^= c
            out.append(f"${b}*{x:02X}\r\n".encode())
    return b"".join(out)


def ble_stream(n: int = 10_000) -> bytes:
    """Scanner output lines: iBeacons, Eddystone-UID and -TLM as raw AD hex."""
    rng = random.Random(3)
    lines = []
    for i in range(n):
        if i % 3 == 0:
            md = ble.encode_ibeacon(str(uuid.UUID(int=rng.getrandbits(128))), i % 500, i % 7)
            lines.append(ble.encode_adv_hex(md, {}))
        elif i % 3 == 1:
            lines.append(
                ble.encode_adv_hex(
                    {}, ble.encode_eddystone_uid(rng.randbytes(10).hex(), rng.randbytes(6).hex())
                )
            )
        else:
            lines.append(ble.encode_adv_hex({}, ble.encode_eddystone_tlm(3000, 21.5, i, i * 10)))
    return ("\n".join(lines) + "\n").encode()


def bench_rdm6300(seconds: float = 1.5) -> float:
    return _measure(rdm6300.Decoder, rdm6300_stream(), seconds)


def bench_uhf(seconds: float = 1.5) -> float:
    return _measure(r2k.Decoder, uhf_stream(), seconds)


def bench_nmea(seconds: float = 1.5) -> float:
    return _measure(nmea.Decoder, nmea_stream(), seconds)


def bench_ble(seconds: float = 1.5) -> float:
    return _measure(ble.Decoder, ble_stream(), seconds)


# Each takes how long to run, in seconds, and returns frames per second.
BENCHES: dict[str, Callable[[float], float]] = {
    "decode_rdm6300_frames_per_s": bench_rdm6300,
    "decode_uhf_frames_per_s": bench_uhf,
    "decode_nmea_frames_per_s": bench_nmea,
    "decode_ble_frames_per_s": bench_ble,
}


def main() -> None:
    print(f"{'metric':32} {'value':>12}")
    for key, fn in BENCHES.items():
        print(f"{key:32} {fn(1.5):12,.0f}")


if __name__ == "__main__":
    main()
