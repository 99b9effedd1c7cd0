"""BLE beacon advertisements: iBeacon and Eddystone (UID, URL, TLM, EID).

Input is what bleak's ``AdvertisementData`` gives: ``manufacturer_data``
(company id -> bytes after the 2-byte id) and ``service_data`` (128-bit UUID
string -> bytes). Sources: Apple's iBeacon layout (company 0x004C, type 0x02,
length 0x15, 16-byte UUID, major, minor, signed measured power at 1 m) and the
Eddystone protocol specification (google/eddystone: service 0xFEAA; frame 0x00
UID, 0x10 URL, 0x20 TLM, 0x30 EID; TLM temperature is signed 8.8 fixed point,
0x8000 = not supported; the TLM second counter counts 0.1 s).

Canonical tag ids (what the gateway keys children's tags by), lowercase hex:
``ibeacon:<uuid>:<major>:<minor>`` and ``eddystone:<namespace>:<instance>``.

Button press (SOS) signal, one convention, configurable: many cheap SOS
beacons switch to a second iBeacon UUID while the button is held (and keep
their major/minor). The site config names that "alert UUID";
:func:`is_button_press` is true for an iBeacon frame advertising it, and
:func:`tag_id` with ``alert_uuid`` maps it back to the tag's normal id, so the
press is attributed to the right child. Vendor-specific button payloads are
deliberately not decoded here.
"""

from __future__ import annotations

import json
import uuid as uuidlib
from dataclasses import dataclass

from drivers.codecs._frames import Reject

KIND = "ble"
# ``gatewayd decode``: lines of advertisement hex or JSON; the Decoder skips ``#`` lines itself.
INPUT = "lines"
COMMENT = None
REASONS = frozenset({"not-ibeacon", "truncated", "bad-length", "bad-url", "bad-frame-type",
                     "bad-version", "no-beacon", "not-hex", "bad-json", "too-long"})
DERIVED = ("uptime_s",)  # frame properties ``gatewayd decode`` prints beside the fields
APPLE = 0x004C
EDDYSTONE_UUID = "0000feaa-0000-1000-8000-00805f9b34fb"
EDDYSTONE_UUID16 = 0xFEAA
_BASE_UUID_TAIL = "-0000-1000-8000-00805f9b34fb"

_URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
_URL_EXPANSIONS = (
    ".com/",
    ".org/",
    ".edu/",
    ".net/",
    ".info/",
    ".biz/",
    ".gov/",
    ".com",
    ".org",
    ".edu",
    ".net",
    ".info",
    ".biz",
    ".gov",
)


@dataclass(frozen=True, slots=True)
class IBeacon:
    uuid: str  # lowercase, dashed
    major: int
    minor: int
    tx_power: int  # measured power at 1 m, signed dBm


@dataclass(frozen=True, slots=True)
class EddystoneUid:
    namespace: str  # 20 lowercase hex digits
    instance: str  # 12 lowercase hex digits
    tx_power_0m: int


@dataclass(frozen=True, slots=True)
class EddystoneUrl:
    url: str
    tx_power_0m: int


@dataclass(frozen=True, slots=True)
class EddystoneTlm:
    battery_mv: int  # 0 = not supported
    temperature_c: float | None  # None when the beacon reports 0x8000
    adv_count: int
    sec_cnt_raw: int  # 0.1 s units since power-up

    @property
    def uptime_s(self) -> float:
        return self.sec_cnt_raw / 10


@dataclass(frozen=True, slots=True)
class EddystoneTlmEncrypted:
    etlm: bytes  # 12 bytes ciphertext
    salt: int
    mic: int
    encrypted: bool = True


@dataclass(frozen=True, slots=True)
class EddystoneEid:
    eid: str  # 16 lowercase hex digits (rotating ephemeral id)
    tx_power_0m: int


BleFrame = (
    IBeacon | EddystoneUid | EddystoneUrl | EddystoneTlm | EddystoneTlmEncrypted | EddystoneEid
)


