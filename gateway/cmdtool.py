"""Send a signed command to a unit and wait for its reply: ``gatewayd cmd`` and the backend.

:func:`envelope` + :func:`sign_command` make the MQTT payload (a JWS, gateway/signing.py);
:func:`request` subscribes to the reply topic, publishes the command and waits for the
reply. MQTT 5: the command carries a response topic and correlation data. MQTT 3.1.1
(a broker without 5, or ``protocol="3.1.1"``): the same topic goes in the payload's
``reply_to``. Either way the reply topic is ``<prefix>/<unit>/reply/<request id>``, the
unit's reply subtree (its ACL lets it publish there).
"""

from __future__ import annotations

import json
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.commands.core import Code, format_time, reply_base
from gateway.publisher import nodelay
from gateway.signing import TYP_COMMAND, sign

# Exit codes of `gatewayd cmd` by reply code (docs/operations.md); no reply: NO_REPLY.
EXIT_CODES: dict[int, int] = {Code.OK: 0, Code.BAD_REQUEST: 40, Code.FORBIDDEN: 43,
                              Code.NOT_FOUND: 44, Code.CONFLICT: 49, Code.FAILED: 50}
NO_REPLY = 3


def exit_code(code: int) -> int:
    return EXIT_CODES.get(code, 1)


@dataclass(frozen=True, slots=True)
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    protocol: str = "auto"  # "auto" (5, then 3.1.1), "5", "3.1.1"
    prefix: str = "kidsafe/v1"


class NoReply(TimeoutError):
    """No reply within the timeout (or the broker could not be reached)."""


def envelope(name: str, args: Mapping[str, Any], unit: str, *, now: float | None = None,
             lifetime_s: float = 300.0, request_id: str | None = None,
             reply_to: str | None = None) -> dict[str, Any]:
    """The JWS payload of a command (docs/schemas/command.schema.json)."""
    now = time.time() if now is None else now
    env: dict[str, Any] = {"id": request_id or str(uuid.uuid4()), "unit": unit, "cmd": name,
                           "issued": format_time(now), "expires": format_time(now + lifetime_s),
                           "args": dict(args)}
    if reply_to is not None:
        env["reply_to"] = reply_to
    return env


def sign_command(env: Mapping[str, Any], key: Ed25519PrivateKey) -> bytes:
    return sign(json.dumps(env, separators=(",", ":")).encode(), key, TYP_COMMAND)


def reply_topic(prefix: str, unit: str, request_id: str) -> str:
    return reply_base(prefix, unit) + request_id


def _client(b: Broker, v5: bool) -> mqtt.Client:
    cid = f"kidsafe-cmd-{secrets.token_hex(4)}"
    client = (mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
              if v5 else mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid,
                                     protocol=mqtt.MQTTv311))
    if b.username:
        client.username_pw_set(b.username, b.password)
    if b.ca_file:
        client.tls_set(ca_certs=b.ca_file, certfile=b.cert_file, keyfile=b.key_file)
    return client


class Session:
    """One broker connection for any number of requests (the backend's operator page keeps
    one open; ``gatewayd cmd`` makes one per run)."""

    def __init__(self, broker: Broker, connect_timeout_s: float = 10.0) -> None:
        self.broker = broker
        self.v5 = broker.protocol != "3.1.1"
        self._waiting: dict[str, queue.SimpleQueue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._subacks: set[int] = set()
        self._suback = threading.Condition()
        self.client = self._connect(connect_timeout_s)

    def _connect(self, timeout: float) -> mqtt.Client:
        tries = [self.v5] if self.broker.protocol != "auto" else [True, False]
        last: Exception | None = None
        for v5 in tries:
            connected = threading.Event()
            result: list[Any] = []
            client = _client(self.broker, v5)

            def on_connect(c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any = None,
                           result: list[Any] = result, connected: threading.Event = connected
                           ) -> None:
                result.append(rc)
                connected.set()

            client.on_connect = on_connect
            client.on_message = self._on_message
            client.on_subscribe = self._on_subscribe
            try:
                client.connect(self.broker.host, self.broker.port, keepalive=30)
            except (OSError, ValueError) as e:
                last = e
                break
            client.loop_start()
            if connected.wait(timeout) and result and not result[0].is_failure:
                nodelay(client)
                self.v5 = v5
                return client
            client.loop_stop()
            client.disconnect()
            last = ConnectionError(f"broker refused: {result[0] if result else 'no answer'}")
        raise NoReply(f"cannot connect to {self.broker.host}:{self.broker.port}: {last}")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, rcs: Any,
                      props: Any = None) -> None:
        with self._suback:
            self._subacks.add(mid)
            self._suback.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        props = msg.properties
        corr = getattr(props, "CorrelationData", None) if props is not None else None
        key = corr.decode("utf-8", "replace") if isinstance(corr, bytes) else body.get("id")
        with self._lock:
            q = self._waiting.get(key) if isinstance(key, str) else None
            if q is None:  # a refusal made before the signature was checked: id unknown
                q = self._waiting.get(msg.topic)
        if q is not None:
            q.put(body)

    def request(self, name: str, token: bytes, request_id: str, unit: str,
                timeout_s: float = 10.0) -> dict[str, Any]:
        """Publish the signed command ``token`` and return the reply body (a dict).

        ``request_id`` must be the envelope's id (and, under 3.1.1, its ``reply_to`` the
        topic :func:`reply_topic` names). Raises :class:`NoReply` after ``timeout_s``.
        """
        topic = reply_topic(self.broker.prefix, unit, request_id)
        got: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        with self._lock:
            self._waiting[request_id] = got
            self._waiting[topic] = got
        # Wildcard-free and its own: the reply can only come from this unit's subtree.
        rc, sub_mid = self.client.subscribe(topic, qos=1)
        mid = sub_mid or 0
        try:
            with self._suback:
                acked = self._suback.wait_for(lambda: mid in self._subacks, timeout_s)
                self._subacks.discard(mid)
            if rc != mqtt.MQTT_ERR_SUCCESS or not acked:
                raise NoReply("no SUBACK for the reply topic")
            props = None
            if self.v5:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = topic
                props.CorrelationData = request_id.encode()
            self.client.publish(f"{self.broker.prefix}/{unit}/cmd/{name}", token, qos=1,
                                properties=props)
            try:
                return got.get(timeout=timeout_s)
            except queue.Empty:
                raise NoReply(f"no reply from {unit} in {timeout_s:g} s") from None
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)
                self._waiting.pop(topic, None)
            self.client.unsubscribe(topic)

    def command(self, name: str, args: Mapping[str, Any], unit: str, key: Ed25519PrivateKey,
                timeout_s: float = 10.0, lifetime_s: float = 300.0) -> dict[str, Any]:
        """Build, sign, send one command; its reply body."""
        rid = str(uuid.uuid4())
        env = envelope(name, args, unit, lifetime_s=lifetime_s, request_id=rid,
                       reply_to=None if self.v5 else reply_topic(self.broker.prefix, unit, rid))
        return self.request(name, sign_command(env, key), rid, unit, timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
