"""UHF readers of the Chafon family (UHFReader18, UHFReader288/288M, UHFReader86,
ZK-RFID102 and other relabels), serial, 57600 8N1 by default.

Protocol: the family's user manuals ("UHFReader18 User's Manual V2.0",
"ZK-RFID102 UHF RFID Reader User's Manual V2.0", "UR-series User Manual
v1.14"). Frames have no start byte::

    host -> reader:  Len | Adr | Cmd          | Data ... | CRC-16 LSB | CRC-16 MSB
    reader -> host:  Len | Adr | reCmd | Status | Data ... | CRC-16 LSB | CRC-16 MSB

``Len`` counts the bytes after itself, so a frame is ``Len + 1`` bytes. The
CRC covers everything from ``Len`` up to the CRC: CRC-16 with preset 0xFFFF and
the reflected polynomial 0x8408, no final XOR (the manuals' ``uiCrc16Cal``;
known elsewhere as CRC-16/MCRF4XX), sent low byte first.

Inventory replies (reCmd 0x01; Status 0x01 done, 0x02 time-out, 0x03 more
frames follow, 0x04 the reader's memory ran out) list the tags. The layout
depends on the model, which the bytes cannot tell, so the decoder is told:

* ``"18"`` (UHFReader18): ``Num``, then per tag ``N`` and N bytes of EPC. No
  RSSI; single antenna, reported as 1;
* ``"288"`` (UHFReader288/86, UR series): ``Ant`` (a one-bit mask: 0x04 is
  antenna 3), ``Num``, then per tag ``N``, N bytes, ``RSSI``. Bit 7 of ``N``
  marks FastID data: the last 12 bytes are the TID.

Get Reader Information (reCmd 0x21) is decoded too: version, type, protocols,
band and channel range (band = DMaxFre bits 7-6 and DMinFre bits 7-6), power,
scan time. Any other well-framed reply is a :class:`ChafonReply`.

Resynchronisation: with no start byte, a candidate is taken at every offset
whose ``Len`` is plausible; only a CRC match makes it a frame. The bytes
skipped before the next good frame become one reject: ``checksum`` when they
are exactly one candidate (its ``Len`` intact), ``truncated`` when they are
less than their first ``Len`` says (cut by the next frame or the end of
input), else ``garbage``. While hunting, a complete good frame wins over an
incomplete candidate before it. A frame in progress, though, is waited for:
after a corrupt ``Len`` at a frame boundary only :meth:`Decoder.flush` (end of
input, or the driver's reply time-out: the reader answers each command in one
burst) settles it.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.codecs._frames import Reject

KIND = "uhf_chafon"
INPUT = "binary"  # ``gatewayd decode``: serial bytes, or a hex dump of them
REASONS = frozenset({"garbage", "checksum", "truncated", "bad-layout"})
DERIVED = ("frequency_band", "min_freq_mhz", "max_freq_mhz")  # ChafonReaderInfo properties
MODELS = ("288", "18")

MIN_LEN = 5  # reply: Adr + reCmd + Status + 2 CRC bytes
MIN_COMMAND_LEN = 4  # command: Adr + Cmd + 2 CRC bytes
MAX_JUNK = 512  # a longer run without a good frame is reported and dropped
TID_LEN = 12  # FastID: the TID appended to the EPC

CMD_INVENTORY = 0x01
CMD_GET_READER_INFO = 0x21
INVENTORY_STATUSES = frozenset({0x01, 0x02, 0x03, 0x04})
STATUS_NAMES = {
    0x00: "ok",
    0x01: "inventory-done",
    0x02: "inventory-timeout",
    0x03: "more-frames",
    0x04: "reader-memory-full",
    0xF8: "antenna-error",
}

# Band code (DMaxFre bits 7-6, then DMinFre bits 7-6) -> (name, first channel MHz, step MHz).
BANDS: dict[int, tuple[str, float, float]] = {
    0b0000: ("user", 902.6, 0.4),
    0b0001: ("CN2", 920.125, 0.25),
    0b0010: ("US", 902.75, 0.5),
    0b0011: ("KR", 917.1, 0.2),
    0b0100: ("EU", 865.1, 0.2),
    0b0110: ("UA", 868.0, 0.1),
    0b0111: ("PE", 916.2, 0.9),
    0b1000: ("CN1", 840.125, 0.25),
    0b1001: ("EU3", 865.7, 0.6),
    0b1010: ("TW", 922.25, 0.5),
    0b1100: ("US3", 902.0, 0.5),
}
READER_TYPES = {0x09: "UHFReader18", 0x0C: "UHFReader288M", 0x0F: "UHFReader86",
                0x10: "UHFReader86"}


def crc16(data: bytes) -> int:
    """The family's CRC-16: preset 0xFFFF, reflected polynomial 0x8408, no final XOR."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def _crc_ok(raw: bytes) -> bool:
    return crc16(raw[:-2]) == int.from_bytes(raw[-2:], "little")


