"""`gatewayd`: the one command line of the gateway."""

from __future__ import annotations

import argparse
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
    cfg = _load(args.config)
    if cfg is None:
        return 2
    _setup_logging(args.log_level)
    from gateway import daemon

    return daemon.run(cfg, record=args.record, roll_call=args.roll_call)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file, warnings=False)  # printed after the summary, on stdout
    if cfg is None:
        return 2
    b = cfg.broker
    print(f"{cfg.file}: OK" + (f" with {len(cfg.warnings)} warning(s)" if cfg.warnings else ""))
    print(f"  unit      {cfg.unit.id} at {cfg.unit.site}"
          + (f" (config version {cfg.unit.config_version})" if cfg.unit.config_version else ""))
    tls = "no TLS"
    if b.tls:
        tls = "TLS + client certificate" if b.tls.cert_file else "TLS"
    print(f"  broker    {b.host}:{b.port} as {b.client_id!r}, {tls}, "
          f"{'password' if b.password else 'no password'}, MQTT {b.protocol}, "
          f"topics under {b.topic_prefix}/{cfg.unit.id}/")
    print(f"  buffer    {cfg.buffer.path} (cap {cfg.buffer.max_mb:g} MB / "
          f"{cfg.buffer.max_events} events)")
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
    return 0


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
    # No readings file: answer from the state the daemon last saved in its buffer.
    import json

    from gateway.engine import locate, state_from_dict
    from gateway.engine.runtime import Runtime
    from gateway.outbox import BufferReadError, Outbox
    from gateway.pipeline import STATE_KEY
    from gateway.replay import print_locate

    cfg = _load(args.config)
    if cfg is None:
        return 2
    try:
        with Outbox.saved(cfg.buffer.path) as saved:  # read-only: the daemon may be running
            blob = saved.load_state(STATE_KEY)
    except BufferReadError as e:
        print(f"gatewayd locate: {e}", file=sys.stderr)
        return 2
    if blob is None:
        print(f"gatewayd locate: no saved engine state in {cfg.buffer.path} yet", file=sys.stderr)
        return 1
    state = state_from_dict(json.loads(blob))
    return print_locate(locate(state, Runtime(configmod.engine_config(cfg)), args.who),
                        sys.stdout, cfg.engine.timezone)


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
                   help="append the readings of enrolled tags to FILE (for gatewayd replay)")
    r.add_argument("--roll-call", metavar="ALERT_ID",
                   help="a disaster alert is active: publish roll-calls until stopped "
                        "(without it, a roll-call saved from before ends)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and print a summary "
                       "(exit 0: fine, warnings printed; 2: errors)")
    c.add_argument("file", metavar="FILE")
    c.set_defaults(func=cmd_check_config)

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