def _s8(b: int) -> int:
    return b - 256 if b > 127 else b


def decode_ibeacon(company: int, data: bytes) -> IBeacon | Reject:
    """``data`` = manufacturer data after the company id."""
    if company != APPLE:
        return Reject("not-ibeacon", data, f"company 0x{company:04X}")
    if len(data) < 2 or data[0] != 0x02:
        return Reject("not-ibeacon", data, "Apple subtype is not 0x02")
    if data[1] != 0x15:
        return Reject("not-ibeacon", data, f"iBeacon length byte 0x{data[1]:02X}")
    if len(data) < 23:
        return Reject("truncated", data, f"{len(data)} of 23 bytes")
    if len(data) > 23:
        return Reject("bad-length", data, f"{len(data)} bytes, iBeacon has 23")
    return IBeacon(
        uuid=str(uuidlib.UUID(bytes=bytes(data[2:18]))),
        major=int.from_bytes(data[18:20], "big"),
        minor=int.from_bytes(data[20:22], "big"),
        tx_power=_s8(data[22]),
    )


def _decode_url(data: bytes) -> str | Reject:
    if not data:
        return Reject("truncated", data, "no URL scheme")
    if data[0] >= len(_URL_SCHEMES):
        return Reject("bad-url", data, f"scheme prefix 0x{data[0]:02X}")
    parts = [_URL_SCHEMES[data[0]]]
    for b in data[1:]:
        if b < len(_URL_EXPANSIONS):
            parts.append(_URL_EXPANSIONS[b])
        elif b <= 0x20 or b >= 0x7F:
            return Reject("bad-url", data, f"reserved or excluded octet 0x{b:02X}")
        else:
            parts.append(chr(b))
    return "".join(parts)


def decode_eddystone(data: bytes) -> BleFrame | Reject:
    """``data`` = service data of UUID 0xFEAA."""
    if not data:
        return Reject("truncated", data, "empty Eddystone frame")
    ft = data[0]
    n = len(data)
    if ft == 0x00:  # UID: tx, 10 namespace, 6 instance, [2 RFU]
        if n not in (18, 20):
            return Reject("truncated" if n < 18 else "bad-length", data, f"UID has {n} bytes")
        return EddystoneUid(data[2:12].hex(), data[12:18].hex(), _s8(data[1]))
    if ft == 0x10:  # URL: tx, scheme, encoded URL (<= 17)
        if n < 3:
            return Reject("truncated", data, "URL frame too short")
        if n > 20:
            return Reject("bad-length", data, f"URL frame has {n} bytes")
        url = _decode_url(data[2:])
        if isinstance(url, Reject):
            return Reject(url.reason, data, url.detail)
        return EddystoneUrl(url, _s8(data[1]))
    if ft == 0x20:  # TLM
        if n < 2:
            return Reject("truncated", data, "TLM without version")
        ver = data[1]
        if ver == 0x00:
            if n != 14:
                return Reject("truncated" if n < 14 else "bad-length", data, f"TLM has {n} bytes")
            raw_t = int.from_bytes(data[4:6], "big", signed=True)
            temp = None if raw_t == -0x8000 else raw_t / 256.0
            return EddystoneTlm(
                battery_mv=int.from_bytes(data[2:4], "big"),
                temperature_c=temp,
                adv_count=int.from_bytes(data[6:10], "big"),
                sec_cnt_raw=int.from_bytes(data[10:14], "big"),
            )
        if ver == 0x01:
            if n != 18:
                return Reject("truncated" if n < 18 else "bad-length", data, f"eTLM has {n} bytes")
            return EddystoneTlmEncrypted(
                bytes(data[2:14]),
                int.from_bytes(data[14:16], "big"),
                int.from_bytes(data[16:18], "big"),
            )
        return Reject("bad-version", data, f"TLM version 0x{ver:02X}")
    if ft == 0x30:  # EID: tx, 8-byte ephemeral id
        if n != 10:
            return Reject("truncated" if n < 10 else "bad-length", data, f"EID has {n} bytes")
        return EddystoneEid(data[2:10].hex(), _s8(data[1]))
    return Reject("bad-frame-type", data, f"Eddystone frame type 0x{ft:02X}")


