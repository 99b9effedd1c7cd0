"""Configuration: one TOML file, validated at start into typed objects.

Validation collects *every* error (file, key, what was expected) before
giving up, so a technician fixes a config in one pass. Nothing starts on a
config with errors. Secrets (the broker password) may live in files the
config points to; relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import drivers

if TYPE_CHECKING:
    from gateway.engine.settings import EngineSettings

T = TypeVar("T")

READER_ROLES = ("gate", "gate_outer", "gate_inner", "zone", "gps")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ConfigError:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class ConfigInvalid(Exception):
    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class UnitConfig:
    id: str
    site: str
    config_version: str = ""


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    id: str
    kind: str
    role: str
    port: str = ""
    baud: int | None = None  # None: the driver's own default (9600 RDM6300, 115200 R2000)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TagConfig:
    id: str  # canonical, uppercase for hex ids
    child: str  # pseudonymous child reference, never a name
    groups: tuple[str, ...] = ()


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
    readers: tuple[ReaderConfig, ...]
    tags: tuple[TagConfig, ...]
    gate: GateConfig = GateConfig()
    health_interval_s: float = 60.0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # for later sections
    engine: EngineSettings = field(default_factory=lambda: _default_engine())

    def tag_map(self) -> dict[str, TagConfig]:
        return {t.id: t for t in self.tags}


def _default_engine() -> EngineSettings:
    from gateway.engine.settings import EngineSettings  # imported late: it imports this module

    return EngineSettings()


def canonical_tag_id(text: str) -> str:
    """Tag ids compare case-insensitively for hex ids; BLE ids keep their own form."""
    t = text.strip()
    return t.upper() if re.fullmatch(r"[0-9A-Fa-f]+", t) else t.lower()


class _Checker:
    """Reads typed values out of nested TOML tables, collecting errors."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[ConfigError] = []

    def error(self, key: str, message: str) -> None:
        self.errors.append(ConfigError(self.file, key, message))

    def table(self, parent: dict[str, Any], key: str, path: str, required: bool) -> dict[str, Any]:
        value = parent.get(key)
        if value is None:
            if required:
                self.error(path, "missing table")
            return {}
        if not isinstance(value, dict):
            self.error(path, f"expected a table, got {_tname(value)}")
            return {}
        return value

    def get(
        self,
        tbl: dict[str, Any],
        key: str,
        path: str,
        kind: type[T] | tuple[type, ...],
        default: T | None = None,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in tbl:
            if required:
                self.error(full, f"missing key (expected {_kname(kind)})")
            return default
        value = tbl[key]
        # bool is an int in Python; TOML keeps them apart, so do we.
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            self.error(full, f"expected {_kname(kind)}, got {_tname(value)} {value!r}")
            return default
        if check is not None and (msg := check(value)):
            self.error(full, msg)
            return default
        return value

    def unknown(self, tbl: dict[str, Any], allowed: set[str], path: str) -> None:
        for key in tbl:
            if key not in allowed:
                full = f"{path}.{key}" if path else key
                self.error(full, f"unknown key (allowed: {', '.join(sorted(allowed))})")


def _tname(v: Any) -> str:
    return {
        str: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "table"
    }.get(type(v), type(v).__name__)


def _kname(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_tname(k()) if k in (str, int, float, bool, list, dict) else k.__name__
                       for k in kinds)


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _port(v: int) -> str | None:
    return None if 0 < v < 65536 else "must be a TCP port between 1 and 65535"


def _ident(v: str) -> str | None:
    return None if _ID_RE.match(v) else "must be 1-64 letters, digits, '_', '.', '-'"


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
    c = _Checker(file)
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
        id=c.get(u, "id", "unit", str, "", required=True, check=_ident),
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
    protocol = c.get(b, "protocol", "broker", str, "auto",
                     check=lambda v: None if v in ("auto", "5", "3.1.1")
                     else "must be one of 'auto', '5', '3.1.1'")
    broker = BrokerConfig(
        host=c.get(b, "host", "broker", str, "127.0.0.1"),
        port=c.get(b, "port", "broker", int, 1883, check=_port),
        client_id=c.get(b, "client_id", "broker", str, "") or unit.id,
        username=c.get(b, "username", "broker", str, None),
        password=password,
        keepalive_s=c.get(b, "keepalive_s", "broker", int, 30, check=_positive),
        protocol=protocol,
        topic_prefix=c.get(b, "topic_prefix", "broker", str, "kidsafe/v1").strip("/"),
        reconnect_max_s=c.get(b, "reconnect_max_s", "broker", float, 60.0, check=_positive),
        tls=tls,
    )

    bf = c.table(raw, "buffer", "buffer", required=True)
    c.unknown(bf, {"path", "max_mb", "max_events"}, "buffer")
    buffer = BufferConfig(
        path=rel(c.get(bf, "path", "buffer", str, "", required=True)),
        max_mb=c.get(bf, "max_mb", "buffer", float, 256.0, check=_positive),
        max_events=c.get(bf, "max_events", "buffer", int, 2_000_000, check=_positive),
    )

    g = c.table(raw, "gate", "gate", required=False)
    c.unknown(g, {"repeat_window_s"}, "gate")
    gate = GateConfig(repeat_window_s=c.get(g, "repeat_window_s", "gate", float, 3.0,
                                            check=_positive))
    h = c.table(raw, "health", "health", required=False)
    c.unknown(h, {"interval_s"}, "health")
    health_interval = c.get(h, "interval_s", "health", float, 60.0, check=_positive)

    readers: list[ReaderConfig] = []
    kinds = drivers.available()
    seen: set[str] = set()
    rl = raw.get("readers", [])
    if not isinstance(rl, list):
        c.error("readers", f"expected an array of tables ([[readers]]), got {_tname(rl)}")
        rl = []
    for i, r in enumerate(rl):
        path = f"readers[{i}]"
        if not isinstance(r, dict):
            c.error(path, f"expected a table, got {_tname(r)}")
            continue
        rid = c.get(r, "id", path, str, f"reader{i}", required=True, check=_ident)
        if rid in seen:
            c.error(f"{path}.id", f"duplicate reader id {rid!r}")
        seen.add(rid)
        kind = c.get(r, "kind", path, str, "", required=True)
        if kind and kind not in kinds:
            c.error(f"{path}.kind", f"unknown reader kind {kind!r} (known: {', '.join(kinds)})")
        role = c.get(r, "role", path, str, "gate",
                     check=lambda v: None if v in READER_ROLES
                     else f"must be one of {', '.join(READER_ROLES)}")
        options = {k: v for k, v in r.items() if k not in ("id", "kind", "role", "port", "baud")}
        readers.append(ReaderConfig(
            id=rid, kind=kind, role=role,
            port=c.get(r, "port", path, str, ""),
            baud=c.get(r, "baud", path, int, None, check=_positive),
            options=options,
        ))
        if kind in kinds:
            # Each driver checks its own options (port required for serial ones, ...).
            for key, msg in drivers.load(kind).check_options(readers[-1]):
                c.error(f"{path}.{key}", msg)

    tags: list[TagConfig] = []
    tl = raw.get("tags", [])
    if not isinstance(tl, list):
        c.error("tags", f"expected an array of tables ([[tags]]), got {_tname(tl)}")
        tl = []
    tag_ids: set[str] = set()
    for i, tg in enumerate(tl):
        path = f"tags[{i}]"
        if not isinstance(tg, dict):
            c.error(path, f"expected a table, got {_tname(tg)}")
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
                                                  check=_ident),
                              groups=tuple(groups)))

    from gateway.engine.settings import parse_settings  # imported late: it imports this module

    engine = parse_settings(raw, c, readers)  # [engine], [[zones]], ...: errors listed with ours
    if c.errors:
        raise ConfigInvalid(c.errors)
    return Config(file=file, unit=unit, broker=broker, buffer=buffer, readers=tuple(readers),
                  tags=tuple(tags), gate=gate, health_interval_s=health_interval, raw=raw,
                  engine=engine)
