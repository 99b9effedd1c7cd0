"""Simulated BLE beacon tags as BlueZ D-Bus objects, for bleak's real BlueZ backend.

BlueZ is replaced by python-dbusmock's ``bluez5`` template on a private
*system* bus (a ``dbus-daemon`` with a generated config), exactly as in
/work/shared/notes/hardware-without-hardware.md: one advertisement is a
PropertiesChanged on the device object (``UpdateProperties`` with RSSI,
ManufacturerData, ServiceData), which bleak turns into a detection callback.
Payloads are real iBeacon / Eddystone-UID / Eddystone-TLM bytes
(drivers.codecs.ble encoders). A button press is the common cheap-SOS-tag
behaviour: the tag advertises a second iBeacon UUID (the "alert UUID") while
the button is held.

Faults: dropped advertisements (scanners miss many), RSSI jitter, the adapter
removed with its devices (``RemoveAdapterWithDevices``, like BlueZ when the
USB dongle goes) and added back, and a "stall": the adapter stays but nothing
is reported (BlueZ's silent scan stall, bleak#1628), optionally healed only by
a scan restart or an adapter power cycle, as on real hardware.

The gateway must get ``DBUS_SYSTEM_BUS_ADDRESS`` (printed by ``kidsafe-sim
run`` and available as :attr:`PrivateSystemBus.address`) in its environment.
Needs the ``dbus-daemon`` program and the python-dbusmock + dbus-python packages.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.codecs import ble as blecodec
from firmware_sim import procs
from firmware_sim.simulator import Context, Settings, Simulator, Started, StepArgs, later
from firmware_sim.worker import Worker

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""

MOCK_IFACE = "org.bluez.Mock"
DBUS_MOCK_IFACE = "org.freedesktop.DBus.Mock"
DEVICE_IFACE = "org.bluez.Device1"
ADAPTER_IFACE = "org.bluez.Adapter1"


class BleSimMissing(RuntimeError):
    """dbus-daemon or python-dbusmock/dbus-python is not installed."""


def missing_tools() -> str | None:
    """Why the BLE simulator cannot run here, or None if it can."""
    if shutil.which("dbus-daemon") is None:
        return "dbus-daemon is not installed (Debian package 'dbus-daemon' or 'dbus')"
    try:
        import dbus  # noqa: F401
        import dbusmock  # noqa: F401
    except ImportError as e:
        return f"python-dbusmock/dbus-python missing ({e}); pip install '.[ble-test]'"
    return None


class PrivateSystemBus:
    """A dbus-daemon of type ``system`` on a socket in a temp dir; we own its pid."""

    def __init__(self, workdir: str | None = None) -> None:
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="kidsafe-bus-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "system_bus_socket"
        self._short_dir: Path | None = None
        if len(str(self.socket)) > 100:  # a unix socket's path has room for 107 bytes
            self._short_dir = Path(tempfile.mkdtemp(prefix="ks-bus-"))
            self.socket = self._short_dir / "bus"
        self.address = f"unix:path={self.socket}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> PrivateSystemBus:
        why = missing_tools()
        if why:
            raise BleSimMissing(why)
        conf = self.dir / "bus.conf"
        conf.write_text(BUS_CONFIG.format(path=self.socket))
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.proc = subprocess.Popen(["dbus-daemon", f"--config-file={conf}", "--nofork"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"dbus-daemon did not start: {err[-1000:]}")
            time.sleep(0.02)
        return self

    def env(self) -> dict[str, str]:
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def stop(self) -> None:
        procs.end(self.proc, timeout=5)
        self.proc = None
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)


class BluezMock:
    """``python -m dbusmock --system --template bluez5`` on our bus, driven through dbus-python."""

    def __init__(self, bus: PrivateSystemBus, log: Path | None = None) -> None:
        self.bus = bus
        self.log = log or bus.dir / "dbusmock.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.conn: Any = None
        self._lock = threading.Lock()  # one D-Bus call at a time on our connection

    def start(self, timeout: float = 15.0) -> BluezMock:
        import dbus

        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dbusmock", "--system", "--template", "bluez5"],
            stdout=out, stderr=out, env=self.bus.env(), start_new_session=True)
        out.close()
        self.conn = dbus.bus.BusConnection(self.bus.address)
        deadline = time.monotonic() + timeout
        while not self.conn.name_has_owner("org.bluez"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dbusmock bluez5 did not start: {self.log.read_text()[-1000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        procs.end(self.proc, timeout=5)
        self.proc = None

    def _obj(self, path: str) -> Any:
        return self.conn.get_object("org.bluez", path)

    def add_adapter(self, name: str = "hci0") -> str:
        with self._lock:
            return str(self._obj("/org/bluez").AddAdapter(name, f"kidsafe-sim {name}",
                                                          dbus_interface=MOCK_IFACE))

    def remove_adapter(self, name: str = "hci0") -> None:
        with self._lock:
            self._obj("/org/bluez").RemoveAdapterWithDevices(name, dbus_interface=MOCK_IFACE)

    def add_device(self, adapter: str, address: str, alias: str) -> str:
        import dbus

        with self._lock:
            path = str(self._obj("/org/bluez").AddDevice(adapter, address, alias,
                                                         dbus_interface=MOCK_IFACE))
            # The template makes these empty *arrays*; bleak wants dicts (see the notes).
            self._obj(path).UpdateProperties(DEVICE_IFACE, {
                "ManufacturerData": dbus.Dictionary({}, signature="qv"),
                "ServiceData": dbus.Dictionary({}, signature="sv"),
            }, dbus_interface=DBUS_MOCK_IFACE)
        return path

    def advertise(self, path: str, rssi: int, mfr: dict[int, bytes],
                  svc: dict[str, bytes], wait: bool = True) -> None:
        """``wait=False`` sends without waiting for the mock's reply (no error is seen):
        hundreds of adverts a second then do not hang on one round trip each."""
        import dbus

        props = {
            "RSSI": dbus.Int16(rssi),
            "ManufacturerData": dbus.Dictionary(
                {dbus.UInt16(k): dbus.Array(v, signature="y") for k, v in mfr.items()},
                signature="qv"),
            "ServiceData": dbus.Dictionary(
                {k: dbus.Array(v, signature="y") for k, v in svc.items()}, signature="sv"),
        }
        with self._lock:
            if wait:
                self._obj(path).UpdateProperties(DEVICE_IFACE, props,
                                                 dbus_interface=DBUS_MOCK_IFACE)
                return
            # A proxy that introspects would hold the call until a main loop (we have
            # none) dispatched the introspection reply; and nothing else flushes it.
            self.conn.get_object("org.bluez", path, introspect=False).UpdateProperties(
                DEVICE_IFACE, props, dbus_interface=DBUS_MOCK_IFACE, signature="sa{sv}",
                ignore_reply=True)
            self.conn.flush()

    def calls(self, path: str) -> list[str]:
        """Method names called on a mock object so far (StartDiscovery, Set, ...)."""
        with self._lock:
            return [str(c[1]) for c in self._obj(path).GetCalls(dbus_interface=DBUS_MOCK_IFACE)]

    def adapter_prop(self, name: str, prop: str) -> Any:
        with self._lock:
            return self._obj(f"/org/bluez/{name}").Get(ADAPTER_IFACE, prop,
                                                       dbus_interface="org.freedesktop.DBus.Properties")


@dataclass
class SimTag:
    """One advertiser. ``kind``: "ibeacon" (uuid/major/minor), "eddystone"
    (namespace/instance, with TLM every ``tlm_every`` frames) or "other" (a phone or
    headphones: manufacturer data that is no beacon, which the gateway must ignore)."""

    address: str
    kind: str = "ibeacon"
    uuid: str = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
    major: int = 1
    minor: int = 1
    namespace: str = "edd1ebeac04e5defa017"
    instance: str = "000000000001"
    rssi: float = -60.0  # mean dBm at the scanner
    interval_s: float = 0.5  # how often the scanner reports it
    tlm_every: int = 0  # eddystone: every n-th frame is TLM (0: never)
    battery_mv: int = 3000
    temperature_c: float | None = 21.5
    present: bool = True  # False: out of range, silent
    pressed_until: float = 0.0
    path: str = ""
    frames: int = 0
    next_t: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tag_id(self) -> str:
        if self.kind == "ibeacon":
            return f"ibeacon:{self.uuid.lower()}:{self.major}:{self.minor}"
        return f"eddystone:{self.namespace.lower()}:{self.instance.lower()}"


class BleSim(Worker):
    thread_name = "ble-sim"

    """A scanner's world: an adapter, tags that advertise, and the faults."""

    def __init__(self, mock: BluezMock, adapter: str = "hci0", *, drop_rate: float = 0.1,
                 rssi_jitter_db: float = 3.0, alert_uuid: str | None = None,
                 seed: int = 1, wait_replies: bool = True) -> None:
        self.mock = mock
        self.wait_replies = wait_replies  # False: a crowd at full rate on a busy machine
        self.adapter = adapter
        self.drop_rate = drop_rate
        self.rssi_jitter_db = rssi_jitter_db
        self.alert_uuid = alert_uuid
        self.rng = random.Random(seed)
        self.tags: dict[str, SimTag] = {}
        self.adapter_present = False
        self.stalled: str | None = None  # see stall()
        self._stall_mark = 0
        self._seen_power_off = False
        self.sent = 0
        self._lock = threading.Lock()
        super().__init__()

    # -- set-up ------------------------------------------------------------------------------

    def add_tag(self, tag: SimTag) -> SimTag:
        with self._lock:
            self.tags[tag.address] = tag
            if self.adapter_present:
                tag.path = self.mock.add_device(self.adapter, tag.address, tag.tag_id[:24])
        return tag

    def add_adapter(self) -> None:
        """(Re)attach the adapter and its devices, as BlueZ does when a dongle comes back."""
        with self._lock:
            self.mock.add_adapter(self.adapter)
            for t in self.tags.values():
                t.path = self.mock.add_device(self.adapter, t.address, t.tag_id[:24])
            self.adapter_present = True

    def remove_adapter(self) -> None:
        with self._lock:
            self.adapter_present = False
            self.mock.remove_adapter(self.adapter)

    # -- behaviour ---------------------------------------------------------------------------

    def press(self, address: str, hold_s: float = 2.0) -> None:
        if self.alert_uuid is None:
            raise ValueError("no alert UUID configured for button presses")
        self.tags[address].pressed_until = time.monotonic() + hold_s

    def stall(self, mode: str = "forever") -> None:
        """Stop reporting adverts while the adapter stays (BlueZ's silent stall).

        ``until-scan-restart`` heals at the next StartDiscovery; ``until-power-cycle``
        when the adapter's Powered goes false and true again; ``forever`` by :meth:`resume`.
        """
        if mode not in ("forever", "until-scan-restart", "until-power-cycle"):
            raise ValueError(f"unknown stall mode {mode!r}")
        self._stall_mark = self._scan_starts() if mode == "until-scan-restart" else 0
        self._seen_power_off = False
        self.stalled = mode

    def resume(self) -> None:
        self.stalled = None

    def _scan_starts(self) -> int:
        if not self.adapter_present:
            return 0
        return self.mock.calls(f"/org/bluez/{self.adapter}").count("StartDiscovery")

    def _check_stall(self) -> None:
        # dbusmock does not log Properties.Set calls, so a power cycle is seen by polling.
        with contextlib.suppress(Exception):
            if self.stalled == "until-scan-restart" and self._scan_starts() > self._stall_mark:
                self.stalled = None
            elif self.stalled == "until-power-cycle" and self.adapter_present:
                if not self.mock.adapter_prop(self.adapter, "Powered"):
                    self._seen_power_off = True
                elif self._seen_power_off:
                    self.stalled = None

    def payload(self, t: SimTag, now: float) -> tuple[dict[int, bytes], dict[str, bytes]]:
        if t.kind == "other":
            return {0x0006: bytes(self.rng.randrange(256) for _ in range(12))}, {}
        if t.kind == "ibeacon":
            uuid = self.alert_uuid if (self.alert_uuid and now < t.pressed_until) else t.uuid
            return blecodec.encode_ibeacon(uuid, t.major, t.minor), {}
        if t.tlm_every and t.frames % t.tlm_every == t.tlm_every - 1:
            return {}, blecodec.encode_eddystone_tlm(t.battery_mv, t.temperature_c, t.frames,
                                                     int(now * 10) & 0xFFFFFFFF)
        return {}, blecodec.encode_eddystone_uid(t.namespace, t.instance)

    # -- the emitter -------------------------------------------------------------------------

    def _run(self) -> None:
        last_stall_check = 0.0
        while not self._stop.wait(0.02):
            now = time.monotonic()
            if self.stalled and now - last_stall_check > 0.1:
                last_stall_check = now
                self._check_stall()
            with self._lock:
                if not self.adapter_present:
                    continue
                due = [t for t in self.tags.values() if t.present and t.next_t <= now]
            for t in due:
                t.next_t = now + t.interval_s * self.rng.uniform(0.8, 1.2)
                if self.stalled or self.rng.random() < self.drop_rate:
                    continue
                mfr, svc = self.payload(t, now)
                t.frames += 1
                rssi = round(t.rssi + self.rng.gauss(0, self.rssi_jitter_db))
                try:
                    self.mock.advertise(t.path, max(-127, min(0, rssi)), mfr, svc,
                                        self.wait_replies)
                    self.sent += 1
                except Exception:  # the adapter went away under us: next round
                    if not self.adapter_present:
                        break
                    raise


