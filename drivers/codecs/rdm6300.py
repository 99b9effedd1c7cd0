"""EM4100 125 kHz cards as sent by RDM6300/RDM630-class readers (9600 8N1).

Frame (14 bytes): STX 0x02, ten ASCII hex digits (2 version/customer + 8 card
id), two ASCII hex digits of the XOR of the five data bytes, ETX 0x03. The
reader repeats the frame while a card is in the field. Source: Seeed Studio's
RDM630 module documentation (frame layout and checksum example 62E3086CED/08).

Lowercase hex is accepted (some clones send it) and canonicalised to upper.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.codecs._frames import Reject

KIND = "rdm6300"
INPUT = "binary"  # ``gatewayd decode``: serial bytes, or a hex dump of them
REASONS = frozenset({"garbage", "truncated", "no-etx", "not-hex", "checksum"})
DERIVED: tuple[str, ...] = ()  # frame properties ``gatewayd decode`` prints beside the fields
STX = 0x02
ETX = 0x03
FRAME_LEN = 14
_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Em4100Frame:
    tag: str  # 10 uppercase hex digits: version byte + 32-bit card id
    version: int
    card_id: int  # the 32-bit number printed on cards (last 8 hex digits)
    raw: bytes


def decode_frame(raw: bytes) -> Em4100Frame | Reject:
    """Decode exactly one 14-byte candidate frame."""
    if len(raw) != FRAME_LEN or raw[0] != STX:
        return Reject("truncated", raw)
    if raw[-1] != ETX:
        return Reject("no-etx", raw)
    body = raw[1:13]
    if not all(b in _HEX for b in body):
        return Reject("not-hex", raw)
    data = bytes.fromhex(body[:10].decode("ascii"))
    check = int(body[10:12], 16)
    x = 0
    for b in data:
        x ^= b
    if x != check:
        return Reject("checksum", raw, f"computed {x:02X}, frame says {check:02X}")
    tag = data.hex().upper()
    return Em4100Frame(tag=tag, version=data[0], card_id=int.from_bytes(data[1:], "big"), raw=raw)


class Decoder:
    """Stream decoder: resynchronises on STX after garbage or a broken frame."""

    KIND = KIND

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Em4100Frame | Reject]:
        buf = self._buf
        buf += data
        out: list[Em4100Frame | Reject] = []
        while buf:
            start = buf.find(STX)
            if start < 0:
                out.append(Reject("garbage", bytes(buf)))
                buf.clear()
                break
            if start > 0:
                out.append(Reject("garbage", bytes(buf[:start])))
                del buf[:start]
            # A second STX inside the frame means the first one was cut short.
            nxt = buf.find(STX, 1, FRAME_LEN)
            if nxt > 0:
                out.append(Reject("truncated", bytes(buf[:nxt])))
                del buf[:nxt]
                continue
            if len(buf) < FRAME_LEN:
                break
            out.append(decode_frame(bytes(buf[:FRAME_LEN])))
            del buf[:FRAME_LEN]
        return out

    def flush(self) -> list[Em4100Frame | Reject]:
        """End of input: whatever is left is an incomplete frame."""
        if not self._buf:
            return []
        rest = Reject("truncated", bytes(self._buf))
        self._buf.clear()
        return [rest]


def encode(tag: str) -> bytes:
    """Build a valid frame for a 10-hex-digit tag (used by the simulator and tests)."""
    data = bytes.fromhex(tag)
    if len(data) != 5:
        raise ValueError(f"EM4100 tag needs 10 hex digits, got {tag!r}")
    x = 0
    for b in data:
        x ^= b
    return bytes([STX]) + tag.upper().encode() + f"{x:02X}".encode() + bytes([ETX])
