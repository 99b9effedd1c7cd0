"""One simulated unit: the gateway's own Outbox and Publisher (with its delivery core),
with no readers and no engine: the fleet's traffic commits decided events straight into
the unit's buffer, as the pipeline would.

Each unit has its own buffer file, its own MQTT client id and connection, and its own
publisher thread (the gateway's: one thread per unit). It knows every node of the
cluster and connects to its home node first; when a node cannot be reached it moves on
to the next (``ClusterPublisher``: a real deployment has a load balancer or several DNS
records in front of the cluster; the gateway's config names one broker address). With
``standby``, each unit also keeps the gateway's standby connection (``[broker]
standby_host``) open to the node after its home node, for its emergency lane while the
main connection is down.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from gateway import __version__
from gateway import config as configmod
from gateway.clock import SystemClock
from gateway.contract import Stored, iso_utc
from gateway.model import Event, Lane
from gateway.outbox import Outbox
from gateway.publisher import ConnectFailed, Publisher

log = logging.getLogger("fleet.unit")


@dataclass(slots=True)
class Connection:
    """One accepted connection's steps (wall clock, s): how long a unit takes to deliver
    again after it lost its node (docs/fleet.md, finding 6)."""

    node: int  # index into the ports
    lost: float | None  # when the previous connection was found lost (None: the first)
    tries: int  # CONNECTs made until this one was accepted
    sent: float  # this CONNECT sent (after the back-off)
    connack: float
    suback: float | None = None  # the first SUBACK (commands, receipts)
    puback: float | None = None  # the first PUBACK (birth, status or an event)


class ClusterPublisher(Publisher):
    """The gateway's publisher, moving to the next node when one cannot be reached."""

    def __init__(self, cfg: configmod.Config, outbox: Outbox, ports: Sequence[int], home: int,
                 **kw: Any) -> None:
        self.ports = list(ports)
        self.node = home
        self.connections: list[Connection] = []
        self._lost_at: float | None = None
        self._tries = 0
        super().__init__(self._at(cfg, home), outbox, SystemClock(), **kw)

    def _at(self, cfg: configmod.Config, node: int) -> configmod.Config:
        return dataclasses.replace(cfg, broker=dataclasses.replace(cfg.broker,
                                                                   port=self.ports[node]))

    def _connect(self, v5: bool) -> mqtt.Client:
        # A node that refuses the TCP connection (nothing listens: it is down) is skipped at
        # once, as a client does with a name that resolves to every node (the socket tries
        # each address in turn); one that was reached but failed (no CONNACK in time, a
        # refusal) is left for the next attempt, after the publisher's back-off.
        for left in range(len(self.ports) - 1, -1, -1):
            self._tries += 1
            sent = time.time()
            try:
                client = super()._connect(v5)
                break
            except ConnectFailed as e:
                self.node = (self.node + 1) % len(self.ports)
                self.cfg = self._at(self.cfg, self.node)
                if e.reached_broker or not left:
                    raise
        self.connections.append(Connection(self.node, self._lost_at, self._tries, sent,
                                           time.time()))
        self._tries = 0
        client.on_subscribe = self._on_suback
        return client

    def _serve(self, client: mqtt.Client, stop: threading.Event) -> None:
        try:
            super()._serve(client, stop)
        finally:
            self._lost_at = time.time()

    def _on_suback(self, *_: Any) -> None:
        c = self.connections[-1]
        if c.suback is None:
            c.suback = time.time()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: Any,
                    props: Any = None) -> None:
        c = self.connections[-1]
        if c.puback is None:
            c.puback = time.time()
        super()._on_publish(client, userdata, mid, rc, props)


def unit_config(unit_id: str, site: str, port: int, buffer: str, extra: dict[str, Any] | None
                = None) -> configmod.Config:
    raw: dict[str, Any] = {
        "unit": {"id": unit_id, "site": site},
        "broker": {"port": port, "client_id": unit_id, "protocol": "3.1.1",
                   "reconnect_max_s": 5.0, "keepalive_s": 15},
        "buffer": {"path": buffer, "reserve_mb": 0},
        "health": {"interval_s": 60},
    }
    for k, v in (extra or {}).items():
        raw.setdefault(k, {}).update(v)
    return configmod.parse(raw)


