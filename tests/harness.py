"""Real parts for the tests: a gatewayd process, a backend subscriber, configs.

Nothing here stands in for a library: the gateway runs as its own process
with a config file, the broker is a real mosquitto, the subscriber is paho.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import paho.mqtt.client as mqtt
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import contract
from firmware_sim import procs
from firmware_sim.vserial import VirtualSerial
from gateway.clock import FakeClock
from gateway.model import ReaderState, Reading

REPO = Path(__file__).resolve().parents[1]
R = TypeVar("R", bound=Reading)


@contextlib.contextmanager
def driver_running(driver: Any) -> Iterator[threading.Event]:
    """Run a driver on its own thread, as the daemon does; stop it and check it stopped."""
    stop = threading.Event()
    t = threading.Thread(target=driver.run, args=(stop,), daemon=True)
    t.start()
    try:
        yield stop
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive(), "the driver did not stop within 5 s"


class CollectSink(Generic[R]):
    """A driver's Sink for driver-level tests: keeps what it is told, thread-safe."""

    def __init__(self, kind: type[R] | tuple[type, ...]) -> None:
        self.kind = kind
        self.items: list[R] = []
        self.rejects: list[str] = []
        self.states: list[tuple[ReaderState, str]] = []
        self.lock = threading.Lock()

    def reading(self, r: Reading) -> None:
        assert isinstance(r, self.kind), r
        with self.lock:
            self.items.append(r)  # type: ignore[arg-type]

    def reject(self, reader: str, reason: str) -> None:
        with self.lock:
            self.rejects.append(reason)

    def state(self, reader: str, state: ReaderState, detail: str = "") -> None:
        with self.lock:
            self.states.append((state, detail))

    def last(self) -> tuple[ReaderState, str]:
        with self.lock:
            return self.states[-1] if self.states else (ReaderState.STARTING, "")

    def last_state(self) -> ReaderState | None:
        with self.lock:
            return self.states[-1][0] if self.states else None

    def state_count(self, state: ReaderState) -> int:
        with self.lock:
            return sum(1 for s, _ in self.states if s == state)


