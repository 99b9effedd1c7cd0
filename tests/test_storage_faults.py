"""Issue 11, items 1-4: the buffer file itself fails under a real gatewayd process.

Real mosquitto, real gatewayd processes, a simulated RDM6300 flooding enrolled cards
through a pty, and real filesystems: a truncated or garbage buffer, a buffer deleted
under the running daemon, a small tmpfs filled to the last byte, an ext4 loop mount the
kernel turns read-only (``trigger_fs_error`` with ``errors=remount-ro``, as a failing
SD card does). Each test asserts: nothing committed is lost without a ``buffer_salvage``
notice naming the seqs; the unit keeps deciding new reads; ``seq`` never goes back; one
clear log line says what happened. Mounts need root; they are undone even on failure.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from firmware_sim.broker import LocalBroker, free_port
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway.outbox import BufferReadError, Outbox
from harness import GatewayProcess, Subscriber, gatewayd, wait_until, write_config

TAGS = [f"{0xB0_0000_0000 + i:010X}" for i in range(1000)]

pytestmark = pytest.mark.slow


def config(tmp_path: Path, port: VirtualSerial, broker_port: int, buffer: Path,
           **buffer_keys: Any) -> Path:
    path = write_config(
        tmp_path / "gw.toml", broker_port=broker_port, buffer=buffer,
        readers=[{"id": "gate-main", "kind": "rdm6300", "role": "gate", "port": port.path,
                  "reconnect_initial_s": 0.05, "reconnect_max_s": 0.3}],
        tags=[{"id": t, "child": f"c-{i}"} for i, t in enumerate(TAGS)],
        broker_extra={"reconnect_max_s": 0.5}, gate_window_s=0.2,
    )
    doc = tomllib.loads(path.read_text())
    doc["buffer"].update(buffer_keys)
    path.write_text(tomli_w.dumps(doc))
    return path




def flood(port: VirtualSerial, n: int, start: int = 0) -> None:
    """n reads, each a new passage (1,000 cards round robin, 500/s, window 0.2 s)."""
    order = TAGS[start % len(TAGS):] + TAGS[:start % len(TAGS)]
    assert Rdm6300Sim(port).flood(order, n, 500, lossless=True) == n


def committed(buf: Path) -> int:
    """The buffer's last seq, read-only beside the daemon (the daemon's event log lines are
    rate-limited, so they are not counted)."""
    try:
        with Outbox.saved(str(buf)) as saved:
            return saved.last_seq()
    except BufferReadError:  # not there (deleted, not yet re-created)
        return 0


def wait_committed(buf: Path, n: int, timeout: float = 30) -> None:
    wait_until(lambda: committed(buf) >= n, timeout, f"{n} events committed")


def expand(ranges: list[list[int]]) -> set[int]:
    return {s for a, b in ranges for s in range(a, b + 1)}


def delivered(sub: Subscriber) -> int:
    """Event messages received, resends included."""
    return len(sub.events())


def root_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs or a loop device needs root")


@contextlib.contextmanager
def mounted(where: Path, kind: str, size_mb: int) -> Iterator[Path]:
    root_or_skip()
    where.mkdir()
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(where)]
    else:
        img = where.with_suffix(".img")
        subprocess.run(["truncate", "-s", f"{size_mb}M", str(img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", str(img)], check=True)
        cmd = ["mount", "-o", "loop,errors=remount-ro", str(img), str(where)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount {kind}: {r.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def make_read_only(where: Path) -> None:
    """What the kernel does when an SD card fails: ext4 remounts itself read-only."""
    st = os.stat(where)
    dev = os.path.basename(os.path.realpath(
        f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}"))
    Path(f"/sys/fs/ext4/{dev}/trigger_fs_error").write_text("kidsafe test: card failing")
    with pytest.raises(OSError):
        (where / "probe").write_text("x")


def remount_repaired(where: Path) -> None:
    img = where.with_suffix(".img")
    subprocess.run(["umount", str(where)], check=True)
    subprocess.run(["e2fsck", "-fy", str(img)], capture_output=True)
    subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(img), str(where)], check=True)


def fill(where: Path) -> Path:
    """Fill a filesystem to the last byte."""
    filler = where / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        for block in (65536, 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * block)
                    f.flush()
    return filler


def assert_one_line(gw: GatewayProcess, pattern: str) -> None:
    lines = [ln for ln in gw.log_text().splitlines() if re.search(pattern, ln)]
    assert len(lines) == 1, (pattern, lines)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_buffer_is_salvaged_and_the_unit_runs(tmp_path: Path, reader: VirtualSerial,
                                                      damage: str) -> None:
    buf = tmp_path / "buf.db"
    log = tmp_path / "gateway.log"
    # Phase 1: no broker (a port nobody listens on): 1,500 events stay buffered.
    cfg = config(tmp_path, reader, free_port(), buf)
    gw = GatewayProcess(cfg, log).start()
    try:
        gw.wait_log("reader gate-main: online")
        flood(reader, 1500)
        wait_committed(buf, 1500)
    finally:
        assert gw.stop() == 0
    n = committed(buf)
    assert n == 1500
    size = buf.stat().st_size
    if damage == "truncated":
        with open(buf, "r+b") as f:
            f.truncate(size * 6 // 10)
    else:
        buf.write_bytes(os.urandom(size))
    # Phase 2: the broker is there; the unit starts on the damaged file.
    broker = LocalBroker(str(tmp_path / "broker")).start()
    sub = Subscriber(broker.port, client_id="backend-corrupt").start()
    cfg = config(tmp_path, reader, broker.port, buf)
    gw = GatewayProcess(cfg, tmp_path / "gateway-2.log").start()  # its own log: its lines only
    try:
        gw.wait_log("reader gate-main: online")
        wait_until(lambda: bool(sub.events("buffer_salvage")), 60, "the buffer_salvage notice")
        notice = sub.events("buffer_salvage")[0]
        assert notice["lane"] == "emergency"
        data = notice["data"]
        assert data["reason"] == "corrupt" and data["ranges_complete"]
        lost = expand(data["ranges"])
        assert data["lost_max"] == len(lost)
        if damage == "truncated":
            assert 0 < data["salvaged"] < n
        else:
            assert data["salvaged"] == 0
        wait_until(lambda: len(sub.events("gate")) >= data["salvaged"], 30,
                   "every salvaged event at the backend")
        got = {e["seq"] for e in sub.events("gate")}
        # Nothing committed is lost without the notice naming its seq.
        assert set(range(1, n + 1)) <= got | lost, sorted(set(range(1, n + 1)) - got - lost)[:10]
        # The unit keeps deciding, and seq never goes back.
        flood(reader, 200, start=500)
        wait_until(lambda: len({e["seq"] for e in sub.events("gate")} - got) >= 200, 30,
                   "200 new events at the backend")
        new = {e["seq"] for e in sub.events("gate")} - got
        assert min(new) > max(n, notice["seq"])
        birth = sub.on("/birth")[-1]
        assert birth["high_water_seq"] >= n and birth["high_water_seq"] >= birth["last_seq"]
        wait_until(lambda: any(h["buffer"]["incidents"] for h in sub.on("/health")), 10,
                   "health naming the incident")
        assert sub.on("/health")[-1]["buffer"]["incidents"][0]["reason"] == "corrupt"
        # Kept for forensics (with its -wal and -shm, if any).
        assert len(list(tmp_path.glob("buf.db.corrupt-*Z"))) == 1
        status = gatewayd("status", "--config", str(cfg))
        assert status.returncode == 0 and "buffer    CORRUPT at " in status.stdout, status
        text = gw.log_text()
        assert_one_line(gw, r"ERROR gateway\.outbox: buffer .* corrupt")
        assert "Traceback" not in text
    finally:
        gw.stop()
        sub.stop()
        broker.stop()


def test_buffer_deleted_while_running(tmp_path: Path, reader: VirtualSerial,
                                      broker: LocalBroker) -> None:
    buf = tmp_path / "buf.db"
    log = tmp_path / "gateway.log"
    cfg = config(tmp_path, reader, broker.port, buf)
    sub = Subscriber(broker.port, client_id="backend-deleted", persistent=True).start()
    gw = GatewayProcess(cfg, log).start()
    try:
        gw.wait_log("reader gate-main: online")
        gw.wait_log("connected (MQTT")
        broker.pause()  # a hung broker: the 600 events stay in the buffer
        flood(reader, 600)
        wait_committed(buf, 600)
        for suffix in ("", "-wal", "-shm"):  # rm buf.db*
            with contextlib.suppress(FileNotFoundError):
                os.remove(f"{buf}{suffix}")
        flood(reader, 100, start=600)
        wait_committed(buf, 701)
        broker.resume()
        assert buf.exists()  # re-created
        n = committed(buf)
        assert n == 701  # 600, the notice, 100 more: seq went on
        wait_until(lambda: set(range(1, n + 1)) <= set(sub.seq_ids()), 60,
                   "every committed event at the backend")
        notice = sub.events("buffer_salvage")[0]
        assert notice["data"]["reason"] == "deleted" and notice["data"]["ranges"] == []
        assert notice["data"]["lost_max"] == 0
        assert_one_line(gw, r"ERROR gateway\.outbox: buffer .* deleted")
        assert gw.stop() == 0
        # After a restart seq still goes on (the issue: it began again at 1).
        gw = GatewayProcess(cfg, tmp_path / "gateway-2.log").start()
        gw.wait_log("reader gate-main: online")
        gw.wait_log("connected (MQTT")
        flood(reader, 10, start=800)
        wait_until(lambda: max(sub.seq_ids()) >= n + 10, 30, "10 events after the restart")
        assert sorted(sub.seq_ids()) == list(range(1, n + 11))
        assert "Traceback" not in gw.log_text()
    finally:
        broker.resume()
        gw.stop()
        sub.stop()


def test_disk_full_delivery_keeps_going(tmp_path: Path, reader: VirtualSerial,
                                        broker: LocalBroker) -> None:
    log = tmp_path / "gateway.log"
    with mounted(tmp_path / "card", "tmpfs", 24) as card:
        buf = card / "buf.db"
        cfg = config(tmp_path, reader, broker.port, buf, reserve_mb=0)
        sub = Subscriber(broker.port, client_id="backend-full", persistent=True).start()
        gw = GatewayProcess(cfg, log).start()
        try:
            gw.wait_log("reader gate-main: online")
            gw.wait_log("connected (MQTT")
            broker.pause()
            flood(reader, 1500)
            wait_committed(buf, 1500)
            filler = fill(card)
            broker.resume()
            wait_until(lambda: set(range(1, 1501)) <= set(sub.seq_ids()), 60,
                       "all 1,500 events delivered on a full disk")
            # Deletes fail when the WAL must grow for them; after a checkpoint they reuse
            # its space and go through (the read-only test fails every one of them).
            time.sleep(3)  # more than a delete retry: no resend loop
            assert delivered(sub) <= 1500 + 300, delivered(sub)
            # New reads are decided while the disk is full: held in memory, or committed
            # where the WAL has room left from before a checkpoint ...
            flood(reader, 100, start=500)
            time.sleep(1.0)
            assert delivered(sub) <= 1500 + 300 + 100
            # ... and committed and delivered once there is room again.
            filler.unlink(missing_ok=True)
            wait_until(lambda: len(sub.seq_ids()) >= 1600, 60, "the held events delivered")
            assert sorted(sub.seq_ids()) == list(range(1, 1601))

            def settled() -> bool:
                h = sub.on("/health")[-1]["buffer"]
                return bool(h["acks_not_recorded"] == 0 and h["depth"] == 0
                            and h["free_disk_mb"] > 0)

            wait_until(settled, 20, "the failed deletes retried, free disk in health")
            assert sub.on("/health")[-1]["buffer"]["reserve_mb"] == 0
            text = gw.log_text()
            assert len(re.findall(r"ERROR gateway\.mqtt: cannot record", text)) <= 1
            assert "worker mqtt failed" not in text and "Traceback" not in text
        finally:
            broker.resume()
            gw.stop()
            sub.stop()


def test_read_only_card_delivers_once_and_parks_held_events_at_stop(
        tmp_path: Path, reader: VirtualSerial, broker: LocalBroker) -> None:
    log = tmp_path / "gateway.log"
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    with mounted(tmp_path / "card", "ext4", 16) as card:
        buf = card / "buf.db"
        # The default reserve (64 MB) is held to a tenth of this 16 MB card.
        cfg = config(tmp_path, reader, broker.port, buf)
        sub = Subscriber(broker.port, client_id="backend-ro", persistent=True).start()
        env = {"RUNTIME_DIRECTORY": str(run)}
        gw = GatewayProcess(cfg, log, env=env).start()
        try:
            gw.wait_log("reader gate-main: online")
            gw.wait_log("connected (MQTT")
            broker.pause()
            flood(reader, 500)
            wait_committed(buf, 500)
            make_read_only(card)
            broker.resume()
            wait_until(lambda: set(range(1, 501)) <= set(sub.seq_ids()), 60,
                       "all 500 events delivered from a read-only card")
            time.sleep(3)
            assert delivered(sub) <= 500 + 64, delivered(sub)  # not 320 of 128 in a loop
            assert_one_line(gw, r"ERROR gateway\.mqtt: cannot record \d+ acknowledged events")
            wait_until(lambda: sub.on("/health")[-1]["buffer"]["acks_not_recorded"] > 0, 10,
                       "health counting the acks not recorded")
            assert "acknowledged events not yet deleted" in gatewayd(
                "status", "--config", str(cfg)).stdout
            assert "worker mqtt failed" not in gw.log_text()
            flood(reader, 100, start=500)  # decided, held in memory
            gw.wait_log("cannot write the buffer")
            time.sleep(0.5)  # the last reads decided
            assert gw.stop() == 0  # parked: nothing lost, a clean stop
            text = gw.log_text()
            assert re.search(r"100 held events \(gate 100\) parked in .*run/buf\.db\.held\.jsonl",
                             text), text[-2000:]
            assert "NOT clean" not in text
            # The card is repaired; the next start commits the parked events.
            remount_repaired(card)
            gw = GatewayProcess(cfg, log, env=env).start()
            wait_until(lambda: len(sub.seq_ids()) >= 600, 60, "the parked events delivered")
            assert sorted(sub.seq_ids()) == list(range(1, 601))
            assert not list(run.iterdir())  # the parked file is gone once committed
            assert "Traceback" not in gw.log_text()
        finally:
            broker.resume()
            gw.stop()
            sub.stop()


def test_stop_that_loses_held_events_is_not_clean(tmp_path: Path, reader: VirtualSerial
                                                  ) -> None:
    log = tmp_path / "gateway.log"
    with mounted(tmp_path / "card", "ext4", 16) as card:
        cfg = config(tmp_path, reader, free_port(), card / "buf.db")
        gw = GatewayProcess(cfg, log, env={"RUNTIME_DIRECTORY": ""}).start()
        try:
            gw.wait_log("reader gate-main: online")
            flood(reader, 50)
            wait_committed(card / "buf.db", 50)
            make_read_only(card)
            flood(reader, 30, start=50)
            gw.wait_log("cannot write the buffer")
            time.sleep(1.0)  # the reads are decided (held)
        finally:
            rc = gw.stop()
        text = gw.log_text()
        assert rc == 1
        assert re.search(r"CRITICAL gateway\.pipeline: .* 30 decided events LOST \(gate 30\)",
                         text), text[-2000:]
        assert "NOT clean" in text and "gatewayd stopped" not in text
