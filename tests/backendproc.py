"""kidsafe-backend as its own process for the tests, its config, events to feed it.

Used with tests/pg.py (the database) and firmware_sim.broker.LocalBroker (mosquitto).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import contract
from firmware_sim import procs
from firmware_sim.postgres import query
from gateway import signing
from gateway.contract import iso_utc

PREFIX = "kidsafe/v1"


def keypair(d: Path) -> tuple[Path, Path]:
    """The backend's signing key and its public key (units' [commands] public_keys)."""
    priv, pub = d / "backend.key", d / "backend.pub"
    if not priv.exists():
        signing.generate_keypair(priv, pub)
    return priv, pub


def write_config(path: Path, *, broker_port: int, dsn: str, key_file: Path | None,
                 client_id: str = "backend-test", broker: dict[str, Any] | None = None,
                 **ingest: Any) -> Path:
    doc: dict[str, Any] = {
        "prefix": PREFIX,
        "broker": {"host": "127.0.0.1", "port": broker_port, "client_id": client_id,
                   "reconnect_max_s": 0.5, **(broker or {})},
        "database": {"dsn": dsn},
        "receipts": {"key_file": str(key_file) if key_file else ""},
        "ingest": {"batch_latency_ms": 5.0, **ingest},
    }
    path.write_text(tomli_w.dumps(doc))
    return path


class BackendProcess:
    """`kidsafe-backend run --config FILE` (python -m backend), output to a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.env: dict[str, str] = {}  # extra environment for the next start
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._before = 0

    def start(self, wait: bool = True) -> BackendProcess:
        """Start it; with ``wait``, until it logged its subscription. (It consumes before
        its SUBACK: a process told to kill itself may do so before that line.)"""
        self._before = self.log_text().count("subscribed to ")
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend", "run", "--config", str(self.config)],
            stdout=out, stderr=out, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        out.close()
        self.starts += 1
        if wait:
            self.wait_subscribed()
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_subscribed(self, timeout: float = 45.0) -> None:
        """Until this start's process logged its subscription."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_text().count("subscribed to ") > self._before:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"kidsafe-backend exited: {self.log_text()[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"kidsafe-backend did not subscribe: {self.log_text()[-3000:]}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        procs.end(self.proc, sig, timeout=15)

    def stop(self) -> int | None:
        self.kill(signal.SIGTERM)
        return self.proc.returncode if self.proc else None


def publisher(port: int) -> mqtt.Client:
    """A plain MQTT 5 client standing in for units, connected and looping."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="unit-pub", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def count(dsn: str, sql: str) -> int:
    """The one number a ``SELECT count(...)`` returns."""
    return int(query(dsn, sql)[0][0])


def event(unit: str, seq: int, kind: str = "gate", data: dict[str, Any] | None = None,
          lane: str = "routine", eid: str | None = None) -> dict[str, Any]:
    """A valid event body (docs/schemas/event.schema.json)."""
    now = iso_utc(time.time())
    if data is None:
        data = {"direction": "arrival", "gate": "gate-a", "day": now[:10],
                "first_arrival_today": seq == 1, "first_passage_today": seq == 1, "reads": 3}
    return {"id": eid or str(uuid.uuid4()), "seq": seq, "unit": unit, "site": "test-site",
            "kind": kind, "lane": lane, "time": now, "recorded": now, "reader": "gate-a",
            "child": f"c-{seq % 7}", "data": data}


def drop_event(unit: str, seq: int, ranges: list[list[int]]) -> dict[str, Any]:
    count = sum(b - a + 1 for a, b in ranges)
    return event(unit, seq, "buffer_drop", {"lane": "routine", "count": count,
                                            "ranges": ranges}, eid=None)


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


class ReceiptCollector:
    """Subscribes to <prefix>/+/receipt and verifies every receipt with the public key.
    ``persistent``: a session the broker keeps (and queues receipts in) while it is away."""

    def __init__(self, port: int, public_key: Path, persistent: bool = False) -> None:
        self.keys = signing.load_keyring([public_key])
        self.lock = threading.Lock()
        self.seqs: dict[str, set[int]] = {}
        self.bad: list[str] = []
        self.count = 0
        self.ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rc-{uuid.uuid4()}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/+/receipt", qos=1)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._on_message
        props = None
        if persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=not persistent, properties=props)
        self.client.loop_start()
        assert self.ready.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            v = signing.verify(bytes(msg.payload), self.keys, signing.TYP_RECEIPT)
            body = json.loads(v.payload)
            unit = msg.topic.split("/")[-2]
            assert body["unit"] == unit, (body, msg.topic)
            bad = contract.body_violations("receipt", body, msg.topic)  # the contract's schema
            assert not bad, bad
            with self.lock:
                self.count += 1
                for a, b in body["ranges"]:
                    self.seqs.setdefault(unit, set()).update(range(a, b + 1))
        except Exception as e:  # recorded: the test asserts there are none
            with self.lock:
                self.bad.append(f"{msg.topic}: {e!r}")

    def covered(self, unit: str) -> set[int]:
        with self.lock:
            return set(self.seqs.get(unit, ()))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        assert not self.bad, self.bad[:5]
