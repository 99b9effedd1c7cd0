"""Sends the outbox to the broker: the paho shell around the delivery core.

What is sent when and what is deleted when is decided by the sans-I/O core
(gateway/delivery.py: emergency first with reserved slots, live/backlog
alternation, the in-flight window, ack batching, resend after a reconnect).
This module does the I/O around it: sockets, TLS, MQTT version fallback,
status/birth/health messages, commands (handed to the command worker,
gateway/commander.py; their replies published here, ahead of any event backlog),
and the loop that feeds the core what happened (acks by paho mid, wake-ups) and
carries out its actions (publish rows, delete acknowledged seqs from the outbox).

One thread does all of it: it drives paho through its external-loop API
(``socket()``, ``loop_read/loop_write/loop_misc``) with ``poll`` (the
selectors module) on the broker socket and a wake pipe the pipeline writes to;
not ``select()``, which cannot watch a descriptor numbered above 1023 (a daemon
with many open files, or many units in one process: docs/fleet.md). No paho network thread
and no hand-offs between threads: on a small board the GIL hand-offs between
a sender and paho's own thread cost more than the publishing itself.

One paho client per connection: after a reconnect the core resends from the
outbox rather than paho replaying its in-memory queue, so each stored event
goes out once per connection and is deleted only on its own PUBACK. The
broker session is persistent (clean_start off, session expiry), so commands
queued for the unit during an outage still arrive.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import backoff, contract, logs
from gateway.clock import Clock
from gateway.config import Config
from gateway.contract import iso_utc
from gateway.delivery import Action, Delete, DeleteRanges, Delivery, Limits, Publish, Refused
from gateway.mqttclient import loop_turn, new_client
from gateway.outbox import BufferWriteError, Outbox
from gateway.receipts import ReceiptRefused, admit
from gateway.standbylink import StandbyLink
from gateway.tcpopts import nodelay

log = logging.getLogger("gateway.mqtt")
SESSION_EXPIRY_S = 7 * 24 * 3600
REPLY_SLOTS = 8  # in-flight slots beyond the events' window: a reply never waits behind them
REPLIES_MAX = 1024  # replies waiting to go out; a flood beyond it is dropped (counted)
# The first CONNECT after a start or a loss waits this long for its CONNACK, each next
# one twice as long up to connack_timeout_s (backoff.doubling; docs/mqtt.md, "Connection").
CONNACK_FIRST_S = 5.0
RECEIPTS_MAX = 1024  # receipts read, not yet checked (one loop turn's worth at most)
REFUSAL_LOG_S = 60.0  # refused receipts: one log line per this long, with the count


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message on ``cmd/#``: the topic below the unit's base, the payload, and the MQTT 5
    response topic and correlation data (None under 3.1.1, or when not sent)."""

    suffix: str
    payload: bytes
    response_topic: str | None = None
    correlation: bytes | None = None


