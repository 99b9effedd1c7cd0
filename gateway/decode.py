"""Offline decoding of raw captures for technicians (``gatewayd decode KIND FILE``).

Turns a capture into JSON-able dicts, one per frame: ``{"ok": true, "frame":
<type>, ...fields}`` or ``{"ok": false, "reason": ..., "raw_hex": ...}``, so a
technician can see exactly what the gateway would make of a reader's output.

Input forms: binary serial bytes or a hex dump (a file of only hex digits and
whitespace is unhexlified) for the binary protocols (rdm6300, uhf_r2000); NMEA
log text (gpsd ``#`` comment lines skipped) for nmea; one advertisement per
line for ble (see :class:`drivers.codecs.ble.Decoder`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from drivers import codecs
from drivers.codecs import Reject

_HEX_DUMP = re.compile(rb"[0-9A-Fa-f\s]+")
_BINARY_KINDS = frozenset({"rdm6300", "uhf_r2000"})
_CHUNK = 4096


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return bytes(v).hex()
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return v


def frame_dict(frame: object) -> dict[str, Any]:
    """One decoder output as a JSON-able dict (bytes -> hex, times -> ISO 8601)."""
    if isinstance(frame, Reject):
        d: dict[str, Any] = {"ok": False, "reason": frame.reason, "raw_hex": frame.raw.hex()}
        if frame.detail:
            d["detail"] = frame.detail
        return d
    d = {"ok": True, "frame": type(frame).__name__}
    if dataclasses.is_dataclass(frame) and not isinstance(frame, type):
        for f in dataclasses.fields(frame):
            d["raw_hex" if f.name == "raw" else f.name] = _jsonable(getattr(frame, f.name))
    # Derived values that are properties rather than fields.
    for prop in ("uptime_s", "firmware"):
        if hasattr(frame, prop):
            d[prop] = getattr(frame, prop)
    return d


def _prepare(kind: str, data: bytes) -> bytes:
    if kind in _BINARY_KINDS and data.strip() and _HEX_DUMP.fullmatch(data):
        compact = b"".join(data.split())
        if len(compact) % 2 == 0:
            return bytes.fromhex(compact.decode("ascii"))
    if kind == "nmea":
        # gpsd logs: drop whole-line '#' comments (the header); keep the bytes otherwise.
        lines = data.splitlines(keepends=True)
        if any(ln.startswith(b"#") for ln in lines):
            data = b"".join(ln for ln in lines if not ln.startswith(b"#"))
    return data


def decode_stream(kind: str, data: bytes) -> Iterator[dict[str, Any]]:
    """Decode a whole capture of ``kind``; raises KeyError for an unknown kind."""
    mod = codecs.load(kind)
    dec = mod.Decoder()
    data = _prepare(kind, data)
    for i in range(0, len(data), _CHUNK):
        for frame in dec.feed(data[i : i + _CHUNK]):
            yield frame_dict(frame)
    for frame in dec.flush():
        yield frame_dict(frame)


def decode_file(kind: str, path: str | Path) -> Iterator[dict[str, Any]]:
    return decode_stream(kind, Path(path).read_bytes())


def main_decode(kind: str, path: str | Path, out: TextIO, err: TextIO | None = None) -> int:
    """Write one JSON line per frame to ``out``. 0 on success; 2 (message on ``err``,
    default stderr) for an unknown kind or an unreadable file."""
    err = sys.stderr if err is None else err
    kinds = codecs.available()
    if kind not in kinds:
        print(f"error: unknown kind {kind!r}; choose one of: {', '.join(kinds)}", file=err)
        return 2
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else Path(path).read_bytes()
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror or e}", file=err)
        return 2
    for d in decode_stream(kind, data):
        out.write(json.dumps(d, separators=(",", ":")) + "\n")
    return 0