class SimUnit:
    """A unit's buffer and publisher; ``commit`` is what its pipeline would do."""

    def __init__(self, index: int, unit_id: str, site: str, ports: Sequence[int], buffer: str,
                 on_acked: Callable[[SimUnit, list[int], bool], None] | None = None,
                 extra: dict[str, Any] | None = None, window: int = 256,
                 standby: bool | str = False) -> None:
        self.index = index
        self.id = unit_id
        self.site = site
        home = index % len(ports)
        if standby and len(ports) > 1:
            # The emergency lane's standby connection on the next node (docs/mqtt.md,
            # "Standby connection"): open before the home node can die.
            extra = {**(extra or {})}
            extra["broker"] = {**extra.get("broker", {}), "standby_host": "127.0.0.1",
                               "standby_port": ports[(home + 1) % len(ports)],
                               # standby="connect": receipts subscribed at its connect
                               "standby_subscribe": standby if isinstance(standby, str)
                               else "outage"}
        self.cfg = unit_config(unit_id, site, ports[home], buffer, extra)
        self.outbox = Outbox(buffer, unit_id, site, max_mb=self.cfg.buffer.max_mb,
                             max_events=self.cfg.buffer.max_events)
        self.started = time.monotonic()
        self.publisher = ClusterPublisher(self.cfg, self.outbox, ports, home,
                                          health=self.health, on_acked=self._acked,
                                          window=window)
        self._on_acked = on_acked
        if self.publisher.standby is not None:  # its deletes told apart (the bench's split)
            self.publisher.standby.on_acked = self._acked_on_standby
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lock = threading.Lock()  # one committer at a time (the pipeline is one thread)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.publisher.run, args=(self._stop,),
                                        name=f"mqtt-{self.id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.publisher.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.outbox.close()

    @property
    def online(self) -> bool:
        return self.publisher.online

    @property
    def standby_sent(self) -> int:
        """Events published on the standby connection (0 without one)."""
        s = self.publisher.standby
        return 0 if s is None else s.sent

    def commit(self, events: Sequence[Event], now: float | None = None) -> list[Stored]:
        with self.lock:
            stored = self.outbox.add(events, now)
        self.publisher.notify()
        return stored

    def _acked(self, seqs: list[int]) -> None:
        if self._on_acked is not None:
            self._on_acked(self, seqs, False)

    def _acked_on_standby(self, seqs: list[int]) -> None:
        if self._on_acked is not None:
            self._on_acked(self, seqs, True)

    def health(self) -> dict[str, Any]:
        """A health message of the contract's shape (docs/schemas/health.schema.json), as
        gateway.daemon.Gateway.health builds it, without readers' and pipeline's figures."""
        now = time.time()
        oldest = self.outbox.oldest_created()
        p = self.publisher
        return {
            "unit": self.id, "time": iso_utc(now),
            "uptime_s": round(time.monotonic() - self.started, 1), "software": __version__,
            "buffer": {"depth": self.outbox.depth(), "depth_by_lane": self.outbox.depth_by_lane(),
                       "oldest_unsent_age_s": round(now - oldest, 1) if oldest else 0.0,
                       "last_seq": self.outbox.last_seq(),
                       # (Outbox.drops reads through the shared peewee models: not per unit
                       # when many buffers share a process; a fleet unit never drops.)
                       "dropped": {"total": 0, "recent_ranges": [],
                                   "by_lane": {"emergency": 0, "routine": 0, "telemetry": 0}},
                       **self.outbox.disk(),
                       "acks_not_recorded": p.core.undeleted,
                       "awaiting_receipt": p.core.awaiting_receipt if p.receipt_mode else None},
            "readers": {"ble-1": {"state": "online", "detail": "", "rejects": {},
                                  "readings": 0}},
            "counters": {},
            "mqtt": {"sent": p.sent, "acked": p.acked, "refused": p.refused,
                     "connects": p.connects, "commands": p.commands, "receipts": p.receipts,
                     "receipts_refused": p.receipts_refused},
        }


EMERGENCY = int(Lane.EMERGENCY)
