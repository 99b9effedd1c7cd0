"""The fleet over several worker processes: ``FleetPool`` has the interface of ``Fleet``.

Why processes of ~100 units, not one process of 600: the gateway's publisher used to wait
with ``select()``, which cannot watch a descriptor numbered above 1023 (FD_SETSIZE); a
simulated unit holds ~9 (two SQLite connections with their WAL and shm files, the wake
pipe, the socket), so past ~110 units in one process the newest units' publishers failed
at once. The publisher now polls (no such limit); processes still let the generator use
both cores (one GIL each). Each worker is a ``Fleet`` driven over a pipe.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fleet.generator import Fleet, pct, proc_rss_mb, wait_for
from fleet.traffic import Mix

UNITS_PER_PROCESS = 100


def _worker(conn: Connection, n: int, ports: list[int], work: str, mix: Mix, seed: int,
            extra: dict[str, Any] | None, first: int, window: int, standby: bool | str) -> None:
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    f = Fleet(n, ports, Path(work), mix=mix, seed=seed, extra=extra, first=first,
              window=window, standby=standby)
    conn.send(("ready", f.rss_before_mb, f.rss_units_mb))
    while True:
        cmd, *args = conn.recv()
        try:
            reply = _do(f, cmd, args)
        except Exception as e:  # reported to the coordinator, which raises it
            reply = ("error", repr(e))
        conn.send(reply)
        if cmd == "close":
            return


def _do(f: Fleet, cmd: str, args: list[Any]) -> Any:
    import os

    match cmd:
        case "start":
            f.start()
        case "online":
            return f.online()
        case "depth":
            return f.depth()
        case "traffic":
            f.start_traffic(*args)
        case "stop_traffic":
            f.stop_traffic()
        case "join_traffic":
            f.join_traffic()
        case "backlog":
            f.backlog(*args)
        case "mark":
            f.mark(*args)
        case "probe":
            f.probe()
        case "sos_node":
            f.sos_node(*args)
        case "reset":
            f.reset_latencies()
        case "stop":
            f.stop()
        case "stats":
            st = f.stats
            with st.lock:
                t = os.times()
                return {"committed": st.committed, "acked": st.acked,
                        "lat": list(st.latencies_ms), "sos": list(st.sos_ms),
                        "sos_at": list(st.sos_at), "sos_unit": list(st.sos_unit),
                        "sos_offline": list(st.sos_offline),
                        "sos_standby": list(st.sos_standby),
                        "connections": [(u.index, dataclasses.astuple(c)) for u in f.units
                                        for c in u.publisher.connections],
                        "back": dict(f.back),
                        # PUBLISHes of events on the wire, the standby's included
                        "sent": sum(u.publisher.sent + u.standby_sent for u in f.units),
                        "standby_sent": sum(u.standby_sent for u in f.units),
                        "standby_deleted": sum(u.publisher.standby.deleted for u in f.units
                                               if u.publisher.standby is not None),
                        "connects": sum(u.publisher.connects for u in f.units),
                        "lag_max_s": f.lag_max_s,
                        "unacked_sos": sum(1 for _, s, _ in f._pending.values() if s),
                        "cpu": t.user + t.system, "rss": proc_rss_mb()}
        case "count":
            return f.stats.committed
        case "committed_ids":
            with f.stats.lock:
                return {k: set(v) for k, v in f.committed_ids.items()}
        case "close":
            f.close(remove=True)
    return None


class FleetPool:
    """N units in ceil(N / per_process) worker processes."""

    def __init__(self, n: int, ports: Sequence[int], work: Path, mix: Mix | None = None,
                 seed: int = 1, extra: dict[str, Any] | None = None,
                 per_process: int = UNITS_PER_PROCESS, window: int = 256,
                 standby: bool | str = False) -> None:
        self.n = n
        ctx = mp.get_context("spawn")  # no fork of a process with threads
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self.mix = mix or Mix()
        for k, first in enumerate(range(0, n, per_process)):
            m = min(per_process, n - first)
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker, args=(b, m, list(ports), str(Path(work) / f"w{k}"),
                                                  self.mix, seed + k, extra, first, window,
                                                  standby),
                            daemon=True)
            p.start()
            self.conns.append(a)
            self.procs.append(p)
        self.rss_before_mb = self.rss_units_mb = 0.0
        for c in self.conns:
            _, before, after = c.recv()
            self.rss_before_mb += before
            self.rss_units_mb += after
        self.rss_base_mb = self.rss_before_mb / len(self.conns)  # one worker before its units

    def _all(self, *cmd: Any) -> list[Any]:
        for c in self.conns:
            c.send(cmd)
        out = [c.recv() for c in self.conns]
        for r in out:
            if isinstance(r, tuple) and r and r[0] == "error":
                raise RuntimeError(f"fleet worker: {r[1]}")
        return out

    # -- Fleet's interface -------------------------------------------------------------------

    def start(self) -> FleetPool:
        self._all("start")
        return self

    def online(self) -> int:
        return sum(self._all("online"))

    def depth(self) -> int:
        return sum(self._all("depth"))

    def wait(self, cond: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
        return wait_for(cond, timeout, step)

    def start_traffic(self, seconds: float, sos_every_s: float = 0.0) -> None:
        # The fleet's SOS rate split over the workers.
        self._all("traffic", seconds, sos_every_s * len(self.conns))

    def join_traffic(self) -> None:
        self._all("join_traffic")

    def stop_traffic(self) -> None:
        self._all("stop_traffic")

    def backlog(self, per_unit: int) -> None:
        self._all("backlog", per_unit)

    def mark(self, t: float) -> None:
        self._all("mark", t)

    def probe(self) -> None:
        self._all("probe")

    def sos_node(self, node: int, nodes: int) -> None:
        self._all("sos_node", node, nodes)

    def reset_latencies(self) -> None:
        self._all("reset")

    def stop(self) -> None:
        self._all("stop")

    def stats(self) -> dict[str, Any]:
        parts = self._all("stats")
        out: dict[str, Any] = {"committed": 0, "acked": 0, "lat": [], "sos": [], "sos_at": [],
                               "sos_unit": [], "sos_offline": [], "sos_standby": [],
                               "connections": [],
                               "back": {},
                               "sent": 0, "connects": 0, "unacked_sos": 0, "cpu": 0.0,
                               "standby_sent": 0, "standby_deleted": 0,
                               "rss": 0.0, "lag_max_s": 0.0}
        for p in parts:
            for k in ("committed", "acked", "sent", "connects", "unacked_sos", "cpu", "rss",
                      "standby_sent", "standby_deleted"):
                out[k] += p[k]
            out["lat"] += p["lat"]
            out["sos"] += p["sos"]
            out["sos_at"] += p["sos_at"]
            out["sos_unit"] += p["sos_unit"]
            out["sos_offline"] += p["sos_offline"]
            out["sos_standby"] += p["sos_standby"]
            out["connections"] += p["connections"]
            out["back"].update(p["back"])
            out["lag_max_s"] = max(out["lag_max_s"], p["lag_max_s"])
        return out

    @property
    def committed(self) -> int:
        return int(sum(self._all("count")))

    def committed_ids(self) -> dict[str, set[int]]:
        out: dict[str, set[int]] = {}
        for part in self._all("committed_ids"):
            out.update(part)
        return out

    def summary(self) -> dict[str, float]:
        st = self.stats()
        lat, sos = st["lat"], st["sos"]
        return {"committed": st["committed"], "acked": st["acked"],
                "latency_p50_ms": round(pct(lat, 0.5), 1),
                "latency_p99_ms": round(pct(lat, 0.99), 1),
                "sos_p50_ms": round(pct(sos, 0.5), 1), "sos_p99_ms": round(pct(sos, 0.99), 1),
                "sos_count": len(sos), "online": self.online()}

    def cpu_s(self) -> float:
        return float(self.stats()["cpu"])

    def rss_mb(self) -> float:
        return float(self.stats()["rss"])

    def close(self) -> None:
        try:
            self._all("close")
        finally:
            for p in self.procs:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join(5)


def coordinator_rss_mb() -> float:
    return proc_rss_mb()
