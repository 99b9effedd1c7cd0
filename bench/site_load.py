"""Cost at a real site (issue 10): the whole daemon's CPU under a full site load.

    python bench/site_load.py                 # 60 s window, prints the figures
    python bench/site_load.py --seconds 20    # a shorter window
    python bench/site_load.py --profile out   # also py-spy the daemon over the window
    python bench/site_load.py --park-only     # the shipped park's load (BLE only, 2 s)
    python bench/site_load.py --summarize out # shares of a profile made before

``--profile`` needs py-spy (``pip install py-spy``; not a dependency of the project).

The load, all simulated behind the real libraries (docs: hardware-without-hardware):

- a park of 300 BLE tags, each advertising once a second (no drops: 300 adverts/s reach
  the daemon), through bleak's real BlueZ backend against python-dbusmock's bluez5
  template on a private D-Bus; 200 of them enrolled, the rest strangers' tags;
- four gate readers with children passing: two RDM6300 (a card held 1 s, one every 4 s
  per reader, frames repeated every 0.1 s) and two UHF R2000 with two antennas (one
  child walking through every 4 s per reader; the driver polls all the time);
- a GPS module at 1 Hz (NMEA on a pty);
- a real local mosquitto.

Both processes start in this repository (``-m`` puts the working directory first on
``sys.path``), so the code measured is this checkout's whatever the caller's directory.

The simulators run in their own process (``kidsafe-sim run`` with a generated
scenario), with the mock BlueZ and the bus daemon as its children; the daemon is a real
``gatewayd run`` process. ``site_load_cpu_percent`` is that process's utime + stime over
the window (% of one core); the simulators' and the broker's CPU are measured the same
way and printed apart, never added to it. The delivered rates come from the daemon's
own health counters (readings per reader), so a simulator that cannot keep up on a busy
machine shows as a low rate rather than a flattering CPU figure.

``bench/run.py`` runs it in the full run only (it needs ~20 s of set-up besides the
window, too long for the quick CI run).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
import tomli_w
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim import procs
from firmware_sim.broker import LocalBroker
from gateway.outbox import Outbox

REPO = Path(__file__).resolve().parents[1]
TARGETS: dict[str, tuple[str, float]] = {"site_load_cpu_percent": ("<=", 5.0)}

BLE_TAGS = 300
BLE_ENROLLED = 200
TAG_UUID = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
GATE_EVERY_S = 4.0  # one child per gate reader every this often
HEALTH_S = 5.0


def _ble_id(i: int) -> str:
    return f"ibeacon:{TAG_UUID}:100:{i + 1}"


def _card(gate: int, i: int) -> str:
    return f"6{gate:01X}00{i % 4096:06X}"[:10].upper()


def _epc(gate: int, i: int) -> str:
    return f"E2801160600002{gate:02X}{i % 65536:08X}"


def scenario(duration_s: float, park_only: bool = False) -> dict[str, Any]:
    """The simulated site as a ``kidsafe-sim run`` scenario; ``park_only``: the shipped
    park scenario's load instead (config/scenarios/park.toml: BLE only, each tag every
    2 s, 15 % of adverts dropped), for comparing with the figures before issue 10."""
    ble: dict[str, Any] = {
        "id": "park-ble", "kind": "ble", "adapter": "hci0", "wait_replies": False,
        "drop_rate": 0.15 if park_only else 0.0, "rssi_jitter_db": 4.0,
        "generate": {"count": BLE_TAGS, "uuid": TAG_UUID, "major": 100, "first_minor": 1,
                     "rssi_min": -98.0 if park_only else -95.0, "rssi_max": -55.0,
                     "interval_s": 2.0 if park_only else 1.0,
                     "address_prefix": "D0:00:00:00"}}
    if park_only:
        return {"name": "site-load-park", "description": "bench/site_load.py: park only",
                "duration_s": duration_s, "device": [ble]}
    devices: list[dict[str, Any]] = [
        ble,
        {"id": "gate-a", "kind": "rdm6300"},
        {"id": "gate-b", "kind": "rdm6300"},
        {"id": "gate-c", "kind": "uhf_r2000", "antennas": 2, "miss_rate": 0.05,
         "reader": {"antennas": [1, 2], "antenna_roles": {"1": "outer", "2": "inner"}}},
        {"id": "gate-d", "kind": "uhf_r2000", "antennas": 2, "miss_rate": 0.05, "seed": 2,
         "reader": {"antennas": [1, 2], "antenna_roles": {"1": "outer", "2": "inner"}}},
        {"id": "gps", "kind": "gps_nmea", "rate_hz": 1.0, "speed_mps": 1.2,
         "track": [[37.5665, 126.978], [37.5670, 126.979], [37.5665, 126.978]]},
    ]
    steps: list[dict[str, Any]] = []
    n = int(duration_s / GATE_EVERY_S) + 1
    for i in range(n):
        t = 1.0 + i * GATE_EVERY_S
        steps.append({"at": t, "device": "gate-a", "action": "present",
                      "tag": _card(0xA, i), "hold_s": 1.0})
        steps.append({"at": t + 1.0, "device": "gate-b", "action": "present",
                      "tag": _card(0xB, i), "hold_s": 1.0})
        steps.append({"at": t + 2.0, "device": "gate-c", "action": "walk",
                      "tag": _epc(0xC, i), "direction": "in" if i % 2 else "out"})
        steps.append({"at": t + 3.0, "device": "gate-d", "action": "walk",
                      "tag": _epc(0xD, i), "direction": "out" if i % 2 else "in"})
    return {"name": "site-load", "description": "bench/site_load.py: a full site",
            "duration_s": duration_s, "device": devices, "step": steps}


def gateway_config(work: Path, port: int, readers: list[dict[str, Any]],
                   n_passages: int) -> dict[str, Any]:
    tags: list[dict[str, Any]] = [
        {"id": _ble_id(i), "child": f"c-p{i:04d}"} for i in range(BLE_ENROLLED)]
    for i in range(n_passages):
        tags.append({"id": _card(0xA, i), "child": f"c-a{i:04d}"})
        tags.append({"id": _card(0xB, i), "child": f"c-b{i:04d}"})
        tags.append({"id": _epc(0xC, i), "child": f"c-c{i:04d}"})
        tags.append({"id": _epc(0xD, i), "child": f"c-d{i:04d}"})
    return {
        "unit": {"id": "bench-site", "site": "bench-park"},
        "broker": {"host": "127.0.0.1", "port": port, "client_id": "bench-site"},
        "buffer": {"path": str(work / "buffer.db")},
        "health": {"interval_s": HEALTH_S},
        "readers": readers,
        "zones": [{"id": "park", "readers": ["park-ble"], "enter_dbm": -75.0,
                   "exit_dbm": -85.0}],
        "tags": tags,
    }


# -- measuring ---------------------------------------------------------------------------

def cpu_s(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """Each thread's (utime, stime) in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def thread_names(pid: int) -> dict[int, str]:
    """OS thread id -> Python thread name, through ``py-spy dump`` when it is installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(exe):
        return {}
    try:
        text = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names = {}
    for line in text.splitlines():
        if line.startswith("Thread ") and '"' in line:
            head, name = line.split('"', 2)[:2]
            tid = head.split()[1]
            names[int(tid, 16) if tid.startswith("0x") else int(tid)] = name
    return names


def descendants(pid: int) -> list[int]:
    """pid and every process below it (the simulators' mock BlueZ and bus daemon)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children[ppid].append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError):  # ended meanwhile
            total += cpu_s(p)
    return total


class Health:
    """The daemon's health messages, as the backend gets them."""

    def __init__(self, port: int) -> None:
        self.msgs: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-site-backend")
        self.client.on_connect = lambda c, *_: c.subscribe("kidsafe/v1/bench-site/health")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.msgs.append(json.loads(msg.payload))

    def wait_next(self, timeout: float) -> dict[str, Any]:
        with self.lock:
            n = len(self.msgs)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.msgs) > n:
                    return self.msgs[-1]
            time.sleep(0.05)
        raise RuntimeError("no health message from the daemon")

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _reader_counts(h: dict[str, Any]) -> dict[str, int]:
    return {rid: int(r.get("readings", 0)) for rid, r in h["readers"].items()}