def decode_advertisement(
    manufacturer_data: dict[int, bytes], service_data: dict[str, bytes]
) -> list[BleFrame | Reject]:
    """Every beacon frame in one advertisement (bleak's dicts). Other data is ignored,
    except Apple or 0x0215-shaped manufacturer data, which is reported when it is not
    a valid iBeacon (so a wrong company id or a cut frame shows up as a reject)."""
    out: list[BleFrame | Reject] = []
    for company, data in manufacturer_data.items():
        if company == APPLE or data[:2] == b"\x02\x15":
            out.append(decode_ibeacon(company, data))
    for key, data in service_data.items():
        if key.lower() == EDDYSTONE_UUID:
            out.append(decode_eddystone(data))
    return out


def parse_ad_structures(adv: bytes) -> tuple[dict[int, bytes], dict[str, bytes]] | Reject:
    """Raw advertising data (length-type-value AD structures) -> bleak-style dicts.

    Only AD types 0xFF (manufacturer data) and 0x16 (16-bit UUID service data)
    are kept. Zero padding after the last structure (seen in real scan
    records) ends the data.
    """
    mfr: dict[int, bytes] = {}
    svc: dict[str, bytes] = {}
    i, n = 0, len(adv)
    while i < n:
        ln = adv[i]
        if ln == 0:
            break
        if i + 1 + ln > n:
            return Reject("truncated", bytes(adv), f"AD structure at {i} overruns the data")
        ad_type, val = adv[i + 1], adv[i + 2 : i + 1 + ln]
        if ad_type == 0xFF and len(val) >= 2:
            mfr[int.from_bytes(val[:2], "little")] = bytes(val[2:])
        elif ad_type == 0x16 and len(val) >= 2:
            u16 = int.from_bytes(val[:2], "little")
            svc[f"0000{u16:04x}{_BASE_UUID_TAIL}"] = bytes(val[2:])
        i += 1 + ln
    return mfr, svc


def tag_id(frame: BleFrame, alert_uuid: str | None = None) -> str | None:
    """Canonical tag id; frames that identify nothing (TLM, URL, EID) give None.

    An iBeacon advertising ``alert_uuid`` is the button-press form of a tag whose
    id uses its normal UUID; the caller resolves it by major/minor (see
    :func:`is_button_press`), so here it keeps the alert UUID in the id.
    """
    if isinstance(frame, IBeacon):
        return f"ibeacon:{frame.uuid}:{frame.major}:{frame.minor}"
    if isinstance(frame, EddystoneUid):
        return f"eddystone:{frame.namespace}:{frame.instance}"
    return None


def is_button_press(frame: BleFrame | Reject, button_uuid: str | None) -> bool:
    """True if ``frame`` is an iBeacon advertising the configured alert UUID.

    The press belongs to the tag with the same major/minor under its normal UUID.
    """
    if button_uuid is None or not isinstance(frame, IBeacon):
        return False
    return frame.uuid == button_uuid.lower()


# ---------------------------------------------------------------- stream form


