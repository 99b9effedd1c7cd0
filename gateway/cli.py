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


def _load(path: str) -> configmod.Config | None:
    try:
        return configmod.load(path)
    except configmod.ConfigInvalid as e:
        print(f"gatewayd: {path}: {len(e.errors)} error(s) in the configuration:", file=sys.stderr)
        for err in e.errors:
            print(f"  {err}", file=sys.stderr)
        return None


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 2
    _setup_logging(args.log_level)
    # systemd's watchdog kills a hung unit with SIGABRT: the journal then shows where
    # every thread was (the hung one included), not just that it was killed.
    faulthandler.enable(all_threads=True)
    from gateway import daemon

    return daemon.run(cfg, record=args.record, roll_call=args.roll_call)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.file)
    if cfg is None:
        return 2
    b = cfg.broker
    print(f"{cfg.file}: OK")
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
    print(f"  tags      {len(cfg.tags)} enrolled")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
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
                        sys.stdout)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gatewayd", description=__doc__)
    p.add_argument("--version", action="version", version=f"gatewayd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run the gateway daemon in the foreground")
    r.add_argument("--config", "-c", required=True, metavar="FILE")
    r.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    r.add_argument("--record", metavar="FILE",
                   help="append the readings of enrolled tags to FILE (for gatewayd replay)")
    r.add_argument("--roll-call", metavar="ALERT_ID",
                   help="a disaster alert is active: publish roll-calls until stopped "
                        "(without it, a roll-call saved from before ends)")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check-config", help="validate a config file and print a summary")
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
