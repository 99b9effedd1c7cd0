"""``kidsafe-backend web``: the operator page as its own process, beside ``kidsafe-backend
run`` (the ingest), reading the same database and config. Its own process so a busy page
(logins hash with scrypt; many browsers) never slows the ingest and its receipts.

Commands go through gateway.cmdtool: one broker session kept open, each command signed
with the backend's key (``[receipts] key_file``, the key units trust for commands and
receipts), the reply awaited on the unit's reply topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import uvicorn

from backend.config import Config
from backend.web.app import Commander, create_app
from backend.web.config import WebConfig, WebConfigError
from backend.web.config import parse as parse_web
from backend.web.sites import Sites, SitesError
from backend.web.sites import load as load_sites
from backend.web.source import PgSource

log = logging.getLogger("backend.web")


def web_config(cfg: Config, config_path: str | Path) -> WebConfig:
    """The ``[web]`` table of the backend config (its paths relative to the file)."""
    return parse_web(cfg.web, Path(config_path).parent)


def commander(cfg: Config) -> Commander:
    """Signed commands through gateway.cmdtool, its blocking calls in worker threads."""
    from gateway import cmdtool
    from gateway.signing import load_private_key

    if not cfg.receipts.key_file:
        async def refuse(unit: str, name: str, args: dict[str, Any],
                         timeout: float) -> dict[str, Any]:
            return {"code": 503, "reason": "no signing key: set [receipts] key_file"}
        return refuse
    key = load_private_key(cfg.receipts.key_file)
    password = None
    if cfg.broker.password_file:
        password = Path(cfg.broker.password_file).read_text().strip()
    broker = cmdtool.Broker(
        host=cfg.broker.host, port=cfg.broker.port, username=cfg.broker.username or None,
        password=password, ca_file=cfg.broker.tls.ca_file or None,
        cert_file=cfg.broker.tls.cert_file or None, key_file=cfg.broker.tls.key_file or None,
        protocol=cfg.broker.protocol, prefix=cfg.prefix)
    session: list[Any] = []
    lock = threading.Lock()

    def send(unit: str, name: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        with lock:  # one connection, opened on first use (the broker may come up later)
            if not session:
                session.append(cmdtool.Session(broker))
        try:
            reply: dict[str, Any] = session[0].command(name, args, unit, key, timeout_s=timeout)
        except cmdtool.NoReply as e:
            return {"code": 504, "reason": str(e)}
        return reply

    async def run(unit: str, name: str, args: dict[str, Any],
                  timeout: float) -> dict[str, Any]:
        return await asyncio.to_thread(send, unit, name, args, timeout)

    return run


async def serve(cfg: Config, web: WebConfig, sites: Sites, stopping: asyncio.Event) -> None:
    password = None
    if cfg.database.password_file:
        password = Path(cfg.database.password_file).read_text().strip()
    source = PgSource(cfg.database.dsn, password=password)
    app = create_app(web, sites, source, commander(cfg))
    # Open event streams never end by themselves: a stop waits 2 s for them at most.
    server = uvicorn.Server(uvicorn.Config(app, host=web.host, port=web.port,
                                           log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=2))
    # Our own handlers set `stopping`; uvicorn's would re-raise the signal after its exit.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    log.info("operator page on http://%s:%d/ (%d users)", web.host, web.port, len(web.users))
    await stopping.wait()
    server.should_exit = True
    await task


async def main(cfg: Config, config_path: str) -> int:
    try:
        web = web_config(cfg, config_path)
        sites = load_sites(web.sites)
    except (WebConfigError, SitesError) as e:
        print(f"kidsafe-backend web: {e}", file=sys.stderr)
        return 2
    if not web.users:
        log.warning("[web] has no users: nobody can log in (kidsafe-backend passwd NAME)")
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await serve(cfg, web, sites, stopping)
    return 0
