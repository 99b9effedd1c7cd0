"""MQTT 5 where the broker has it, 3.1.1 otherwise (issue 4's contract)."""

from __future__ import annotations

from pathlib import Path

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from harness import GatewayProcess, Subscriber, wait_until, write_config
from oldbroker import V311OnlyProxy

TAGS = [{"id": "62E3086CED", "child": "c-1001"}]


def run_once(tmp_path: Path, broker_port: int, sub: Subscriber, protocol: str) -> str:
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    cfg = write_config(tmp_path / "gw.toml", broker_port=broker_port, buffer=tmp_path / "b.db",
                       readers=[{"id": "gate-main", "kind": "rdm6300", "port": port.path}],
                       tags=TAGS, broker_extra={"protocol": protocol, "reconnect_max_s": 0.5})
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        gw.wait_log("reader gate-main: online")
        gw.wait_log("connected (MQTT", timeout=20)
        Rdm6300Sim(port).present("62E3086CED", 0.2)
        wait_until(lambda: len(sub.events("gate")) == 1, 15, "the gate event")
        assert sub.violations == []
        return gw.log_text()
    finally:
        gw.stop()
        port.close()


def test_auto_falls_back_to_311_on_a_broker_without_mqtt5(tmp_path: Path,
                                                         broker: LocalBroker) -> None:
    proxy = V311OnlyProxy(broker.port).start()
    sub = Subscriber(broker.port).start()
    try:
        log = run_once(tmp_path, proxy.port, sub, "auto")
    finally:
        sub.stop()
        proxy.stop()
    assert proxy.refused_v5 >= 1 and proxy.forwarded >= 1
    assert "MQTT 5: broker refused the connection" in log and "connected (MQTT 3.1.1)" in log
    assert sub.on("/birth")[0]["mqtt"] == "3.1.1"
    assert "Traceback" not in log


def test_auto_uses_mqtt5_where_the_broker_has_it(tmp_path: Path, broker: LocalBroker) -> None:
    sub = Subscriber(broker.port).start()
    try:
        log = run_once(tmp_path, broker.port, sub, "auto")
    finally:
        sub.stop()
    assert "connected (MQTT 5)" in log and sub.on("/birth")[0]["mqtt"] == "5"


def test_forced_311(tmp_path: Path, broker: LocalBroker) -> None:
    sub = Subscriber(broker.port).start()
    try:
        log = run_once(tmp_path, broker.port, sub, "3.1.1")
    finally:
        sub.stop()
    assert "connected (MQTT 3.1.1)" in log