@dataclass(frozen=True, slots=True)
class ChafonTag:
    epc: str  # uppercase hex
    antenna: int  # 1..8
    rssi_raw: int | None  # the reader's RSSI byte (288 layout); None on a UHFReader18
    tid: str | None = None  # uppercase hex, FastID only


@dataclass(frozen=True, slots=True)
class ChafonInventory:
    """One inventory reply: the tags it lists (none when the field was empty)."""

    addr: int
    cmd: int
    status: int  # 0x01 done, 0x02 time-out, 0x03 more frames follow, 0x04 memory full
    antenna: int | None  # the 288 layout's Ant mask as a number 1..8; None on a UHFReader18
    tags: tuple[ChafonTag, ...]
    raw: bytes


@dataclass(frozen=True, slots=True)
class ChafonReaderInfo:
    addr: int
    cmd: int
    status: int
    firmware_version: tuple[int, int]
    reader_type: int  # 0x09 UHFReader18, 0x0C UHFReader288M, 0x0F/0x10 UHFReader86
    supports_6b: bool
    supports_6c: bool
    band: int  # code, see BANDS
    max_channel: int
    min_channel: int
    power_dbm: int
    scan_time: int  # units of 100 ms
    raw: bytes

    @property
    def frequency_band(self) -> str | None:
        return BANDS[self.band][0] if self.band in BANDS else None

    @property
    def min_freq_mhz(self) -> float | None:
        return _channel_mhz(self.band, self.min_channel)

    @property
    def max_freq_mhz(self) -> float | None:
        return _channel_mhz(self.band, self.max_channel)


@dataclass(frozen=True, slots=True)
class ChafonReply:
    """Any other well-framed reply (status and data kept as sent)."""

    addr: int
    cmd: int
    status: int
    data: bytes
    raw: bytes

    @property
    def status_name(self) -> str:
        return STATUS_NAMES.get(self.status, f"0x{self.status:02X}")


@dataclass(frozen=True, slots=True)
class ChafonCommand:
    """A host -> reader command (what the simulator receives)."""

    addr: int
    cmd: int
    data: bytes
    raw: bytes


ChafonFrame = ChafonInventory | ChafonReaderInfo | ChafonReply


def _channel_mhz(band: int, channel: int) -> float | None:
    if band not in BANDS:
        return None
    _, first, step = BANDS[band]
    return round(first + channel * step, 3)


def _antenna(mask: int) -> int | None:
    """A one-bit mask -> antenna number 1..8; anything else is not one antenna."""
    if mask == 0 or mask & (mask - 1):
        return None
    return mask.bit_length()