def _wait_for(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def run(seconds: float = 60.0, profile: str | None = None, progress: bool = True,
        keep: bool = False, park_only: bool = False,
        gulp_ms: float | None = None) -> dict[str, float]:
    def say(msg: str) -> None:
        if progress:
            print(f"  ... {msg}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="kidsafe-siteload-"))
    warmup_s = 2 * HEALTH_S
    duration = seconds + warmup_s + 3 * HEALTH_S + 20.0
    sc_path = work / "site.toml"
    sc_path.write_text(tomli_w.dumps(scenario(duration, park_only)))
    broker = LocalBroker(str(work / "broker"), persistence=False).start()
    sim_log = work / "sim.log"
    sim: subprocess.Popen[bytes] | None = None
    gw: subprocess.Popen[bytes] | None = None
    health: Health | None = None
    spy: subprocess.Popen[bytes] | None = None
    try:
        say(f"starting the simulated site ({BLE_TAGS} BLE tags, 4 gates, GPS) in {work}")
        with open(sim_log, "wb") as out:
            sim = subprocess.Popen(
                [sys.executable, "-m", "firmware_sim", "run", str(sc_path), "--workdir",
                 str(work / "sim"), "--start-delay", "8"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        _wait_for(lambda: "playing in" in sim_log.read_text(errors="replace")
                  or sim.poll() is not None, 120, "the simulators to start")
        text = sim_log.read_text(errors="replace")
        if sim.poll() is not None:
            raise RuntimeError(f"kidsafe-sim run failed: {text[-2000:]}")
        env_lines = text.split("in its environment:\n", 1)[1].split("[sim]", 1)[0]
        env = dict(line.split("=", 1) for line in env_lines.split())
        # The [[readers]] (and [[tags]]) tables it prints after "config for gatewayd...".
        snippet = text.split("config for gatewayd", 1)[1].split("\n", 1)[1]
        snippet = snippet.split("[sim]", 1)[0]
        readers = tomllib.loads(snippet)["readers"]
        if gulp_ms is not None:  # a comparison with another D-Bus gulp than the default
            for r in readers:
                if r["kind"] == "ble":
                    r["gulp_ms"] = gulp_ms
        n_passages = 0 if park_only else int(duration / GATE_EVERY_S) + 1
        cfg = work / "gateway.toml"
        cfg.write_text(tomli_w.dumps(gateway_config(work, broker.port, readers, n_passages)))
        health = Health(broker.port)
        gw_log = work / "gateway.log"
        with open(gw_log, "wb") as out:
            gw = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "--config", str(cfg)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})
        say("gatewayd started; waiting for every reader to be online")

        def all_online() -> bool:
            if gw is not None and gw.poll() is not None:
                raise RuntimeError(f"gatewayd exited: {gw_log.read_text()[-2000:]}")
            with health.lock:
                last = health.msgs[-1] if health.msgs else None
            return last is not None and all(r["state"] == "online"
                                            for r in last["readers"].values())

        _wait_for(all_online, 60, "every reader online")
        say(f"warming up {warmup_s:.0f} s")
        time.sleep(warmup_s)
        h0 = health.wait_next(2 * HEALTH_S)
        gw_pid = gw.pid
        sim_pids = descendants(sim.pid)
        names = thread_names(gw_pid)
        t0 = time.monotonic()
        th0 = thread_cpu(gw_pid)
        c0 = cpu_s(gw_pid)
        s0 = cpu_of(sim_pids)
        b0 = cpu_s(broker.proc.pid) if broker.proc else 0.0
        if profile:
            spy_exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            # --gil: only the thread holding the GIL, i.e. running Python (or C called
            # from it); threads blocked in a read or select are not counted.
            spy = subprocess.Popen([spy_exe, "record", "--pid", str(gw_pid), "--duration",
                                    str(int(seconds)), "--rate", "500", "--nonblocking",
                                    "--gil", "--format", "raw", "--output", profile],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        say(f"measuring {seconds:.0f} s")
        time.sleep(seconds)
        c1 = cpu_s(gw_pid)
        th1 = thread_cpu(gw_pid)
        s1 = cpu_of(sim_pids)
        b1 = cpu_s(broker.proc.pid) if broker.proc else 0.0
        wall = time.monotonic() - t0
        h1 = health.wait_next(2 * HEALTH_S)
        if spy is not None:
            spy.wait(60)
        with Outbox.saved(str(work / "buffer.db")) as saved:  # read-only: the daemon owns it
            state = saved.load_state("engine") or b""  # saved with every commit of events
            windows = saved.load_state("engine_rssi") or b""  # every 30 s
        dt_h = float(h1["uptime_s"]) - float(h0["uptime_s"])
        r0, r1 = _reader_counts(h0), _reader_counts(h1)
        rate = {rid: (r1[rid] - r0.get(rid, 0)) / dt_h for rid in r1}
        total = (h1["counters"].get("readings", 0) - h0["counters"].get("readings", 0)) / dt_h
        events = (h1["counters"].get("events", 0) - h0["counters"].get("events", 0)) / dt_h
        gates = sum(v for k, v in rate.items() if k.startswith("gate-"))
        figures = {
            "site_load_cpu_percent": round(100 * (c1 - c0) / wall, 2),
            "site_load_sim_cpu_percent": round(100 * (s1 - s0) / wall, 1),
            "site_load_broker_cpu_percent": round(100 * (b1 - b0) / wall, 2),
            "site_load_readings_per_s": round(total, 1),
            "site_load_ble_readings_per_s": round(rate.get("park-ble", 0.0), 1),
            "site_load_gate_readings_per_s": round(gates, 1),
            "site_load_gps_readings_per_s": round(rate.get("gps", 0.0), 2),
            "site_load_events_per_s": round(events, 2),
            "site_load_engine_state_kib": round(len(state) / 1024, 1),
            "site_load_engine_windows_kib": round(len(windows) / 1024, 1),
        }
        utime = sum(u for u, _ in th1.values()) - sum(u for u, _ in th0.values())
        figures["site_load_cpu_user_percent"] = round(100 * utime / wall, 2)
        if progress:
            for rid, v in sorted(rate.items()):
                say(f"reader {rid}: {v:.1f} readings/s")
            for tid, (u1, s1_) in sorted(th1.items(), key=lambda kv: -sum(kv[1])):
                u0, s0_ = th0.get(tid, (0.0, 0.0))
                say(f"thread {names.get(tid, tid)}: user {100 * (u1 - u0) / wall:.2f} % "
                    f"system {100 * (s1_ - s0_) / wall:.2f} %")
        return figures
    finally:
        if spy is not None and spy.poll() is None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        if gw is not None:
            procs.end(gw, timeout=15)
        if health is not None:
            health.stop()
        if sim is not None:
            procs.end(sim, timeout=15)
        broker.stop()
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"files kept in {work}")


# -- reading a py-spy profile -------------------------------------------------------------

# Where a sample's time goes: the first rule whose marks are all in its stack.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("engine state save (state_to_dict + JSON)", ("gateway/engine/persist.py",)),
    ("engine state save (state_to_dict + JSON)", ("state_to_dict",)),
    ("engine state save (state_to_dict + JSON)", ("json/", "Pipeline.commit")),
    ("SQLite commits (peewee, outbox)", ("gateway/outbox.py",)),
    ("engine (step, tick)", ("gateway/engine/",)),
    ("logging", ("logging/",)),
    ("gateway BLE driver (decode, hand-over)", ("BleDriver.on_advertisement",)),
    ("gateway BLE driver (decode, hand-over)", ("BleDriver._hand_over",)),
    ("bleak (BlueZ manager, scanner, AdvertisementData)", ("bleak/",)),
    ("D-Bus messages (dbus_fast) + asyncio loop", ("BleDriver.run",)),
    ("serial readers: port I/O (pyserial; select, read, write)", ("serial/",)),
    ("serial readers: port I/O (pyserial; select, read, write)", ("_read_some (drivers/_serial",)),
    ("serial readers: port I/O (pyserial; select, read, write)", ("_write (drivers/_serial",)),
    ("serial readers: codecs, UHF poller, driver loop", ("SerialDriver",)),
    ("pipeline: queue, filter, batches", ("Pipeline.",)),
    ("MQTT publisher (paho, health)", ("Publisher",)),
)


def summarize(raw: str, top: int = 15) -> str:
    """Shares of a ``py-spy record --format raw`` profile: by category, then the
    functions with the most samples of their own (line numbers merged)."""
    cats: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(raw).read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack or not n_text.isdigit():  # a line py-spy was still writing
            continue
        n = int(n_text)
        total += n
        cats[next((name for name, marks in CATEGORIES if all(m in stack for m in marks)),
                  "other")] += n
        leaf = stack.rsplit(";", 1)[-1]
        own[leaf.rsplit(":", 1)[0] + ")" if ":" in leaf else leaf] += n
    lines = [f"{total} samples of the thread holding the GIL", "by category:"]
    lines += [f"  {100 * v / total:5.1f} %  {k}" for k, v in cats.most_common()]
    lines.append("functions with the most samples of their own:")
    lines += [f"  {100 * v / total:5.1f} %  {k}" for k, v in own.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="measuring window")
    p.add_argument("--profile", metavar="FILE",
                   help="py-spy the daemon over the window (raw collapsed stacks to FILE)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, buffer)")
    p.add_argument("--gulp-ms", type=float, metavar="MS",
                   help="the BLE readers' gulp_ms (default: the driver's own default)")
    p.add_argument("--summarize", metavar="FILE", help="only summarize a profile made before")
    p.add_argument("--park-only", action="store_true",
                   help="the shipped park scenario's load (BLE only, 300 tags every 2 s)")
    args = p.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    figures = run(args.seconds, args.profile, keep=args.keep, park_only=args.park_only,
                  gulp_ms=args.gulp_ms)
    for k, v in figures.items():
        t = TARGETS.get(k)
        print(f"{k:34} {v:>10}" + (f"  target {t[0]} {t[1]:g}" if t else ""))
    if args.profile and Path(args.profile).exists():
        print(summarize(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