@dataclass(frozen=True, slots=True)
class OutgoingReply:
    topic: str
    body: bytes
    correlation: bytes | None = None


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
        on_command: Callable[[Incoming], None] | None = None,
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
        self.connack_wait_s = min(CONNACK_FIRST_S, connack_timeout_s)  # this attempt's
        d = cfg.delivery
        self.receipt_mode = d.mode == "receipt"
        self.core = Delivery(outbox.fetch, Limits(window=window, reserve=emergency_reserve,
                                                  batch=batch, receipts=self.receipt_mode,
                                                  receipt_timeout_s=d.receipt_timeout_s,
                                                  receipt_timeout_max_s=d.receipt_timeout_max_s,
                                                  max_awaiting=d.max_awaiting),
                             outbox.fetch_seqs)
        # Receipt mode (issue 13): signed receipts on <base>/receipt, checked in this thread.
        self.receipt_topic = self.topics.of("receipt")
        self._receipts: collections.deque[bytes] = collections.deque(maxlen=RECEIPTS_MAX)
        self.receipts = 0  # admitted
        self.receipts_refused = 0
        self._refusal_log_at = 0.0
        self._refusals_unlogged = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._acks: collections.deque[tuple[int, bool]] = collections.deque()
        # Replies from the command worker; deque appends and pops are thread-safe.
        self._replies: collections.deque[OutgoingReply] = collections.deque()
        self.replies_sent = 0
        self._rebirth = threading.Event()
        # (active, previous) config versions for birth (the daemon's config trial knows them)
        self.config_versions: Callable[[], tuple[str, str | None]] | None = None
        self.replies_dropped = 0
        self._connected = threading.Event()
        self._lost = threading.Event()
        self._connack: tuple[bool, str] | None = None
        self.connected_protocol = ""
        self.connected_protocol_try = ""
        self._paho_error = ""
        self._delete_failing = False
        self.sent = 0
        self.acked = 0
        self.refused = 0
        self.connects = 0
        self.commands = 0
        self.unit_key: dict[str, Any] | None = None  # the birth message's (gateway/unitkey.py)
        self._backlog: logs.Backlog | None = None  # progress lines while a backlog drains
        # [broker] standby_host: the emergency lane's second connection while this one is
        # down (gateway/standby.py has the rules; its own thread, started by run()).
        self.standby = (StandbyLink(cfg, outbox, clock, self._connected.is_set,
                                    on_acked=on_acked, reserve=emergency_reserve,
                                    connack_timeout_s=connack_timeout_s)
                        if cfg.broker.standby_host else None)

    # -- called from other threads -----------------------------------------------------------

    def notify(self) -> None:
        """New events are in the outbox (called from the pipeline thread)."""
        with contextlib.suppress(BlockingIOError):  # already awake: a byte is waiting
            os.write(self._wake_w, b"!")
        if self.standby is not None and not self._connected.is_set():
            self.standby.notify()  # (a loss of the main wakes it too: nothing is missed)

    def rebirth(self) -> None:
        """Publish status and birth again (the ``rebirth`` command), from this thread."""
        self._rebirth.set()
        self.notify()

    def reply(self, reply: OutgoingReply) -> None:
        """Publish a command's reply (QoS 1) from the publisher's thread, ahead of events
        (called from the command worker)."""
        if len(self._replies) >= REPLIES_MAX:
            self.replies_dropped += 1
            return
        self._replies.append(reply)
        self.notify()

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
        standby = None
        if self.standby is not None:
            standby = threading.Thread(target=self.standby.run, args=(stop,),
                                       name=f"{threading.current_thread().name}-standby",
                                       daemon=True)
            standby.start()
        try:
            self._run(stop, use_v5)
        finally:
            if standby is not None:
                assert self.standby is not None
                self.standby.notify()  # it may be asleep for seconds: stop is set now
                standby.join(5.0)

    def _run(self, stop: threading.Event, use_v5: bool) -> None:
        b = self.cfg.broker
        while not stop.is_set():
            retrying = backoff.retrying(stop, log, f"connecting to broker {b.host}:{b.port}",
                                        0.5, self.reconnect_max_s, self.clock)
            attempt = 0

            def connect_once() -> mqtt.Client:
                nonlocal use_v5, attempt
                self.connack_wait_s = backoff.doubling(attempt, CONNACK_FIRST_S,
                                                       self.connack_timeout_s)
                attempt += 1
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
                if self.standby is not None:
                    self.standby.notify()  # the emergency lane moves to the standby now
                try:
                    if stop.is_set() and not self._lost.is_set():
                        info = self._publish_status(client, online=False)
                        self._pump(client, info.is_published, 2.0)
                    client.disconnect()
                    self._pump(client, lambda: False, 0.2 if stop.is_set() else 0.0)
                except Exception:  # closing a dead connection may fail in any way
                    pass
            if not stop.is_set():
                delay = backoff.after_loss()
                log.warning("broker connection lost; %d events buffered; reconnecting in "
                            "%.1f s", self.outbox.depth(), delay)
                self.clock.wait(stop, delay)

    def _new_client(self, v5: bool) -> mqtt.Client:
        b = self.cfg.broker
        client = new_client(b, b.client_id, v5, clean=False)  # persistent: commands queue
        will = json.dumps(contract.status_payload(self.cfg.unit.id, False, None,
                                                  "connection-lost")).encode()
        client.will_set(self.topics.status, will, qos=1, retain=True)
        client.max_inflight_messages_set(self.window + self.reserve + REPLY_SLOTS)
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
                # paho's Properties has no annotations; the one untyped call of it.
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
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
            self._pump(client, lambda: self._connack is not None, self.connack_wait_s)
        except Exception as e:  # paho choking on a reply it cannot parse (an older protocol)
            with contextlib.suppress(Exception):
                client.disconnect()
            raise ConnectFailed(f"broker sent an unexpected reply: {e!r}") from e
        if self._connack is None:
            with contextlib.suppress(Exception):
                client.disconnect()
            raise ConnectFailed(self._explain("no answer to CONNECT in "
                                              f"{self.connack_wait_s:g} s"))
        ok, why = self._connack
        if not ok:
            raise ConnectFailed(self._explain(f"broker refused the connection: {why}"))
        nodelay(client)
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
        if self.receipt_mode and msg.topic == self.receipt_topic:
            self._receipts.append(bytes(msg.payload))  # checked in _serve's loop
            return
        self.commands += 1
        suffix = msg.topic[len(self.topics.base) + 1:] if msg.topic.startswith(
            self.topics.base + "/") else msg.topic
        props = msg.properties
        response = getattr(props, "ResponseTopic", None) if props is not None else None
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        if not isinstance(correlation, bytes | bytearray):
            correlation = None
        try:
            self.on_command(Incoming(suffix, bytes(msg.payload),
                                     response if isinstance(response, str) else None,
                                     None if correlation is None else bytes(correlation)))
        except Exception:
            log.exception("command on %s failed", msg.topic)

    def _unsupported_command(self, msg: Incoming) -> None:
        # The topic is the broker's (anyone with publish rights): clipped; the CLI's log
        # filter rate-limits these lines with a "suppressed N" count (gateway/logs.py).
        log.warning("command %s received (%d bytes): no handler for it in this version",
                    logs.clip(msg.suffix, 80), len(msg.payload))

    def _send_replies(self, client: mqtt.Client) -> None:
        replies = self._replies
        while replies:
            r = replies.popleft()
            props = None
            if r.correlation is not None and self.connected_protocol == "5":
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.CorrelationData = r.correlation
            try:
                client.publish(r.topic, r.body, qos=1, properties=props)
            except ValueError:  # a topic paho refuses (the command path checks them first)
                self.replies_dropped += 1
                continue
            self.replies_sent += 1

    def _publish_birth(self, client: mqtt.Client) -> int:
        """Status (retained, online) and birth; the last seq the birth names."""
        self._publish_status(client, online=True)
        live_mark = self.outbox.last_seq()
        version, previous = (self.config_versions() if self.config_versions
                             else (self.cfg.unit.config_version, None))
        birth = contract.birth_payload(self.cfg.unit.id, self.cfg.unit.site,
                                       version, live_mark,
                                       iso_utc(self.clock.now()), self.connected_protocol,
                                       self.outbox.high_water, config_previous=previous,
                                       config_label=self.cfg.unit.config_version,
                                       unit_key=self.unit_key)
        client.publish(self.topics.birth, json.dumps(birth).encode(), qos=1)
        return live_mark

    def _publish_status(self, client: mqtt.Client, online: bool) -> mqtt.MQTTMessageInfo:
        body = contract.status_payload(self.cfg.unit.id, online, iso_utc(self.clock.now()),
                                       "connected" if online else "shutdown")
        return client.publish(self.topics.status, json.dumps(body).encode(), qos=1, retain=True)

    # -- the network loop --------------------------------------------------------------------

    def _io(self, client: mqtt.Client, timeout: float) -> bool:
        """One turn of paho's external loop; False when the connection is gone."""
        # committed() after draining the wake pipe: a commit after this wakes us again.
        if loop_turn(client, self._wake_r, timeout, self.core.committed):
            return True
        self._lost.set()
        return False

    def _pump(self, client: mqtt.Client, done: Callable[[], bool], timeout: float) -> None:
        """Run the loop until ``done()`` or ``timeout`` (connect, clean shutdown)."""
        deadline = self.clock.monotonic() + timeout
        while not done():
            left = deadline - self.clock.monotonic()
            if left <= 0 or not self._io(client, min(left, 0.1)):
                return

    # -- sending: the core decides, this carries it out ------------------------------------

    def _serve(self, client: mqtt.Client, stop: threading.Event) -> None:
        core = self.core
        self._connected.set()
        if self.standby is not None:
            self.standby.notify()  # back on the main: the standby stops sending
        client.subscribe(self.topics.commands, qos=1)
        if self.receipt_mode:
            client.subscribe(self.receipt_topic, qos=1)
        live_mark = self._publish_birth(client)
        log.info("broker %s:%d connected (MQTT %s); %d events to send",
                 self.cfg.broker.host, self.cfg.broker.port, self.connected_protocol,
                 self.outbox.depth())
        self._backlog = logs.Backlog(log, self.outbox.depth(), self.acked, self.clock.monotonic)
        now = self.clock.monotonic()
        core.connected(live_mark, now)
        next_health = now
        acks = self._acks
        acks.clear()  # a previous client's mids mean nothing on this connection
        while not stop.is_set() and not self._lost.is_set():
            if not self._io(client, core.timeout()):
                break
            if self._rebirth.is_set():
                self._rebirth.clear()
                self._publish_birth(client)
            if self._replies:  # replies first: a locate does not wait behind a backlog
                self._send_replies(client)
            # Acknowledgements (and refusals) first: they free the window.
            while acks:
                mid, ok = acks.popleft()
                core.acked(mid, ok)
            while self._receipts:
                self._receipt(self._receipts.popleft())
            now = self.clock.monotonic()
            for action in core.poll(now):
                self._execute(client, action)
                # Between batches (a window's worth takes tens of ms on a busy box): read a
                # command that came in, send a reply that is ready. Acks wait for the loop.
                if not self._io(client, 0.0):
                    break
                if self._replies:
                    self._send_replies(client)
            if self.health and now >= next_health:
                next_health = now + self.cfg.health_interval_s
                client.publish(self.topics.health, json.dumps(self.health()).encode(), qos=0)
        # What the broker has is not sent again after a clean stop (or a lost connection).
        for action in core.disconnected():
            self._execute(client, action)

    def _execute(self, client: mqtt.Client, action: Action) -> None:
        match action:
            case Publish(rows):
                publish, topic = client.publish, self.topics.of
                mids = [publish(topic(r.topic), r.payload, qos=1).mid for r in rows]
                self.sent += len(rows)
                self.core.published(action, mids)
            case Delete(seqs):
                # One transaction per batch of PUBACKs, not per PUBACK.
                try:
                    self.outbox.ack(seqs)
                except BufferWriteError as e:
                    # A full or read-only card: the core remembers them as acknowledged (not
                    # sent again) and retries; this thread keeps delivering.
                    self.core.delete_failed(seqs, self.clock.monotonic())
                    if not self._delete_failing:
                        log.error("cannot record %d acknowledged events in the buffer (%s); "
                                  "kept in memory, not resent, retried every %.0f s", len(seqs),
                                  e, self.core.limits.delete_retry_s)
                        self._delete_failing = True
                    return
                self.core.deleted(seqs)
                if self._delete_failing and not self.core.undeleted:
                    log.warning("buffer writable again: acknowledged events deleted")
                    self._delete_failing = False
                self.acked += len(seqs)
                if self._backlog is not None:
                    self._backlog.update(self.acked, self.outbox.depth())
                if self.on_acked is not None:
                    self.on_acked(seqs)
            case Refused(seq):
                self.refused += 1
                log.error("broker refused event seq %d; it stays buffered", seq)
            case DeleteRanges(ranges):
                self._delete_receipted(ranges)

    # -- receipts (issue 13; helper "receipts" owns this region) -------------------------------

    def _receipt(self, token: bytes) -> None:
        """A message on <base>/receipt: admitted ones go to the core; the rest are counted,
        with one log line a minute (a flood of forgeries cannot fill the journal)."""
        try:
            r = admit(token, self.cfg.commands.keyring, self.cfg.unit.id)
        except ReceiptRefused as e:
            self.receipts_refused += 1
            self._refusals_unlogged += 1
            now = self.clock.monotonic()
            if now >= self._refusal_log_at:
                log.warning("receipt refused: %s (%d bytes); nothing deleted; %d refused in "
                            "all, %d since the last line", logs.clip(e.reason, 120), len(token),
                            self.receipts_refused, self._refusals_unlogged)
                self._refusals_unlogged = 0
                self._refusal_log_at = now + REFUSAL_LOG_S
            return
        self.receipts += 1
        self.core.receipt(r.ranges, r.upto)

    def _delete_receipted(self, ranges: list[tuple[int, int]]) -> None:
        try:
            seqs = self.outbox.delete_ranges(ranges)
        except BufferWriteError as e:
            # As for PUBACK deletes: the core keeps them as done (not resent) and retries.
            self.core.delete_failed_ranges(ranges, self.clock.monotonic())
            if not self._delete_failing:
                log.error("cannot delete receipted events from the buffer (%s); not resent, "
                          "retried every %.0f s", e, self.core.limits.delete_retry_s)
                self._delete_failing = True
            return
        self.core.ranges_deleted(ranges)
        if self._delete_failing and not self.core.receipted_undeleted:
            log.warning("buffer writable again: receipted events deleted")
            self._delete_failing = False
        if not seqs:
            return
        self.acked += len(seqs)  # delivered: in the backend's database
        if self._backlog is not None:
            self._backlog.update(self.acked, self.outbox.depth())
        if self.on_acked is not None:
            self.on_acked(seqs)
