"""Configuration: one TOML file, validated at start into typed objects.

Validation collects *every* error (file, key, what was expected) before
giving up, so a technician fixes a config in one pass. Nothing starts on a
config with errors. Secrets (the broker password) may live in files the
config points to; relative paths are taken from the config file's folder.

Strict on purpose (issue 11): a config that passes here must not break the
unit later. Every number is finite and bounded (MQTT's keep-alive, the
back-offs, the buffer caps, the engine's windows), tag ids are printable,
two readers never share a serial port, a secret file readable by every user
is refused (with the chmod that fixes it), a topic prefix the broker would
refuse is refused here, and the buffer path must be a file this user can
write. What still works but is probably wrong is a warning (``warnings``):
port 8883 without TLS, one child on two tags of one kind, a zone reader that
no zone covers on a unit with no position.

This module sits at the top: it composes what the layers below declare (the
engine's sections in :mod:`gateway.engine.settings`, each driver's ``Options``
listed by :mod:`drivers.registry`), and neither of them imports it.
"""

from __future__ import annotations

import os
import stat
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from drivers import registry
from gateway.checker import (
    Checker,
    ConfigError,
    ConfigInvalid,
    bounds,
    identifier,
    one_of,
    printable,
    seconds,
    tcp_port,
    type_name,
)
from gateway.engine.runtime import EngineConfig
from gateway.engine.settings import READER_KEYS, EngineSettings, parse_settings
from gateway.model import ReaderConfig, TagConfig, canonical_tag_id
from gateway.options import ReaderOptions, option_names, parse_options
from gateway.signing import KeyFileError, Keyring, load_keyring

# Re-exported: callers and tests name them through this module.
__all__ = ["BrokerConfig", "BufferConfig", "Config", "ConfigError", "ConfigInvalid",
           "DeliveryConfig", "GateConfig", "PrivacyConfig",
           "ReaderConfig", "TagConfig", "TlsConfig", "UnitConfig", "canonical_tag_id",
           "engine_config", "load", "parse", "reader_config"]

READER_ROLES = ("gate", "gate_outer", "gate_inner", "zone", "gps")
READER_BASE_KEYS = ("id", "kind", "role")  # every reader table; the rest: engine's and driver's
MQTT_KEEPALIVE_MAX = 65535  # the CONNECT packet's two bytes; more and paho raises at connect
MAX_TAG_ID = 128


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
    # A second connection, to another broker address, for the emergency lane while the
    # main one is down (docs/mqtt.md, "Standby connection"); None: off.
    standby_host: str | None = None
    standby_port: int = 1883
    standby_client_id: str = ""  # "" when off; default "<client_id>-standby"
    standby_subscribe: str = "outage"  # receipts: at an outage's first publish, or "connect"


@dataclass(frozen=True, slots=True)
class BufferConfig:
    path: str
    max_mb: float = 256.0
    max_events: int = 2_000_000
    reserve_mb: float = 64.0  # free disk the buffer never grows into


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    """[delivery]: when an event may leave the buffer (docs/mqtt.md, "Receipts")."""

    mode: str = "broker"  # "broker": deleted on the broker's PUBACK; "receipt": on the backend's
    receipt_timeout_s: float = 60.0  # an event awaiting its receipt this long is sent again
    max_awaiting: int = 10_000  # new routine/telemetry only while fewer await a receipt
    # The timeout doubles while resends bring no receipt, up to this (None: 8 x the base).
    receipt_timeout_max_s: float | None = None


DELIVERY_MODES = ("broker", "receipt")


@dataclass(frozen=True, slots=True)
class GateConfig:
    repeat_window_s: float = 3.0  # reads of one card closer than this are one presentation


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    """docs/privacy.md. Events, sightings and last-seen state stay on the unit at most
    ``retention_days``; the purge runs every ``purge_interval_s``."""

    retention_days: float = 30.0
    purge_interval_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    """Signed commands (gateway/commands): the backend's public keys and the limits."""

    public_keys: tuple[str, ...] = ()  # PEM files; two during a key change
    keyring: Keyring = field(default_factory=Keyring, compare=False, repr=False)
    max_bytes: int = 256 * 1024
    clock_skew_s: float = 60.0
    max_lifetime_s: float = 86_400.0
    confirm_s: float = 120.0  # a pushed config must reach the broker this soon (gateway/trial.py)


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
    warnings: tuple[ConfigError, ...] = ()  # works, but probably not as meant
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # for later sections
    engine: EngineSettings = field(default_factory=EngineSettings)
    privacy: PrivacyConfig = PrivacyConfig()
    commands: CommandsConfig = CommandsConfig()
    delivery: DeliveryConfig = DeliveryConfig()

    def tag_map(self) -> dict[str, TagConfig]:
        return {t.id: t for t in self.tags}


