"""The running backend: MQTT in (aiomqtt), PostgreSQL (asyncpg), signed receipts out.

Two stages on one asyncio loop, a batch apart:

1. **collect**: take the messages the broker delivered (at least one, then whatever is
   queued, waiting at most ``batch_latency_ms`` for a batch to fill, up to
   ``batch_size``), and parse and validate each (backend/ingest.py, pure);
2. **write**: store the batch in one transaction (backend/store.py); *after the commit*
   acknowledge the messages to the broker (PUBACK) and publish one signed receipt per unit.

While batch N is being written, batch N+1 is collected and validated. The PUBACK is sent
only after the commit (paho's manual acknowledgements): a backend killed between receiving
and committing leaves the messages unacknowledged in its persistent session, and the broker
delivers them again on the next connection. A backend killed between committing and
receipting loses only receipts: the unit (``[delivery] mode = "receipt"``) sends the
events again, they are dropped as duplicates by id, and receipted then.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import signal
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from backend import migrate, mqttread, schemas
from backend.config import Config
from backend.gaps import summarise
from backend.ingest import Invalid, Item, merge, parse, receipt_payload, receipts, split_topic
from backend.receipt_ledger import Ledger
from backend.store import Store, Written
from gateway import signing
from gateway.contract import iso_utc

log = logging.getLogger("kidsafe.backend")

SUBSCRIBE_TIMEOUT_S = 600.0
CONNECT_TIMEOUT_S = 30.0  # CONNECT to CONNACK (a busy broker on a loaded machine)
# Messages read, or parsed and validated, between two turns of the event loop (~30 us
# each): a whole batch at once held the loop for tens of ms, the writer's commit unseen.
PARSE_CHUNK = 100
MAX_RANGES_PER_RECEIPT = 500  # a receipt stays a few KiB; more ranges go in another one
# After a reconnect, the receipts lost with the last connection go with each unit's next
# receipt, and for the units not heard from by then, this long after the reconnect
# (backend/receipt_ledger.py says why not at once).
OWED_RECEIPTS_S = 5.0
# Fault injection for the tests only (tests/test_backend_faults.py): SIGKILL this process
# right after its N-th commit, before the PUBACKs and receipts of that batch.
KILL_AFTER_COMMITS = "KIDSAFE_BACKEND_KILL_AFTER_COMMITS"


# The database is away: keep the batch and retry.
UNAVAILABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
               asyncpg.ConnectionDoesNotExistError)
# Two transactions locking the same rows in another order (the emergency session and the
# main one store the same events): PostgreSQL aborts one; it is written again.
RETRY = (asyncpg.TransactionRollbackError,)
# The database refuses the data (asyncpg's own encoding errors included).
REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, ValueError,
           OverflowError, TypeError)


@dataclass
class Stats:
    messages: int = 0
    events: int = 0
    duplicates: int = 0
    quarantined: int = 0
    unit_messages: int = 0
    batches: int = 0
    receipts: int = 0
    receipt_failures: int = 0
    connections: int = 0
    write_s: float = 0.0  # time in store.write (the transaction), total and longest
    write_max_s: float = 0.0
    writer_idle_s: float = 0.0  # the writer waiting for a parsed batch (parsing behind)
    started: float = field(default_factory=time.monotonic)

    def add(self, w: Written) -> None:
        self.batches += 1
        self.events += w.events
        self.duplicates += w.duplicates
        self.quarantined += w.quarantined
        self.unit_messages += w.unit_messages

    def line(self) -> str:
        return (f"{self.messages} messages: {self.events} events stored, {self.duplicates} "
                f"duplicates, {self.quarantined} quarantined, {self.unit_messages} "
                f"status/birth/health; {self.batches} transactions, {self.receipts} receipts "
                f"({self.receipt_failures} failed); transaction avg "
                f"{1000 * self.write_s / max(1, self.batches):.1f} ms, max "
                f"{1000 * self.write_max_s:.1f} ms; writer waited for batches "
                f"{self.writer_idle_s:.2f} s")


@dataclass(frozen=True, slots=True)
class Batch:
    items: list[Item]
    raw: list[tuple[str, bytes]]  # each item's topic and payload (to quarantine it whole)
    acks: list[tuple[int, int]]  # (mid, qos) to acknowledge after the commit
    connection: int  # the connection they came on: a mid means nothing on another one
    received: float  # monotonic time of the first message


def topics(cfg: Config) -> list[str]:
    p = cfg.prefix.rstrip("/")
    plain = [f"{p}/+/event/+", f"{p}/+/status", f"{p}/+/birth", f"{p}/+/health"]
    group = cfg.broker.shared_group
    return [f"$share/{group}/{t}" for t in plain] if group else plain


def _tls(cfg: Config) -> aiomqtt.TLSParameters | None:
    t = cfg.broker.tls
    if not t.ca_file:
        return None
    return aiomqtt.TLSParameters(ca_certs=t.ca_file, certfile=t.cert_file or None,
                                 keyfile=t.key_file or None, cert_reqs=ssl.CERT_REQUIRED)


class Inbox:
    """One connection's received messages, straight from the socket or paho's callback.

    The tap (backend/mqttread.py) hands it each PUBLISH as it splits the socket's bytes;
    without the tap (MQTT 5, an unchecked paho), paho's ``on_message`` does, one message at
    a time. aiomqtt's own path wraps each message in its ``Message`` and an
    ``asyncio.Queue``, and its iterator costs a task and an ``asyncio.wait`` per message:
    with a backlog draining at thousands a second that was a tenth of the backend's time.
    Both run on the event loop (aiomqtt reads the socket in a loop reader callback), so a
    deque and an event are enough.
    """

    def __init__(self) -> None:
        self.messages: deque[mqttread.Received] = deque()
        self._arrived = asyncio.Event()

    def on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.append(mqttread.Received(message.topic, bytes(message.payload),
                                               message.mid, message.qos))
        self._arrived.set()

    def extend(self, received: list[mqttread.Received]) -> None:
        self.messages.extend(received)
        self._arrived.set()

    def pump(self, paho: mqtt.Client, most: int) -> None:
        """Read up to ``most`` more messages the socket already holds, now.

        aiomqtt's socket reader has paho read one packet per event-loop turn (paho's
        ``loop_read`` reads one unless publishes of ours await their PUBACK), so a backlog
        arrived at one message per turn, each turn a poll and a task switch: the batch
        filled more slowly than it was written. This reads on while each read brings a
        message (non-blocking: paho stops at an empty socket); any other packet ends it,
        and aiomqtt's reader handles what is left as before. A read that fails raises
        MqttError, as aiomqtt's iterator did: the backend reconnects. (With the tap, one
        read brings what 64 KiB hold, and a second in the same loop turn brings nothing.)
        """
        q = self.messages
        for _ in range(most):
            n = len(q)
            try:
                rc = paho.loop_read()
            except Exception as e:  # as aiomqtt's reader: a broken connection
                raise aiomqtt.MqttError(f"reading from the broker: {e}") from e
            if rc != mqtt.MQTT_ERR_SUCCESS or len(q) == n:
                return

    def take(self, most: int) -> list[mqttread.Received]:
        q = self.messages
        return [q.popleft() for _ in range(min(most, len(q)))]

    async def wait(self, timeout: float | None, gone: asyncio.Future[None]) -> bool:
        """Until a message is in (True) or ``timeout`` seconds have passed (False); raise
        MqttError once the connection is ``gone`` (aiomqtt's disconnection future) and
        nothing it delivered is left."""
        if not self.messages:
            self._arrived.clear()
            arrived: asyncio.Future[Any] = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait((arrived, gone), timeout=timeout,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrived.cancel()
            if not self.messages and gone.done():
                raise aiomqtt.MqttError("disconnected while waiting for messages")
        return bool(self.messages)


class Backend:
    receipt_qos = 1  # the emergency session's may be 0 ([broker] emergency_receipt_qos)
    """One backend worker: its broker session, its pool, its signing key."""

    def __init__(self, cfg: Config, store: Store, contract: schemas.Contract,
                 key: Ed25519PrivateKey | None) -> None:
        self.cfg = cfg
        self.store = store
        self.contract = contract
        self.key = key
        self.stats = Stats()
        self.connection = 0
        self.client: aiomqtt.Client | None = None
        self.inbox = Inbox()
        self.tapped = False  # publishes read by backend/mqttread.py's tap, not paho
        self._pending: set[asyncio.Task[Any]] = set()
        self.ledger = Ledger()  # receipts not yet PUBACKed (sent again after a reconnect)
        self._receipt_keys = itertools.count()
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()  # set once subscribed (tests, the bench)
        kill = os.environ.get(KILL_AFTER_COMMITS, "")
        self._kill_after = int(kill) if kill.isdigit() else None

    def _client(self) -> aiomqtt.Client:
        b = self.cfg.broker
        v5 = b.protocol == "5"
        props = None
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = b.session_expiry_s
            # Unacknowledged deliveries the broker may have out to us: a batch needs room.
            props.ReceiveMaximum = min(65535, max(1000, 4 * self.cfg.ingest.batch_size))
        password = (Path(b.password_file).read_text().strip() if b.password_file else None)
        client = aiomqtt.Client(
            b.host, b.port, identifier=b.client_id, username=b.username or None,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            # A persistent session either way: 3.1.1 clean_session = false, MQTT 5
            # clean_start = false (paho refuses clean_start with 3.1.1).
            clean_session=None if v5 else False,
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY, properties=props,
            keepalive=b.keepalive_s, tls_params=_tls(self.cfg), timeout=CONNECT_TIMEOUT_S,
            max_inflight_messages=b.max_inflight)
        # aiomqtt has no manual-acknowledgement switch; its paho client has (public paho
        # API): PUBACK only once the batch is committed.
        client._client.manual_ack_set(True)
        # Messages go straight into this connection's inbox (set before connecting, so none
        # can take aiomqtt's path instead): split from the socket by the tap, or else from
        # paho's callback.
        self.inbox = Inbox()
        client._client.on_message = self.inbox.on_message
        tapped = mqttread.install(client._client, self.inbox.extend,
                                  asyncio.get_running_loop(), b.protocol)
        if tapped != self.tapped or not self.connection:
            log.info("%s: publishes read by %s", b.client_id, "the tap" if tapped else "paho")
        self.tapped = tapped
        return client

    async def run(self) -> None:
        """Consume until ``stopping`` is set; reconnect with back-off on broker failures."""
        delay = 0.1
        while not self.stopping.is_set():
            try:
                async with self._client() as client:
                    self.client = client
                    self.connection += 1
                    self.stats.connections += 1
                    delay = 0.1
                    log.info("connected to %s:%d as %s (MQTT %s)", self.cfg.broker.host,
                             self.cfg.broker.port, self.cfg.broker.client_id,
                             self.cfg.broker.protocol)
                    self._hold_lost_receipts(client)
                    await self._consume(client)
            except aiomqtt.MqttError as e:
                self.ready.clear()
                log.warning("broker %s:%d: %s; reconnecting in %.1f s", self.cfg.broker.host,
                            self.cfg.broker.port, e, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
                delay = min(delay * 2, self.cfg.broker.reconnect_max_s)
            finally:
                self.client = None
        if self._pending:
            await asyncio.wait(self._pending, timeout=5)

    async def _consume(self, client: aiomqtt.Client) -> None:
        # Consuming starts before the SUBACK: a resumed session's queued messages arrive
        # first, and a large backlog must not make the subscription look failed.
        batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        writer = asyncio.create_task(self._writer(client, batches))
        collector = asyncio.create_task(self._collect(client, batches))
        subscriber = asyncio.create_task(self._subscribe(client))
        stop = asyncio.create_task(self.stopping.wait())
        tasks = {writer, collector, subscriber, stop}
        try:
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if subscriber in done:
                    subscriber.result()  # raise if the broker refused it
                    tasks.discard(subscriber)
                    done.discard(subscriber)
                if done:
                    break
            if stop in done:  # finish the batch in hand, then leave
                collector.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await collector
                await batches.put(None)
                await writer
            for t in done:
                if t is not stop:
                    t.result()  # raise MqttError (reconnect) or a bug
        finally:
            for t in (writer, collector, subscriber, stop):
                t.cancel()
            for t in (writer, collector, subscriber, stop):
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await t

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        subs = [(t, SubscribeOptions(qos=1)) if self.cfg.broker.protocol == "5" else (t, 1)
                for t in topics(self.cfg)]
        # The SUBACK comes after whatever the broker queued for this session: no short
        # timeout (a dead connection is found by the keepalive).
        await client.subscribe(subs, timeout=SUBSCRIBE_TIMEOUT_S)  # type: ignore[arg-type]
        log.info("subscribed to %s as %s (connection %d)", ", ".join(topics(self.cfg)),
                 self.cfg.broker.client_id, self.connection)
        self.ready.set()

    async def _collect(self, client: aiomqtt.Client, out: asyncio.Queue[Batch | None]) -> None:
        ing = self.cfg.ingest
        inbox, connection, paho = self.inbox, self.connection, client._client
        prefix, contract = self.cfg.prefix, self.contract
        while True:
            gone = client._disconnected
            await inbox.wait(None, gone)  # at least one message
            t0 = time.monotonic()
            got: list[mqttread.Received] = []
            while True:
                got.extend(inbox.take(ing.batch_size - len(got)))
                if len(got) < ing.batch_size:
                    inbox.pump(paho, min(PARSE_CHUNK, ing.batch_size - len(got)))
                    got.extend(inbox.take(ing.batch_size - len(got)))
                left = ing.batch_latency_ms / 1000 - (time.monotonic() - t0)
                if len(got) >= ing.batch_size or left <= 0 or not await inbox.wait(left, gone):
                    break
            raw = [(m.topic, m.payload) for m in got]
            items: list[Item] = []
            for i in range(0, len(raw), PARSE_CHUNK):
                if i:  # a loop turn: the writer sees its commit now, not after the batch
                    await asyncio.sleep(0)
                items += [parse(prefix, contract, t, p) for t, p in raw[i:i + PARSE_CHUNK]]
            acks = [(m.mid, m.qos) for m in got if m.qos > 0]
            self.stats.messages += len(got)
            await out.put(Batch(items, raw, acks, connection, t0))

    async def _writer(self, client: aiomqtt.Client, inq: asyncio.Queue[Batch | None]) -> None:
        while True:
            idle = time.monotonic()
            if (batch := await inq.get()) is None:
                break
            t0 = time.monotonic()
            if self.stats.batches:  # not the wait for the first message
                self.stats.writer_idle_s += t0 - idle
            written = await self._write(batch)
            took = time.monotonic() - t0
            self.stats.add(written)
            self.stats.write_s += took
            self.stats.write_max_s = max(self.stats.write_max_s, took)
            if self._kill_after is not None and self.stats.batches >= self._kill_after:
                log.warning("fault injection: SIGKILL after commit %d (%d events new; %d "
                            "duplicates in this run), before its PUBACKs and receipts",
                            self.stats.batches, written.events, self.stats.duplicates)
                os.kill(os.getpid(), signal.SIGKILL)
            if batch.connection == self.connection:
                paho = client._client
                for mid, qos in batch.acks:
                    paho.ack(mid, qos)
            self._send_receipts(client, batch.items)

    async def _write(self, batch: Batch) -> Written:
        """Store the batch, retrying while the database is unreachable. Nothing is
        acknowledged meanwhile, so the broker holds back what it has not yet sent us (its
        in-flight limit for this session), and keeps the rest queued."""
        delay = 0.2
        while True:
            try:
                try:
                    return await self.store.write(batch.items)
                except REFUSED as e:
                    log.warning("the database refused a batch of %d (%s: %s); writing it "
                                "message by message", len(batch.items), type(e).__name__, e)
                    return await self._write_each(batch)
            except RETRY as e:
                log.warning("batch of %d written again (%s: %s)", len(batch.items),
                            type(e).__name__, e)
            except UNAVAILABLE as e:
                log.warning("database unavailable (%s: %s); batch of %d kept, retrying in "
                            "%.1f s", type(e).__name__, e, len(batch.items), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write_each(self, batch: Batch) -> Written:
        """A message the database refuses (a NUL character in a string, a number beyond
        its range: valid JSON the schema allows) is quarantined with the database's reason,
        so it cannot stop the batch it came in, nor every later start (a poison message)."""
        total = Written(0, 0, 0, 0)
        for item, (topic, payload) in zip(batch.items, batch.raw, strict=True):
            try:
                w = await self.store.write([item])
            except REFUSED as e:
                unit = split_topic(self.cfg.prefix, topic)
                seq = getattr(item, "seq", None)
                reason = f"database refused it: {type(e).__name__}: {e}".replace("\0", "")
                w = await self.store.write([Invalid(topic, payload, unit[0] if unit else None,
                                                    seq if isinstance(seq, int) else None,
                                                    (reason,))])
            total = Written(total.events + w.events, total.duplicates + w.duplicates,
                            total.quarantined + w.quarantined,
                            total.unit_messages + w.unit_messages)
        return total

    def _send_receipts(self, client: aiomqtt.Client, items: Sequence[Item]) -> None:
        per_unit = receipts(items)
        for unit, ranges in self.ledger.owed_for(per_unit).items():
            per_unit[unit] = merge([*per_unit[unit], *ranges])
        self._publish_receipts(client, per_unit)

    def _publish_receipts(self, client: aiomqtt.Client,
                          per_unit: dict[str, list[list[int]]]) -> None:
        if self.key is None:
            return
        now = iso_utc(time.time())
        for unit, ranges in per_unit.items():
            for i in range(0, len(ranges), MAX_RANGES_PER_RECEIPT):
                chunk = ranges[i:i + MAX_RANGES_PER_RECEIPT]
                token = signing.sign(receipt_payload(unit, chunk, now), self.key,
                                     signing.TYP_RECEIPT)
                task = asyncio.create_task(
                    client.publish(f"{self.cfg.prefix}/{unit}/receipt", token,
                                   qos=self.receipt_qos))
                key = next(self._receipt_keys)
                self.ledger.sent(key, self.connection, unit, chunk)
                self._pending.add(task)
                task.add_done_callback(functools.partial(self._receipt_done, key,
                                                         self.connection, client))

    def _receipt_done(self, key: int, connection: int, client: aiomqtt.Client,
                      task: asyncio.Task[Any]) -> None:
        self._pending.discard(task)
        if task.cancelled() or task.exception() is not None:
            # On a connection that died, sent again after the reconnect
            # (_send_lost_receipts); else the unit sends those events again after its
            # receipt_timeout_s, and they are receipted then.
            self.stats.receipt_failures += 1
            self.ledger.failed(key, connection == self.connection
                               and not client._disconnected.done())
        else:
            self.stats.receipts += 1
            self.ledger.acked(key)

    def _hold_lost_receipts(self, client: aiomqtt.Client) -> None:
        """The receipts not PUBACKed on an earlier connection are sent again, merged per
        unit, with the unit's next receipt or OWED_RECEIPTS_S from now: the backend stored
        those events, and the units would wait receipt_timeout_s for them (docs/fleet.md,
        finding 6)."""
        units = self.ledger.hold_lost(self.connection)
        if units:
            log.info("%s: the receipts of %d units lost with the last connection will be "
                     "sent again", self.cfg.broker.client_id, units)
            connection = self.connection
            asyncio.get_running_loop().call_later(OWED_RECEIPTS_S, self._send_owed_receipts,
                                                  client, connection)

    def _send_owed_receipts(self, client: aiomqtt.Client, connection: int) -> None:
        if connection != self.connection or client._disconnected.done():
            return  # the next connection's turn
        owed = self.ledger.owed_all()
        if owed:
            log.info("%s: sending again the receipts of %d units lost with an earlier "
                     "connection", self.cfg.broker.client_id, len(owed))
            self._publish_receipts(client, owed)

    async def report(self) -> None:
        """Log the counters every 10 s and each unit's unexplained gaps every gap_report_s;
        prune the status/birth/health history hourly."""
        every = self.cfg.ingest.gap_report_s
        last_gaps = time.monotonic()
        prune_at = time.monotonic()  # at start, then hourly
        last_line = ""
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 10)
            line = self.stats.line()
            if line != last_line:
                log.info("%s", line)
                last_line = line
            if time.monotonic() >= prune_at:
                prune_at = time.monotonic() + 3600
                try:
                    pruned = await self.store.prune(self.cfg.ingest.history_days)
                    if pruned:
                        log.info("pruned %d status/birth/health rows older than %g days",
                                 pruned, self.cfg.ingest.history_days)
                except Exception as e:  # a report must not stop ingest
                    log.warning("pruning history failed: %s", e)
            if every > 0 and time.monotonic() - last_gaps >= every:
                last_gaps = time.monotonic()
                try:
                    for s in summarise(await self.store.gaps()):
                        if s.unexplained_seqs:
                            log.warning("unit %s: %d seqs missing without a drop or salvage "
                                        "notice (still on their way, or lost): %s", s.unit,
                                        s.unexplained_seqs, s.unexplained)
                except Exception as e:  # a report must not stop ingest
                    log.warning("gap report failed: %s", e)


async def open_backend(cfg: Config) -> Backend:
    contract = schemas.load(Path(cfg.ingest.schemas_dir) if cfg.ingest.schemas_dir else None)
    key = signing.load_private_key(cfg.receipts.key_file) if cfg.receipts.key_file else None
    db = cfg.database
    dsn = db.dsn
    kwargs: dict[str, Any] = {}
    if db.password_file:
        kwargs["password"] = Path(db.password_file).read_text().strip()
    # min_size 0: the pool opens connections when asked, so during a database outage it
    # does not try (and log) to restore a floor in the background; _write retries.
    store = await Store.open(dsn, min_size=0, max_size=db.pool_size, **kwargs)
    async with store.pool.acquire() as conn:
        have, want = await migrate.current(conn), migrate.available()[-1].version
    if have != want:
        await store.close()
        raise RuntimeError(f"database schema is at version {have}, this backend needs {want}: "
                           "run `kidsafe-backend migrate --config FILE`")
    return Backend(cfg, store, contract, key)


async def serve(cfg: Config, stopping: asyncio.Event | None = None) -> Stats:
    from backend import emergency  # it builds on Backend (here)

    backend = await open_backend(cfg)
    if stopping is not None:
        backend.stopping = stopping
    reporter = asyncio.create_task(backend.report())
    runs = [asyncio.create_task(b.run()) for b in (backend, *emergency.sessions(backend))]
    try:
        await asyncio.gather(*runs)
    finally:
        backend.stopping.set()
        await asyncio.wait(runs)
        await reporter
        await backend.store.close()
        log.info("stopped: %s", backend.stats.line())
    return backend.stats
