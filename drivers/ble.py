"""BLE beacon tags (iBeacon, Eddystone-UID/TLM) through bleak's BlueZ backend.

Scanning is bleak's ``BleakScanner`` with a detection callback, run on an
asyncio loop owned by this driver's thread. Payloads are decoded by
:mod:`drivers.codecs.ble` (Apple iBeacon layout; google/eddystone spec).
Adverts that carry no beacon frame are dropped before any allocation
beyond bleak's own. Tag ids: ``ibeacon:<uuid>:<major>:<minor>`` /
``eddystone:<namespace>:<instance>`` (lowercase, as enrolled).

* TLM frames carry no id: a TLM is attributed to the id last seen from the
  same BLE address (Eddystone beacons interleave UID and TLM frames).
* Hostile radio: anyone in range can advertise a fresh id from a fresh
  address every frame. The driver only remembers tags that are enrolled
  (the sink's ``enrolled`` set, which the pipeline has), so ids of other tags
  are never kept (privacy) and its memory does not grow with them; both maps
  are capped at ``MAX_REMEMBERED`` entries, least recently used forgotten first.
* A button press is an iBeacon advertising ``button_uuid``; it is attributed
  to the tag seen from the same address, else to the tag with the same
  major/minor, else (a tag never seen before the press) to ``tag_uuid`` with
  that major/minor when configured. An unattributable press is counted
  (``button-unknown-tag``), not guessed.

* The driver's loop reads D-Bus in gulps (``gulp_ms``, drivers/_coalesce.py): after
  the first advert it waits that long, so the next ones are taken in the same turn.

Failure handling (theengs/gateway#99, bleak#1628; checked against BlueZ's
D-Bus API as mocked by python-dbusmock): a scan can stall silently, so a
watchdog on ``silence_s`` without any advert first restarts the scan
(DEGRADED), then power-cycles the adapter through BlueZ
(``org.bluez.Adapter1.Powered`` false/true over D-Bus with dbus_fast, which
bleak has no API for; DEGRADED), then reports OFFLINE and keeps trying. An
adapter that disappears raises nothing in a running scan, so its presence is
polled every ``CHECK_S``; then and on any Bleak/D-Bus error: OFFLINE, retry
with exponential back-off and jitter, ONLINE when scanning again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from bleak import BleakScanner
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakError
from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus
from dbus_fast.errors import DBusError

from drivers._base import Driver
from drivers._coalesce import gulping_loop
from drivers.codecs import Reject
from drivers.codecs import ble as codec
from gateway import backoff
from gateway.model import BleSighting, ReaderState, Reading
from gateway.options import ReaderOptions, opt

log = logging.getLogger("gateway.driver")


class _HandlerErrorsInOneLine(logging.Filter):
    """bleak's D-Bus signal handler can trip over a BlueZ object that vanished between
    two signals (an adapter unplugged mid-scan: a KeyError inside bleak); dbus_fast then
    logs the whole traceback. It is device trouble, not our bug: one line, no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = "BlueZ signal not handled by bleak (%s: %s); scanning goes on"
            record.args = (type(exc).__name__, exc)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("dbus_fast.message_bus").addFilter(_HandlerErrorsInOneLine())

CHECK_S = 1.0  # adapter presence poll
MAX_REMEMBERED = 4096  # address -> tag id and major/minor -> tag id, each; LRU
# A tag repeats the same payload for hours: its decoded frames are kept (payloads that
# change every time, TLM, are not), and the memory is emptied when it gets this big.
MAX_PAYLOADS = 4096
# Sightings go to the pipeline in batches this often, or at this many (a button press at
# once): one wake-up of the pipeline thread per batch instead of one per advert
# (bench/site_load.py), and a flood of adverts cannot pile up in the driver.
HAND_OVER_S = 0.05
HAND_OVER_MAX = 64
ADAPTER_IFACE = "org.bluez.Adapter1"
PROPS_IFACE = "org.freedesktop.DBus.Properties"


class AdapterTrouble(Exception):
    """The adapter is gone or refused a D-Bus call (device trouble, not a bug)."""


# Everything that means "the Bluetooth side is not working", never a programming error.
DEVICE_ERRORS = (BleakError, DBusError, AdapterTrouble, OSError, EOFError, TimeoutError)


def _adapter(v: str) -> str | None:
    return None if v.isalnum() else "expected an adapter name such as \"hci0\""


