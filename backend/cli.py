"""``kidsafe-backend``: run the reference backend, migrate its database, report gaps.

    kidsafe-backend migrate --config FILE   # apply pending schema migrations, then exit
    kidsafe-backend run --config FILE       # consume, store, receipt (SIGTERM stops cleanly)
    kidsafe-backend gaps --config FILE      # each unit's seq gaps, explained or not
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from backend import migrate
from backend.config import Config, ConfigError, load


def _dsn(cfg: Config) -> tuple[str, dict[str, Any]]:
    kwargs: dict[str, Any] = {}
    if cfg.database.password_file:
        with open(cfg.database.password_file) as f:
            kwargs["password"] = f.read().strip()
    return cfg.database.dsn, kwargs


async def _migrate(cfg: Config) -> int:
    import asyncpg

    dsn, kwargs = _dsn(cfg)
    conn = await asyncpg.connect(dsn, **kwargs)
    try:
        applied = await migrate.apply_on(conn)
        version = await migrate.current(conn)
    finally:
        await conn.close()
    for name in applied:
        print(f"applied {name}")
    print(f"schema at version {version}" + ("" if applied else " (nothing to apply)"))
    return 0


async def _run(cfg: Config) -> int:
    from backend.service import serve

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await serve(cfg, stopping)
    return 0


async def _gaps(cfg: Config) -> int:
    from backend.gaps import summarise
    from backend.store import Store

    dsn, kwargs = _dsn(cfg)
    store = await Store.open(dsn, **kwargs)
    try:
        gaps = await store.gaps()
    finally:
        await store.close()
    for g in gaps:
        print(f"{g.unit}\t{g.from_seq}-{g.to_seq}\t{g.count}\t"
              f"{g.explained_by or 'UNEXPLAINED'}")
    for s in summarise(gaps):
        print(f"# {s.unit}: {s.gaps} gaps, {s.explained_seqs} seqs explained, "
              f"{s.unexplained_seqs} unexplained", file=sys.stderr)
    return 1 if any(g.explained_by is None for g in gaps) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kidsafe-backend", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("run", "consume, store in PostgreSQL, send signed receipts"),
                       ("migrate", "apply pending schema migrations"),
                       ("gaps", "list seq gaps per unit (exit 1 if any is unexplained)")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--config", required=True, help="the backend's TOML config")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"kidsafe-backend: {e}", file=sys.stderr)
        return 2
    fn = {"run": _run, "migrate": _migrate, "gaps": _gaps}[args.command]
    try:
        return asyncio.run(fn(cfg))
    except (OSError, RuntimeError) as e:
        print(f"kidsafe-backend {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