def _tags(model: str, data: bytes, antenna: int) -> tuple[ChafonTag, ...] | str:
    """Parse the tag list after the header bytes; a string says what is wrong."""
    if not data:
        return "no tag count"
    count, pos, tags = data[0], 1, []
    rssi = model == "288"
    for i in range(count):
        if pos >= len(data):
            return f"{count} tags announced, {i} present"
        n = data[pos]
        fast_id = rssi and bool(n & 0x80)
        size = n & 0x7F if rssi else n
        body = data[pos + 1 : pos + 1 + size]
        end = pos + 1 + size + (1 if rssi else 0)
        if size == 0:
            return f"tag {i + 1} has no EPC"
        if len(body) < size or end > len(data):
            return f"tag {i + 1} overruns the frame"
        if fast_id and size <= TID_LEN:
            return f"tag {i + 1}: FastID block shorter than its TID"
        epc, tid = (body[:-TID_LEN], body[-TID_LEN:]) if fast_id else (body, None)
        tags.append(ChafonTag(epc.hex().upper(), antenna, data[end - 1] if rssi else None,
                              tid.hex().upper() if tid is not None else None))
        pos = end
    if pos != len(data):
        return f"{len(data) - pos} bytes after the last tag"
    return tuple(tags)


def decode_frame(raw: bytes, model: str = "288") -> ChafonFrame | Reject:
    """Decode exactly one reader -> host frame (Len through the CRC)."""
    if not raw or len(raw) < raw[0] + 1:
        return Reject("truncated", raw)
    if raw[0] < MIN_LEN or len(raw) != raw[0] + 1:
        return Reject("bad-layout", raw, f"Len says {raw[0] + 1} bytes, got {len(raw)}")
    if not _crc_ok(raw):
        want = crc16(raw[:-2])
        return Reject("checksum", raw, f"computed {want:04X}, frame says "
                      f"{int.from_bytes(raw[-2:], 'little'):04X}")
    addr, cmd, status, data = raw[1], raw[2], raw[3], raw[4:-2]
    if cmd == CMD_INVENTORY and status in INVENTORY_STATUSES:
        antenna: int | None = None
        if model == "288":
            if not data:
                return Reject("bad-layout", raw, "no antenna byte")
            antenna = _antenna(data[0])
            if antenna is None:
                return Reject("bad-layout", raw, f"antenna mask 0x{data[0]:02X}")
            data = data[1:]
        tags = _tags(model, data, antenna or 1)
        if isinstance(tags, str):
            return Reject("bad-layout", raw, tags)
        return ChafonInventory(addr, cmd, status, antenna, tags, raw)
    if cmd == CMD_GET_READER_INFO and status == 0x00 and len(data) >= 8:
        return ChafonReaderInfo(
            addr, cmd, status, (data[0], data[1]), data[2], bool(data[3] & 0x01),
            bool(data[3] & 0x02), ((data[4] & 0xC0) >> 4) | ((data[5] & 0xC0) >> 6),
            data[4] & 0x3F, data[5] & 0x3F, data[6], data[7], raw)
    return ChafonReply(addr, cmd, status, bytes(data), raw)


def decode_command(raw: bytes) -> ChafonCommand | Reject:
    """Decode exactly one host -> reader command (used by a simulator and tests)."""
    if not raw or len(raw) < raw[0] + 1:
        return Reject("truncated", raw)
    if raw[0] < MIN_COMMAND_LEN or len(raw) != raw[0] + 1:
        return Reject("bad-layout", raw, f"Len says {raw[0] + 1} bytes, got {len(raw)}")
    if not _crc_ok(raw):
        return Reject("checksum", raw)
    return ChafonCommand(raw[1], raw[2], bytes(raw[3:-2]), raw)


