"""`gatewayd status` and `gatewayd doctor` against a real daemon, a real mosquitto and a
simulated RDM6300; file modes of what the daemon creates."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway import config as configmod
from gateway import daemon, doctor
from gateway.outbox import Outbox
from harness import GatewayProcess, Subscriber, gatewayd, wait_until, write_config

TAG_ID = "62E3086CED"
TAG = {"id": TAG_ID, "child": "c-1001", "groups": ["3a"]}


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def old_umask() -> Iterator[None]:
    # The daemon must not depend on the umask it is started with (a shell's 022).
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def test_status_and_doctor_on_a_running_daemon(tmp_path: Path, broker: LocalBroker,
                                               old_umask: None) -> None:
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    state = tmp_path / "state"  # does not exist yet: the daemon creates it
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=broker.port, buffer=state / "buf.db",
        readers=[{"id": "gate-main", "kind": "rdm6300", "role": "gate", "port": port.path,
                  "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5}],
        tags=[TAG])
    sub = Subscriber(broker.port).start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log").start()
    try:
        gw.wait_log("reader gate-main: online")
        gw.wait_log("connected (MQTT")
        Rdm6300Sim(port, repeat_s=0.1).present(TAG_ID, hold_s=0.3)
        wait_until(lambda: len(sub.events("gate")) == 1, 15, "the gate event")
        sock = state / "gatewayd.sock"
        wait_until(sock.exists, 10, "the status socket")

        def acked() -> bool:
            r = gatewayd("status", "--config", str(cfg), "--json")
            return r.returncode == 0 and json.loads(r.stdout)["broker"]["last_ack"] is not None

        wait_until(acked, 15, "status showing the acknowledgement")
        r = gatewayd("status", "--config", str(cfg), "--json")
        doc = json.loads(r.stdout)
        assert doc["readers"]["gate-main"]["state"] == "online"
        assert doc["buffer"]["depth"] == 0 and set(doc["buffer"]["depth_by_lane"]) == {
            "emergency", "routine", "telemetry"}
        assert doc["buffer"]["oldest_unsent_age_s"] == 0.0
        assert doc["broker"]["connected"] is True
        assert doc["broker"]["address"] == f"127.0.0.1:{broker.port}"
        assert doc["counters"]["events"] == 1
        assert doc["disk"]["free_mb"] > 0
        assert set(doc["clock"]) >= {"synchronized", "source", "gps_untrusted"}
        assert set(doc["workers"]) == {"mqtt", "pipeline", "commands", "reader-gate-main"}
        assert all(w == "ok" for w in doc["workers"].values())

        r = gatewayd("status", "--config", str(cfg))
        assert r.returncode == 0, r.stderr
        text = r.stdout
        assert "workers   all going" in text
        assert "reader    gate-main: rdm6300, online" in text
        assert f"broker    127.0.0.1:{broker.port} connected (MQTT 5); last ack 20" in text
        assert "buffer    0 events waiting (emergency 0, routine 0, telemetry 0)" in text
        assert "disk      " in text and "clock     " in text

        # Owner only: the folder the daemon made, the buffer, its WAL and shm, the socket.
        assert mode(state) == 0o700
        for name in ("buf.db", "buf.db-wal", "buf.db-shm"):
            assert mode(state / name) == 0o600, name
        assert stat.S_ISSOCK(sock.stat().st_mode) and mode(sock) == 0o600

        r = gatewayd("doctor", "--config", str(cfg))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "FAIL" not in r.stdout
        for line in ("ok   daemon: running", "ok   serial gate-main:", "ok   broker:",
                     "ok   disk:", "ok   buffer:"):
            assert line in r.stdout, r.stdout
        assert "integrity ok" in r.stdout

        # The broker goes away: status says so, doctor fails it and says what to check.
        broker.stop()
        wait_until(lambda: json.loads(gatewayd("status", "--config", str(cfg), "--json")
                                      .stdout)["broker"]["connected"] is False, 15,
                   "status showing the broker down")
        assert "NOT CONNECTED" in gatewayd("status", "--config", str(cfg)).stdout
        r = gatewayd("doctor", "--config", str(cfg), "--json")
        assert r.returncode == 1
        checks = {c["name"]: c for c in json.loads(r.stdout)}
        assert checks["broker"]["level"] == "fail"
        assert "Connection refused" in checks["broker"]["detail"]
        assert "firewall" in checks["broker"]["fix"]
    finally:
        gw.stop()
        sub.stop()
        port.close()
    r = gatewayd("status", "--config", str(cfg))
    assert r.returncode == 1 and "is gatewayd running" in r.stderr
    assert not (state / "gatewayd.sock").exists()  # removed on a clean stop
    assert "Traceback" not in gw.log_text()


def _cfg(tmp_path: Path, buffer: Path, **reader: object) -> configmod.Config:
    readers = [reader] if reader else []
    return configmod.load(write_config(tmp_path / "gw.toml", broker_port=1, buffer=buffer,
                                       readers=readers, tags=[TAG]))


def test_world_readable_buffer_is_made_private(tmp_path: Path, old_umask: None) -> None:
    path = tmp_path / "buf.db"
    ob = Outbox(str(path), "u", "s")  # an older version, or a copy: created under umask 022
    ob.add([], state=("k", b"v"))
    assert mode(path) == 0o644
    cfg = _cfg(tmp_path, path)
    warn = [c for c in doctor.check_buffer(cfg) if c.level == "warn"]
    assert warn and "chmod 600" in warn[0].fix
    daemon.private_files(str(path))
    ob.close()
    assert all(mode(p) == 0o600 for p in tmp_path.glob("buf.db*"))
    assert [c.level for c in doctor.check_buffer(cfg)] == ["ok"]


def test_doctor_finds_a_damaged_buffer(tmp_path: Path) -> None:
    path = tmp_path / "buf.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (x)")
    con.executemany("INSERT INTO t VALUES (?)", [(os.urandom(500),) for _ in range(2000)])
    con.execute("CREATE INDEX ti ON t (x)")
    con.commit()
    con.close()
    with open(path, "r+b") as f:  # as after SD-card corruption: pages of garbage
        f.seek(8 * 4096)
        f.write(os.urandom(20 * 4096))
    [check] = [c for c in doctor.check_buffer(_cfg(tmp_path, path)) if c.name == "buffer"]
    assert check.level == "fail", check
    assert "integrity check failed" in check.detail or "malformed" in check.detail
    assert "forensics" in check.fix

    (tmp_path / "garbage.db").write_bytes(os.urandom(10_000))
    [check] = [c for c in doctor.check_buffer(_cfg(tmp_path, tmp_path / "garbage.db"))
               if c.name == "buffer"]
    assert check.level == "fail" and "not a database" in check.detail


def test_doctor_serial_missing_and_unreadable(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tmp_path / "buf.db", id="gate-main", kind="rdm6300",
               role="gate", port=str(tmp_path / "ttyNONE"))
    [check] = doctor.check_serial(cfg)
    assert check.level == "fail" and "does not exist" in check.detail
    assert "/dev/serial/by-id/" in check.fix
    (tmp_path / "plain").write_text("")
    cfg = _cfg(tmp_path, tmp_path / "buf.db", id="gate-main", kind="rdm6300",
               role="gate", port=str(tmp_path / "plain"))
    [check] = doctor.check_serial(cfg)
    assert check.level == "fail" and "not a serial device" in check.detail
