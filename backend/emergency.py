"""The backend's emergency session: the emergency lane carried on past the broker.

A unit sends an SOS ahead of its backlog, but the backend's one persistent session is one
FIFO queue at the broker: an SOS queued behind every unit's backlog (a reconnect storm, a
node's death) waited for all of it (docs/fleet.md, finding 5). So the backend keeps a
second session, with its own client id (``<client_id>-emergency``), its own connection and
its own queue, subscribed only to the emergency kinds' topics (the kind is the topic's
last level: docs/mqtt.md). It is the same consumer as the main one (backend/service.py:
batch, store, PUBACK after the commit, signed receipts), writing each batch at once
(``batch_latency_ms`` 0).

MQTT wildcards cannot exclude, so the main session receives these events too: whichever
session commits one first stores it, the other finds it stored (``ON CONFLICT (id) DO
NOTHING``: a duplicate in its counters) and receipts it again; a unit ignores a receipt
for what it already deleted. An emergency event is often stored before the routine
events decided earlier at its unit: ``seq_gaps`` shows those as a gap until they arrive
(backend/gaps.py: unexplained while on their way, as with any lane ahead of another).

``[broker] emergency_session = false`` turns it off (one session, as before).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from backend.config import Config
from backend.service import SUBSCRIBE_TIMEOUT_S, Backend

log = logging.getLogger("kidsafe.backend.emergency")

# The emergency lane's kinds (docs/mqtt.md; the contract's event.schema.json gives each
# its lane: tests/test_backend_emergency.py checks that these are the "emergency" ones).
KINDS = ("sos", "zone_alert", "roll_call", "buffer_salvage")


def topics(cfg: Config) -> list[str]:
    p = cfg.prefix.rstrip("/")
    plain = [f"{p}/+/event/{kind}" for kind in KINDS]
    group = cfg.broker.shared_group
    return [f"$share/{group}/{t}" for t in plain] if group else plain


def client_id(cfg: Config) -> str:
    return cfg.broker.emergency_client_id or f"{cfg.broker.client_id}-emergency"


def session_config(cfg: Config) -> Config:
    """The main config with the emergency session's client id and account, and no
    batching delay."""
    b = cfg.broker
    return dataclasses.replace(
        cfg, broker=dataclasses.replace(
            b, client_id=client_id(cfg), username=b.emergency_username or b.username,
            password_file=b.emergency_password_file or b.password_file),
        ingest=dataclasses.replace(cfg.ingest, batch_latency_ms=0.0))


class EmergencySession(Backend):
    """A second consumer beside ``main``: the same store, contract, key and stop event."""

    def __init__(self, main: Backend) -> None:
        super().__init__(session_config(main.cfg), main.store, main.contract, main.key)
        self.stopping = main.stopping
        self.receipt_qos = main.cfg.broker.emergency_receipt_qos
        self._kill_after = None  # the fault injection is the main session's

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        subs = [(t, SubscribeOptions(qos=1)) if self.cfg.broker.protocol == "5" else (t, 1)
                for t in topics(self.cfg)]
        await client.subscribe(subs, timeout=SUBSCRIBE_TIMEOUT_S)  # type: ignore[arg-type]
        # Worded unlike the main session's line, which tests and the bench wait for.
        log.info("emergency session listening on %s as %s (connection %d)",
                 ", ".join(topics(self.cfg)), self.cfg.broker.client_id, self.connection)
        self.ready.set()

    async def run(self) -> None:
        reporter = asyncio.create_task(self._report())
        try:
            await super().run()
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
            log.info("emergency session ended: %s", self.stats.line())

    async def _report(self) -> None:
        last = ""
        while True:
            await asyncio.sleep(10)
            line = self.stats.line()
            if line != last:
                log.info("emergency session: %s", line)
                last = line


def sessions(main: Backend) -> list[Backend]:
    """The sessions to run beside ``main`` (none when turned off)."""
    return [EmergencySession(main)] if main.cfg.broker.emergency_session else []
