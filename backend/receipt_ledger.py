"""Receipts sent but not yet PUBACKed, so a lost connection's can be sent again, without I/O.

A receipt is a QoS 1 publish on the backend's connection. When that connection dies (a
broker node killed: docs/fleet.md, finding 6) the receipts in flight on it are lost with
it: aiomqtt's publish waits on for its timeout and then fails, and the unit keeps those
events until its ``receipt_timeout_s`` and sends them again. The backend knows what it
stored, so after a reconnect it sends those receipts again at once, merged into one per
unit (:meth:`Ledger.lost`).

A receipt that fails while its connection lives (no PUBACK within the timeout: a busy
broker) is not sent again here: the broker may still deliver it, and sending more into an
overloaded broker is what made the storm collapse (finding 4); the unit's resend covers it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MAX_HELD = 100_000  # receipts held at most (oldest forgotten: their units resend anyway)


@dataclass(frozen=True, slots=True)
class Held:
    connection: int  # the connection it was sent on
    unit: str
    ranges: tuple[tuple[int, int], ...]


def merge(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Inclusive ranges, sorted and merged: [(5, 9), (1, 3), (4, 4)] -> [[1, 9]]."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return out


class Ledger:
    """Receipts in flight, by a key the caller chooses (one per publish)."""

    def __init__(self, max_held: int = MAX_HELD) -> None:
        self.max_held = max_held
        self._held: dict[int, Held] = {}  # insertion order: oldest first
        self.forgotten = 0  # dropped past max_held

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

    def lost(self, current: int) -> dict[str, list[list[int]]]:
        """unit -> merged ranges of every receipt sent on a connection before ``current``
        and not PUBACKed; they are forgotten here (the caller sends them again)."""
        per: dict[str, list[tuple[int, int]]] = {}
        for key, h in list(self._held.items()):
            if h.connection < current:
                per.setdefault(h.unit, []).extend(h.ranges)
                del self._held[key]
        return {unit: merge(r) for unit, r in per.items()}
