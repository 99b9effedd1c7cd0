"""`gatewayd`: the one command line of the gateway."""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway import config as configmod


def _setup_logging(level: str) -> None:
    # Under systemd, journald stamps the time itself; a terminal wants it in the line.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt,
                        stream=sys.stderr)
    logging.getLogger("paho").setLevel(logging.WARNING)
    # Bounded lines, and from one call site a burst of 20 then 2 a second, with a
    # "suppressed N" count: nobody reads a flooded journal, and it wears the card.
    from gateway import logs

    logs.install()


def _load(path: str, warnings: bool = True) -> configmod.Config | None:
    """The config (its warnings printed unless ``warnings`` is false); None (errors
    printed) when it must not run."""
    try:
        cfg = configmod.load(path)
    except configmod.ConfigInvalid as e:
        print(f"gatewayd: {path}: {len(e.errors)} error(s) in the configuration:", file=sys.stderr)
        for err in e.errors:
            print(f"  {err}", file=sys.stderr)
        _print_warnings(path, e.warnings)
        return None
    if warnings:
        _print_warnings(path, cfg.warnings)
    return cfg


def _print_warnings(path: str, warnings: Sequence[configmod.ConfigError]) -> None:
    if warnings:
        print(f"gatewayd: {path}: {len(warnings)} warning(s):", file=sys.stderr)
        for w in warnings:
            print(f"  warning: {w}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from gateway import trial, trialfiles

    _setup_logging(args.log_level)
    # A config trial found beside the config (gateway/trial.py) goes on, or rolls back
    # (its deadline passed while the unit was down: a power cut, kill -9), before loading.
    found = trialfiles.at_start(args.config, time.time())
    cfg = _load(args.config)
    if cfg is None and isinstance(found, trial.Wait):
        # The config on trial does not load (a file it names went away): never exit 2 on a
        # config nobody confirmed (systemd would not restart it); back to the previous one.
        errors = _errors(args.config)
        found = trial.Report(trialfiles.fail_to_load(args.config, found.trial, errors))
        cfg = _load(args.config)
    if cfg is None:
        return 2
    # systemd's watchdog kills a hung unit with SIGABRT: the journal then shows where
    # every thread was (the hung one included), not just that it was killed.
    faulthandler.enable(all_threads=True)
    from gateway import daemon

    return daemon.run(cfg, record=args.record, roll_call=args.roll_call, trial=found)


def _errors(path: str) -> list[str]:
    try:
        configmod.load(path)
    except configmod.ConfigInvalid as e:
        return [str(x) for x in e.errors]
    return []


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file, warnings=False)  # printed after the summary, on stdout
    if cfg is None:
        return 2
    b = cfg.broker
    print(f"{cfg.file}: OK" + (f" with {len(cfg.warnings)} warning(s)" if cfg.warnings else ""))
    print(f"  unit      {cfg.unit.id} at {cfg.unit.site}"
          + (f" (config version {cfg.unit.config_version})" if cfg.unit.config_version else ""))
    from pathlib import Path

    from gateway.trial import version_of

    # What birth reports as config_version, and the `config` command's expected_version.
    print(f"  version   {version_of(Path(args.file).read_bytes())} (SHA-256 of the file)")
    tls = "no TLS"
    if b.tls:
        tls = "TLS + client certificate" if b.tls.cert_file else "TLS"
    print(f"  broker    {b.host}:{b.port} as {b.client_id!r}, {tls}, "
          f"{'password' if b.password else 'no password'}, MQTT {b.protocol}, "
          f"topics under {b.topic_prefix}/{cfg.unit.id}/")
    print(f"  buffer    {cfg.buffer.path} (cap {cfg.buffer.max_mb:g} MB / "
          f"{cfg.buffer.max_events} events)")
    d = cfg.delivery
    print("  delivery  " + ("deleted on the broker's PUBACK" if d.mode == "broker" else
                            f"deleted on the backend's signed receipt (resent after "
                            f"{d.receipt_timeout_s:g} s without one, backing off to "
                            f"{d.receipt_timeout_max_s or 8 * d.receipt_timeout_s:g} s; "
                            f"at most {d.max_awaiting} "
                            "awaiting)"))
    for r in cfg.readers:
        where = f" on {r.options.where()}" if r.options.where() else ""
        print(f"  reader    {r.id}: {r.kind}, role {r.role}{where}")
        opts = _options_text(r.options)
        if opts:
            print(f"            {opts}")
    print(f"  tags      {len(cfg.tags)} enrolled")
    print(f"  gate      repeat window {cfg.gate.repeat_window_s:g} s")
    _print_engine_summary(cfg)
    for w in cfg.warnings:
        print(f"warning: {w.key}: {w.message}")
    if (damage := _buffer_damage(cfg.buffer.path)) is not None:
        # The unit still starts (it salvages the file), so a warning, not an error.
        print(f"warning: buffer.path: {damage}; `gatewayd run` will move it aside, salvage "
              "every readable event into a fresh buffer and report what it could not save")
    return 0


