"""The standby connection's shell: a second paho client, its own thread, the rules of
gateway/standby.py carried out.

Why a thread of its own rather than a second socket in the publisher's poll loop: the
publisher's loop is built around one connection's life (connect with back-off, serve,
reconnect); while the main connection is down - the only time the standby matters - that
thread is sleeping its back-off or waiting up to ``connack_timeout_s`` for a CONNACK. A
second thread that sleeps in ``poll()`` costs ~0.1 MB and a few wake-ups (below), and it
can never delay or break the main:
they share only the outbox (thread-safe: one queued writer at a time) and two reads of
flags. While the main is up this thread sends nothing but paho's keepalive, and wakes
every 5 s at most (a quarter of the keepalive if shorter) unless the main's state
changes.

The session is clean (no queue at the broker that lasts beyond the connection: a standby
must cost the broker little); client id ``<client_id>-standby``; the main's credentials
and TLS; MQTT 5 only when ``[broker] protocol = "5"``, else 3.1.1 (every broker takes it,
and the standby needs no MQTT 5 property). No will, no status, no birth: the unit's
presence is the main connection's.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from gateway import backoff, contract
from gateway.clock import Clock
from gateway.config import Config
from gateway.delivery import Delete, DeleteRanges, Publish
from gateway.mqttclient import loop_turn, new_client
from gateway.outbox import BufferWriteError, Outbox
from gateway.receipts import ReceiptRefused, admit
from gateway.standby import Standby, StandbyAction, StandbyLimits, Subscribe, Unsubscribe
from gateway.tcpopts import nodelay

log = logging.getLogger("gateway.mqtt.standby")


class StandbyFailed(OSError):
    """The standby broker did not accept us (refused, no CONNACK in time)."""


class StandbyLink:
    def __init__(self, cfg: Config, outbox: Outbox, clock: Clock,
                 main_online: Callable[[], bool],
                 on_acked: Callable[[list[int]], None] | None = None,
                 reserve: int = 32, connack_timeout_s: float = 10.0) -> None:
        b = cfg.broker
        assert b.standby_host is not None
        self.cfg = cfg
        self.host, self.port = b.standby_host, b.standby_port
        self.outbox = outbox
        self.clock = clock
        self.main_online = main_online
        self.on_acked = on_acked
        self.connack_timeout_s = connack_timeout_s
        self.topics = contract.Topics(b.topic_prefix, cfg.unit.id)
        self.receipt_topic = self.topics.of("receipt")
        d = cfg.delivery
        self.receipt_mode = d.mode == "receipt"
        self.core = Standby(outbox.fetch, outbox.fetch_seqs,
                            StandbyLimits(reserve=reserve, receipts=self.receipt_mode,
                                          receipt_timeout_s=d.receipt_timeout_s,
                                          # paho's keepalive runs in the loop: wake often
                                          # enough to ping within keepalive_s
                                          quiet_s=min(5.0, b.keepalive_s / 4),
                                          subscribe_at_connect=b.standby_subscribe
                                          == "connect"))
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._acks: collections.deque[tuple[int, bool]] = collections.deque()
        self._receipts: collections.deque[bytes] = collections.deque(maxlen=1024)
        self._connack: tuple[bool, str] | None = None
        self._lost = threading.Event()
        self.connected = threading.Event()
        self.sent = 0  # PUBLISHes on the standby (each also counts as a send on the wire)
        self.deleted = 0  # events deleted by a standby PUBACK or receipt
        self.receipts = 0
        self.receipts_refused = 0
        self.connects = 0

    def notify(self) -> None:
        """A commit, or the main connection's state changed (any thread)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    # -- the connection loop (own thread) ----------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        # This thread's own database connection (the outbox has one per thread) is opened
        # now, not at the first outage: a node's death must find the standby ready, not
        # opening SQLite connections beside every main that is reconnecting.
        self.outbox.last_seq()
        while not stop.is_set():
            retrying = backoff.retrying(stop, log, f"connecting to standby broker "
                                        f"{self.host}:{self.port}", 0.5,
                                        self.cfg.broker.reconnect_max_s, self.clock)
            try:
                client = retrying(self._connect)
            except OSError:
                return
            try:
                self._serve(client, stop)
            finally:
                self.connected.clear()
                with contextlib.suppress(Exception):
                    client.disconnect()
            if not stop.is_set():
                log.warning("standby broker %s:%d connection lost", self.host, self.port)
                # Not urgent (it matters only if the main fails too): the first try waits
                # the main's pause after a loss (backoff.after_loss) plus up to a second,
                # so a node's death does not set every standby on it reconnecting at once,
                # beside the mains that must.
                self.clock.wait(stop, backoff.after_loss() + random.random())

    def _connect(self) -> mqtt.Client:
        b = self.cfg.broker
        v5 = b.protocol == "5"
        client = new_client(b, b.standby_client_id, v5, clean=True)
        client.max_inflight_messages_set(self.core.limits.reserve + 8)
        client.max_queued_messages_set(0)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._connack = None
        self._lost.clear()
        try:
            if v5:
                client.connect(self.host, self.port, keepalive=b.keepalive_s, clean_start=True)
            else:
                client.connect(self.host, self.port, keepalive=b.keepalive_s)
        except (OSError, ValueError) as e:
            raise StandbyFailed(f"connect to {self.host}:{self.port} failed: {e}") from e
        deadline = self.clock.monotonic() + self.connack_timeout_s
        while self._connack is None and self.clock.monotonic() < deadline:
            if not self._io(client, 0.1):
                break
        ok, why = self._connack or (False, f"no answer to CONNECT in "
                                           f"{self.connack_timeout_s:g} s")
        if not ok:
            with contextlib.suppress(Exception):
                client.disconnect()
            raise StandbyFailed(f"standby broker refused the connection: {why}")
        with contextlib.suppress(OSError, AttributeError):
            nodelay(client)
        self.connects += 1
        return client

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
        self._acks.append((mid, not rc.is_failure))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # The only subscription. Nothing of the standby's outstanding: not even checked
        # (subscribed since the connect, every receipt of the main's events comes here too).
        if msg.topic == self.receipt_topic and self.core.expecting_receipts:
            self._receipts.append(bytes(msg.payload))

    def _io(self, client: mqtt.Client, timeout: float) -> bool:
        """One turn of paho's external loop (gateway/mqttclient.py); False when lost."""
        return (loop_turn(client, self._wake_r, timeout, self.core.committed)
                and not self._lost.is_set())

    def _serve(self, client: mqtt.Client, stop: threading.Event) -> None:
        core = self.core
        self.connected.set()
        log.info("standby broker %s:%d connected (emergency lane while the main connection "
                 "is down)", self.host, self.port)
        core.connected(self.clock.monotonic())
        self._acks.clear()
        self._receipts.clear()
        try:
            while not stop.is_set():
                if not self._io(client, core.timeout()):
                    break
                now = self.clock.monotonic()
                while self._acks:
                    mid, ok = self._acks.popleft()
                    core.acked(mid, ok, now)
                while self._receipts:
                    self._receipt(self._receipts.popleft())
                core.main(self.main_online(), now)
                for action in core.poll(now):
                    self._execute(client, action)
        finally:
            for action in core.disconnected():
                self._execute(client, action)

    def _execute(self, client: mqtt.Client, action: StandbyAction) -> None:
        match action:
            case Publish(rows):
                mids = [client.publish(self.topics.of(r.topic), r.payload, qos=1).mid
                        for r in rows]
                self.sent += len(rows)
                self.core.published(action, mids)
                log.info("main connection down: %d emergency event(s) sent on the standby "
                         "(seq %s)", len(rows), ", ".join(str(r.seq) for r in rows[:8]))
            case Delete(seqs):
                self._deleted(lambda: self._ack(seqs))
            case DeleteRanges(ranges):
                self._deleted(lambda: self.outbox.delete_ranges(ranges))
            case Subscribe():
                client.subscribe(self.receipt_topic, qos=1)
            case Unsubscribe():
                client.unsubscribe(self.receipt_topic)

    def _ack(self, seqs: list[int]) -> list[int]:
        self.outbox.ack(seqs)
        return seqs

    def _deleted(self, delete: Callable[[], list[int]]) -> None:
        try:
            seqs = delete()
        except BufferWriteError as e:
            # Not kept for a retry: the main connection sends them again after its
            # reconnect, and the backend drops the duplicates by id.
            log.error("cannot delete events the standby delivered (%s); the main connection "
                      "sends them again", e)
            return
        self.deleted += len(seqs)
        if seqs and self.on_acked is not None:
            self.on_acked(seqs)

    def _receipt(self, token: bytes) -> None:
        try:
            r = admit(token, self.cfg.commands.keyring, self.cfg.unit.id)
        except ReceiptRefused as e:
            self.receipts_refused += 1
            log.debug("standby: receipt refused: %s", e.reason)
            return
        self.receipts += 1
        self.core.receipt(r.ranges, r.upto)

