"""``kidsafe-sim demo --chain`` (``./dev.sh demo``): the whole chain on one machine.

simulated readers (an RDM6300 gate on a pty, a BLE park scanner on a mock BlueZ)
-> two gatewayd units -> mosquitto -> kidsafe-backend (ingest) -> PostgreSQL
-> kidsafe-backend web (the operator page), with the URL and a login printed.

The scenario (config/demo-city.toml): a gate morning, a park with an SOS and a child who
must stay in the playground walking off, then a disaster declared by the demo itself: a
signed ``alert/start`` to both units, whose roll-calls the page shows per site. Everything
runs in a work dir on free loopback ports and ends with Ctrl-C (or after ``--for S``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import tomli_w

from firmware_sim import procs
from firmware_sim import scenario as scen
from firmware_sim.broker import BrokerMissing, LocalBroker, free_port
from firmware_sim.postgres import LocalPostgres, PostgresMissing, query
from firmware_sim.simulator import Context

REPO = Path(__file__).resolve().parent.parent
TAG_UUID = "f7826da6-4fa2-4e98-8024-bc5b71e0893e"
ROLL_CALL_AT = 30.0  # s into the scenario: the city declares a disaster
ALERT_ID = "demo-disaster"

# Enrolment per unit: (tag id, child reference, groups).
GATE_TAGS = [("62E3086CED", "c-1001", ["class-3a"]), ("01000734E0", "c-1002", ["class-3a"]),
             ("67003B51C6", "c-1003", ["class-4b"])]
PARK_TAGS = [(f"ibeacon:{TAG_UUID}:7:42", "c-2001", ["class-3a"]),
             ("eddystone:EDD1EBEAC04E5DEFA017:0000000000B7", "c-2002", ["class-4b"]),
             (f"ibeacon:{TAG_UUID}:7:43", "c-2003", ["kindergarten"])]


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _sites() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((REPO / "config" / "demo-sites.toml").read_text())


def unit_config(work: Path, unit: str, site: str, broker_port: int, pub: Path,
                reader: dict[str, Any], tags: list[tuple[str, str, list[str]]],
                position: tuple[float, float], cameras: list[dict[str, Any]],
                extra: dict[str, Any]) -> Path:
    doc: dict[str, Any] = {
        "unit": {"id": unit, "site": site, "config_version": "demo-1"},
        "broker": {"host": "127.0.0.1", "port": broker_port, "reconnect_max_s": 2},
        "buffer": {"path": str(work / f"{unit}.db")},
        "health": {"interval_s": 5},
        "gate": {"repeat_window_s": 2.0},
        "engine": {"position": list(position), "camera_radius_m": 200.0},
        "roll_call": {"interval_s": 10.0},
        "commands": {"public_keys": [str(pub)]},
        "readers": [reader],
        "tags": [{"id": t, "child": c, "groups": g} for t, c, g in tags],
        "cameras": cameras,
        **extra,
    }
    path = work / f"{unit}.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


def backend_config(work: Path, broker_port: int, dsn: str, key: Path, web_port: int,
                   users: dict[str, tuple[str, str]]) -> Path:
    from backend.web.auth import hash_password

    sites = work / "sites.toml"
    sites.write_text((REPO / "config" / "demo-sites.toml").read_text())
    doc = {
        "prefix": "kidsafe/v1",
        "broker": {"host": "127.0.0.1", "port": broker_port, "client_id": "demo-backend",
                   "reconnect_max_s": 1.0},
        "database": {"dsn": dsn},
        "receipts": {"key_file": str(key)},
        "web": {"listen": f"127.0.0.1:{web_port}", "sites": str(sites),
                "users": [{"name": n, "role": role, "password_hash": hash_password(pw)}
                          for n, (role, pw) in users.items()]},
    }
    path = work / "backend.toml"
    path.write_text(tomli_w.dumps(doc))
    return path


class Proc:
    """A child process with its output in a log file in the work dir."""

    def __init__(self, name: str, argv: list[str], log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.log = name, log
        out = open(log, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        out.close()

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{self.name}: no {text!r} in its log ({self.log}):\n{tail}")

    def stop(self) -> None:
        procs.end(self.proc)


def _wait_port(port: int, proc: Proc, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if proc.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {port}: "
                       f"{proc.log.read_text(errors='replace')[-1500:]}")


def declare_disaster(broker_port: int, key: Path, units: list[str]) -> None:
    """The city's alert: a signed alert/start to each unit, through gateway.cmdtool."""
    from gateway import cmdtool
    from gateway.signing import load_private_key

    k = load_private_key(key)
    with cmdtool.Session(cmdtool.Broker(port=broker_port)) as s:
        for unit in units:
            try:
                r = s.command("alert/start", {"alert_id": ALERT_ID, "interval_s": 10}, unit, k,
                              timeout_s=10)
                _say(f"disaster declared: alert/start {ALERT_ID} to {unit} (signed): "
                     f"{r.get('code')} {r.get('reason')}")
            except cmdtool.NoReply as e:
                _say(f"disaster declared: alert/start to {unit}: no reply ({e})")


def stored(dsn: str) -> dict[str, int]:
    """Events in PostgreSQL by kind: what the chain delivered."""
    return {r["kind"]: int(r["n"])
            for r in query(dsn, "SELECT kind, count(*) AS n FROM events GROUP BY kind")}