def engine_config(cfg: Config, tags: dict[str, TagConfig] | None = None) -> EngineConfig:
    """What the engine needs of a config (the engine itself never sees the loader);
    ``tags``: the roster in force (gateway/roster.py), else the config's."""
    return EngineConfig(
        reader_roles={r.id: r.role for r in cfg.readers},
        tags=cfg.tag_map() if tags is None else tags,
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

    known = {"unit", "broker", "buffer", "readers", "tags", "gate", "health", "commands",
             "delivery", "privacy"}
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
                  "protocol", "topic_prefix", "reconnect_max_s", "tls", "standby_host",
                  "standby_port", "standby_client_id", "standby_subscribe"}, "broker")
    password = None
    pw_file = c.get(b, "password_file", "broker", str)
    if pw_file:
        _secret_file(c, "broker.password_file", rel(pw_file))
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
                elif k == "key_file":
                    _secret_file(c, "broker.tls.key_file", v)
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
        host=c.get(b, "host", "broker", str, "127.0.0.1", check=_host),
        port=c.get(b, "port", "broker", int, 1883, check=tcp_port),
        client_id=c.get(b, "client_id", "broker", str, "", check=_client_id) or unit.id,
        username=c.get(b, "username", "broker", str, None, check=printable),
        password=password,
        keepalive_s=c.get(b, "keepalive_s", "broker", int, 30,
                          check=bounds(ge=1, le=MQTT_KEEPALIVE_MAX)),
        protocol=protocol,
        topic_prefix=c.get(b, "topic_prefix", "broker", str, "kidsafe/v1",
                           check=_topic_prefix).rstrip("/"),
        reconnect_max_s=c.get(b, "reconnect_max_s", "broker", float, 60.0, check=seconds()),
        tls=tls,
    )
    broker = _standby(c, b, broker)
    if broker.port == 8883 and tls is None:
        c.warn("broker.port", "8883 is MQTT over TLS, but [broker.tls] is missing: the "
                              "connection will fail or go out in clear (add [broker.tls] "
                              "or use port 1883)")
    # The shipped broker config binds the client id to the username (one unit cannot
    # knock another off the broker) and confines a username to its own topics.
    if broker.username and broker.username != unit.id:
        c.warn("broker.username", f"{broker.username!r} is not the unit id {unit.id!r}: under "
               "the shipped broker ACL a unit may publish only under <prefix>/<username>/")
    if broker.username and broker.client_id not in (unit.id, broker.username):
        c.warn("broker.client_id", f"{broker.client_id!r}: a broker that uses the username "
               "as the client id (the shipped sample: use_username_as_clientid) ignores it")

    bf = c.table(raw, "buffer", "buffer", required=True)
    c.unknown(bf, {"path", "max_mb", "max_events", "reserve_mb"}, "buffer")
    buffer = BufferConfig(
        path=rel(c.get(bf, "path", "buffer", str, "", required=True, check=printable)),
        max_mb=c.get(bf, "max_mb", "buffer", float, 256.0, check=bounds(gt=0, le=1_000_000)),
        max_events=c.get(bf, "max_events", "buffer", int, 2_000_000,
                         check=bounds(ge=1, le=1_000_000_000)),
        reserve_mb=c.get(bf, "reserve_mb", "buffer", float, 64.0,
                         check=bounds(ge=0, le=1_000_000)),
    )
    if buffer.path:
        _buffer_path(c, buffer.path)

    g = c.table(raw, "gate", "gate", required=False)
    c.unknown(g, {"repeat_window_s"}, "gate")
    # A window of minutes would swallow a child's way out after the way in.
    gate = GateConfig(repeat_window_s=c.get(g, "repeat_window_s", "gate", float, 3.0,
                                            check=seconds(600)))
    h = c.table(raw, "health", "health", required=False)
    c.unknown(h, {"interval_s"}, "health")
    health_interval = c.get(h, "interval_s", "health", float, 60.0,
                            check=bounds(gt=0, le=86_400))

    pv = c.table(raw, "privacy", "privacy", required=False)
    c.unknown(pv, {"retention_days", "purge_interval_s"}, "privacy")
    privacy = PrivacyConfig(
        retention_days=c.get(pv, "retention_days", "privacy", float, 30.0,
                             check=bounds(gt=0, le=3650)),
        purge_interval_s=c.get(pv, "purge_interval_s", "privacy", float, 3600.0,
                               check=bounds(ge=1, le=86_400)),
    )

    delivery = _delivery(raw, c)
    readers = _readers(raw, c)
    commands = _commands(raw, c, rel)
    if delivery.mode == "receipt" and not commands.public_keys:
        c.error("delivery.mode", "\"receipt\" needs the backend's public keys in [commands] "
                                 "public_keys: receipts are signed with them")

    tags: list[TagConfig] = []
    tl = raw.get("tags", [])
    if not isinstance(tl, list):
        c.error("tags", f"expected an array of tables ([[tags]]), got {type_name(tl)}")
        tl = []
    tag_ids: set[str] = set()
    child_tags: dict[str, list[tuple[str, str]]] = {}  # child -> [(path, tag id)]
    for i, tg in enumerate(tl):
        path = f"tags[{i}]"
        if not isinstance(tg, dict):
            c.error(path, f"expected a table, got {type_name(tg)}")
            continue
        c.unknown(tg, {"id", "child", "groups"}, path)
        tid = canonical_tag_id(c.get(tg, "id", path, str, "", required=True, check=_tag_id))
        if tid and tid in tag_ids:
            c.error(f"{path}.id", f"tag {tid} is enrolled twice")
        tag_ids.add(tid)
        groups = c.get(tg, "groups", path, list, [])
        if not all(isinstance(x, str) for x in groups):
            c.error(f"{path}.groups", "expected an array of strings")
            groups = []
        child = c.get(tg, "child", path, str, "", required=True, check=identifier)
        if tid and child:
            child_tags.setdefault(child, []).append((path, tid))
        tags.append(TagConfig(id=tid, child=child, groups=tuple(groups)))
    _children_on_two_tags(c, child_tags)

    engine = parse_settings(raw, c, readers)  # [engine], [[zones]], ...: errors listed with ours
    _uncovered_zone_readers(c, readers, engine)
    if c.errors:
        raise ConfigInvalid(c.errors, c.warnings)
    return Config(file=file, unit=unit, broker=broker, buffer=buffer, readers=tuple(readers),
                  tags=tuple(tags), gate=gate, health_interval_s=health_interval,
                  warnings=tuple(c.warnings), raw=raw, engine=engine, commands=commands,
                  delivery=delivery, privacy=privacy)


