"""One unit cannot knock another off the broker: the shipped mosquitto sample
(config/mosquitto/kidsafe.conf.example, run as it is with its paths and port replaced)
binds every connection's client id to its username, so a unit logged in as gate-b that
connects with client id gate-a does not close gate-a's connection. The control runs the
same file without that line and shows the takeover the line prevents."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from firmware_sim import procs
from firmware_sim.broker import free_port
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from harness import REPO, GatewayProcess, Subscriber, wait_until, write_config
from tlsca import TestCA

SAMPLE = REPO / "config" / "mosquitto" / "kidsafe.conf.example"
ACL = REPO / "config" / "mosquitto" / "acl.example"
BIND_LINE = "use_username_as_clientid true"


class Pki:
    def __init__(self, d: Path) -> None:
        self.ca = TestCA(d / "ca")
        self.server = self.ca.issue("localhost", server=True)
        self.certs = {cn: self.ca.issue(cn) for cn in ("gate-a", "gate-b", "backend")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed for the TLS tests (./dev.sh setup installs it)")
    return Pki(tmp_path_factory.mktemp("pki"))


class SampleBroker:
    """mosquitto running the shipped sample config, paths and port replaced."""

    def __init__(self, d: Path, pki: Pki, bind_client_ids: bool = True) -> None:
        self.dir = d
        self.port = free_port()
        passwd = d / "passwd"
        for i, user in enumerate(("gate-a", "gate-b", "backend")):
            subprocess.run(["mosquitto_passwd", "-b", *(["-c"] if i == 0 else []), str(passwd),
                            user, f"{user}-pw"], check=True, capture_output=True, timeout=30)
        text = SAMPLE.read_text()
        assert BIND_LINE in text.splitlines()
        if not bind_client_ids:  # the control: the sample as it was before
            text = text.replace(BIND_LINE, "")
        repl = {"listener 8883": f"listener {self.port} 127.0.0.1",
                "/etc/mosquitto/ca_certificates/kidsafe-ca.pem": str(pki.ca.cert),
                "/etc/mosquitto/certs/broker.pem": str(pki.server[0]),
                "/etc/mosquitto/certs/broker.key": str(pki.server[1]),
                "/etc/mosquitto/kidsafe.passwd": str(passwd),
                "/etc/mosquitto/kidsafe.acl": str(ACL)}
        for old, new in repl.items():
            assert old in text, old
            text = text.replace(old, new)
        assert not re.search(r"/etc/mosquitto", text)
        extra = [f"persistence_location {d}/", "log_dest stderr", "log_type all"]
        if os.geteuid() == 0:
            extra.insert(0, "user root")
        self.conf = d / "mosquitto.conf"
        self.conf.write_text("\n".join(extra) + "\n" + text)
        self.log = d / "mosquitto.log"
        self.proc = procs.spawn_listening(["mosquitto", "-c", str(self.conf)], self.log,
                                          self.port, "mosquitto", 10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        procs.end(self.proc)


@pytest.fixture
def sample_broker(tmp_path: Path, pki: Pki) -> Iterator[SampleBroker]:
    (tmp_path / "broker").mkdir()
    b = SampleBroker(tmp_path / "broker", pki)
    try:
        yield b
    finally:
        b.stop()


class Client:
    """A plain paho client over TLS with a unit's (or the backend's) credentials."""

    def __init__(self, port: int, pki: Pki, user: str, client_id: str) -> None:
        self.connected = threading.Event()
        self.lost = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        cert, key = pki.certs[user]
        self.c.tls_set(ca_certs=str(pki.ca.cert), certfile=str(cert), keyfile=str(key))
        self.c.username_pw_set(user, f"{user}-pw")
        self.acks: dict[int, Any] = {}

        def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
            if not rc.is_failure:
                self.connected.set()

        self.c.on_connect = on_connect
        self.c.on_disconnect = lambda *_a: self.lost.set()
        self.c.on_publish = lambda _c, _u, mid, rc, _p=None: self.acks.__setitem__(mid, rc)
        self.c.reconnect_delay_set(60, 60)  # one connection per test step: no auto-return
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        assert self.connected.wait(10), f"{user} could not connect"

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_a_unit_cannot_take_over_another_units_client_id(tmp_path: Path, pki: Pki,
                                                          sample_broker: SampleBroker) -> None:
    """The real gate-a (gatewayd) stays connected and keeps delivering while gate-b
    connects with client id gate-a."""
    (tmp_path / "pw").write_text("gate-a-pw\n")
    (tmp_path / "pw").chmod(0o600)
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    cert, key = pki.certs["gate-a"]
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=sample_broker.port, buffer=tmp_path / "b.db",
        readers=[{"id": "gate-main", "kind": "rdm6300", "port": port.path}],
        tags=[{"id": "62E3086CED", "child": "c-1"}, {"id": "62E3086CEE", "child": "c-2"}],
        unit="gate-a",
        broker_extra={"username": "gate-a", "password_file": str(tmp_path / "pw"),
                      "tls": {"ca_file": str(pki.ca.cert), "cert_file": str(cert),
                              "key_file": str(key)}})
    cert_b, key_b = pki.certs["backend"]
    sub = Subscriber(sample_broker.port, client_id="backend", ca=str(pki.ca.cert),
                     cert=str(cert_b), key=str(key_b), username="backend",
                     password="backend-pw", check_schemas=False).start()
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    impostor = None
    try:
        gw.wait_log("connected (MQTT 5)")
        gw.wait_log("reader gate-main: online")
        Rdm6300Sim(port).present("62E3086CED", 0.2)
        wait_until(lambda: len(sub.events("gate")) == 1, 15, "gate-a's first event")

        impostor = Client(sample_broker.port, pki, "gate-b", client_id="gate-a")
        # The broker made it gate-b: its own subtree only, gate-a's is refused.
        forged = impostor.c.publish("kidsafe/v1/gate-a/event/gate", b'{"forged":1}', qos=1)
        own = impostor.c.publish("kidsafe/v1/gate-b/health", b"{}", qos=1)
        wait_until(lambda: forged.mid in impostor.acks and own.mid in impostor.acks, 10,
                   "both PUBACKs")
        assert impostor.acks[forged.mid].is_failure and not impostor.acks[own.mid].is_failure
        time.sleep(1.0)  # a takeover would have closed gate-a's connection by now

        text = sample_broker.log_text()
        assert "already connected, closing old connection" not in text, text[-2000:]
        assert "broker connection lost" not in gw.log_text()
        assert gw.log_text().count("connected (MQTT 5)") == 1
        # gate-a keeps delivering over the connection it never lost.
        Rdm6300Sim(port).present("62E3086CEE", 0.2)
        wait_until(lambda: len(sub.events("gate")) == 2, 15, "gate-a's second event")
        assert [e["child"] for e in sub.events("gate")] == ["c-1", "c-2"]
        assert not any(b"forged" in p for _, p, _ in sub.messages)
        assert not impostor.lost.is_set()  # the impostor is simply gate-b
    finally:
        if impostor is not None:
            impostor.close()
        gw.stop()
        sub.stop()
        port.close()


def test_control_without_the_binding_the_takeover_happens(tmp_path: Path, pki: Pki) -> None:
    """What the sample's line prevents: the same file without it lets gate-b close gate-a."""
    (tmp_path / "broker").mkdir()
    b = SampleBroker(tmp_path / "broker", pki, bind_client_ids=False)
    try:
        real = Client(b.port, pki, "gate-a", client_id="gate-a")
        impostor = Client(b.port, pki, "gate-b", client_id="gate-a")
        wait_until(real.lost.is_set, 10, "gate-a's connection closed by the impostor")
        assert "already connected, closing old connection" in b.log_text()
        impostor.close()
        real.c.loop_stop()
    finally:
        b.stop()


def test_check_config_warns_where_the_sample_broker_would_disagree(tmp_path: Path) -> None:
    from gateway.config import load
    from harness import GOOD_CONFIG

    p = tmp_path / "gw.toml"
    p.write_text(GOOD_CONFIG.replace('port = 1883', 'port = 1883\nusername = "gate-01"'))
    assert load(p).warnings == ()  # username = unit id = client id: nothing to say
    p.write_text(GOOD_CONFIG.replace(
        'port = 1883', 'port = 1883\nusername = "gate-99"\nclient_id = "gw-x"'))
    assert [w.key for w in load(p).warnings] == ["broker.username", "broker.client_id"]
