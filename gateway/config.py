"""Configuration: one TOML file, validated at start into typed objects.

Validation collects *every* error (file, key, what was expected) before
giving up, so a technician fixes a config in one pass. Nothing starts on a
config with errors. Secrets (the broker password) may live in files the
config points to; relative paths are taken from the config file's folder.

This module sits at the top: it composes what the layers below declare (the
engine's sections in :mod:`gateway.engine.settings`, each driver's ``Options``
listed by :mod:`drivers.registry`), and neither of them imports it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers import registry
from gateway.checker import (
    Checker,
    ConfigError,
    ConfigInvalid,
    identifier,
    one_of,
    positive,
    tcp_port,
    type_name,
)
from gateway.engine.runtime import EngineConfig
from gateway.engine.settings import READER_KEYS, EngineSettings, parse_settings
from gateway.model import ReaderConfig, TagConfig, canonical_tag_id
from gateway.options import ReaderOptions, option_names, parse_options

# Re-exported: callers and tests name them through this module.
__all__ = ["BrokerConfig", "BufferConfig", "Config", "ConfigError", "ConfigInvalid", "GateConfig",
           "ReaderConfig", "TagConfig", "TlsConfig", "UnitConfig", "canonical_tag_id",
           "engine_config", "load", "parse", "reader_config"]

READER_ROLES = ("gate", "gate_outer", "gate_inner", "zone", "gps")
READER_BASE_KEYS = ("id", "kind", "role")  # every reader table; the rest: engine's and driver's


@dataclass(frozen=True, slots=True)
class UnitConfig:
    id: str
    site: str
    config_version: str = ""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_hostname: bool = False


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    protocol: str = "auto"  # "auto" (MQTT 5, falling back to 3.1.1), "5" or "3.1.1"
    topic_prefix: str = "kidsafe/v1"
    reconnect_max_s: float = 60.0
    tls: TlsConfig | None = None


@dataclass(frozen=True, slots=True)
class BufferConfig:
    path: str
    max_mb: float = 256.0
    max_events: int = 2_000_000


@dataclass(frozen=True, slots=True)
class GateConfig:
    repeat_window_s: float = 3.0  # reads of one card closer than this are one presentation


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    unit: UnitConfig
    broker: BrokerConfig
    buffer: BufferConfig
    readers: tuple[ReaderConfig[Any], ...]
    tags: tuple[TagConfig, ...]
    gate: GateConfig = GateConfig()
    health_interval_s: float = 60.0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # for later sections
    engine: EngineSettings = field(default_factory=EngineSettings)

    def tag_map(self) -> dict[str, TagConfig]:
        return {t.id: t for t in self.tags}


def engine_config(cfg: Config) -> EngineConfig:
    """What the engine needs of a config (the engine itself never sees the loader)."""
    return EngineConfig(
        reader_roles={r.id: r.role for r in cfg.readers},
        tags=cfg.tag_map(),
        gate_window_s=cfg.gate.repeat_window_s,
        settings=cfg.engine,
    )


def load(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigInvalid listing every error."""
    p = Path(path)
    file = str(p)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigInvalid([ConfigError(file, "-", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigInvalid([ConfigError(file, "-", f"cannot read: {e}")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigInvalid([ConfigError(file, "-", f"not valid TOML: {e}")]) from None
    return parse(raw, file, base=p.parent)


def parse(raw: dict[str, Any], file: str = "<config>", base: Path | None = None) -> Config:
    c = Checker(file)
    base = base or Path(".")

    def rel(s: str) -> str:
        return str((base / s).resolve()) if s and not s.startswith("/") else s

    known = {"unit", "broker", "buffer", "readers", "tags", "gate", "health"}
    # Sections that later capabilities read (zones, geofences, cameras, ...) are kept in `raw`.
    known |= {"zones", "geofences", "cameras", "engine", "roll_call", "battery"}
    c.unknown(raw, known, "")

    u = c.table(raw, "unit", "unit", required=True)
    c.unknown(u, {"id", "site", "config_version"}, "unit")
    unit = UnitConfig(
        id=c.get(u, "id", "unit", str, "", required=True, check=identifier),
        site=c.get(u, "site", "unit", str, "", required=True),
        config_version=c.get(u, "config_version", "unit", str, ""),
    )

    b = c.table(raw, "broker", "broker", required=True)
    c.unknown(b, {"host", "port", "client_id", "username", "password_file", "keepalive_s",
                  "protocol", "topic_prefix", "reconnect_max_s", "tls"}, "broker")
    password = None
    pw_file = c.get(b, "password_file", "broker", str)
    if pw_file:
        try:
            password = Path(rel(pw_file)).read_text(encoding="utf-8").strip()
        except OSError as e:
            c.error("broker.password_file", f"cannot read {rel(pw_file)}: {e.strerror or e}")
    tls = None
    t = c.table(b, "tls", "broker.tls", required=False)
    if t:
        c.unknown(t, {"ca_file", "cert_file", "key_file", "insecure_skip_hostname"}, "broker.tls")
        files = {}
        for k in ("ca_file", "cert_file", "key_file"):
            v = c.get(t, k, "broker.tls", str, None, required=(k == "ca_file"))
            if v:
                v = rel(v)
                if not Path(v).is_file():
                    c.error(f"broker.tls.{k}", f"file not found: {v}")
            files[k] = v
        if bool(files.get("cert_file")) != bool(files.get("key_file")):
            c.error("broker.tls", "cert_file and key_file go together (client certificate)")
        tls = TlsConfig(
            ca_file=files.get("ca_file") or "",
            cert_file=files.get("cert_file"),
            key_file=files.get("key_file"),
            insecure_skip_hostname=c.get(t, "insecure_skip_hostname", "broker.tls", bool, False),
        )
    protocol = c.get(b, "protocol", "broker", str, "auto", check=one_of(("auto", "5", "3.1.1")))
    broker = BrokerConfig(
        host=c.get(b, "host", "broker", str, "127.0.0.1"),
        port=c.get(b, "port", "broker", int, 1883, check=tcp_port),
        client_id=c.get(b, "client_id", "broker", str, "") or unit.id,
        username=c.get(b, "username", "broker", str, None),
        password=password,
        keepalive_s=c.get(b, "keepalive_s", "broker", int, 30, check=positive),
        protocol=protocol,
        topic_prefix=c.get(b, "topic_prefix", "broker", str, "kidsafe/v1").strip("/"),
        reconnect_max_s=c.get(b, "reconnect_max_s", "broker", float, 60.0, check=positive),
        tls=tls,
    )

    bf = c.table(raw, "buffer", "buffer", required=True)
    c.unknown(bf, {"path", "max_mb", "max_events"}, "buffer")
    buffer = BufferConfig(
        path=rel(c.get(bf, "path", "buffer", str, "", required=True)),
        max_mb=c.get(bf, "max_mb", "buffer", float, 256.0, check=positive),
        max_events=c.get(bf, "max_events", "buffer", int, 2_000_000, check=positive),
    )

    g = c.table(raw, "gate", "gate", required=False)
    c.unknown(g, {"repeat_window_s"}, "gate")
    gate = GateConfig(repeat_window_s=c.get(g, "repeat_window_s", "gate", float, 3.0,
                                            check=positive))
    h = c.table(raw, "health", "health", required=False)
    c.unknown(h, {"interval_s"}, "health")
    health_interval = c.get(h, "interval_s", "health", float, 60.0, check=positive)

    readers = _readers(raw, c)

    tags: list[TagConfig] = []
    tl = raw.get("tags", [])
    if not isinstance(tl, list):
        c.error("tags", f"expected an array of tables ([[tags]]), got {type_name(tl)}")
        tl = []
    tag_ids: set[str] = set()
    for i, tg in enumerate(tl):
        path = f"tags[{i}]"
        if not isinstance(tg, dict):
            c.error(path, f"expected a table, got {type_name(tg)}")
            continue
        c.unknown(tg, {"id", "child", "groups"}, path)
        tid = canonical_tag_id(c.get(tg, "id", path, str, "", required=True))
        if tid and tid in tag_ids:
            c.error(f"{path}.id", f"tag {tid} is enrolled twice")
        tag_ids.add(tid)
        groups = c.get(tg, "groups", path, list, [])
        if not all(isinstance(x, str) for x in groups):
            c.error(f"{path}.groups", "expected an array of strings")
            groups = []
        tags.append(TagConfig(id=tid, child=c.get(tg, "child", path, str, "", required=True,
                                                  check=identifier),
                              groups=tuple(groups)))

    engine = parse_settings(raw, c, readers)  # [engine], [[zones]], ...: errors listed with ours
    if c.errors:
        raise ConfigInvalid(c.errors)
    return Config(file=file, unit=unit, broker=broker, buffer=buffer, readers=tuple(readers),
                  tags=tuple(tags), gate=gate, health_interval_s=health_interval, raw=raw,
                  engine=engine)


def _readers(raw: dict[str, Any], c: Checker) -> list[ReaderConfig[Any]]:
    """Each [[readers]] table: id, kind, role, the engine's keys and the driver's options.

    Any other key is an error with a did-you-mean (``antenna_role`` would otherwise
    silently turn a directional gate into a plain one).
    """
    readers: list[ReaderConfig[Any]] = []
    kinds = registry.names()
    seen: set[str] = set()
    rl = raw.get("readers", [])
    if not isinstance(rl, list):
        c.error("readers", f"expected an array of tables ([[readers]]), got {type_name(rl)}")
        rl = []
    for i, r in enumerate(rl):
        path = f"readers[{i}]"
        if not isinstance(r, dict):
            c.error(path, f"expected a table, got {type_name(r)}")
            continue
        rid = c.get(r, "id", path, str, f"reader{i}", required=True, check=identifier)
        if rid in seen:
            c.error(f"{path}.id", f"duplicate reader id {rid!r}")
        seen.add(rid)
        kind = c.get(r, "kind", path, str, "", required=True)
        if kind and kind not in kinds:
            c.error(f"{path}.kind", f"unknown reader kind {kind!r} (known: {', '.join(kinds)})")
        role = c.get(r, "role", path, str, "gate", check=one_of(READER_ROLES))
        options: ReaderOptions | None = None
        if kind in kinds:
            try:
                declared = registry.driver(kind).Options
            except ImportError as e:  # e.g. the BLE stack missing on this box
                c.error(f"{path}.kind", f"cannot load the {kind} driver: {e}")
            else:
                c.unknown(r, {*READER_BASE_KEYS, *READER_KEYS, *option_names(declared)}, path)
                options = parse_options(declared, r, c, path)
        # A reader with errors still counts for the checks that follow (zone readers, gate
        # roles); the config is refused anyway, so its options stay empty.
        readers.append(ReaderConfig(id=rid, kind=kind, role=role,
                                    options=options if options is not None else ReaderOptions()))
    return readers


def reader_config(table: dict[str, Any], file: str = "<reader>") -> ReaderConfig[Any]:
    """One reader table checked as the loader checks it (for tools and tests)."""
    c = Checker(file)
    readers = _readers({"readers": [table]}, c)
    if c.errors:
        raise ConfigInvalid(c.errors)
    return readers[0]