def _commands(raw: dict[str, Any], c: Checker, rel: Any) -> CommandsConfig:
    """``[commands]``: the backend's public keys are loaded here, so a bad one stops the
    start (not the first command)."""
    t = c.table(raw, "commands", "commands", required=False)
    c.unknown(t, {"public_keys", "max_bytes", "clock_skew_s", "max_lifetime_s", "confirm_s"},
              "commands")
    paths = c.get(t, "public_keys", "commands", list, [])
    if not all(isinstance(x, str) and x.strip() for x in paths):
        c.error("commands.public_keys", "expected an array of file paths")
        paths = []
    paths = [rel(x) for x in paths]
    keyring = Keyring()
    try:
        keyring = load_keyring(paths)
    except KeyFileError as e:
        c.error("commands.public_keys", str(e))
    if len(paths) > 4:
        c.error("commands.public_keys", "at most 4 keys (two are enough for a key change)")
    return CommandsConfig(
        public_keys=tuple(paths), keyring=keyring,
        max_bytes=c.get(t, "max_bytes", "commands", int, 256 * 1024,
                        check=bounds(ge=1024, le=256 * 1024)),
        clock_skew_s=c.get(t, "clock_skew_s", "commands", float, 60.0,
                           check=bounds(ge=0, le=3600)),
        max_lifetime_s=c.get(t, "max_lifetime_s", "commands", float, 86_400.0,
                             check=seconds(7 * 86_400)),
        confirm_s=c.get(t, "confirm_s", "commands", float, 120.0,
                        check=bounds(ge=10, le=3600)),
    )


