"""Roster, consent, pseudonyms, erase and retention end to end: a real gatewayd behind a
simulated RDM6300 gate, a real mosquitto, signed commands sent as the backend sends them
(gateway/cmdtool.py). docs/privacy.md."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway import cmdtool
from gateway.pseudonym import pseudonym
from gateway.signing import TYP_ERASURE, Keyring, generate_keypair, load_private_key, verify
from harness import GatewayProcess, Subscriber, wait_until, write_config

pytestmark = pytest.mark.slow

UNIT = "unit-t1"
A, B, C, S = "62E3086C01", "62E3086C02", "62E3086C03", "62E3086CFF"  # S: never enrolled
TAGS = [{"id": A, "child": "kid-a1"}, {"id": B, "child": "kid-b2"}]
K1, K2 = bytes(range(32)), bytes(range(1, 33))
# The unit may not publish events: they stay in its buffer (PUBACK "not authorized").
NO_EVENTS_ACL = """topic readwrite kidsafe/v1/+/cmd/#
topic readwrite kidsafe/v1/+/reply/#
topic readwrite kidsafe/v1/+/status
topic readwrite kidsafe/v1/+/birth
topic readwrite kidsafe/v1/+/health
"""


def b64(k: bytes) -> str:
    return base64.urlsafe_b64encode(k).rstrip(b"=").decode()


@contextmanager
def unit(tmp_path: Path, broker: LocalBroker, reader: VirtualSerial, extra: str = "",
         args: list[str] | None = None) -> Iterator[tuple[GatewayProcess, cmdtool.Session,
                                                          Any, Subscriber]]:
    generate_keypair(tmp_path / "backend.key", tmp_path / "backend.pub")
    key = load_private_key(tmp_path / "backend.key")
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "buf.db",
        readers=[{"id": "gate-main", "kind": "rdm6300", "role": "gate", "port": reader.path,
                  "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5}],
        tags=TAGS, unit=UNIT, gate_window_s=1.0,
        extra=f'[commands]\npublic_keys = ["{tmp_path / "backend.pub"}"]\n{extra}')
    sub = Subscriber(broker.port).start()
    gw = GatewayProcess(cfg, tmp_path / "gateway.log", args).start()
    session = None
    try:
        gw.wait_log("reader gate-main: online")
        wait_until(lambda: bool(sub.on("/birth")), 15, "the birth message")
        session = cmdtool.Session(cmdtool.Broker(port=broker.port))
        yield gw, session, key, sub
    finally:
        if session is not None:
            session.close()
        gw.stop()
        sub.stop()  # fails the test if a message broke its schema


def command(s: cmdtool.Session, name: str, args: dict[str, Any], key: Any) -> dict[str, Any]:
    """One signed command; sent again as it is (same id) if its reply is lost: a unit
    whose event publishes the broker refuses reconnects often, and the repeat gets the
    stored reply without doing anything again."""
    env = cmdtool.envelope(name, args, UNIT)
    token = cmdtool.sign_command(env, key)
    for _ in range(3):
        try:
            return s.request(name, token, env["id"], UNIT, timeout_s=5)
        except cmdtool.NoReply:
            continue
    raise AssertionError(f"no reply to {name}")


def engine_state(tmp_path: Path) -> str:
    with sqlite3.connect(f"file:{tmp_path / 'buf.db'}?mode=ro", uri=True) as db:
        return bytes(db.execute("SELECT value FROM kv WHERE key='engine'").fetchone()[0]).decode()


def gate(sim: Rdm6300Sim, *tags: str) -> None:
    for tag in tags:
        sim.present(tag, hold_s=0.3)
        time.sleep(1.2)  # past the gate window: the passage is decided


def test_roster_enrol_unenrol_stale_and_consent_like_never_enrolled(
        tmp_path: Path, broker: LocalBroker, reader: VirtualSerial) -> None:
    rec = tmp_path / "readings.jsonl"
    with unit(tmp_path, broker, reader, args=["--record", str(rec)]) as (gw, s, key, sub):
        sim = Rdm6300Sim(reader, repeat_s=0.1)
        gate(sim, C)  # not enrolled yet: nothing
        r = s.command("roster", {"expected_version": 0,
                                 "enrol": [{"tag": C.lower(), "child": "kid-c3"}]}, UNIT, key)
        assert r["code"] == 200, r
        assert r["data"]["version"] == 1 and r["data"]["tags"] == 3 and r["data"]["added"] == 1
        v1 = r["data"]["checksum"]
        gate(sim, C, A)
        wait_until(lambda: len(sub.events("gate")) == 2, 15, "events of kid-c3 and kid-a1")
        assert [e["child"] for e in sub.events("gate")] == ["kid-c3", "kid-a1"]
        # Withdraw kid-a1 and kid-b2 (never seen), then present them with a stranger, then
        # kid-c3: its event proves the readings before it were processed (and dropped).
        r = s.command("roster", {"expected_version": 1,
                                 "unenrol": [{"child": "kid-a1"}, {"child": "kid-b2"}]}, UNIT, key)
        assert r["code"] == 200 and r["data"]["version"] == 2 and r["data"]["removed"] == 2, r
        mark = len(gw.log_text())
        gate(sim, A, B, S, C)
        wait_until(lambda: len(sub.events("gate")) == 3, 15, "kid-c3's next event")
        assert [e["child"] for e in sub.events("gate")] == ["kid-c3", "kid-a1", "kid-c3"]
        # A stale version: 409 with the unit's version and checksum; nothing changed.
        r = s.command("roster", {"expected_version": 1,
                                 "enrol": [{"tag": B, "child": "kid-b2"}]}, UNIT, key)
        assert r["code"] == 409 and r["data"]["version"] == 2, r
        assert r["data"]["checksum"] != v1
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "gateway", "status", "--config", str(tmp_path / "gw.toml"),
             "--json"], capture_output=True, text=True, timeout=30).stdout or "{}")
        assert status["roster"]["version"] == 2
        assert status["roster"]["checksum"] == r["data"]["checksum"]
        gate(sim, B)
        time.sleep(0.5)
        assert len(sub.events("gate")) == 3
        after = gw.log_text()[mark:]
    # Consent: the withdrawn child B (kid-b2) and the never-enrolled S leave the same traces:
    # none, in the events, the buffer and its WAL, the recording and the log.
    files = {p.name: p.read_bytes() for p in tmp_path.glob("buf.db*")
             if not p.name.endswith((".unit-key", ".pub"))}
    files["readings"] = rec.read_bytes()
    files["log"] = (tmp_path / "gateway.log").read_bytes()
    for name, data in files.items():
        for needle in (B, B.lower(), S, S.lower(), "kid-b2"):
            assert needle.encode() not in data, f"{needle} in {name}"
    # kid-a1, withdrawn after it was seen: nothing after the withdrawal; its saved state gone.
    assert A not in after and "kid-a1" not in after
    with sqlite3.connect(f"file:{tmp_path / 'buf.db'}?mode=ro", uri=True) as db:
        state = db.execute("SELECT value FROM kv WHERE key='engine'").fetchone()[0]
    assert b"kid-a1" not in state and b"kid-c3" in state
    roster = json.loads((tmp_path / "buf.db.roster.json").read_text())
    assert [t["child"] for t in roster["tags"]] == ["kid-c3"] and roster["version"] == 2


def test_pseudonym_rotation_keeps_the_backends_continuity(
        tmp_path: Path, broker: LocalBroker, reader: VirtualSerial) -> None:
    with unit(tmp_path, broker, reader) as (gw, s, key, sub):
        sim = Rdm6300Sim(reader, repeat_s=0.1)
        r = s.command("roster", {"expected_version": 0,
                                 "term": {"id": "2027-spring", "key": b64(K1)}}, UNIT, key)
        assert r["code"] == 200 and r["data"]["term"] == "2027-spring", r
        gate(sim, A)
        r = s.command("roster", {"expected_version": 1,
                                 "term": {"id": "2027-autumn", "key": b64(K2)}}, UNIT, key)
        assert r["code"] == 200, r
        gate(sim, A)
        wait_until(lambda: len(sub.events("gate")) == 2, 15, "two gate events")
        evs = sub.events("gate")
        assert [(e["term"], e["child"]) for e in evs] == [
            ("2027-spring", pseudonym(K1, "kid-a1")), ("2027-autumn", pseudonym(K2, "kid-a1"))]
        # The backend holds the term keys and the enrolment ids: it maps both back.
        table = {(t, pseudonym(k, c)): c for t, k in (("2027-spring", K1), ("2027-autumn", K2))
                 for c in ("kid-a1", "kid-b2")}
        assert {table[(e["term"], e["child"])] for e in evs} == {"kid-a1"}
        assert "kid-a1" not in gw.log_text()  # the log names the child as the wire does
        assert pseudonym(K2, "kid-a1") in gw.log_text()


def test_erase_removes_undelivered_events_with_a_signed_receipt(
        tmp_path: Path, reader: VirtualSerial) -> None:
    acl = tmp_path / "acl"
    acl.write_text(NO_EVENTS_ACL)
    broker = LocalBroker(str(tmp_path / "broker"), extra_conf=f"acl_file {acl}").start()
    try:
        with unit(tmp_path, broker, reader) as (gw, s, key, sub):
            sim = Rdm6300Sim(reader, repeat_s=0.1)
            gate(sim, A, B, A)
            wait_until(lambda: gw.log_text().count("event gate seq=") >= 3, 15, "3 events")
            r = command(s, "erase", {"child": "kid-a1"}, key)
            assert r["code"] == 200, r
            d = r["data"]
            assert d["counts"]["events_deleted"] == 2 and d["counts"]["state_entries"] >= 1, d
            assert sum(b - a + 1 for a, b in d["ranges"]) == 2
            # The receipt verifies with the unit key from the birth message.
            jwk = sub.on("/birth")[-1]["unit_key"]
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
            pub = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(jwk["x"] + "="))
            got = verify(d["receipt"].encode(), Keyring.of(pub), TYP_ERASURE)
            assert got.kid == jwk["kid"]
            body = json.loads(got.payload)
            assert body["child"] == "kid-a1" and body["request"] == r["id"]
            assert body["counts"] == d["counts"] and body["unit"] == UNIT
            with sqlite3.connect(f"file:{tmp_path / 'buf.db'}?mode=ro", uri=True) as db:
                left = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox")]
            assert [e["child"] for e in left if e["kind"] == "gate"] == ["kid-b2"]
            # The broker lets events through again: only kid-b2's arrives.
            broker.extra_conf = ""
            broker.restart()
            # After the refusals the unit's reconnect has backed off: 45 s.
            wait_until(lambda: len(sub.events("gate")) >= 1, 45, "the undelivered event")
            time.sleep(0.5)
            assert [e["child"] for e in sub.events("gate")] == ["kid-b2"]
    finally:
        broker.stop()


def test_retention_purges_old_undelivered_events_and_logs_counts(
        tmp_path: Path, reader: VirtualSerial) -> None:
    acl = tmp_path / "acl"
    acl.write_text(NO_EVENTS_ACL)
    broker = LocalBroker(str(tmp_path / "broker"), extra_conf=f"acl_file {acl}").start()
    extra = "[privacy]\nretention_days = 0.0001\npurge_interval_s = 1\n"  # 8.64 s
    try:
        with unit(tmp_path, broker, reader, extra=extra) as (gw, _s, _key, sub):
            sim = Rdm6300Sim(reader, repeat_s=0.1)
            gate(sim, A, B)
            wait_until(lambda: gw.log_text().count("event gate seq=") >= 2, 15, "2 events")

            def purged() -> int:  # each event goes at the purge after it is 8.64 s old
                return sum(int(m) for m in re.findall(
                    r"retention \(0.0001 days\): (\d+) events purged", gw.log_text()))

            wait_until(lambda: purged() >= 2, 25, "both events purged")
            wait_until(lambda: "kid-b2" not in engine_state(tmp_path), 5, "kid-b2 forgotten")
            with sqlite3.connect(f"file:{tmp_path / 'buf.db'}?mode=ro", uri=True) as db:
                kinds = [k for (k,) in db.execute("SELECT kind FROM outbox")]
            assert "gate" not in kinds and "buffer_drop" in kinds
            assert "kid-a1" not in engine_state(tmp_path)  # unseen for longer: forgotten
            broker.extra_conf = ""
            broker.restart()

            def dropped() -> int:
                return sum(e["data"]["count"] for e in sub.events("buffer_drop"))

            wait_until(lambda: dropped() == 2, 20, "the drop notices")
            assert {e["data"]["lane"] for e in sub.events("buffer_drop")} == {"routine"}
            assert not sub.events("gate")
    finally:
        broker.stop()
