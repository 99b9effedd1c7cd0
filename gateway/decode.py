"""Offline decoding of raw captures for technicians (``gatewayd decode KIND FILE``).

Turns a capture into JSON-able dicts, one per frame: ``{"ok": true, "frame":
<type>, ...fields}`` or ``{"ok": false, "reason": ..., "raw_hex": ...}``, so a
technician can see exactly what the gateway would make of a reader's output.

KIND is a reader kind of :mod:`drivers.registry`; its codec says how it reads
a file. ``INPUT = "binary"``: serial bytes, or a hex dump of them (a file of only
hex digits and whitespace is unhexlified). ``INPUT = "lines"``: text lines as the
codec takes them, without the whole lines that start with the codec's
``COMMENT`` (gpsd's ``#`` log headers), when it declares one. The codec's
``DERIVED`` names frame properties printed beside the fields. A codec with a
``tag_id(frame)`` function (BLE) also gets ``tag_id``: the id to put in
``[[tags]]`` (``ibeacon:<uuid>:<major>:<minor>``), so nobody assembles it by hand.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

from drivers import registry
from drivers.codecs import Reject

_HEX_DUMP = re.compile(rb"[0-9A-Fa-f\s]+")
_CHUNK = 4096
INPUTS = frozenset({"binary", "lines"})


def kinds() -> list[str]:
    """What ``gatewayd decode`` accepts: every reader kind (each has a codec)."""
    return registry.names()


def codec(kind: str) -> ModuleType:
    """The codec module of ``kind``; KeyError for an unknown kind."""
    mod = registry.codec(kind)
    if mod.INPUT not in INPUTS:
        raise ValueError(f"codec {mod.__name__} declares INPUT {mod.INPUT!r}; "
                         f"expected one of {sorted(INPUTS)}")
    return mod


def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes | bytearray):
        return bytes(v).hex()
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):  # e.g. the tags of one reply
        return {f.name: _jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v


def frame_dict(frame: object, derived: tuple[str, ...] = ()) -> dict[str, Any]:
    """One decoder output as a JSON-able dict (bytes -> hex, times -> ISO 8601);
    ``derived``: properties (not fields) to include where the frame has them."""
    if isinstance(frame, Reject):
        d: dict[str, Any] = {"ok": False, "reason": frame.reason, "raw_hex": frame.raw.hex()}
        if frame.detail:
            d["detail"] = frame.detail
        return d
    d = {"ok": True, "frame": type(frame).__name__}
    if dataclasses.is_dataclass(frame) and not isinstance(frame, type):
        for f in dataclasses.fields(frame):
            d["raw_hex" if f.name == "raw" else f.name] = _jsonable(getattr(frame, f.name))
    for prop in derived:
        if hasattr(frame, prop):
            d[prop] = _jsonable(getattr(frame, prop))
    return d


def _prepare(mod: ModuleType, data: bytes) -> bytes:
    if mod.INPUT == "binary":
        if data.strip() and _HEX_DUMP.fullmatch(data):
            compact = b"".join(data.split())
            if len(compact) % 2 == 0:
                return bytes.fromhex(compact.decode("ascii"))
        return data
    comment: bytes | None = mod.COMMENT
    if comment:
        # Drop whole comment lines (a log's header); keep the bytes otherwise.
        lines = data.splitlines(keepends=True)
        if any(ln.startswith(comment) for ln in lines):
            data = b"".join(ln for ln in lines if not ln.startswith(comment))
    return data


def decode_stream(kind: str, data: bytes) -> Iterator[dict[str, Any]]:
    """Decode a whole capture of ``kind``; raises KeyError for an unknown kind."""
    mod = codec(kind)
    dec = mod.Decoder()
    data = _prepare(mod, data)
    derived: tuple[str, ...] = mod.DERIVED
    tag_id = getattr(mod, "tag_id", None)

    def out(frame: object) -> dict[str, Any]:
        d = frame_dict(frame, derived)
        if tag_id is not None and d["ok"] and (tid := tag_id(frame)) is not None:
            d["tag_id"] = tid
        return d

    for i in range(0, len(data), _CHUNK):
        for frame in dec.feed(data[i : i + _CHUNK]):
            yield out(frame)
    for frame in dec.flush():
        yield out(frame)


def decode_file(kind: str, path: str | Path) -> Iterator[dict[str, Any]]:
    return decode_stream(kind, Path(path).read_bytes())


def main_decode(kind: str, path: str | Path, out: TextIO, err: TextIO | None = None) -> int:
    """Write one JSON line per frame to ``out``. 0 on success; 2 (message on ``err``,
    default stderr) for an unknown kind or an unreadable file."""
    err = sys.stderr if err is None else err
    known = kinds()
    if kind not in known:
        close = difflib.get_close_matches(kind, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"error: unknown kind {kind!r}{hint}; choose one of: {', '.join(known)}",
              file=err)
        return 2
    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else Path(path).read_bytes()
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror or e}", file=err)
        return 2
    for d in decode_stream(kind, data):
        out.write(json.dumps(d, separators=(",", ":")) + "\n")
    return 0