# -- in a scenario (kidsafe-sim run) -------------------------------------------------------

def scenario_tags(settings: Settings) -> list[SimTag]:
    """The named ``tags`` of a [[device]] table, then ``generate``'s seeded crowd."""
    tags = [SimTag(**t) for t in settings.get("tags") or []]
    g = settings.get("generate")
    if isinstance(g, dict):
        rng = random.Random(int(g.get("seed", 1)))
        lo, hi = float(g.get("rssi_min", -95)), float(g.get("rssi_max", -55))
        prefix = str(g.get("address_prefix", "D0:00:00:00"))
        for i in range(int(g.get("count", 0))):
            tags.append(SimTag(f"{prefix}:{(i >> 8) & 255:02X}:{i & 255:02X}", "ibeacon",
                               uuid=str(g.get("uuid", SimTag.uuid)), major=int(g.get("major", 1)),
                               minor=int(g.get("first_minor", 1)) + i, rssi=rng.uniform(lo, hi),
                               interval_s=float(g.get("interval_s", 1.0))))
    return tags


def _tag(sim: BleSim, ref: str) -> SimTag:
    """A tag by its address or its tag id (as the gateway reports it)."""
    ref_l = ref.lower()
    for t in sim.tags.values():
        if t.address.lower() == ref_l or t.tag_id == ref_l:
            return t
    raise KeyError(f"no simulated BLE tag {ref!r}")