def _delivery(raw: dict[str, Any], c: Checker) -> DeliveryConfig:
    """[delivery] (issue 13). A timeout shorter than a backend's store-and-receipt round
    trip would resend everything twice; a day is the longest an awaiting event may sit."""
    d = c.table(raw, "delivery", "delivery", required=False)
    c.unknown(d, {"mode", "receipt_timeout_s", "receipt_timeout_max_s", "max_awaiting"},
              "delivery")
    base = c.get(d, "receipt_timeout_s", "delivery", float, 60.0,
                 check=bounds(ge=1, le=86_400))
    top: float | None = None
    if "receipt_timeout_max_s" in d:
        top = c.get(d, "receipt_timeout_max_s", "delivery", float, 480.0,
                    check=bounds(ge=1, le=8 * 86_400))
        if top < base:
            c.error("delivery.receipt_timeout_max_s",
                    f"{top:g} is below receipt_timeout_s ({base:g}): the back-off only grows")
    return DeliveryConfig(
        mode=c.get(d, "mode", "delivery", str, "broker", check=one_of(DELIVERY_MODES)),
        receipt_timeout_s=base,
        max_awaiting=c.get(d, "max_awaiting", "delivery", int, 10_000,
                           check=bounds(ge=1, le=1_000_000)),
        receipt_timeout_max_s=top,
    )


# -- the strict checks (issue 11) -----------------------------------------------------------

def _standby(c: Checker, b: dict[str, Any], broker: BrokerConfig) -> BrokerConfig:
    """[broker] standby_*: off unless standby_host is set; a different address than the
    main one (the same broker would gain nothing: what it buys is a connection that is
    already open when the main one's node dies)."""
    host = c.get(b, "standby_host", "broker", str, None, check=_host)
    port = c.get(b, "standby_port", "broker", int, broker.port, check=tcp_port)
    cid = c.get(b, "standby_client_id", "broker", str, "", check=_client_id)
    sub = c.get(b, "standby_subscribe", "broker", str, "outage",
                check=one_of(("outage", "connect")))
    if host is None:
        for k in ("standby_port", "standby_client_id", "standby_subscribe"):
            if k in b:
                c.error(f"broker.{k}", "needs broker.standby_host (the standby is off without it)")
        return broker
    cid = cid or f"{broker.client_id}-standby"
    if (host, port) == (broker.host, broker.port):
        c.error("broker.standby_host", f"{host}:{port} is the main connection's address: the "
                "standby must reach another broker (another node of the cluster)")
    if cid == broker.client_id:
        c.error("broker.standby_client_id", "must differ from the main client id (the broker "
                "would close one connection for the other)")
    if broker.username:
        c.warn("broker.standby_host", "a broker that takes the username as the client id (the "
               "shipped mosquitto sample: use_username_as_clientid) would close the main "
               "connection for the standby; use the standby with a cluster that keeps MQTT "
               "client ids")
    return replace(broker, standby_host=host, standby_port=port, standby_client_id=cid,
                   standby_subscribe=sub)


def _host(v: str) -> str | None:
    if not v.strip():
        return "must not be empty"
    return printable(v) or (None if " " not in v else "must not contain spaces")


def _client_id(v: str) -> str | None:
    # MQTT 3.1.1 brokers must accept 1-23 of [0-9a-zA-Z]; most take more, none take control
    # characters. An empty value means "the unit id".
    return printable(v) or (None if len(v) <= 128 else "must be at most 128 characters")


def _tag_id(v: str) -> str | None:
    t = v.strip()
    if not t:
        return "must not be empty"
    if len(t) > MAX_TAG_ID:
        return f"must be at most {MAX_TAG_ID} characters"
    if problem := printable(v):
        return problem
    return None if " " not in t else "must not contain spaces"


def _topic_prefix(v: str) -> str | None:
    """What a broker accepts as the start of a topic name (MQTT 5 section 4.7), so a bad
    prefix is refused here, not by the broker at every publish ("Unspecified")."""
    if problem := printable(v):
        return problem
    if not v.strip("/"):
        return "must not be empty (e.g. \"kidsafe/v1\")"
    if v.startswith("/"):
        return "must not start with '/' (that makes an empty first level)"
    if v.startswith("$"):
        return "must not start with '$' (brokers reserve those topics, e.g. $SYS)"
    if "+" in v or "#" in v:
        return "must not contain the wildcards '+' or '#' (they are for subscribing)"
    if "" in v.rstrip("/").split("/"):
        return "must not contain empty levels ('//')"
    if len(v.encode()) > 1024:
        return "must be at most 1024 bytes"
    return None


