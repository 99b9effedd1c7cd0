"""kidsafe-backend's TOML config (config/backend.example.toml is the annotated sample).

Strict like the gateway's: an unknown key or a wrong type is an error naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Tls:
    ca_file: str = ""  # verify the broker against this CA (empty: no TLS)
    cert_file: str = ""  # client certificate and key (the backend's identity at the broker)
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    # Fixed: the broker keeps this session (its subscriptions and the QoS 1 messages queued
    # while the backend is away) under this id. Each worker of a shared group needs its own.
    client_id: str = "kidsafe-backend-1"
    username: str = ""
    password_file: str = ""
    # "3.1.1" or "5". 3.1.1 by default: paho decodes an MQTT 5 PUBLISH's properties at
    # ~100 us per message, which cost a third of the ingest rate (docs/backend.md). MQTT 5
    # is needed for shared subscriptions; RabbitMQ 3.10 speaks 3.1.1 only.
    protocol: str = "3.1.1"
    # "$share/<group>/..." subscriptions (MQTT 5): several workers split the messages.
    # Empty: plain subscriptions (one consumer), the only choice with 3.1.1.
    shared_group: str = ""
    session_expiry_s: int = 7 * 24 * 3600
    keepalive_s: int = 30
    reconnect_max_s: float = 10.0
    # QoS 1 publishes (receipts) in flight at once. paho's default of 20 starves receipts
    # when each PUBACK waits for a clustered broker's replication (RabbitMQ quorum queues):
    # at 600 units 19,394 of 19,615 receipts timed out (docs/fleet.md, finding 1).
    max_inflight: int = 1000
    # A second session only for the emergency lane's kinds (sos, zone_alert, roll_call,
    # buffer_salvage: backend/emergency.py), so an SOS does not queue behind a backlog in
    # the main session's queue (docs/fleet.md, finding 5). Its client id: this, or
    # "<client_id>-emergency" when empty. Its account: emergency_username and
    # emergency_password_file, or the main ones when empty (a broker that makes the
    # username the client id, config/mosquitto/kidsafe.conf.example, needs its own).
    emergency_session: bool = True
    emergency_client_id: str = ""
    emergency_username: str = ""
    emergency_password_file: str = ""
    # The emergency session's receipts at QoS 1 (default) or 0. RabbitMQ 3.10 closes a
    # connection whose QoS 1 publish a queue refuses (a unit's session queue whose leader
    # died: docs/fleet.md, finding 6), and with it the receipts in flight; at 0 nothing is
    # confirmed. The main session's receipt of the same events (it receives them too)
    # stays at QoS 1: the safe path (an experiment: docs/fleet.md, the standby).
    emergency_receipt_qos: int = 1
    tls: Tls = field(default_factory=Tls)


@dataclass(frozen=True, slots=True)
class Database:
    dsn: str = "postgresql://kidsafe@127.0.0.1:5432/kidsafe"
    password_file: str = ""  # read into the connection's password (not kept in the DSN)
    pool_size: int = 4


@dataclass(frozen=True, slots=True)
class Receipts:
    # The backend's Ed25519 private key (PEM; `gatewayd keygen` or gateway.signing); units
    # list its public key in [commands] public_keys. Empty: no receipts are sent (units in
    # [delivery] mode = "broker" need none).
    key_file: str = ""


@dataclass(frozen=True, slots=True)
class Ingest:
    batch_size: int = 500  # messages per transaction at most
    batch_latency_ms: float = 20.0  # a batch is written at most this long after its first
    schemas_dir: str = ""  # the contract's JSON Schemas (empty: docs/schemas beside the package)
    gap_report_s: float = 60.0  # log each unit's unexplained gaps this often (0: never)
    # status/birth/health history kept this long (health comes every interval from every
    # unit: ~2,900 rows a unit a day at 30 s); pruned hourly. Events are never pruned here.
    history_days: float = 14.0


@dataclass(frozen=True, slots=True)
class Config:
    prefix: str = "kidsafe/v1"
    broker: Broker = field(default_factory=Broker)
    database: Database = field(default_factory=Database)
    receipts: Receipts = field(default_factory=Receipts)
    ingest: Ingest = field(default_factory=Ingest)
    # The operator page's [web] table, checked by backend.web.config (kidsafe-backend web).
    web: dict[str, Any] = field(default_factory=dict)


def _build(cls: type[Any], doc: Any, where: str) -> Any:
    if not isinstance(doc, dict):
        raise ConfigError(f"{where or 'config'}: expected a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(doc) - set(known)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}; "
                          f"known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in doc.items():
        key = f"{where}.{name}" if where else name
        default = getattr(cls(), name)
        if hasattr(type(default), "__dataclass_fields__"):
            kwargs[name] = _build(type(default), value, key)
        elif isinstance(value, bool) != isinstance(default, bool) or not (
                isinstance(value, type(default))
                or (isinstance(default, float) and isinstance(value, int))):
            raise ConfigError(f"{key}: expected {type(default).__name__}, got {value!r}")
        else:
            kwargs[name] = type(default)(value)
    return cls(**kwargs)


def parse(doc: dict[str, Any]) -> Config:
    cfg: Config = _build(Config, doc, "")
    if cfg.broker.protocol not in ("5", "3.1.1"):
        raise ConfigError(f'broker.protocol: "5" or "3.1.1", got {cfg.broker.protocol!r}')
    if cfg.broker.shared_group and cfg.broker.protocol != "5":
        raise ConfigError("broker.shared_group needs broker.protocol = \"5\"")
    if cfg.broker.emergency_session and cfg.broker.emergency_client_id == cfg.broker.client_id:
        raise ConfigError("broker.emergency_client_id must differ from broker.client_id")
    if cfg.broker.emergency_receipt_qos not in (0, 1):
        raise ConfigError("broker.emergency_receipt_qos: 0 or 1, got "
                          f"{cfg.broker.emergency_receipt_qos}")
    if not 1 <= cfg.broker.max_inflight <= 65535:
        raise ConfigError(f"broker.max_inflight: 1..65535, got {cfg.broker.max_inflight}")
    if cfg.ingest.batch_size < 1 or cfg.ingest.batch_latency_ms < 0:
        raise ConfigError("ingest.batch_size >= 1 and ingest.batch_latency_ms >= 0")
    return cfg


def load(path: str | Path) -> Config:
    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    return parse(doc)
