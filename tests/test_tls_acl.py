"""TLS with server verification and client certificates, passwords and the sample ACL,
against a mosquitto with require_certificate, as a real deployment runs it."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from harness import REPO, GatewayProcess, Subscriber, wait_until, write_config
from tlsca import TestCA

UNIT = "unit-t1"


class Pki:
    def __init__(self, d: Path) -> None:
        self.ca = TestCA(d / "ca")
        self.server = self.ca.issue("localhost", server=True)
        self.unit = self.ca.issue(UNIT)
        self.backend = self.ca.issue("backend")
        self.rogue_ca = TestCA(d / "rogue", "rogue-ca")
        self.rogue = self.rogue_ca.issue(UNIT)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed for the TLS tests (./dev.sh setup installs it)")
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Iterator[LocalBroker]:
    passwd = tmp_path / "passwd"
    for i, (user, pw) in enumerate(((UNIT, "unit-pw"), ("backend", "backend-pw"))):
        subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd),
                        user, pw], check=True, capture_output=True, timeout=30)
    acl = REPO / "config" / "mosquitto" / "acl.example"  # the sample ACL, as shipped
    conf = "\n".join([
        f"cafile {pki.ca.cert}", f"certfile {pki.server[0]}", f"keyfile {pki.server[1]}",
        "require_certificate true", f"password_file {passwd}", f"acl_file {acl}",
        "allow_anonymous false",
    ])
    b = LocalBroker(str(tmp_path / "broker"), extra_conf=conf).start()
    try:
        yield b
    finally:
        b.stop()


def try_connect(port: int, ca: Path, cert: Path | None, key: Path | None,
                user: str | None = None, pw: str | None = None) -> tuple[bool, mqtt.Client]:
    ok = threading.Event()
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{id(ok)}",
                    protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(ca), certfile=str(cert) if cert else None,
              keyfile=str(key) if key else None)
    if user:
        c.username_pw_set(user, pw)

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if not rc.is_failure:
            ok.set()
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *_a: done.set()
    try:
        c.connect("127.0.0.1", port)
    except OSError:
        return False, c
    c.loop_start()
    done.wait(5)
    return ok.is_set(), c


def backend(pki: Pki, port: int, check_schemas: bool = True) -> Subscriber:
    return Subscriber(port, client_id="backend-tls", check_schemas=check_schemas,
                      ca=str(pki.ca.cert),
                      cert=str(pki.backend[0]), key=str(pki.backend[1]), username="backend",
                      password="backend-pw").start()


def test_unit_over_tls_with_client_certificate_and_password(tmp_path: Path, pki: Pki,
                                                            tls_broker: LocalBroker) -> None:
    (tmp_path / "pw").write_text("unit-pw\n")
    (tmp_path / "pw").chmod(0o600)  # a world-readable secret is refused
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=tls_broker.port, buffer=tmp_path / "b.db",
        readers=[{"id": "gate-main", "kind": "rdm6300", "port": port.path}],
        tags=[{"id": "62E3086CED", "child": "c-1"}], unit=UNIT,
        broker_extra={"username": UNIT, "password_file": str(tmp_path / "pw"),
                      "tls": {"ca_file": str(pki.ca.cert), "cert_file": str(pki.unit[0]),
                              "key_file": str(pki.unit[1])}})
    sub = backend(pki, tls_broker.port)
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        gw.wait_log("connected (MQTT 5)")
        gw.wait_log("reader gate-main: online")
        Rdm6300Sim(port).present("62E3086CED", 0.2)
        wait_until(lambda: len(sub.events("gate")) == 1, 15, "the gate event over TLS")
        assert sub.events("gate")[0]["child"] == "c-1"
        assert sub.on("/status")[0]["state"] == "online"
        assert sub.violations == []
    finally:
        gw.stop()
        sub.stop()
        port.close()


def test_missing_or_wrong_client_certificate_is_refused(pki: Pki,
                                                        tls_broker: LocalBroker) -> None:
    ok, c = try_connect(tls_broker.port, pki.ca.cert, None, None, UNIT, "unit-pw")
    c.loop_stop()
    assert not ok, "a client without a certificate got in"
    ok, c = try_connect(tls_broker.port, pki.ca.cert, *pki.rogue, UNIT, "unit-pw")
    c.loop_stop()
    assert not ok, "a certificate from another CA got in"
    ok, c = try_connect(tls_broker.port, pki.ca.cert, *pki.unit, UNIT, "wrong-pw")
    c.loop_stop()
    assert not ok, "a wrong password got in"
    ok, c = try_connect(tls_broker.port, pki.ca.cert, *pki.unit, UNIT, "unit-pw")
    c.loop_stop()
    c.disconnect()
    assert ok  # the control: the right certificate and password do get in


def test_gateway_with_a_rogue_certificate_keeps_retrying_without_crashing(
        tmp_path: Path, pki: Pki, tls_broker: LocalBroker) -> None:
    (tmp_path / "pw").write_text("unit-pw\n")
    (tmp_path / "pw").chmod(0o600)  # a world-readable secret is refused
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=tls_broker.port, buffer=tmp_path / "b.db",
        readers=[], tags=[], unit=UNIT,
        broker_extra={"username": UNIT, "password_file": str(tmp_path / "pw"),
                      "reconnect_max_s": 0.5,
                      "tls": {"ca_file": str(pki.ca.cert), "cert_file": str(pki.rogue[0]),
                              "key_file": str(pki.rogue[1])}})
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        gw.wait_log("retrying with back-off, attempt 1")
        text = gw.log_text()
        assert "connected (MQTT" not in text
        # The log says what is wrong in words a technician can act on.
        assert "check that the broker's CA signed the client certificate" in text, text
        assert gw.proc is not None and gw.proc.poll() is None  # still running, still trying
        assert "Traceback" not in gw.log_text()
    finally:
        gw.stop()


def test_wrong_ca_file_is_named_in_the_log(tmp_path: Path, pki: Pki,
                                           tls_broker: LocalBroker) -> None:
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=tls_broker.port, buffer=tmp_path / "b.db",
        readers=[], tags=[], unit=UNIT, broker_extra={
            "reconnect_max_s": 0.5,
            "tls": {"ca_file": str(pki.rogue_ca.cert), "cert_file": str(pki.unit[0]),
                    "key_file": str(pki.unit[1])}})
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        gw.wait_log("retrying with back-off, attempt 1")
        text = gw.log_text()
        assert "CERTIFICATE_VERIFY_FAILED" in text
        assert f"not signed by ca_file ({pki.rogue_ca.cert})" in text
    finally:
        gw.stop()


def test_unit_cannot_publish_outside_its_prefix(pki: Pki, tls_broker: LocalBroker) -> None:
    sub = backend(pki, tls_broker.port, check_schemas=False)  # the probes are not events
    ok, unit = try_connect(tls_broker.port, pki.ca.cert, *pki.unit, UNIT, "unit-pw")
    assert ok
    try:
        acks: dict[int, Any] = {}
        unit.on_publish = lambda _c, _u, mid, rc, _p=None: acks.__setitem__(mid, rc)
        other = unit.publish("kidsafe/v1/unit-t2/event/gate", b'{"forged": true}', qos=1)
        own = unit.publish(f"kidsafe/v1/{UNIT}/event/gate", b'{"own": true}', qos=1)
        wait_until(lambda: own.mid in acks and other.mid in acks, 10, "both PUBACKs")
        wait_until(lambda: any(t.endswith(f"{UNIT}/event/gate") for t, _, _ in sub.messages),
                   10, "the unit's own message")
        assert not any("unit-t2" in t for t, _, _ in sub.messages)  # the forged one never arrived
        assert acks[other.mid].is_failure  # MQTT 5: the broker says "not authorized"
        assert not acks[own.mid].is_failure
    finally:
        unit.loop_stop()
        unit.disconnect()
        sub.stop()