def _uuid(v: str) -> str | None:
    try:
        uuid.UUID(v)
    except ValueError:
        return "expected a UUID such as \"f7826da6-4fa2-4e98-8024-bc5b71e0893e\""
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class BleOptions(ReaderOptions):
    adapter: str = opt("hci0", "BlueZ adapter to scan with", check=_adapter)
    button_uuid: str | None = opt(None, "iBeacon UUID a tag advertises while its button is "
                                        "pressed (SOS)", check=_uuid)
    tag_uuid: str | None = opt(None, "the tags' own iBeacon UUID, to attribute a press from a "
                                     "tag not seen before", check=_uuid)
    silence_s: float = opt(30.0, "no advert this long: restart the scan, then the adapter",
                           gt=0, le=3600)
    power_off_s: float = opt(1.0, "how long the adapter stays off when power-cycled", gt=0, le=3600)
    reconnect_initial_s: float = opt(0.5, "first back-off delay after adapter trouble",
                                     gt=0, le=3600)
    reconnect_max_s: float = opt(30.0, "back-off cap while the adapter is in trouble",
                                 gt=0, le=3600)
    gulp_ms: float = opt(50.0, "wait this long after an advert so that the next ones are "
                               "read with it (CPU); 0: each at once", ge=0, le=100)

    def where(self) -> str:
        return self.adapter


@dataclass(frozen=True, slots=True)
class _Decoded:
    """An advert's payload decoded, with what every advert of it needs worked out once (a
    tag repeats one payload for hours): ``ids`` is each tag id with its major/minor when
    the frames are plain ids (no button press, TLM or reject), else None and the frames
    are gone through one by one. ``changing``: a TLM, whose payload is never repeated."""

    frames: list[codec.BleFrame | Reject]
    ids: tuple[tuple[str, tuple[int, int] | None], ...] | None
    changing: bool

    @classmethod
    def of(cls, frames: list[codec.BleFrame | Reject], button_uuid: str | None) -> _Decoded:
        changing = any(isinstance(f, codec.EddystoneTlm | codec.EddystoneTlmEncrypted)
                       for f in frames)
        plain = not any(isinstance(f, Reject | codec.EddystoneTlm)
                        or codec.is_button_press(f, button_uuid) for f in frames)
        ids = None
        if plain:
            ids = tuple((tid, (f.major, f.minor) if isinstance(f, codec.IBeacon) else None)
                        for f in frames if not isinstance(f, Reject)
                        and (tid := codec.tag_id(f)) is not None)
        return cls(frames, ids, changing)


def _put(lru: OrderedDict[Any, str], key: Any, value: str) -> None:
    if lru.get(key) == value:  # the usual advert: only its place in the LRU moves
        lru.move_to_end(key)
        return
    lru[key] = value
    lru.move_to_end(key)
    if len(lru) > MAX_REMEMBERED:
        lru.popitem(last=False)


