"""A small test-side backend that stores events in memory and sends signed receipts.

Stands in for the reference backend (``backend/``, helper ``backend``) until the
end-to-end fault tests switch to it: it plays the backend's side of the contract
(docs/mqtt.md, "Receipts") and nothing more. A paho client subscribes to the
units' events at QoS 1 with a persistent session, keeps each event by ``id`` (its
"database"), and every ``interval_s`` signs one receipt per unit naming the seqs
it stored since the last one, duplicates included (a resent event is receipted
again, else the unit would send it forever), as ranges; QoS 1 on
``<prefix>/<unit>/receipt``.

``drop_first`` makes it lose the first delivery of some seqs (a backend that
crashed before storing them): the unit must send them again after its receipt
timeout.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.signing import TYP_RECEIPT, sign


def runs(seqs: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return out


def signed_receipt(key: Ed25519PrivateKey, unit: str, ranges: list[list[int]],
                   upto: int | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"unit": unit, "ranges": ranges,
                            "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                            **extra}
    if upto is not None:
        body["upto"] = upto
    return sign(json.dumps(body).encode(), key, TYP_RECEIPT)


class Receipter:
    def __init__(self, port: int, key: Ed25519PrivateKey, prefix: str = "kidsafe/v1",
                 client_id: str = "receipter", interval_s: float = 0.05,
                 drop_first: set[int] | None = None,
                 tls: dict[str, str] | None = None) -> None:
        self.port = port
        self.tls = tls or {}  # ca, cert, key, username, password: as a deployment logs in
        self.key = key
        self.prefix = prefix
        self.client_id = client_id
        self.interval_s = interval_s
        self.drop_first = set(drop_first or ())
        self.lock = threading.Lock()
        self.stored: dict[str, dict[str, Any]] = {}  # id -> event: the "database"
        self.deliveries: dict[int, int] = {}  # seq -> times received (resends included)
        self.receipts_sent = 0
        self.receipting = True  # False: stores, never receipts (a receipt path that broke)
        self._todo: dict[str, list[int]] = {}  # unit -> seqs stored since the last receipt
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.client: mqtt.Client | None = None
        self.connected = threading.Event()

    # -- connection ----------------------------------------------------------------------------

    def start(self) -> Receipter:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=mqtt.MQTTv5)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(0.1, 1)  # type: ignore[arg-type]  # follow a restarted broker
        if self.tls.get("ca"):
            c.tls_set(ca_certs=self.tls["ca"], certfile=self.tls.get("cert"),
                      keyfile=self.tls.get("key"))
        if self.tls.get("username"):
            c.username_pw_set(self.tls["username"], self.tls.get("password"))
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # persistent: the broker queues while offline
        self.connected.clear()
        c.connect("127.0.0.1", self.port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        if not self.connected.wait(10):
            raise AssertionError("the receipter could not connect to the test broker")
        self._stop.clear()
        self._thread = threading.Thread(target=self._receipts, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go offline (the persistent session stays at the broker, queueing events)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.disconnect()
            self.client.loop_stop()
            self.client = None

    def _on_connect(self, client: mqtt.Client, *_a: Any) -> None:
        client.subscribe(f"{self.prefix}/+/event/#", qos=1)
        self.connected.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        body = json.loads(msg.payload)
        seq, eid, unit = body["seq"], body["id"], body["unit"]
        with self.lock:
            self.deliveries[seq] = self.deliveries.get(seq, 0) + 1
            if seq in self.drop_first:
                self.drop_first.discard(seq)  # lost before it was stored: no receipt
                return
            self.stored.setdefault(eid, body)  # de-duplicated by id
            self._todo.setdefault(unit, []).append(seq)

    # -- receipts ------------------------------------------------------------------------------

    def _receipts(self) -> None:
        while not self._stop.wait(self.interval_s):
            if not self.receipting:
                continue
            with self.lock:
                todo, self._todo = self._todo, {}
            for unit, seqs in todo.items():
                self.send(unit, signed_receipt(self.key, unit, runs(seqs)))

    def send(self, unit: str, token: bytes) -> None:
        """Publish a (signed or not) receipt token to a unit, QoS 1."""
        client = self.client
        if client is None:
            return
        client.publish(f"{self.prefix}/{unit}/receipt", token, qos=1)
        with self.lock:
            self.receipts_sent += 1

    # -- what the tests ask --------------------------------------------------------------------

    def seqs(self) -> dict[int, set[str]]:
        """seq -> the ids stored with it (one each, or the unit reused a seq)."""
        with self.lock:
            out: dict[int, set[str]] = {}
            for eid, body in self.stored.items():
                out.setdefault(body["seq"], set()).add(eid)
            return out

    def count(self) -> int:
        with self.lock:
            return len(self.stored)

    def wait_count(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out: {self.count()} of {n} events stored")
            time.sleep(0.05)