def _buffer_damage(path: str) -> str | None:
    """What SQLite's integrity check says of an existing buffer file, or None if it is ok."""
    if not os.path.exists(path):
        return None
    from gateway.outbox import BufferReadError, Outbox

    try:
        with Outbox.saved(path) as saved:
            problems = saved.quick_check()
    except BufferReadError as e:
        return f"the buffer {path} cannot be read ({e})"
    if problems == ["ok"]:
        return None
    return f"the buffer {path} fails its integrity check ({'; '.join(problems[:2])})"


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args.config, warnings=False)  # the daemon's own state, not the config's
    if cfg is None:
        return 2
    from gateway.status import main_status

    return main_status(cfg, args.json, sys.stdout, sys.stderr)


def cmd_doctor(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    from gateway.doctor import main_doctor

    return main_doctor(cfg, args.json, sys.stdout)


def _print_engine_summary(cfg: configmod.Config) -> None:
    """Zones, geofences and where the unit stands, as parsed: typos show up here."""
    e = cfg.engine
    where = f"{e.position[0]:.6f}, {e.position[1]:.6f}" if e.position else "not set"
    print(f"  position  {where}; time zone {e.timezone}")
    for z in e.zones:
        print(f"  zone      {z.id}: readers {', '.join(z.readers) or '-'}, enter "
              f"{z.enter_dbm:g} dBm / exit {z.exit_dbm:g} dBm"
              + (f", stay groups {', '.join(z.stay_groups)}" if z.stay_groups else ""))
    for g in e.geofences:
        shape = (f"circle {g.center[0]:.6f}, {g.center[1]:.6f} r {g.radius_m:g} m" if g.center
                 else f"polygon of {len(g.points)} points")
        print(f"  geofence  {g.id}: {shape}, band {g.hysteresis_m:g} m")
    if e.cameras:
        print(f"  cameras   {len(e.cameras)}: {', '.join(c.id for c in e.cameras)}")


def _options_text(options: object) -> str:
    """A reader's options as ``key = value`` pairs (defaults included)."""
    import dataclasses

    if not dataclasses.is_dataclass(options):
        return ""
    return ", ".join(f"{f.name} = {getattr(options, f.name)!r}"
                     for f in dataclasses.fields(options) if f.name != "port")


def cmd_decode(args: argparse.Namespace) -> int:
    from gateway.decode import main_decode

    return main_decode(args.kind, args.file, sys.stdout)


def cmd_replay(args: argparse.Namespace) -> int:
    from gateway.replay import main_replay

    return main_replay(args.config, args.readings, sys.stdout)


def cmd_locate(args: argparse.Namespace) -> int:
    if args.readings:
        from gateway.replay import main_locate

        return main_locate(args.config, args.readings, args.who, sys.stdout)
    # No readings file: answer from the state the daemon last saved in its buffer (keyed
    # by child reference: mapped back through the enrolled tags).
    from gateway.engine import locate
    from gateway.engine.runtime import Runtime
    from gateway.outbox import BufferReadError, Outbox
    from gateway.pipeline import saved_state
    from gateway.replay import print_locate
    from gateway.roster import RosterFile, effective

    cfg = _load(args.config)
    if cfg is None:
        return 2
    try:  # the roster in force: the backend's (beside the buffer), else the config's tags
        saved_roster = RosterFile(cfg.buffer.path).load()
    except (OSError, ValueError) as e:
        print(f"gatewayd locate: roster not readable ({e})", file=sys.stderr)
        return 2
    tags = effective(cfg.tags, saved_roster).tag_map()
    runtime = Runtime(configmod.engine_config(cfg, tags))
    try:
        with Outbox.saved(cfg.buffer.path) as store:  # read-only: the daemon may be running
            saved = saved_state(store, runtime.tags)
    except BufferReadError as e:
        print(f"gatewayd locate: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError) as e:
        print(f"gatewayd locate: saved engine state not usable ({e})", file=sys.stderr)
        return 1
    if saved is None:
        print(f"gatewayd locate: no saved engine state in {cfg.buffer.path} yet", file=sys.stderr)
        return 1
    return print_locate(locate(saved[0], runtime, args.who),
                        sys.stdout, cfg.engine.timezone)


def _samples(path: str, tags: set[str], readers: tuple[str, ...]
             ) -> tuple[dict[str, list[float]], float]:
    """RSSI of ``tags`` per reader of the zone in a readings file, and its newest time."""
    from gateway.model import BleSighting
    from gateway.recording import read_items

    out: dict[str, list[float]] = {}
    newest = 0.0
    for item in read_items(path):
        if isinstance(item, BleSighting) and item.tag in tags and item.reader in readers:
            out.setdefault(item.reader, []).append(float(item.rssi))
            newest = max(newest, item.time)
    return out, newest


def cmd_calibrate(args: argparse.Namespace) -> int:
    import datetime
    import tempfile
    from pathlib import Path

    from gateway import calibrate
    from gateway.model import canonical_tag_id
    from gateway.recording import ReadingsError

    cfg = _load(args.config)
    if cfg is None:
        return 2
    zone = next((z for z in cfg.engine.zones if z.id == args.zone), None)
    if zone is None:
        print(f"gatewayd calibrate: no zone {args.zone!r} in {args.config} "
              f"(zones: {', '.join(z.id for z in cfg.engine.zones) or 'none'})", file=sys.stderr)
        return 2
    radius = args.radius if args.radius is not None else zone.radius_m
    if radius is None:
        print(f"gatewayd calibrate: zone {zone.id!r} has no radius_m: give --radius",
              file=sys.stderr)
        return 2
    # Several reference tags held together average out their own differences in power.
    tags = {canonical_tag_id(t) for t in args.tag}
    try:
        at_boundary, newest = _samples(args.boundary, tags, zone.readers)
        at_one_m, newest_1m = _samples(args.one_m, tags, zone.readers) if args.one_m else ({}, 0.0)
    except (OSError, ReadingsError) as e:
        print(f"gatewayd calibrate: {e}", file=sys.stderr)
        return 2
    newest = max(newest, newest_1m)
    # The zone is a circle around one reader: the one that heard the tag most often.
    reader = max(at_boundary, key=lambda r: len(at_boundary[r]), default=zone.readers[0])
    try:
        est = calibrate.estimate(at_boundary.get(reader, []), at_one_m.get(reader) or None,
                                 radius)
    except calibrate.CalibrationError as e:
        print(f"gatewayd calibrate: {e}", file=sys.stderr)
        return 1
    th = calibrate.thresholds(est)
    date = datetime.datetime.fromtimestamp(newest, datetime.UTC).date().isoformat()
    print(f"zone {zone.id}: reader {reader}, tag(s) {', '.join(sorted(tags))}, "
          f"boundary at {radius:g} m")
    print(f"  boundary  {est.boundary_dbm:.1f} dBm (median of {est.samples} adverts), "
          f"spread {est.spread_db:.1f} dB, standard error {est.stderr_db:.1f} dB")
    if est.ref_dbm is not None and est.exponent is not None:
        print(f"  1 m       {est.ref_dbm:.1f} dBm: path-loss exponent {est.exponent:.2f}")
    print(f"  enter at {th.enter_dbm:.1f} dBm, exit below {th.exit_dbm:.1f} dBm "
          f"(was {zone.enter_dbm:.1f} / {zone.exit_dbm:.1f})")
    lines = calibrate.snippet(est, th, date)
    if not args.write:
        print(f"\n# in the [[zones]] table with id = \"{zone.id}\" (or run again with --write):")
        print("\n".join(lines))
        return 0
    path = Path(args.config)
    text = path.read_text(encoding="utf-8")
    try:
        new = calibrate.edit_zone(text, zone.id, lines)
    except KeyError:
        print(f"gatewayd calibrate: cannot find the [[zones]] table with id = \"{zone.id}\" "
              f"in {path} to edit; add the lines above by hand", file=sys.stderr)
        return 1
    # Never a half-written config: write a temp file beside it, validate it with the
    # loader check-config uses, then rename it over the original (atomic on POSIX).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        try:
            configmod.load(tmp)
        except configmod.ConfigInvalid as e:
            print(f"gatewayd calibrate: the edited config would not load; {path} left as it was:",
                  file=sys.stderr)
            for err in e.errors:
                print(f"  {err}", file=sys.stderr)
            return 1
        os.replace(tmp, path)
        tmp = ""
    finally:
        if tmp:
            os.unlink(tmp)
    print(f"wrote the thresholds into {path} (zone {zone.id})")
    return 0


def _command_args(args: argparse.Namespace) -> dict[str, object] | str:
    """``--args JSON`` or ``--arg k=v`` (v as JSON if it parses: 30, true, ["a"]; else a
    string); an error message instead."""
    import json

    out: dict[str, object] = {}
    if args.args_json is not None:
        try:
            parsed = json.loads(args.args_json)
        except ValueError as e:
            return f"--args is not JSON: {e}"
        if not isinstance(parsed, dict):
            return "--args must be a JSON object"
        out.update(parsed)
    for item in args.arg:
        key, eq, value = item.partition("=")
        if not eq or not key:
            return f"--arg {item!r}: expected KEY=VALUE"
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def cmd_cmd(args: argparse.Namespace) -> int:
    """Sign a command, send it, wait for the reply, print it; exit code from its code."""
    import json

    from gateway import cmdtool, signing

    cmd_args = _command_args(args)
    if isinstance(cmd_args, str):
        print(f"gatewayd cmd: {cmd_args}", file=sys.stderr)
        return 2
    try:
        key = signing.load_private_key(args.key)
    except signing.KeyFileError as e:
        print(f"gatewayd cmd: {e}", file=sys.stderr)
        return 2
    broker = cmdtool.Broker()
    unit = args.unit
    if args.config:
        cfg = _load(args.config, warnings=False)
        if cfg is None:
            return 2
        b = cfg.broker
        broker = cmdtool.Broker(b.host, b.port, b.username, b.password,
                                b.tls.ca_file if b.tls else None,
                                b.tls.cert_file if b.tls else None,
                                b.tls.key_file if b.tls else None, b.protocol, b.topic_prefix)
        unit = unit or cfg.unit.id
    if not unit:
        print("gatewayd cmd: --unit is required (or --config)", file=sys.stderr)
        return 2
    password = None
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.read().strip()
        except OSError as e:
            print(f"gatewayd cmd: {e}", file=sys.stderr)
            return 2
    overrides = {"host": args.host, "port": args.port, "username": args.username,
                 "password": password, "ca_file": args.ca_file, "protocol": args.mqtt,
                 "prefix": args.prefix}
    import dataclasses

    broker = dataclasses.replace(broker, **{k: v for k, v in overrides.items() if v is not None})
    try:
        with cmdtool.Session(broker, connect_timeout_s=args.timeout) as session:
            reply = session.command(args.name, cmd_args, unit, key, timeout_s=args.timeout,
                                    lifetime_s=args.lifetime)
    except cmdtool.NoReply as e:
        print(f"gatewayd cmd: {e}", file=sys.stderr)
        return cmdtool.NO_REPLY
    if args.json:
        print(json.dumps(reply, sort_keys=True))
    else:
        print(f"{reply.get('code')} {reply.get('reason')} ({reply.get('cmd')} on "
              f"{reply.get('unit')}, id {reply.get('id')})")
        if reply.get("data"):
            print(json.dumps(reply["data"], indent=2, sort_keys=True))
    code = reply.get("code")
    return cmdtool.exit_code(code) if isinstance(code, int) else 1


def cmd_keygen(args: argparse.Namespace) -> int:
    from gateway import signing

    try:
        kid = signing.generate_keypair(args.private, args.public)
    except FileExistsError:
        print(f"gatewayd keygen: {args.private} exists; a private key is never overwritten",
              file=sys.stderr)
        return 1
    except OSError as e:
        print(f"gatewayd keygen: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.private} (private, 0600: keep it on the signing side) and "
          f"{args.public} (public: [commands] public_keys on the units); key id {kid}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatewayd", description=__doc__)
    p.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the gateway daemon in the foreground")
    r.add_argument("--config", "-c", required=True, metavar="FILE",
                   help="the unit's TOML config (checked first: errors exit 2 before anything "
                        "starts; see gatewayd check-config)")
    r.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log lines shown (default: info; debug is verbose)")
    r.add_argument("--record", metavar="FILE",
                   help="append the readings of enrolled tags to FILE (for gatewayd replay); "
                        "FILE holds their tag ids (card numbers) in clear: delete it after "
                        "use")
    r.add_argument("--roll-call", metavar="ALERT_ID",
                   help="a disaster alert is active: publish roll-calls until stopped "
                        "(without it, a roll-call this switch started before ends; one "
                        "started by the alert/start command runs on)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and print a summary "
                       "(exit 0: fine, warnings printed; 2: errors)")
    c.add_argument("file", metavar="FILE")
    c.set_defaults(func=cmd_check_config)

    st = sub.add_parser("status", help="the running daemon's health: readers, buffer, broker, "
                        "clock, disk, counters (exit 1: not running, 3: a worker is hung)")
    st.add_argument("--config", "-c", required=True, metavar="FILE",
                    help="the daemon's config (its buffer's folder holds the status socket)")
    st.add_argument("--json", action="store_true", help="the whole status document as JSON")
    st.set_defaults(func=cmd_status)

    dr = sub.add_parser("doctor", help="check the box: serial devices, BlueZ, gpsd, broker "
                        "and TLS files, clock, disk, buffer integrity; each with what to fix")
    dr.add_argument("--config", "-c", required=True, metavar="FILE")
    dr.add_argument("--json", action="store_true", help="the checks as JSON")
    dr.set_defaults(func=cmd_doctor)

    from drivers import registry

    d = sub.add_parser("decode", help="decode a raw capture into JSON lines, rejects included")
    d.add_argument("kind", metavar="KIND", help=f"reader kind: {', '.join(registry.names())}")
    d.add_argument("file", metavar="FILE", help="serial bytes, a hex dump, an NMEA log, "
                   "BLE advertisement hex/JSON lines or a gpsd JSON log ('-' for stdin)")
    d.set_defaults(func=cmd_decode)

    rp = sub.add_parser("replay", help="run a recorded readings file through the engine and "
                        "print the events as JSON lines (the same every run)")
    rp.add_argument("--config", "-c", required=True, metavar="FILE")
    rp.add_argument("readings", metavar="READINGS", help="readings file (docs/zones.md)")
    rp.set_defaults(func=cmd_replay)

    lc = sub.add_parser("locate", help="where and when a child (or tag) was last seen")
    lc.add_argument("--config", "-c", required=True, metavar="FILE")
    lc.add_argument("who", metavar="WHO", help="child reference or tag id")
    lc.add_argument("--readings", metavar="FILE",
                    help="replay this readings file first (default: the daemon's saved state)")
    lc.set_defaults(func=cmd_locate)

    cb = sub.add_parser("calibrate", help="set a zone's thresholds from a reference tag "
                        "recorded at its boundary (and at 1 m): docs/zones.md")
    cb.add_argument("zone", metavar="ZONE", help="zone id")
    cb.add_argument("--config", "-c", required=True, metavar="FILE")
    cb.add_argument("--tag", required=True, action="append",
                    help="the reference tag's id (repeat for several tags held together)")
    cb.add_argument("--boundary", required=True, metavar="READINGS",
                    help="readings file (gatewayd run --record) with the tag held at the "
                         "boundary for 1-2 minutes")
    cb.add_argument("--one-m", metavar="READINGS",
                    help="readings file with the tag held 1 m from the reader (gives the "
                         "path-loss exponent)")
    cb.add_argument("--radius", type=float, metavar="M",
                    help="boundary distance in metres (default: the zone's radius_m)")
    cb.add_argument("--write", action="store_true",
                    help="write the thresholds into the config (validated, atomic)")
    cb.set_defaults(func=cmd_calibrate)

    cm = sub.add_parser("cmd", help="sign a command, send it to a unit, print its reply "
                        "(exit 0: 200; 40/43/44/49/50: the reply's code; 3: no reply)")
    cm.add_argument("name", metavar="NAME",
                    help="ping, rebirth, locate, alert/start, alert/stop, ... (docs/mqtt.md)")
    cm.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an argument (VALUE as JSON if it parses, else a string); repeatable")
    cm.add_argument("--args", dest="args_json", metavar="JSON", help="all arguments as a "
                    "JSON object")
    cm.add_argument("--key", required=True, metavar="FILE",
                    help="the Ed25519 private key (PEM) whose public key the unit holds")
    cm.add_argument("--unit", metavar="UNIT", help="the unit's id (default: the config's)")
    cm.add_argument("--config", "-c", metavar="FILE",
                    help="take the broker settings (and unit id) from this unit config")
    cm.add_argument("--host", help="broker host (default 127.0.0.1 or the config's)")
    cm.add_argument("--port", type=int, help="broker port (default 1883 or the config's)")
    cm.add_argument("--username")
    cm.add_argument("--password-file", metavar="FILE")
    cm.add_argument("--ca-file", metavar="FILE", help="TLS: the broker's CA")
    cm.add_argument("--prefix", help="topic prefix (default kidsafe/v1 or the config's)")
    cm.add_argument("--mqtt", choices=["auto", "5", "3.1.1"],
                    help="MQTT version (default auto: 5, else 3.1.1 with reply_to)")
    cm.add_argument("--timeout", type=float, default=10.0, metavar="S",
                    help="seconds to wait for the reply (default 10)")
    cm.add_argument("--lifetime", type=float, default=300.0, metavar="S",
                    help="the command expires this long after now (default 300)")
    cm.add_argument("--json", action="store_true", help="print the reply as one JSON line")
    cm.set_defaults(func=cmd_cmd)

    kg = sub.add_parser("keygen", help="make an Ed25519 key pair for signing commands (PEM)")
    kg.add_argument("private", metavar="PRIVATE", help="private key file (written 0600, "
                    "never overwritten)")
    kg.add_argument("public", metavar="PUBLIC", help="public key file")
    kg.set_defaults(func=cmd_keygen)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except BrokenPipeError:  # `gatewayd decode ... | head`
        sys.stderr.close()
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