def _secret_file(c: Checker, key: str, path: str) -> None:
    """A password or private key readable by every user on the box is refused."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # the read that follows reports it
    if mode & stat.S_IROTH:
        c.error(key, f"{path} is readable by every user (mode {stat.S_IMODE(mode):04o}); "
                     f"run: chmod 600 {path}")


_AS_DAEMON = "check as the daemon's user, e.g. sudo -u kidsafe gatewayd check-config FILE"


def _buffer_path(c: Checker, path: str) -> None:
    """The buffer file must be a regular file this user can write, or creatable: checked by
    looking, never by creating anything (the daemon creates the file and its folders)."""
    p = Path(path)
    key = "buffer.path"
    if p.is_dir():
        c.error(key, f"{path} is a directory; give a file in it (e.g. {p / 'buffer.db'})")
        return
    if p.exists():
        if not p.is_file():
            c.error(key, f"{path} is not a regular file")
        elif not os.access(p, os.R_OK | os.W_OK):
            c.error(key, f"{path} cannot be read and written by this user (uid {os.getuid()}; "
                         f"{_AS_DAEMON})")
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        c.error(key, f"cannot create {path}: {parent} is not a directory")
    elif not os.access(parent, os.W_OK | os.X_OK):
        c.error(key, f"cannot create {path}: {parent} is not writable by this user "
                     f"(uid {os.getuid()}; {_AS_DAEMON})")


def _children_on_two_tags(c: Checker, child_tags: dict[str, list[tuple[str, str]]]) -> None:
    """A warning, not an error: a child with a gate card and a BLE tag is the normal
    two-technology set-up, and a spare card is legitimate; two tags of one kind are more
    often a typo or a lost card still enrolled (whoever finds it passes as the child)."""
    for child, entries in child_tags.items():
        by_kind: dict[str, list[tuple[str, str]]] = {}
        for path, tid in entries:
            by_kind.setdefault(tid.split(":", 1)[0] if ":" in tid else "card", []).append(
                (path, tid))
        for same in by_kind.values():
            if len(same) > 1:
                c.warn(f"{same[-1][0]}.child",
                       f"child {child!r} is also on {same[0][0]} ({same[0][1]}): both tags "
                       f"report as {child}; fine for a spare, else remove the lost one")


def _uncovered_zone_readers(c: Checker, readers: list[ReaderConfig[Any]],
                            engine: EngineSettings) -> None:
    """A zone reader outside every zone, on a unit with no position: an SOS it hears goes
    out with no zone, no position and no cameras."""
    if engine.position is not None:
        return
    covered = {rid for z in engine.zones for rid in z.readers}
    for i, r in enumerate(readers):
        if r.role == "zone" and r.id not in covered:
            c.warn(f"readers[{i}]", f"zone reader {r.id!r} is in no [[zones]] and "
                                    "[engine].position is not set: an SOS it hears goes out "
                                    "with no zone, no position and no cameras")


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
    _shared_devices(c, readers)
    return readers


def _shared_devices(c: Checker, readers: list[ReaderConfig[Any]]) -> None:
    """Two readers on one serial port steal each other's bytes: refused. Names are resolved
    (/dev/serial/by-id/... is a link to /dev/ttyUSB0)."""
    first: dict[str, tuple[int, str]] = {}
    for i, r in enumerate(readers):
        where = r.options.where()
        if not where.startswith("/"):
            continue  # a BLE adapter, a gpsd host: shared by design
        device = os.path.realpath(where)
        if device in first:
            j, rid = first[device]
            c.error(f"readers[{i}].port", f"{where} is also the port of reader {rid!r} "
                                          f"(readers[{j}]): one reader per serial port")
        else:
            first[device] = (i, r.id)


def reader_config(table: dict[str, Any], file: str = "<reader>") -> ReaderConfig[Any]:
    """One reader table checked as the loader checks it (for tools and tests)."""
    c = Checker(file)
    readers = _readers({"readers": [table]}, c)
    if c.errors:
        raise ConfigInvalid(c.errors)
    return readers[0]