def _act(sim: BleSim, action: str, a: StepArgs, stop: threading.Event) -> None:
    if action == "press":
        sim.press(_tag(sim, a["tag"]).address, float(a.get("hold_s", 2.0)))
    elif action == "move":
        _tag(sim, a["tag"]).rssi = float(a["rssi"])
    elif action in ("leave", "arrive"):
        _tag(sim, a["tag"]).present = action == "arrive"
    elif action == "wander":
        lo, hi = float(a.get("rssi_min", -95)), float(a.get("rssi_max", -55))
        for t in sim.tags.values():
            if sim.rng.random() < float(a.get("fraction", 0.3)):
                t.rssi = sim.rng.uniform(lo, hi)
            if sim.rng.random() < float(a.get("presence_flip", 0.0)):
                t.present = not t.present
    elif action == "stall":
        sim.stall(str(a.get("mode", "forever")))
        later(a, stop, sim.resume)
    elif action == "remove_adapter":
        sim.remove_adapter()
        later(a, stop, sim.add_adapter)
    elif action == "add_adapter":
        sim.add_adapter()


def _start(device_id: str, s: Settings, ctx: Context) -> Started:
    mock = ctx.shared.get("ble.mock")
    if mock is None:  # one private bus and mock BlueZ for every BLE device of a scenario
        bus = PrivateSystemBus(str(ctx.work / "dbus")).start()
        ctx.stack.callback(bus.stop)
        mock = ctx.shared["ble.mock"] = BluezMock(bus).start()
        ctx.stack.callback(mock.stop)
        ctx.env["DBUS_SYSTEM_BUS_ADDRESS"] = bus.address
    adapter = str(s["adapter"])
    sim = BleSim(mock, adapter, drop_rate=float(s["drop_rate"]),
                 rssi_jitter_db=float(s["rssi_jitter_db"]), alert_uuid=s["alert_uuid"],
                 seed=int(s["seed"]), wait_replies=bool(s["wait_replies"]))
    sim.add_adapter()
    for t in scenario_tags(s):
        sim.add_tag(t)
    sim.start()
    ctx.stack.callback(sim.stop)
    reader: dict[str, Any] = {"kind": SIMULATOR.kind, "role": "zone", "adapter": adapter}
    if s["alert_uuid"]:
        reader["button_uuid"] = s["alert_uuid"]
    named = [SimTag(**t) for t in s.get("tags") or []]  # the crowd is not for enrolling
    return Started(reader, f"BlueZ adapter {adapter}",
                   lambda action, a, stop: _act(sim, action, a, stop),
                   tags=tuple(t.tag_id for t in named if t.kind != "other"))


SIMULATOR = Simulator(
    kind="ble",
    settings={"adapter": "hci0", "alert_uuid": None, "drop_rate": 0.1, "rssi_jitter_db": 3.0,
              "tags": (), "generate": None, "seed": 1, "wait_replies": True},
    actions={"press": ("tag",), "move": ("tag", "rssi"), "leave": ("tag",), "arrive": ("tag",),
             "wander": (), "stall": (), "remove_adapter": (), "add_adapter": ()},
    start=_start,
)