class BleDriver(Driver[BleOptions]):
    Options = BleOptions

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        o = self.cfg.options
        self.adapter = o.adapter
        self.path = f"/org/bluez/{self.adapter}"
        # Compared with decoded ids, which are lower case.
        self.button_uuid = o.button_uuid.lower() if o.button_uuid else None
        self.tag_uuid = o.tag_uuid.lower() if o.tag_uuid else None
        self.silence_s = o.silence_s
        self.power_off_s = o.power_off_s
        self.initial_s = o.reconnect_initial_s
        self.cap_s = o.reconnect_max_s
        # The pipeline (the daemon's sink) knows the enrolled tags; a bare sink (driver tests)
        # does not, and then every id is remembered, still within the caps.
        self.enrolled: Collection[str] | None = getattr(self.sink, "enrolled", None)
        self._by_addr: OrderedDict[str, str] = OrderedDict()
        self._by_major_minor: OrderedDict[tuple[int, int], str] = OrderedDict()
        self._decoded: dict[tuple[Any, ...], _Decoded] = {}
        self._batch: list[Reading] = []  # sightings not yet handed to the pipeline
        self._last_adv = 0.0
        self._bus: MessageBus | None = None
        self.power_cycles = 0
        self.scan_restarts = 0

    # -- advertisements (called by bleak on our loop) ----------------------------------------

    def _follow_roster(self) -> None:
        """The sink swaps its ``enrolled`` set whole when the roster changes: forget at once
        what attributes adverts to tags that left (and bound memory by the new set)."""
        now = getattr(self.sink, "enrolled", None)
        if now is self.enrolled or now is None:
            return
        self.enrolled = now
        for addr in [k for k, tid in self._by_addr.items() if tid not in now]:
            del self._by_addr[addr]
        for mm in [k for k, tid in self._by_major_minor.items() if tid not in now]:
            del self._by_major_minor[mm]

    def _remember(self, addr: str, tid: str, major_minor: tuple[int, int] | None) -> None:
        """Keep what attributes a later TLM or button press to ``tid``: enrolled tags only."""
        if self.enrolled is not None and tid not in self.enrolled:
            return
        _put(self._by_addr, addr, tid)
        if major_minor is not None:
            _put(self._by_major_minor, major_minor, tid)

    def _decode(self, mfr: dict[int, bytes], svc: dict[str, bytes]) -> _Decoded:
        key = (*mfr.items(), *svc.items())
        decoded = self._decoded.get(key)
        if decoded is None:
            decoded = _Decoded.of(codec.decode_advertisement(mfr, svc), self.button_uuid)
            if not decoded.changing:
                if len(self._decoded) >= MAX_PAYLOADS:
                    self._decoded.clear()
                self._decoded[key] = decoded
        return decoded

    def _hand_over(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        # The pipeline takes a batch as one item of its queue; a bare sink (driver tests)
        # gets the readings one by one.
        whole: Callable[[list[Reading]], None] | None = getattr(self.sink, "reading_batch", None)
        if whole is not None:
            whole(batch)
            return
        reading = self.sink.reading
        for r in batch:
            reading(r)

    def on_advertisement(self, device: BLEDevice, adv: AdvertisementData) -> None:
        mono = self._last_adv = self.clock.monotonic()  # any advert proves the scan is alive
        decoded = self._decode(adv.manufacturer_data, adv.service_data)
        if not decoded.frames:
            return  # phones, headphones, ...: not ours
        if self.enrolled is not None and getattr(self.sink, "enrolled", None) is not self.enrolled:
            self._follow_roster()
        if decoded.ids is not None:  # the common advert: ids only (no press, TLM or reject)
            addr = device.address
            now = self.clock.now()
            batch, rid, rssi = self._batch, self.cfg.id, adv.rssi
            for tid, major_minor in decoded.ids:
                self._remember(addr, tid, major_minor)
                batch.append(BleSighting(rid, tid, now, rssi, mono=mono))
            if len(batch) >= HAND_OVER_MAX:
                self._hand_over()
            return
        self._advert(device.address, decoded.frames, adv.rssi, mono)

    def _advert(self, addr: str, frames: list[codec.BleFrame | Reject], rssi: int,
                mono: float) -> None:
        """An advert with a button press, a TLM or a rejected frame, frame by frame."""
        rid, sink = self.cfg.id, self.sink
        ids: list[str] = []
        pressed: list[str] = []
        tlm: codec.EddystoneTlm | None = None
        for f in frames:
            if isinstance(f, Reject):
                sink.reject(rid, f.reason)
            elif isinstance(f, codec.EddystoneTlm):
                tlm = f
            elif codec.is_button_press(f, self.button_uuid):
                assert isinstance(f, codec.IBeacon)
                who = self._by_addr.get(addr) or self._by_major_minor.get((f.major, f.minor))
                if who is None and self.tag_uuid:
                    who = f"ibeacon:{self.tag_uuid}:{f.major}:{f.minor}"
                if who is None:
                    sink.reject(rid, "button-unknown-tag")
                else:
                    pressed.append(who)
            elif (tid := codec.tag_id(f)) is not None:
                ids.append(tid)
                self._remember(addr, tid,
                               (f.major, f.minor) if isinstance(f, codec.IBeacon) else None)
        if tlm is not None and not ids and not pressed:
            known = self._by_addr.get(addr)
            if known is None:
                sink.reject(rid, "tlm-unknown-tag")
                return
            ids.append(known)
        battery = (tlm.battery_mv or None) if tlm is not None else None  # 0: not supported
        temp = tlm.temperature_c if tlm is not None else None
        now = self.clock.now()
        batch = self._batch
        for tid in pressed:
            batch.append(BleSighting(rid, tid, now, rssi, battery, temp, button=True,
                                     mono=mono))
        for tid in ids:
            if tid not in pressed:
                batch.append(BleSighting(rid, tid, now, rssi, battery, temp, mono=mono))
        if pressed or len(batch) >= HAND_OVER_MAX:
            self._hand_over()  # an SOS does not wait for the batch

    # -- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        gulp_s = self.cfg.options.gulp_ms / 1000
        with asyncio.Runner(loop_factory=lambda: gulping_loop(gulp_s)) as runner:
            runner.get_loop().set_exception_handler(self._loop_exception)
            runner.run(self._main(stop))

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Device trouble that surfaces outside our tasks (a task of bleak or dbus_fast
        whose bus went away, reported when it is collected, often after we stopped) is
        one log line, not asyncio's traceback after "gatewayd stopped"."""
        exc = context.get("exception")
        if isinstance(exc, DEVICE_ERRORS):
            log.debug("reader %s: after the adapter's bus went away: %s", self.cfg.id,
                      self._trouble(exc))
            return
        loop.default_exception_handler(context)

    async def _main(self, stop: threading.Event) -> None:
        self._report(ReaderState.STARTING, f"adapter {self.adapter}")
        was_online = False

        note = backoff.FailureLog(log, f"reader {self.cfg.id}: scanning on {self.adapter}",
                                  self.clock)

        def failed(f: backoff.Failure) -> None:
            note(self._trouble(f.error), f.attempt, f.delay)

        restarts = backoff.Restarts(stop, self.clock, failed, initial=self.initial_s,
                                    cap=self.cap_s, retry_on=DEVICE_ERRORS)

        async def session() -> None:
            nonlocal was_online
            try:
                async for _ in self._session(stop):
                    restarts.healthy()  # scanning: the next failure backs off from the start
                    if was_online:
                        log.info("reader %s: scanning again on %s", self.cfg.id, self.adapter)
                    was_online = True
            except DEVICE_ERRORS as e:
                self._report(ReaderState.OFFLINE, self._trouble(e))
                await self._disconnect_bus()
                raise

        try:
            await restarts.run_async(session)
        finally:
            await self._disconnect_bus()
            self._report(ReaderState.OFFLINE, "stopped")

    def _trouble(self, e: BaseException) -> str:
        return f"adapter {self.adapter}: {type(e).__name__}: {e}"[:300]

    async def _session(self, stop: threading.Event) -> Any:
        """Scan until stopped; yields once scanning has started. Raises on adapter trouble."""
        await self._check_adapter()
        scanner = BleakScanner(self.on_advertisement, bluez={"adapter": self.adapter})
        await scanner.start()
        try:
            self._report(ReaderState.ONLINE, f"scanning on {self.adapter}")
            yield
            now = self.clock.monotonic()
            self._last_adv = now
            acted = now  # the watchdog's last action (or the scan start)
            stage = 0  # 0 fine, 1 scan restarted, 2+ adapter power-cycled
            next_check = now + CHECK_S
            while not stop.is_set():
                await asyncio.sleep(HAND_OVER_S)
                self._hand_over()
                now = self.clock.monotonic()
                if now >= next_check:
                    next_check = now + CHECK_S
                    await self._check_adapter()
                if stage and self._last_adv > acted:
                    stage = 0
                    self._report(ReaderState.ONLINE, f"scanning on {self.adapter}")
                if now - max(self._last_adv, acted) < self.silence_s:
                    continue
                quiet = f"no advertisement for {now - self._last_adv:.0f} s"
                if stage == 0:
                    log.warning("reader %s: %s; restarting the scan", self.cfg.id, quiet)
                    self._report(ReaderState.DEGRADED, f"{quiet}; scan restarted")
                    await scanner.stop()
                    await scanner.start()
                    self.scan_restarts += 1
                else:
                    log.warning("reader %s: %s; power-cycling adapter %s", self.cfg.id, quiet,
                                self.adapter)
                    self._report(ReaderState.DEGRADED if stage == 1 else ReaderState.OFFLINE,
                                 f"{quiet}; adapter power-cycled")
                    with contextlib.suppress(BleakError):
                        await scanner.stop()
                    await self._power_cycle(stop)
                    await scanner.start()
                stage += 1
                acted = self.clock.monotonic()
        finally:
            self._hand_over()
            with contextlib.suppress(*DEVICE_ERRORS):
                await scanner.stop()

    # -- BlueZ over D-Bus (what bleak does not offer) ----------------------------------------

    async def _call(self, member: str, signature: str, body: list[Any]) -> Message:
        if self._bus is None or not self._bus.connected:
            await self._disconnect_bus()
            self._bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
        reply = await asyncio.wait_for(self._bus.call(Message(
            destination="org.bluez", path=self.path, interface=PROPS_IFACE, member=member,
            signature=signature, body=body)), 5.0)
        if reply is None or reply.message_type == MessageType.ERROR:
            name = reply.error_name if reply is not None else "no reply"
            raise AdapterTrouble(f"{name} ({member} on {self.path})")
        return reply

    async def _check_adapter(self) -> None:
        await self._call("Get", "ss", [ADAPTER_IFACE, "Powered"])

    async def _power_cycle(self, stop: threading.Event) -> None:
        await self._call("Set", "ssv", [ADAPTER_IFACE, "Powered", Variant("b", False)])
        await self.clock.wait_async(stop, self.power_off_s)
        await self._call("Set", "ssv", [ADAPTER_IFACE, "Powered", Variant("b", True)])
        # BlueZ re-initialises the HCI.
        await self.clock.wait_async(stop, min(1.0, self.power_off_s))
        self.power_cycles += 1

    async def _disconnect_bus(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            with contextlib.suppress(*DEVICE_ERRORS):
                bus.disconnect()


DRIVER = BleDriver
