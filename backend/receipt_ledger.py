"""Receipts sent but not yet PUBACKed, so a lost connection's can be sent again, without I/O.

A receipt is a QoS 1 publish on the backend's connection. When that connection dies (a
broker node killed: docs/fleet.md, finding 6) the receipts in flight on it are lost with
it: aiomqtt's publish waits on for its timeout and then fails, and the unit keeps those
events until its ``receipt_timeout_s`` and sends them again. The backend knows what it
stored, so after a reconnect it sends those receipts again, merged per unit: with the
unit's next receipt (its events arrived on the new connection, so its session at the
broker takes publishes again), or after a short delay for units not heard from
(:meth:`Ledger.hold_lost`, :meth:`Ledger.owed_for`, :meth:`Ledger.owed_all`). Not at once:
RabbitMQ 3.10 closes the backend's connection when a publish into a quorum queue without
a leader is refused (a ``basic.nack`` its MQTT plugin does not handle), and the sessions
of the units of a node that died have none until they are re-elected (docs/fleet.md,
finding 6); sent at once, the receipts for those units closed each new connection again.

A receipt that fails while its connection lives (no PUBACK within the timeout: a busy
broker) is not sent again here: the broker may still deliver it, and sending more into an
overloaded broker is what made the storm collapse (finding 4); the unit's resend covers it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from backend.ingest import merge

MAX_HELD = 100_000  # receipts held at most (oldest forgotten: their units resend anyway)


@dataclass(frozen=True, slots=True)
class Held:
    connection: int  # the connection it was sent on
    unit: str
    ranges: tuple[tuple[int, int], ...]


class Ledger:
    """Receipts in flight, by a key the caller chooses (one per publish)."""

    def __init__(self, max_held: int = MAX_HELD) -> None:
        self.max_held = max_held
        self._held: dict[int, Held] = {}  # insertion order: oldest first
        self.forgotten = 0  # dropped past max_held
        self._owed: dict[str, list[tuple[int, int]]] = {}  # lost, to send again

    def __len__(self) -> int:
        return len(self._held)

    def sent(self, key: int, connection: int, unit: str,
             ranges: Sequence[Sequence[int]]) -> None:
        if len(self._held) >= self.max_held:
            del self._held[next(iter(self._held))]
            self.forgotten += 1
        self._held[key] = Held(connection, unit, tuple((r[0], r[1]) for r in ranges))

    def acked(self, key: int) -> None:
        self._held.pop(key, None)

    def failed(self, key: int, connection_alive: bool) -> None:
        """Its publish failed. On a connection that still lives: forget it (see above);
        on one that died: keep it for :meth:`lost`."""
        if connection_alive:
            self._held.pop(key, None)

    def hold_lost(self, current: int) -> int:
        """Every receipt sent on a connection before ``current`` and not PUBACKed becomes
        owed (to send again); the number of units owed."""
        for key, h in list(self._held.items()):
            if h.connection < current:
                self._owed.setdefault(h.unit, []).extend(h.ranges)
                del self._held[key]
        return len(self._owed)

    def owed_for(self, units: Iterable[str]) -> dict[str, list[list[int]]]:
        """The owed ranges of these units, merged; no longer owed."""
        return {u: merge(self._owed.pop(u)) for u in units if u in self._owed}

    def owed_all(self) -> dict[str, list[list[int]]]:
        return self.owed_for(list(self._owed))
