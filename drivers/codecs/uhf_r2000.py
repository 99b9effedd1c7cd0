"""UHF readers speaking the Impinj-R2000 "0xA0" serial protocol (IND903/YR903/Invelion).

Protocol: "IND903 UHF RFID reader module protocol V2.2" (the same command set is
sold as the YR903/Invelion/"UHF RFID Reader Serial Interface Protocol"; R2000
white-label modules, 115200 8N1 by default).

Frame, both directions::

    A0 | Len | Address | Cmd | Data ... | Check

``Len`` counts the bytes after itself (Address + Cmd + Data + Check), so a frame
is ``Len + 2`` bytes. ``Check`` is the two's complement of the byte sum from the
head through the last data byte (the whole frame then sums to 0 mod 256).

Reader->host replies decoded here:

* real-time inventory tag packets (cmd 0x89, also 0x8A fast-switch and 0x8B
  session inventory, which use the same tag packet): ``Freq_Ant`` (high 6 bits
  frequency index, low 2 bits antenna id 0..3, reported as antenna 1..4),
  ``PC`` (2), ``EPC`` (N), ``RSSI`` (1). The EPC length is taken from the PC word
  (bits 15..11 = EPC length in 16-bit words) when that is consistent, else from
  the frame length;
* end-of-round summaries (0x89/0x8B: Ant_ID(1) Read_Rate(2) Total_Read(4);
  0x8A: Total_Read(4) Command_Duration(4) in V2.2, Total_Read(3) in some firmware);
* one-byte error/status replies (0x10 success, 0x11 fail, 0x22 antenna missing ...),
  and 0x8A's two-byte one, Ant_ID(1) Error_Code(1), for an antenna missing mid-cycle;
* firmware version (0x72). Anything else well framed comes back as
  :class:`R2000Reply` with its data, so nothing is lost and no tag is invented.

RSSI: the spec's table maps raw 31..89 to raw-130 dBm and 90..98 to raw-129 dBm
(there is no -40 dBm step). Outside 31..98 the raw value is kept and dBm is None.

Resynchronisation: the decoder hunts for 0xA0 with ``bytes.find``. A candidate
with a bad check byte is rejected and the hunt restarts one byte later, so a
frame cut short by the next frame costs only the cut frame.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.codecs._frames import Reject

KIND = "uhf_r2000"
INPUT = "binary"  # ``gatewayd decode``: serial bytes, or a hex dump of them
REASONS = frozenset({"garbage", "truncated", "bad-length", "checksum"})
DERIVED = ("firmware",)  # frame properties ``gatewayd decode`` prints beside the fields
HEAD = 0xA0
MIN_LEN = 3  # Address + Cmd + Check

CMD_GET_FIRMWARE_VERSION = 0x72
CMD_SET_WORK_ANTENNA = 0x74
CMD_GET_WORK_ANTENNA = 0x75
CMD_GET_OUTPUT_POWER = 0x77
CMD_REAL_TIME_INVENTORY = 0x89
CMD_FAST_SWITCH_ANT_INVENTORY = 0x8A
CMD_CUSTOMIZED_SESSION_TARGET_INVENTORY = 0x8B

_TAG_CMDS = frozenset({0x89, 0x8A, 0x8B})
# Replies whose single data byte is a value, not an error code.
_ONE_BYTE_VALUE_CMDS = frozenset({CMD_GET_WORK_ANTENNA, CMD_GET_OUTPUT_POWER})

COMMAND_NAMES: dict[int, str] = {
    0x70: "reset",
    0x71: "set_uart_baudrate",
    0x72: "get_firmware_version",
    0x73: "set_reader_address",
    0x74: "set_work_antenna",
    0x75: "get_work_antenna",
    0x76: "set_output_power",
    0x77: "get_output_power",
    0x78: "set_frequency_region",
    0x79: "get_frequency_region",
    0x7B: "get_reader_temperature",
    0x80: "inventory",
    0x81: "read",
    0x82: "write",
    0x83: "lock",
    0x84: "kill",
    0x89: "real_time_inventory",
    0x8A: "fast_switch_ant_inventory",
    0x8B: "customized_session_target_inventory",
    0x90: "get_inventory_buffer",
    0x91: "get_and_reset_inventory_buffer",
    0x92: "get_inventory_buffer_tag_count",
    0x93: "reset_inventory_buffer",
}

ERROR_NAMES: dict[int, str] = {
    0x10: "command_success",
    0x11: "command_fail",
    0x20: "mcu_reset_error",
    0x21: "cw_on_error",
    0x22: "antenna_missing_error",
    0x23: "write_flash_error",
    0x24: "read_flash_error",
    0x25: "set_output_power_error",
    0x31: "tag_inventory_error",
    0x32: "tag_read_error",
    0x33: "tag_write_error",
    0x34: "tag_lock_error",
    0x35: "tag_kill_error",
    0x36: "no_tag_error",
    0x37: "inventory_ok_but_access_fail",
    0x38: "buffer_is_empty_error",
    0x40: "access_or_password_error",
    0x41: "parameter_invalid",
}


def rssi_dbm(raw: int) -> int | None:
    """RSSI byte -> dBm per the V2.2 table (None outside the table's 31..98)."""
    if 31 <= raw <= 89:
        return raw - 130
    if 90 <= raw <= 98:
        return raw - 129
    return None


def checksum(data: bytes) -> int:
    """Two's complement of the byte sum (what goes in the Check byte)."""
    return (-sum(data)) & 0xFF


@dataclass(frozen=True, slots=True)
class R2000Tag:
    """One tag seen during an inventory round."""

    addr: int
    cmd: int
    antenna: int  # 1..4
    freq_index: int  # 0..63, index into the region's channel table
    pc: int
    epc: str  # uppercase hex
    rssi_raw: int
    rssi_dbm: int | None
    raw: bytes


@dataclass(frozen=True, slots=True)
class R2000InventoryEnd:
    """End-of-round summary: the inventory command completed."""

    addr: int
    cmd: int
    antenna: int | None  # 0x89/0x8B report the antenna (1..4); 0x8A does not
    read_rate: int | None  # tags/s (0x89/0x8B)
    total_read: int
    duration_ms: int | None  # 0x8A only
    raw: bytes


@dataclass(frozen=True, slots=True)
class R2000Status:
    """A one-byte result code reply (success or an error such as antenna missing)."""

    addr: int
    cmd: int
    error_code: int
    success: bool  # error_code == 0x10 (named so it cannot clash with a decode "ok")
    error: str  # name from the spec's table, or "unknown_0xNN"
    raw: bytes
    antenna: int | None = None  # 0x8A's per-antenna error: the antenna (1..4) it names


@dataclass(frozen=True, slots=True)
class R2000Firmware:
    addr: int
    cmd: int
    major: int
    minor: int
    raw: bytes

    @property
    def firmware(self) -> str:
        return f"{self.major}.{self.minor}"


@dataclass(frozen=True, slots=True)
class R2000Reply:
    """Well-framed reply this module does not interpret (kept for diagnostics)."""

    addr: int
    cmd: int
    data: bytes
    raw: bytes


@dataclass(frozen=True, slots=True)
class R2000Command:
    """A host->reader frame (see :func:`parse_command`)."""

    addr: int
    cmd: int
    name: str
    data: bytes
    raw: bytes


R2000Frame = R2000Tag | R2000InventoryEnd | R2000Status | R2000Firmware | R2000Reply


def _framing(raw: bytes) -> Reject | None:
    if len(raw) < MIN_LEN + 2 or raw[0] != HEAD:
        return Reject("truncated", raw)
    if raw[1] < MIN_LEN:
        return Reject("bad-length", raw, f"Len {raw[1]} < {MIN_LEN}")
    if len(raw) != raw[1] + 2:
        reason = "truncated" if len(raw) < raw[1] + 2 else "bad-length"
        return Reject(reason, raw, f"Len says {raw[1] + 2} bytes, got {len(raw)}")
    want = checksum(raw[:-1])
    if raw[-1] != want:
        return Reject("checksum", raw, f"computed {want:02X}, frame says {raw[-1]:02X}")
    return None


def _tag(addr: int, cmd: int, data: bytes, raw: bytes) -> R2000Tag:
    pc = (data[1] << 8) | data[2]
    return R2000Tag(
        addr=addr,
        cmd=cmd,
        antenna=(data[0] & 0x03) + 1,
        freq_index=data[0] >> 2,
        pc=pc,
        epc=data[3:-1].hex().upper(),
        rssi_raw=data[-1],
        rssi_dbm=rssi_dbm(data[-1]),
        raw=raw,
    )


def decode_frame(raw: bytes) -> R2000Frame | Reject:
    """Decode exactly one reader->host frame (head through check byte)."""
    bad = _framing(raw)
    if bad is not None:
        return bad
    addr, cmd, data = raw[2], raw[3], raw[4:-1]
    n = len(data)
    if cmd in _TAG_CMDS:
        if n == 1:
            return _status(addr, cmd, data[0], raw)
        if cmd == CMD_FAST_SWITCH_ANT_INVENTORY:
            if n == 2 and data[0] <= 3:  # Ant_ID + Error_Code: that antenna is missing
                name = ERROR_NAMES.get(data[1], f"unknown_0x{data[1]:02X}")
                return R2000Status(addr, cmd, data[1], data[1] == 0x10, name, raw,
                                   data[0] + 1)
            # V2.2's summary: Total_Read(4) + Command_Duration(4). A tag packet of the same
            # length carries a 2-word EPC, and its PC says so (bits 15..11 = 2); a summary's
            # second byte (Total_Read >> 16) would need 2**20 reads in one command.
            if n == 8 and data[1] >> 3 != 2:
                return R2000InventoryEnd(addr, cmd, None, None, int.from_bytes(data[0:4], "big"),
                                         int.from_bytes(data[4:8], "big"), raw)
        if n == 7:
            if cmd == CMD_FAST_SWITCH_ANT_INVENTORY:
                return R2000InventoryEnd(
                    addr,
                    cmd,
                    None,
                    None,
                    int.from_bytes(data[0:3], "big"),
                    int.from_bytes(data[3:7], "big"),
                    raw,
                )
            return R2000InventoryEnd(
                addr,
                cmd,
                (data[0] & 0x03) + 1,
                int.from_bytes(data[1:3], "big"),
                int.from_bytes(data[3:7], "big"),
                None,
                raw,
            )
        # Tag packet: FreqAnt + PC + EPC (whole words) + RSSI.
        if n >= 4 and n % 2 == 0:
            return _tag(addr, cmd, data, raw)
        return R2000Reply(addr, cmd, bytes(data), raw)
    if n == 1 and cmd not in _ONE_BYTE_VALUE_CMDS:
        return _status(addr, cmd, data[0], raw)
    if cmd == CMD_GET_FIRMWARE_VERSION and n == 2:
        return R2000Firmware(addr, cmd, data[0], data[1], raw)
    return R2000Reply(addr, cmd, bytes(data), raw)


def _status(addr: int, cmd: int, code: int, raw: bytes) -> R2000Status:
    name = ERROR_NAMES.get(code, f"unknown_0x{code:02X}")
    return R2000Status(addr, cmd, code, code == 0x10, name, raw)


def parse_command(raw: bytes) -> R2000Command | Reject:
    """Check and split a host->reader frame (for sniffing the host side, and tests)."""
    bad = _framing(raw)
    if bad is not None:
        return bad
    cmd = raw[3]
    return R2000Command(raw[2], cmd, COMMAND_NAMES.get(cmd, f"0x{cmd:02X}"), raw[4:-1], raw)


class Decoder:
    """Stream decoder for reader->host bytes; never raises on any input."""

    KIND = KIND

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[R2000Frame | Reject]:
        buf = self._buf
        buf += data
        out: list[R2000Frame | Reject] = []
        pos = 0
        end = len(buf)
        while pos < end:
            start = buf.find(HEAD, pos)
            if start < 0:
                out.append(Reject("garbage", bytes(buf[pos:])))
                pos = end
                break
            if start > pos:
                out.append(Reject("garbage", bytes(buf[pos:start])))
                pos = start
            if end - pos < 2:
                break
            length = buf[pos + 1]
            if length < MIN_LEN:
                out.append(Reject("bad-length", bytes(buf[pos : pos + 2])))
                pos += 1
                continue
            stop = pos + length + 2
            if stop > end:
                break
            raw = bytes(buf[pos:stop])
            if (sum(raw) & 0xFF) != 0:
                # Maybe a cut frame swallowed the start of the next: retry one byte on.
                out.append(decode_frame(raw))
                nxt = buf.find(HEAD, pos + 1, stop)
                pos = nxt if nxt > 0 else stop
                continue
            out.append(decode_frame(raw))
            pos = stop
        del buf[:pos]
        return out

    def flush(self) -> list[R2000Frame | Reject]:
        """End of input: a started frame that never completed is truncated."""
        if not self._buf:
            return []
        rest = Reject("truncated", bytes(self._buf))
        self._buf.clear()
        return [rest]


def encode_frame(cmd: int, data: bytes = b"", addr: int = 0x01) -> bytes:
    """Frame any command/reply: head, Len, address, cmd, data, check."""
    if len(data) > 255 - MIN_LEN:
        raise ValueError("R2000 frame data too long")
    body = bytes([HEAD, len(data) + MIN_LEN, addr & 0xFF, cmd & 0xFF]) + data
    return body + bytes([checksum(body)])


def encode_real_time_inventory(repeat: int = 1, addr: int = 0x01) -> bytes:
    """Host->reader 0x89: run real-time inventory, ``repeat`` rounds (0xFF = max speed)."""
    return encode_frame(CMD_REAL_TIME_INVENTORY, bytes([repeat & 0xFF]), addr)


def encode_fast_switch_inventory(antennas: tuple[int, ...] | list[int], repeat: int = 1,
                                 addr: int = 0x01) -> bytes:
    """Host->reader 0x8A: inventory on up to four antennas (1..4) in turn, the reader
    switching itself, ``repeat`` times over; unused slots are 0xFF ("ignore")."""
    if not 1 <= len(antennas) <= 4 or not all(1 <= a <= 4 for a in antennas):
        raise ValueError("0x8A takes one to four antennas, each 1..4")
    ids = bytes(a - 1 for a in antennas) + b"\xff" * (4 - len(antennas))
    return encode_frame(CMD_FAST_SWITCH_ANT_INVENTORY, ids + bytes([repeat & 0xFF]), addr)


def encode_fast_switch_end(total_read: int, duration_ms: int, addr: int = 0x01) -> bytes:
    """Reader->host 0x8A summary as V2.2 lays it out: Total_Read(4) Duration(4) (simulator)."""
    return encode_frame(CMD_FAST_SWITCH_ANT_INVENTORY,
                        total_read.to_bytes(4, "big") + duration_ms.to_bytes(4, "big"), addr)


def encode_get_firmware_version(addr: int = 0x01) -> bytes:
    return encode_frame(CMD_GET_FIRMWARE_VERSION, b"", addr)


def encode_set_work_antenna(antenna: int, addr: int = 0x01) -> bytes:
    """Host->reader 0x74 (antenna 1..4 -> id 0..3)."""
    if not 1 <= antenna <= 4:
        raise ValueError("antenna must be 1..4")
    return encode_frame(CMD_SET_WORK_ANTENNA, bytes([antenna - 1]), addr)


def encode_tag(
    epc: str,
    rssi_raw: int = 69,
    antenna: int = 1,
    freq_index: int = 0,
    pc: int | None = None,
    addr: int = 0x01,
    cmd: int = CMD_REAL_TIME_INVENTORY,
) -> bytes:
    """Reader->host tag packet (simulator). PC defaults to the EPC length in words."""
    epc_b = bytes.fromhex(epc)
    if not epc_b or len(epc_b) % 2:
        raise ValueError("EPC must be a non-empty whole number of 16-bit words")
    if not 1 <= antenna <= 4 or not 0 <= freq_index <= 63:
        raise ValueError("antenna 1..4, freq_index 0..63")
    if pc is None:
        pc = (len(epc_b) // 2) << 11
    data = bytes([(freq_index << 2) | (antenna - 1)]) + pc.to_bytes(2, "big") + epc_b
    return encode_frame(cmd, data + bytes([rssi_raw & 0xFF]), addr)


def encode_inventory_end(
    total_read: int, read_rate: int = 0, antenna: int = 1, addr: int = 0x01
) -> bytes:
    """Reader->host 0x89 end-of-round summary (simulator)."""
    data = bytes([antenna - 1]) + read_rate.to_bytes(2, "big") + total_read.to_bytes(4, "big")
    return encode_frame(CMD_REAL_TIME_INVENTORY, data, addr)


def encode_status(cmd: int, error_code: int, addr: int = 0x01) -> bytes:
    """Reader->host one-byte status/error reply (simulator)."""
    return encode_frame(cmd, bytes([error_code]), addr)