def wait_until(pred: Callable[[], bool], timeout: float, what: str = "condition",
               interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def advance_until(clock: FakeClock, pred: Callable[[], bool], step: float, timeout: float,
                  what: str = "condition", settle: float = 0.15) -> None:
    """Move a driver's FakeClock by ``step`` until ``pred`` holds, giving the driver thread
    up to ``settle`` s of real time to act after each step (timeouts without the wait)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s advancing the clock "
                                 f"for {what}")
        clock.advance(step)
        end = time.monotonic() + settle
        while time.monotonic() < end and not pred():
            time.sleep(0.01)


def unplug_and_replug(port: VirtualSerial, sink: CollectSink[Any], clock: FakeClock,
                      backoff_cap_s: float = 0.3) -> None:
    """Unplug a serial driver's adapter until it is offline and a few re-opens failed on its
    FakeClock, plug it back, and move the clock past the back-off until it is online."""
    port.unplug()
    wait_until(lambda: sink.last_state() == ReaderState.OFFLINE, 10, "offline")
    for _ in range(3):  # failed re-opens with back-off
        clock.advance(backoff_cap_s)
        time.sleep(0.05)
    port.plug()
    # Past the back-off: the next attempt opens the port.
    advance_until(clock, lambda: sink.last_state() == ReaderState.ONLINE, backoff_cap_s, 10,
                  "reopened")


def gatewayd(*args: str) -> subprocess.CompletedProcess[str]:
    """``gatewayd ARGS`` in a fresh process, its output captured."""
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60)


def sim_until_playing(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """`kidsafe-sim run`'s output (stdout, stderr joined to it) up to its "[sim] playing" line,
    and the [[readers]]/[[tags]] snippet it prints to paste into a config."""
    assert proc.stdout is not None
    out: list[str] = []
    while not any(line.startswith("[sim] playing") for line in out):
        line = proc.stdout.readline()
        assert line, "kidsafe-sim ended early:\n" + "".join(out)
        out.append(line)
    text = "".join(out)
    return text, text[text.index("[[readers]]"):text.index("[sim] playing")]


# A small valid unit config (one RDM6300 gate reader, one card) that config tests edit.
GOOD_CONFIG = """
[unit]
id = "gate-01"
site = "school"

[broker]
host = "127.0.0.1"
port = 1883

[buffer]
path = "buf.db"

[[readers]]
id = "gate-a"
kind = "rdm6300"
role = "gate"
port = "/dev/ttyUSB0"

[[tags]]
id = "62e3086ced"
child = "c-1"
"""


def write_config(path: Path, *, broker_port: int, buffer: Path, readers: list[dict[str, Any]],
                 tags: list[dict[str, Any]], unit: str = "unit-t1", extra: str = "",
                 broker_extra: dict[str, Any] | None = None,
                 gate_window_s: float = 1.0) -> Path:
    doc: dict[str, Any] = {
        "unit": {"id": unit, "site": "test-site", "config_version": "t-1"},
        "broker": {"host": "127.0.0.1", "port": broker_port, **(broker_extra or {})},
        "buffer": {"path": str(buffer)},
        "gate": {"repeat_window_s": gate_window_s},
        "health": {"interval_s": 2},
    }
    # Empty lists are left out: ``extra`` (raw TOML, tables only, written last) may
    # bring its own [[readers]].
    doc.update({k: v for k, v in (("readers", readers), ("tags", tags)) if v})
    path.write_text(tomli_w.dumps(doc) + "\n" + extra)
    return path


class GatewayProcess:
    """`gatewayd run --config FILE` as a separate process, stderr to a log file."""

    def __init__(self, config: Path, log: Path, args: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.args = args or []
        self.env = env or {}  # extra environment, e.g. DBUS_SYSTEM_BUS_ADDRESS for BLE
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(self.config), *self.args],
            stdout=out, stderr=out, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        out.close()
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        wait_until(lambda: text in self.log_text(), timeout, f"{text!r} in gateway log")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        procs.end(self.proc, sig, timeout=15)

    def stop(self) -> int | None:
        self.kill(signal.SIGTERM)
        return self.proc.returncode if self.proc else None


class Subscriber:
    """The backend's view: a paho client collecting what the unit publishes."""

    def __init__(self, port: int, topic: str = "kidsafe/v1/#", client_id: str = "backend-test",
                 persistent: bool = False, check_schemas: bool = True, **tls: Any) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.violations: list[str] = []  # every message is checked against docs/schemas
        # Decoded once on arrival: tests poll events() and seq_ids() while tens of
        # thousands arrive, and decoding them all again each time starved the gateway.
        self._events: list[tuple[str, dict[str, Any]]] = []  # (topic, body) of events
        self._seq_ids: dict[int, set[str]] = {}
        self.check_schemas = check_schemas  # off only for tests that publish probes themselves
        self.lock = threading.Lock()
        self.topic = topic
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        # Follow a restarted test broker quickly (paho types the delays as int; floats work).
        self.client.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]
        if tls.get("ca"):
            self.client.tls_set(ca_certs=tls.get("ca"), certfile=tls.get("cert"),
                                keyfile=tls.get("key"))
        if tls.get("username"):
            self.client.username_pw_set(tls["username"], tls.get("password"))
        self.port = port
        self.persistent = persistent

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(self.topic, qos=1)
        self.connected.set()

    def _on_subscribe(self, *_a: Any) -> None:
        self.subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        topic, payload = msg.topic, bytes(msg.payload)
        name = contract.schema_for(topic)
        body: Any = None
        bad: list[str] = []
        if name is not None:
            try:
                body = json.loads(payload)
            except ValueError as e:
                bad = [f"{topic}: not JSON: {e}"]
            else:
                bad = contract.body_violations(name, body, topic)
        event = "/event/" in topic and isinstance(body, dict)
        with self.lock:
            self.messages.append((topic, payload, bool(msg.retain)))
            self.violations.extend(bad)
            if event:
                self._events.append((topic, body))
                seq, eid = body.get("seq"), body.get("id")
                if isinstance(seq, int) and isinstance(eid, str):  # else a schema violation
                    self._seq_ids.setdefault(seq, set()).add(eid)

    def start(self) -> Subscriber:
        props = Properties(PacketTypes.CONNECT)
        if self.persistent:
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, clean_start=not self.persistent,
                            properties=props)
        self.client.loop_start()
        if not self.connected.wait(10) or not self.subscribed.wait(10):
            raise AssertionError("subscriber could not connect to the test broker")
        return self

    def stop(self) -> None:
        """Disconnect; fails the test if anything received broke its JSON Schema."""
        # Disconnect first: it wakes paho's loop thread, which then ends at once;
        # loop_stop() alone waits out the loop's select timeout.
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()
        if self.check_schemas:
            assert not self.violations, f"messages not matching docs/schemas: {self.violations[:5]}"

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """The events received, in order (the same decoded dicts each call: do not change)."""
        with self.lock:
            evs = list(self._events)
        suffix = f"/event/{kind}"
        return [body for topic, body in evs if kind is None or topic.endswith(suffix)]

    def seq_ids(self) -> dict[int, set[str]]:
        """seq -> the ids received with it (more than one id for a seq would be a bug)."""
        with self.lock:
            return {seq: set(ids) for seq, ids in self._seq_ids.items()}

    def seq_count(self) -> int:
        """How many distinct seqs arrived (cheap enough to poll)."""
        with self.lock:
            return len(self._seq_ids)

    def on(self, suffix: str) -> list[dict[str, Any]]:
        with self.lock:
            msgs = list(self.messages)
        return [json.loads(p) for t, p, _ in msgs if t.endswith(suffix)]
