"""Sends the outbox to the broker: QoS 1, deleted only on the broker's PUBACK.

One thread does all of it: it drives paho through its external-loop API
(``socket()``, ``loop_read/loop_write/loop_misc``) with ``select`` on the
broker socket and a wake pipe the pipeline writes to. No paho network thread
and no hand-offs between threads: on a small board the GIL hand-offs between
a sender and paho's own thread cost more than the publishing itself.

One paho client per connection: after a reconnect we resend from the outbox
ourselves rather than letting paho replay its in-memory queue, so each stored
event goes out once per connection and is deleted only on its own PUBACK.
The broker session is persistent (clean_start off, session expiry), so
commands queued for the unit during an outage still arrive.

Lanes: emergency events go first, always. The other lanes are split at the
moment a connection comes up into a *backlog* (seq at or below the last seq
then) and *live* events (newer); batches alternate between the two so a live
event never waits behind more than one backlog batch. Order is kept within
each lane's backlog and live part.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import backoff, contract
from gateway.clock import Clock
from gateway.config import Config
from gateway.contract import Stored, iso_utc
from gateway.model import Lane
from gateway.outbox import Outbox

log = logging.getLogger("gateway.mqtt")

SESSION_EXPIRY_S = 7 * 24 * 3600
ACK_FLUSH_S = 0.02  # pending acks are deleted at least this often
IDLE_S = 0.5  # select timeout with nothing to do (keepalive needs a turn now and then)


class ConnectFailed(OSError):
    """The broker did not accept us (refused, TLS failure, no CONNACK in time)."""

    def __init__(self, message: str, reached_broker: bool = True) -> None:
        super().__init__(message)
        self.reached_broker = reached_broker  # False: no TCP connection at all


class Publisher:
    def __init__(
        self,
        cfg: Config,
        outbox: Outbox,
        clock: Clock,
        health: Callable[[], dict[str, Any]] | None = None,
        on_command: Callable[[str, bytes], None] | None = None,
        on_acked: Callable[[list[int]], None] | None = None,
        window: int = 256,
        emergency_reserve: int = 32,
        batch: int = 64,
        reconnect_max_s: float | None = None,
        connack_timeout_s: float = 10.0,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.clock = clock
        self.health = health
        self.on_command = on_command or self._unsupported_command
        self.on_acked = on_acked
        self.topics = contract.Topics(cfg.broker.topic_prefix, cfg.unit.id)
        self.window = window
        self.reserve = emergency_reserve
        self.batch = batch
        self.reconnect_max_s = reconnect_max_s or cfg.broker.reconnect_max_s
        self.connack_timeout_s = connack_timeout_s
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._acks: collections.deque[tuple[int, bool]] = collections.deque()
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._connack: tuple[bool, str] | None = None
        self.connected_protocol = ""
        self.connected_protocol_try = ""
        self._paho_error = ""
        self.sent = 0
        self.acked = 0
        self.refused = 0
        self.connects = 0
        self.commands = 0

    # -- called from other threads -----------------------------------------------------------

    def notify(self) -> None:
        """New events are in the outbox (called from the pipeline thread)."""
        with contextlib.suppress(BlockingIOError):  # already awake: a byte is waiting
            os.write(self._wake_w, b"!")

    @property
    def online(self) -> bool:
        return self._connected.is_set()

    # -- the connection loop (own thread) ----------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        b = self.cfg.broker
        # "auto": MQTT 5 first. A broker that predates it answers a v5 CONNECT with a 3.1.1
        # refusal (or just closes), which reaches us as a failure after the TCP connection
        # was made; then 3.1.1 is tried, and whichever version worked is kept.
        use_v5 = b.protocol in ("auto", "5")

        while not stop.is_set():
            retrying = backoff.retrying(stop, log, f"connecting to broker {b.host}:{b.port}",
                                        0.5, self.reconnect_max_s)

            def connect_once() -> mqtt.Client:
                nonlocal use_v5
                try:
                    return self._connect(use_v5)
                except ConnectFailed as e:
                    if b.protocol == "auto" and e.reached_broker:
                        use_v5 = not use_v5  # the next attempt tries the other version
                    raise

            try:
                client = retrying(connect_once)
            except OSError:
                return
            try:
                self._serve(client, stop)
            finally:
                self._connected.clear()
                try:
                    if stop.is_set() and not self._lost.is_set():
                        info = self._publish_status(client, online=False)
                        self._pump(client, info.is_published, 2.0)
                    client.disconnect()
                    self._pump(client, lambda: False, 0.2 if stop.is_set() else 0.0)
                except Exception:  # closing a dead connection may fail in any way
                    pass
            if not stop.is_set():
                log.warning("broker connection lost; %d events buffered", self.outbox.depth())

    def _new_client(self, v5: bool) -> mqtt.Client:
        b = self.cfg.broker
        if v5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=b.client_id,
                                 protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=b.client_id,
                                 protocol=mqtt.MQTTv311, clean_session=False)
        if b.username:
            client.username_pw_set(b.username, b.password)
        if b.tls:
            client.tls_set(ca_certs=b.tls.ca_file, certfile=b.tls.cert_file,
                           keyfile=b.tls.key_file)
            if b.tls.insecure_skip_hostname:
                client.tls_insecure_set(True)
        will = json.dumps(contract.status_payload(self.cfg.unit.id, False, None,
                                                  "connection-lost")).encode()
        client.will_set(self.topics.status, will, qos=1, retain=True)
        client.max_inflight_messages_set(self.window + self.reserve)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_log = self._on_paho_log
        return client

    def _connect(self, v5: bool) -> mqtt.Client:
        b = self.cfg.broker
        self.connected_protocol_try = "5" if v5 else "3.1.1"
        client = self._new_client(v5)
        self._connack = None
        self._paho_error = ""
        self._lost.clear()
        try:
            if v5:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = SESSION_EXPIRY_S
                client.connect(b.host, b.port, keepalive=b.keepalive_s, clean_start=False,
                               properties=props)
            else:
                client.connect(b.host, b.port, keepalive=b.keepalive_s)
        except (OSError, ValueError) as e:
            # A TLS handshake the broker rejects also fails here, after the TCP connect.
            reached = not isinstance(e, ConnectionRefusedError | TimeoutError | socket.gaierror)
            msg = f"connect to {b.host}:{b.port} failed: {e}"
            if isinstance(e, ssl.SSLCertVerificationError) and b.tls is not None:
                msg += (f"; the broker's certificate is not signed by ca_file ({b.tls.ca_file}), "
                        "or its name does not match the host")
            raise ConnectFailed(msg, reached) from e
        try:
            self._pump(client, lambda: self._connack is not None, self.connack_timeout_s)
        except Exception as e:  # paho choking on a reply it cannot parse (an older protocol)
            with contextlib.suppress(Exception):
                client.disconnect()
            raise ConnectFailed(f"broker sent an unexpected reply: {e!r}") from e
        if self._connack is None:
            with contextlib.suppress(Exception):
                client.disconnect()
            raise ConnectFailed(self._explain("no answer to CONNECT in "
                                              f"{self.connack_timeout_s:g} s"))
        ok, why = self._connack
        if not ok:
            raise ConnectFailed(self._explain(f"broker refused the connection: {why}"))
        self.connects += 1
        self.connected_protocol = "5" if v5 else "3.1.1"
        return client

    def _on_paho_log(self, client: mqtt.Client, userdata: Any, level: int, msg: str) -> None:
        # paho reports the socket's real error (an SSL alert naming the problem) only here.
        if level == mqtt.MQTT_LOG_ERR:
            self._paho_error = msg

    def _explain(self, what: str) -> str:
        """A refusal in words a technician can act on."""
        v = "MQTT 5" if self.connected_protocol_try == "5" else "MQTT 3.1.1"
        parts = [f"{v}: {what}"]
        if self._paho_error:
            parts.append(self._paho_error)
        tls = self.cfg.broker.tls
        if tls is not None and ("SSL" in self._paho_error or "before CONNACK" in what):
            parts.append("check that the broker's CA signed the client certificate "
                         f"({tls.cert_file}), that it has not expired, and that ca_file "
                         f"({tls.ca_file}) is the CA of the broker's own certificate"
                         if tls.cert_file else
                         f"check ca_file ({tls.ca_file}); the broker may require a "
                         "client certificate (cert_file, key_file)")
        return "; ".join(parts)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        self._connack = (not rc.is_failure, str(rc))

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                       props: Any = None) -> None:
        if self._connack is None:
            self._connack = (False, f"disconnected before CONNACK: {rc}")
        self._lost.set()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any,
                    props: Any = None) -> None:
        # Runs inside loop_read under paho's lock: only note the mid; _serve resolves it.
        self._acks.append((mid, not rc.is_failure))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # Runs in paho's thread. Commands never raise into paho: a hostile payload is the
        # handler's to reject, and a bug in it must not take the connection down.
        self.commands += 1
        suffix = msg.topic[len(self.topics.base) + 1:] if msg.topic.startswith(
            self.topics.base + "/") else msg.topic
        try:
            self.on_command(suffix, bytes(msg.payload))
        except Exception:
            log.exception("command on %s failed", msg.topic)

    def _unsupported_command(self, suffix: str, payload: bytes) -> None:
        log.warning("command %s received (%d bytes): no handler for it in this version",
                    suffix, len(payload))

    def _publish_status(self, client: mqtt.Client, online: bool) -> mqtt.MQTTMessageInfo:
        body = contract.status_payload(self.cfg.unit.id, online, iso_utc(self.clock.now()),
                                       "connected" if online else "shutdown")
        return client.publish(self.topics.status, json.dumps(body).encode(), qos=1, retain=True)

    # -- the network loop --------------------------------------------------------------------

    def _io(self, client: mqtt.Client, timeout: float) -> bool:
        """One turn of paho's external loop; False when the connection is gone."""
        sock: Any = client.socket()  # a socket or an SSL socket: both select-able
        if sock is None:
            self._lost.set()
            return False
        try:
            readable, writable, _ = select.select(
                [sock, self._wake_r], [sock] if client.want_write() else [], [], timeout)
        except (OSError, ValueError):  # the socket was closed under us
            self._lost.set()
            return False
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
        rc = mqtt.MQTT_ERR_SUCCESS
        if sock in readable:
            rc = client.loop_read()
        if rc == mqtt.MQTT_ERR_SUCCESS and sock in writable:
            rc = client.loop_write()
        if rc == mqtt.MQTT_ERR_SUCCESS:
            rc = client.loop_misc()  # keepalive: PINGREQ, and a broker that stopped answering
        if rc != mqtt.MQTT_ERR_SUCCESS:
            self._lost.set()
            return False
        return True

    def _pump(self, client: mqtt.Client, done: Callable[[], bool], timeout: float) -> None:
        """Run the loop until ``done()`` or ``timeout`` (connect, clean shutdown)."""
        deadline = self.clock.monotonic() + timeout
        while not done():
            left = deadline - self.clock.monotonic()
            if left <= 0 or not self._io(client, min(left, 0.1)):
                return

    # -- sending -----------------------------------------------------------------------------

    def _serve(self, client: mqtt.Client, stop: threading.Event) -> None:
        self._connected.set()
        client.subscribe(self.topics.commands, qos=1)
        self._publish_status(client, online=True)
        live_mark = self.outbox.last_seq()
        birth = contract.birth_payload(self.cfg.unit.id, self.cfg.unit.site,
                                       self.cfg.unit.config_version, live_mark,
                                       iso_utc(self.clock.now()), self.connected_protocol)
        client.publish(self.topics.birth, json.dumps(birth).encode(), qos=1)
        log.info("broker %s:%d connected (MQTT %s); %d events to send",
                 self.cfg.broker.host, self.cfg.broker.port, self.connected_protocol,
                 self.outbox.depth())
        # Cursor per (lane, part): the highest seq handed to paho on this connection.
        cursors: dict[tuple[int, str], int] = {}
        inflight: dict[int, int] = {}  # mid -> seq (negative: an emergency event)
        pending_acks: list[int] = []
        emergency_inflight = 0
        turn = 0
        now = self.clock.monotonic()
        next_health = now
        last_flush = now
        busy = True
        while not stop.is_set() and not self._lost.is_set():
            timeout = 0.0 if busy else (ACK_FLUSH_S if pending_acks else IDLE_S)
            if not self._io(client, timeout):
                break
            # Resolve acknowledgements (and refusals) first: they free the window.
            while self._acks:
                mid, ok = self._acks.popleft()
                seq = inflight.pop(mid, None)
                if seq is None:
                    continue  # a birth/status/health message
                if seq < 0:
                    emergency_inflight -= 1
                    seq = -seq
                if ok:
                    pending_acks.append(seq)
                else:
                    self.refused += 1
                    log.error("broker refused event seq %d; it stays buffered", seq)
            # Deleted in batches: one transaction per batch of PUBACKs, not per PUBACK.
            now = self.clock.monotonic()
            if pending_acks and (len(pending_acks) >= self.batch or not inflight
                                 or now - last_flush >= ACK_FLUSH_S):
                self.outbox.ack(pending_acks)
                self.acked += len(pending_acks)
                if self.on_acked is not None:
                    self.on_acked(pending_acks)
                pending_acks = []
                last_flush = now
            sent_before = len(inflight)
            # Emergency first, into the reserved part of the window too.
            room = self.window + self.reserve - len(inflight)
            rows = self._take(Lane.EMERGENCY, "all", cursors, room, None)
            for r in rows:
                inflight[self._send(client, r)] = -r.seq
                emergency_inflight += 1
            room = self.window - (len(inflight) - emergency_inflight)
            # Refill in chunks: a query per freed slot would cost more than the publishing.
            if not rows and (room >= self.batch // 2 or len(inflight) == emergency_inflight):
                parts = ("live", "backlog") if turn % 2 == 0 else ("backlog", "live")
                turn += 1
                for part in parts:
                    for lane in (Lane.ROUTINE, Lane.TELEMETRY):
                        got = self._take(lane, part, cursors, min(room, self.batch), live_mark)
                        for r in got:
                            inflight[self._send(client, r)] = r.seq
                        room -= len(got)
                        if got:
                            break
                    if room <= 0:
                        break
            # Sent something: go round at once (more may fit); else wait in select.
            busy = len(inflight) > sent_before
            if self.health and now >= next_health:
                next_health = now + self.cfg.health_interval_s
                client.publish(self.topics.health, json.dumps(self.health()).encode(), qos=0)
        if pending_acks:  # what the broker has is not sent again after a clean stop
            self.outbox.ack(pending_acks)
            self.acked += len(pending_acks)

    def _take(self, lane: Lane, part: str, cursors: dict[tuple[int, str], int], limit: int,
              live_mark: int | None) -> list[Stored]:
        if limit <= 0:
            return []
        key = (int(lane), part)
        after = cursors.get(key, 0)
        if part == "live":
            after = max(after, live_mark or 0)
            rows = self.outbox.fetch(int(lane), after, limit)
        elif part == "backlog":
            rows = self.outbox.fetch(int(lane), after, limit, upto=live_mark)
        else:
            rows = self.outbox.fetch(int(lane), after, limit)
        if rows:
            cursors[key] = rows[-1].seq
        return rows

    def _send(self, client: mqtt.Client, row: Stored) -> int:
        info = client.publish(self.topics.of(row.topic), row.payload, qos=1)
        self.sent += 1
        return info.mid