def run(args: argparse.Namespace) -> int:
    from firmware_sim.cli import _start_devices, play
    from gateway.signing import generate_keypair

    work = Path(args.workdir or tempfile.mkdtemp(prefix="kidsafe-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    sc = scen.load_multi(str(REPO / "config" / "demo-city.toml"))
    users = {"operator": ("operator", secrets.token_urlsafe(9)),
             "viewer": ("viewer", secrets.token_urlsafe(9))}
    stop = threading.Event()
    rc = 1
    with contextlib.ExitStack() as stack:
        try:
            broker = LocalBroker(str(work / "broker"), port=free_port()).start()
            stack.callback(broker.stop)
            pg = LocalPostgres().start()
            stack.callback(pg.close)
        except (BrokerMissing, PostgresMissing, RuntimeError, OSError) as e:
            print(f"kidsafe-sim demo: {e}", file=sys.stderr)
            return 2
        _say(f"mosquitto on 127.0.0.1:{broker.port}; PostgreSQL on 127.0.0.1:{pg.port} "
             f"(a throw-away server)")
        dsn = pg.create_database("kidsafe")
        key, pub = work / "backend.key", work / "backend.pub"
        if not key.exists():
            generate_keypair(key, pub)
        web_port = args.port or free_port()
        bcfg = backend_config(work, broker.port, dsn, key, web_port, users)
        py = sys.executable
        subprocess.run([py, "-m", "backend", "migrate", "--config", str(bcfg)], check=True,
                       capture_output=True, timeout=60)
        ingest = Proc("kidsafe-backend run", [py, "-m", "backend", "run", "--config", str(bcfg)],
                      work / "backend.log")
        stack.callback(ingest.stop)
        web = Proc("kidsafe-backend web", [py, "-m", "backend", "web", "--config", str(bcfg)],
                   work / "web.log")
        stack.callback(web.stop)
        ingest.wait_log("subscribed to ")
        _wait_port(web_port, web)
        _say(f"kidsafe-backend: ingest (log {ingest.log}) and the operator page "
             f"(log {web.log}), config {bcfg}")

        ctx = Context(work / "devices", stack)
        ctx.work.mkdir(exist_ok=True)
        running = {r.dev.id: r for r in _start_devices(sc, ctx)}
        sites = {s["id"]: s for s in _sites()["sites"]}
        school, park = sites["demo-school"], sites["demo-park"]
        gate_cfg = unit_config(
            work, "demo-gate-01", "demo-school", broker.port, pub,
            {"id": "gate-main", **running["gate-main"].reader, "reconnect_max_s": 2},
            GATE_TAGS, (school["units"][0]["lat"], school["units"][0]["lon"]),
            school["cameras"], {})
        park_cfg = unit_config(
            work, "demo-park-01", "demo-park", broker.port, pub,
            {"id": "park-ble", **running["park-ble"].reader, "silence_s": 5.0},
            PARK_TAGS, (park["units"][0]["lat"], park["units"][0]["lon"]), park["cameras"],
            {"zones": [{"id": "playground", "readers": ["park-ble"],
                        "enter_dbm": -75.0, "exit_dbm": -88.0, "dwell_s": 1.0,
                        "exit_dwell_s": 3.0, "absence_s": 10.0,
                        "stay_groups": ["kindergarten"]}]})
        units = []
        for cfg, name in ((gate_cfg, "demo-gate-01"), (park_cfg, "demo-park-01")):
            u = Proc(f"gatewayd {name}", [py, "-m", "gateway", "run", "--config", str(cfg)],
                     work / f"{name}.log", env=ctx.env)
            stack.callback(u.stop)
            units.append(u)
        for u, reader in zip(units, ("gate-main", "park-ble"), strict=True):
            u.wait_log("connected (MQTT")
            u.wait_log(f"reader {reader}: online")
        _say("units demo-gate-01 (RDM6300 gate) and demo-park-01 (BLE park) online; logs in "
             f"{work}")
        print(flush=True)
        _say(f"OPERATOR PAGE: http://127.0.0.1:{web_port}/")
        for name, (role, pw) in users.items():
            _say(f"  log in as {name} / {pw}   ({role})")
        print(flush=True)
        time.sleep(0.5)  # pyserial flushes input on open: nothing sent just before is read
        _say(f"scenario '{sc.name}': {sc.description}; the disaster at {ROLL_CALL_AT:g} s")
        t0 = time.monotonic()
        player = threading.Thread(target=play, args=(sc, list(running.values()), stop),
                                  daemon=True)
        player.start()
        try:
            if not stop.wait(max(0.0, t0 + ROLL_CALL_AT - time.monotonic())):
                declare_disaster(broker.port, key, ["demo-gate-01", "demo-park-01"])
            player.join()
            time.sleep(3.0)  # the last events through the chain
            counts = stored(dsn)
            _say("stored in PostgreSQL: " + ", ".join(f"{n} {k}" for k, n in
                                                      sorted(counts.items())))
            want = ("gate", "sos", "zone_alert", "roll_call")
            missing = [k for k in want if not counts.get(k)]
            if missing:
                _say(f"not stored (yet): {', '.join(missing)}")
            rc = 0 if not missing else 1
            if args.run_for is not None:
                stop.wait(max(0.0, t0 + args.run_for - time.monotonic()))
            else:
                _say(f"still running: the page is at http://127.0.0.1:{web_port}/ "
                     "(Ctrl-C ends the demo)")
                stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
    _say(f"done; files in {work}")
    return rc