class Decoder:
    """Stream decoder for reader -> host bytes; never raises on any input."""

    KIND = KIND

    def __init__(self, model: str = "288") -> None:
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, not {model!r}")
        self.model = model
        self._buf = bytearray()
        self._pos = 0  # next candidate offset in _buf
        self._junk: int | None = None  # offset where the current run of skipped bytes began

    def feed(self, data: bytes) -> list[ChafonFrame | Reject]:
        self._buf += data
        return self._scan(final=False)

    def flush(self) -> list[ChafonFrame | Reject]:
        """End of input: no candidate can complete any more, so hunt through the rest."""
        out = self._scan(final=True)
        self._buf.clear()
        self._pos, self._junk = 0, None
        return out

    def _scan(self, final: bool) -> list[ChafonFrame | Reject]:
        buf = self._buf
        out: list[ChafonFrame | Reject] = []
        pos, junk, end = self._pos, self._junk, len(buf)
        while pos < end:
            length = buf[pos]
            if length >= MIN_LEN:
                stop = pos + length + 1
                if stop <= end:
                    raw = bytes(buf[pos:stop])
                    if _crc_ok(raw):
                        if junk is not None:
                            out.append(_skipped(bytes(buf[junk:pos])))
                            junk = None
                        out.append(decode_frame(raw, self.model))
                        pos = stop
                        continue
                elif not final:
                    if junk is None:
                        break  # a frame in progress: wait for the rest
                    # Hunting after bad bytes: a complete good frame further on wins over
                    # this incomplete candidate, so one corrupt Len cannot stall the stream.
                    nxt = _next_good(buf, pos + 1, end)
                    if nxt is None:
                        break
                    pos = nxt
                    continue
            if junk is None:
                junk = pos
            pos += 1
            if pos - junk >= MAX_JUNK:
                out.append(Reject("garbage", bytes(buf[junk:pos])))
                junk = None
        if final and junk is not None:
            out.append(_skipped(bytes(buf[junk:end])))
            junk, pos = None, end
        keep = pos if junk is None else junk
        del buf[:keep]
        self._pos = pos - keep
        self._junk = None if junk is None else junk - keep
        return out


def _next_good(buf: bytearray, start: int, end: int) -> int | None:
    """Offset of the first complete, CRC-valid candidate in ``buf[start:end]``."""
    for pos in range(start, end):
        length = buf[pos]
        if length >= MIN_LEN and pos + length + 1 <= end and _crc_ok(
                bytes(buf[pos : pos + length + 1])):
            return pos
    return None


def _skipped(run: bytes) -> Reject:
    """Bytes that held no good frame: one whole bad candidate (checksum), a candidate
    cut short by the next frame or the end of input (truncated), or garbage."""
    if run[0] >= MIN_LEN and len(run) == run[0] + 1:
        return Reject("checksum", run, f"computed {crc16(run[:-2]):04X}, frame says "
                      f"{int.from_bytes(run[-2:], 'little'):04X}")
    if run[0] >= MIN_LEN and len(run) < run[0] + 1:
        return Reject("truncated", run)
    return Reject("garbage", run)


# ---------------------------------------------------------------- encoders


def _framed(body: bytes) -> bytes:
    frame = bytes([len(body) + 2]) + body
    return frame + crc16(frame).to_bytes(2, "little")


def encode_command(cmd: int, data: bytes = b"", addr: int = 0xFF) -> bytes:
    """Host -> reader command (0xFF: any reader address)."""
    return _framed(bytes([addr, cmd]) + data)


def encode_reply(cmd: int, status: int, data: bytes = b"", addr: int = 0x00) -> bytes:
    """Reader -> host reply (simulator)."""
    return _framed(bytes([addr, cmd, status]) + data)


def encode_inventory(
    tags: list[tuple[str, int]],
    model: str = "288",
    antenna: int = 1,
    status: int = 0x01,
    addr: int = 0x00,
) -> bytes:
    """An inventory reply listing ``(epc_hex, rssi_raw)`` tags (RSSI unused on "18")."""
    if model not in MODELS or not 1 <= antenna <= 8:
        raise ValueError("model '288' or '18', antenna 1..8")
    body = bytearray(b"" if model == "18" else bytes([1 << (antenna - 1)]))
    body.append(len(tags))
    for epc_hex, rssi in tags:
        epc = bytes.fromhex(epc_hex)
        if not 0 < len(epc) < 0x80:
            raise ValueError("EPC must be 1..127 bytes")
        body += bytes([len(epc)]) + epc + (b"" if model == "18" else bytes([rssi & 0xFF]))
    return encode_reply(CMD_INVENTORY, status, bytes(body), addr)