class Decoder:
    """Line-based decoder for ``gatewayd decode ble FILE``; never raises.

    Each line is either raw AD structures in hex (an ``adv_hex`` capture) or a
    JSON object with ``manufacturer_data`` ({company id as decimal string: hex})
    and/or ``service_data`` ({UUID string: hex}), like the test vectors; an
    ``adv_hex`` member is used when present. Blank and ``#`` lines are skipped.
    """

    KIND = KIND
    MAX_LINE = 4096

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[BleFrame | Reject]:
        self._buf += data
        out: list[BleFrame | Reject] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > self.MAX_LINE:
                    out.append(Reject("too-long", bytes(self._buf[:64])))
                    self._buf.clear()
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            out.extend(self._line(line))
        return out

    def flush(self) -> list[BleFrame | Reject]:
        line = bytes(self._buf)
        self._buf.clear()
        return self._line(line)

    def _line(self, line: bytes) -> list[BleFrame | Reject]:
        text = line.strip()
        if not text or text.startswith(b"#"):
            return []
        if len(text) > self.MAX_LINE:
            return [Reject("too-long", text[:64])]
        if text.startswith(b"{"):
            return self._json(text)
        try:
            adv = bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return [Reject("not-hex", text)]
        return self._adv(adv)

    @staticmethod
    def _adv(adv: bytes) -> list[BleFrame | Reject]:
        parsed = parse_ad_structures(adv)
        if isinstance(parsed, Reject):
            return [parsed]
        frames = decode_advertisement(*parsed)
        return frames or [Reject("no-beacon", adv)]

    def _json(self, text: bytes) -> list[BleFrame | Reject]:
        try:
            obj = json.loads(text)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            if isinstance(obj.get("adv_hex"), str):
                return self._adv(bytes.fromhex(obj["adv_hex"]))
            mfr = {
                int(k): bytes.fromhex(v) for k, v in (obj.get("manufacturer_data") or {}).items()
            }
            svc = {str(k): bytes.fromhex(v) for k, v in (obj.get("service_data") or {}).items()}
        except (ValueError, TypeError, AttributeError, RecursionError) as e:
            return [Reject("bad-json", text[:200], type(e).__name__)]
        frames = decode_advertisement(mfr, svc)
        return frames or [Reject("no-beacon", text[:200])]


# ---------------------------------------------------------------- encoders


def encode_ibeacon(uuid: str, major: int, minor: int, tx_power: int = -59) -> dict[int, bytes]:
    """bleak-style manufacturer_data for an iBeacon (simulator)."""
    body = (
        b"\x02\x15"
        + uuidlib.UUID(uuid).bytes
        + major.to_bytes(2, "big")
        + minor.to_bytes(2, "big")
        + (tx_power & 0xFF).to_bytes(1, "big")
    )
    return {APPLE: body}


def encode_eddystone_uid(namespace: str, instance: str, tx_power_0m: int = -20) -> dict[str, bytes]:
    ns, inst = bytes.fromhex(namespace), bytes.fromhex(instance)
    if len(ns) != 10 or len(inst) != 6:
        raise ValueError("namespace is 10 bytes, instance 6")
    return {EDDYSTONE_UUID: bytes([0x00, tx_power_0m & 0xFF]) + ns + inst + b"\x00\x00"}


def encode_eddystone_tlm(
    battery_mv: int, temperature_c: float | None, adv_count: int, sec_cnt_raw: int
) -> dict[str, bytes]:
    temp = 0x8000 if temperature_c is None else round(temperature_c * 256) & 0xFFFF
    body = (
        bytes([0x20, 0x00])
        + battery_mv.to_bytes(2, "big")
        + temp.to_bytes(2, "big")
        + adv_count.to_bytes(4, "big")
        + sec_cnt_raw.to_bytes(4, "big")
    )
    return {EDDYSTONE_UUID: body}


def encode_adv_hex(manufacturer_data: dict[int, bytes], service_data: dict[str, bytes]) -> str:
    """Raw AD structures (hex) for the stream form, flags first."""
    out = bytearray(b"\x02\x01\x06")
    for company, data in manufacturer_data.items():
        val = company.to_bytes(2, "little") + data
        out += bytes([len(val) + 1, 0xFF]) + val
    for key, data in service_data.items():
        val = int(key[4:8], 16).to_bytes(2, "little") + data
        out += bytes([len(val) + 1, 0x16]) + val
    return out.hex()
