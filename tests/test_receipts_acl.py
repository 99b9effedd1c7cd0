"""Receipt mode as the city deploys it: TLS with client certificates, passwords and the
sample ACL (config/mosquitto/acl.example), which lets the backend write a unit's
receipt topic and the unit read it."""

from __future__ import annotations

from pathlib import Path

from test_tls_acl import UNIT, Pki, pki, tls_broker  # noqa: F401 - the fixtures

from firmware_sim.broker import LocalBroker
from firmware_sim.rdm6300 import Rdm6300Sim
from firmware_sim.vserial import VirtualSerial
from gateway import signing
from gateway.outbox import Outbox
from harness import GatewayProcess, wait_until, write_config
from receipter import Receipter

TAGS = [f"{0xC0_0000_0000 + i:010X}" for i in range(50)]


def test_receipts_through_the_sample_acl_over_tls(tmp_path: Path, pki: Pki,  # noqa: F811
                                                  tls_broker: LocalBroker  # noqa: F811
                                                  ) -> None:
    (tmp_path / "pw").write_text("unit-pw\n")
    (tmp_path / "pw").chmod(0o600)
    signing.generate_keypair(tmp_path / "backend.key", tmp_path / "backend.pub")
    key = signing.load_private_key(tmp_path / "backend.key")
    port = VirtualSerial(str(tmp_path / "ttyRFID0"))
    port.plug()
    db = tmp_path / "b.db"
    cfg = write_config(
        tmp_path / "gw.toml", broker_port=tls_broker.port, buffer=db,
        readers=[{"id": "gate-main", "kind": "rdm6300", "port": port.path}],
        tags=[{"id": t, "child": f"c-{i}"} for i, t in enumerate(TAGS)], unit=UNIT,
        gate_window_s=0.2,
        broker_extra={"username": UNIT, "password_file": str(tmp_path / "pw"),
                      "tls": {"ca_file": str(pki.ca.cert), "cert_file": str(pki.unit[0]),
                              "key_file": str(pki.unit[1])}},
        extra=(f'[commands]\npublic_keys = ["{tmp_path / "backend.pub"}"]\n\n'
               '[delivery]\nmode = "receipt"\n'))
    rc = Receipter(tls_broker.port, key, client_id="backend-receipts",
                   tls={"ca": str(pki.ca.cert), "cert": str(pki.backend[0]),
                        "key": str(pki.backend[1]), "username": "backend",
                        "password": "backend-pw"}).start()
    gw = GatewayProcess(cfg, tmp_path / "gw.log").start()
    try:
        gw.wait_log("connected (MQTT 5)")
        gw.wait_log("reader gate-main: online")
        Rdm6300Sim(port).flood(TAGS, 50, 200)
        wait_until(lambda: rc.count() >= 50, 30, "50 events at the backend")

        def depth() -> int:
            with Outbox.saved(str(db)) as saved:
                return saved.depth()

        wait_until(lambda: depth() == 0, 30, "the buffer emptied by the backend's receipts")
        assert rc.receipts_sent > 0 and "receipt refused" not in gw.log_text()
    finally:
        gw.stop()
        rc.stop()
        port.close()
