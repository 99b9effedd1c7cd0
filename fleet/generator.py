"""The fleet load generator: N simulated units in this process, with their traffic.

Many units per process, each the gateway's own code: its Outbox (an SQLite buffer of its
own) and its Publisher (one thread per unit, as in the gateway, each with its own MQTT
connection and delivery core). One traffic thread commits every unit's decisions at
their times (a heap of next-decision times), as each unit's pipeline would. Why threads
in one process rather than a process per unit: a Python process costs ~20 MB before it
does anything, a publisher thread with its buffer ~0.1-0.2 MB (docs/fleet.md has the
measured figures); idle publishers wake every 0.5 s (the delivery core's idle poll),
which is what 600 threads cost when nothing happens.

What is measured per event: the decision (commit) time at the unit, and the time its
delete was decided at the unit (in receipt mode: a receipt covered it; in broker mode:
its PUBACK), so ``latencies`` are decision -> receipt (or PUBACK) at the unit.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet import traffic
from fleet.traffic import Mix
from fleet.unit import SimUnit
from gateway.model import Event

log = logging.getLogger("fleet")


def unit_id(i: int) -> str:
    return f"u{i:05d}"


def site_of(i: int) -> str:
    return f"{traffic.site_kind(i)}-{i // 3:04d}"


def proc_rss_mb(pid: int | None = None) -> float:
    path = f"/proc/{pid or 'self'}/status"
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, int(q * 1000) - 1)]


def wait_for(cond: Callable[[], bool], timeout: float, step: float) -> bool:
    """Poll ``cond`` until it holds (True) or ``timeout`` s have passed (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


@dataclass
class Stats:
    committed: int = 0
    acked: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # decision -> delete at the unit
    sos_ms: list[float] = field(default_factory=list)
    sos_at: list[float] = field(default_factory=list)  # each SOS's commit time (wall)
    sos_unit: list[int] = field(default_factory=list)  # each SOS's unit (index)
    sos_offline: list[bool] = field(default_factory=list)  # its unit's main was down then
    sos_standby: list[bool] = field(default_factory=list)  # deleted by the standby's receipt
    sos_committed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Fleet:
    """``Fleet(n, ports, work).start()``; ``run_traffic(seconds)``; ``close()``."""

    def __init__(self, n: int, ports: Sequence[int], work: Path, mix: Mix | None = None,
                 seed: int = 1, extra: dict[str, Any] | None = None,
                 first: int = 0, window: int = 256, standby: bool | str = False) -> None:
        self.n = n
        self.ports = list(ports)
        self.work = Path(work)
        self.mix = mix or Mix()
        self.rng = random.Random(seed)
        self.extra = extra
        self.stats = Stats()
        # (unit index, seq) -> commit time (wall), SOS, main connection down at the commit:
        # for the latency at its delete
        self._pending: dict[tuple[int, int], tuple[float, bool, bool]] = {}
        self.rss_before_mb = proc_rss_mb()
        self.units = [SimUnit(i, unit_id(i), site_of(i), self.ports,
                              str(self.work / f"{unit_id(i)}.db"), on_acked=self._acked,
                              extra=extra, window=window, standby=standby)
                      for i in range(first, first + n)]
        self.rss_units_mb = proc_rss_mb()
        self.committed_ids: dict[str, set[int]] = {u.id: set() for u in self.units}
        self._stop = threading.Event()
        self._traffic: threading.Thread | None = None
        # After ``mark(t)``: per unit, when its first event committed at or after t was
        # deleted (receipted): "every unit delivers again".
        self._mark: float | None = None
        self.back: dict[str, float] = {}
        # How late the traffic thread committed a decision, at worst: the generator's own
        # saturation shows here first (its decisions fall behind their schedule).
        self.lag_max_s = 0.0

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> Fleet:
        for u in self.units:
            u.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._traffic is not None:
            self._traffic.join(10)
        threads = [threading.Thread(target=u.stop) for u in self.units]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def close(self, remove: bool = False) -> None:
        self.stop()
        for u in self.units:
            u.outbox.close()
        if remove:
            shutil.rmtree(self.work, ignore_errors=True)

    def online(self) -> int:
        return sum(u.online for u in self.units)

    def wait(self, cond: Callable[[], bool], timeout: float, step: float = 0.1) -> bool:
        return wait_for(cond, timeout, step)

    def depth(self) -> int:
        return sum(u.outbox.depth() for u in self.units)

    # -- committing ----------------------------------------------------------------------------

    def commit(self, u: SimUnit, events: list[Event], sos: bool = False) -> None:
        now = time.time()
        offline = not u.online
        stored = u.commit(events, now)
        with self.stats.lock:
            for s in stored:
                self._pending[(u.index, s.seq)] = (now, sos, offline)
            self.committed_ids[u.id].update(s.seq for s in stored)
            self.stats.committed += len(stored)
            if sos:
                self.stats.sos_committed += len(stored)

    def backlog(self, per_unit: int, batch: int = 500) -> None:
        """Fill every unit's buffer with ``per_unit`` decided events (before start: a
        reconnect storm's backlog). Their latencies are not counted."""
        for u in self.units:
            kind = traffic.site_kind(u.index)
            t = time.time() - per_unit
            for i in range(0, per_unit, batch):
                evs = [traffic.event(self.rng, self.mix, kind, u.index, t + j)
                       for j in range(i, min(per_unit, i + batch))]
                stored = u.outbox.add(evs)
                with self.stats.lock:
                    self.committed_ids[u.id].update(s.seq for s in stored)
                    self.stats.committed += len(stored)

    def probe(self) -> None:
        """One routine decision at every unit now: after ``mark``, ``back`` then says when
        each unit delivered again, whatever its own traffic's next decision."""
        for u in self.units:
            self.commit(u, [traffic.event(self.rng, self.mix, traffic.site_kind(u.index),
                                          u.index, time.time())])

    def sos(self, units: Sequence[SimUnit]) -> None:
        for u in units:
            self.commit(u, [traffic.sos(self.rng, u.index, time.time())], sos=True)

    def sos_node(self, node: int, nodes: int) -> None:
        """An SOS at every unit whose home is ``node`` (the bench's --sos-at-kill)."""
        self.sos([u for u in self.units if u.index % nodes == node])

    def mark(self, t: float) -> None:
        with self.stats.lock:
            self._mark = t
            self.back = {}

    def _acked(self, u: SimUnit, seqs: list[int], on_standby: bool = False) -> None:
        now = time.time()
        st = self.stats
        with st.lock:
            st.acked += len(seqs)
            for s in seqs:
                got = self._pending.pop((u.index, s), None)
                if got is not None:
                    ms = (now - got[0]) * 1000
                    (st.sos_ms if got[1] else st.latencies_ms).append(ms)
                    if got[1]:
                        st.sos_at.append(got[0])
                        st.sos_unit.append(u.index)
                        st.sos_offline.append(got[2])
                        st.sos_standby.append(on_standby)
                    if self._mark is not None and got[0] >= self._mark:
                        self.back.setdefault(u.id, now)

    def unacked_sos(self) -> int:
        with self.stats.lock:
            return sum(1 for _, sos, _ in self._pending.values() if sos)

    # -- the traffic thread --------------------------------------------------------------------

    def start_traffic(self, seconds: float, sos_every_s: float = 0.0) -> None:
        """Commit every unit's decisions for ``seconds`` (in a thread); with
        ``sos_every_s``, an SOS at a random unit that often besides."""
        self._stop.clear()
        self._traffic = threading.Thread(target=self._run_traffic, args=(seconds, sos_every_s),
                                         name="traffic", daemon=True)
        self._traffic.start()

    def stop_traffic(self) -> None:
        self._stop.set()
        self.join_traffic()

    def join_traffic(self) -> None:
        if self._traffic is not None:
            self._traffic.join()
            self._traffic = None

    def _run_traffic(self, seconds: float, sos_every_s: float) -> None:
        mix, rng = self.mix, self.rng
        t0 = time.monotonic()
        heap: list[tuple[float, int]] = []
        kinds = [traffic.site_kind(u.index) for u in self.units]
        for k in range(len(self.units)):
            heapq.heappush(heap, (traffic.next_gap(rng, mix, kinds[k], 0.0), k))
        next_sos = sos_every_s if sos_every_s > 0 else float("inf")
        sos_rate = mix.sos_per_hour / 3600
        while not self._stop.is_set():
            t, k = heap[0]
            now = time.monotonic() - t0
            if now >= seconds:
                break
            if next_sos <= min(t, now):
                self.sos([self.units[rng.randrange(len(self.units))]])
                next_sos += sos_every_s
                continue
            if t > now:
                self._stop.wait(min(t, next_sos, seconds) - now)
                continue
            self.lag_max_s = max(self.lag_max_s, now - t)
            heapq.heapreplace(heap, (t + traffic.next_gap(rng, mix, kinds[k], t), k))
            u = self.units[k]
            if rng.random() < sos_rate / max(mix.rate, 1e-6):
                self.sos([u])
                continue
            try:
                self.commit(u, [traffic.event(rng, mix, kinds[k], u.index, time.time())])
            except Exception:  # a buffer write failing must not end the fleet's traffic
                log.exception("commit at %s failed", u.id)

    # -- figures -------------------------------------------------------------------------------

    def summary(self) -> dict[str, float]:
        st = self.stats
        with st.lock:
            lat, sos = list(st.latencies_ms), list(st.sos_ms)
        return {"committed": st.committed, "acked": st.acked,
                "latency_p50_ms": round(pct(lat, 0.5), 1),
                "latency_p99_ms": round(pct(lat, 0.99), 1),
                "sos_p50_ms": round(pct(sos, 0.5), 1), "sos_p99_ms": round(pct(sos, 0.99), 1),
                "sos_count": len(sos), "online": self.online()}

    def reset_latencies(self) -> None:
        with self.stats.lock:
            self.stats.latencies_ms.clear()
            self.stats.sos_ms.clear()
            self.stats.sos_at.clear()
            self.stats.sos_unit.clear()
            self.stats.sos_offline.clear()
            self.stats.sos_standby.clear()
