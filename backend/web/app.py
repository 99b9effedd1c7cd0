"""The operator page's web app (Starlette): login, the live state over server-sent
events, and actions that send signed commands to units.

Reads go through a ``Source`` (the database, backend/views.py), commands through a
``Commander`` (gateway.cmdtool: signed with the backend's key, sent over MQTT, the reply
awaited). Both are passed in, so the app is the same in the backend and in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from backend.views import PageState, Row, build_state
from backend.web.auth import Session, Sessions, csrf_ok
from backend.web.config import WebConfig
from backend.web.sites import Sites

log = logging.getLogger("backend.web")
STATIC = Path(__file__).parent / "static"
LEAFLET = Path("/usr/share/javascript/leaflet")  # Debian's libjs-leaflet
COOKIE = "kidsafe_session"
SECURITY_HEADERS = {
    # Everything comes from this origin: no tiles, no CDN, no inline script.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; "
                               "form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer Chromium sends "Origin: null" with the
    # login form, and the Origin check needs the real one.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


class Source(Protocol):
    """Rows for backend.views.build_state, and where a child was last seen. A source may
    also have ``async changed(timeout_s) -> bool``: returns when the data changed (the
    page reads then) or after the timeout (backend.web.source.PgSource: LISTEN/NOTIFY)."""

    async def rows(self, cfg: WebConfig) -> tuple[Sequence[Row], Sequence[Row], Sequence[Row]]:
        ...

    async def last_unit(self, child: str) -> str | None:
        ...


Commander = Callable[[str, str, dict[str, Any], float], Awaitable[dict[str, Any]]]
"""(unit, command name, args, timeout_s) -> the unit's reply (a dict with "code")."""


@dataclass(frozen=True, slots=True)
class Action:
    """One command sent from the page, with the replies: shown to every operator."""

    id: str
    time: float
    user: str
    what: str             # "locate" | "alert/start" | "alert/stop"
    target: str           # a child or a site
    args: dict[str, Any]
    replies: tuple[dict[str, Any], ...]


class Live:
    """The page's state, read when the database changed and versioned: each SSE stream
    waits for a new version. One reader for all browsers, so the database load does not
    grow with them."""

    def __init__(self, cfg: WebConfig, sites: Sites, source: Source) -> None:
        self.cfg, self.sites, self.source = cfg, sites, source
        self.version = 0
        self.body = "{}"
        self.actions: deque[Action] = deque(maxlen=20)
        self.changed = asyncio.Event()
        self.error: str | None = None
        self.state: PageState | None = None
        self.stopped: set[tuple[str, str]] = set()  # (site, alert id) ended from this page

    def _render(self, state: PageState | None) -> str:
        doc: dict[str, Any] = state.to_json() if state else {"alerts": [], "roll_calls": [],
                                                             "units": []}
        doc["actions"] = [{"id": a.id, "time": a.time, "user": a.user, "what": a.what,
                           "target": a.target, "args": a.args, "replies": list(a.replies)}
                          for a in reversed(self.actions)]
        doc["error"] = self.error
        return json.dumps(doc, sort_keys=True, default=str)

    def publish(self, state: PageState | None) -> None:
        body = self._render(state)
        if body != self.body:
            self.body, self.version = body, self.version + 1
            self.changed.set()
            self.changed = asyncio.Event()

    async def refresh(self) -> PageState | None:
        try:
            alerts, calls, units = await self.source.rows(self.cfg)
        except Exception as e:  # the database down: say so on the page, keep trying
            log.warning("reading the page's state failed: %s", e)
            self.error = f"database: {e}"
            self.publish(self.state)  # the last state stays, marked as not live
            return None
        self.error = None
        # A stopped roll-call's last reports linger in the window: hide them at once.
        calls = [r for r in calls
                 if (r["site"], str((r.get("data") or {}).get("alert_id"))) not in self.stopped]
        state = build_state(alerts, calls, units, self.sites, time.time(), self.cfg.silent_s)
        self.state = state
        self.publish(state)
        return state

    async def run(self) -> None:
        """Read after each commit the database announces (at most every ``poll_s``), and
        every ``refresh_s`` anyway (units fall silent, alerts age out with no commit); a
        source that announces nothing is read every ``poll_s``."""
        changed = getattr(self.source, "changed", None)
        while True:
            await self.refresh()
            await asyncio.sleep(self.cfg.poll_s)
            if changed is not None:
                await changed(self.cfg.refresh_s)

    async def wait(self, version: int, timeout: float) -> None:
        if self.version == version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)

    def record(self, action: Action) -> None:
        self.actions.append(action)
        self.publish(self.state)  # shown now, not at the next poll


def create_app(cfg: WebConfig, sites: Sites, source: Source, commander: Commander) -> Starlette:
    sessions = Sessions(cfg.users, cfg.session_ttl_s)
    live = Live(cfg, sites, source)

    def session_of(request: Request) -> Session | None:
        return sessions.get(request.cookies.get(COOKIE))

    def same_origin(request: Request) -> bool:
        """A state-changing request from this page's own origin (or a non-browser client
        sending no Origin): a cross-site form or fetch carries the other site's Origin."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        return urlsplit(origin).netloc == request.headers.get("host")

    def secured(resp: Response) -> Response:
        resp.headers.update(SECURITY_HEADERS)
        return resp

    async def index(request: Request) -> Response:
        if session_of(request) is None:
            return RedirectResponse("/login", 303)
        return secured(FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"}))

    async def login_page(request: Request) -> Response:
        return secured(FileResponse(STATIC / "login.html"))

    async def login(request: Request) -> Response:
        if not same_origin(request):
            return PlainTextResponse("cross-site login refused", 403)
        form = parse_qs((await request.body()).decode(errors="replace"))
        name = (form.get("user") or [""])[0]
        password = (form.get("password") or [""])[0]
        s = await run_in_threadpool(sessions.login, name, password)  # scrypt: ~60 ms of CPU
        if s is None:
            log.info("login refused for %r from %s", name[:64],
                     request.client.host if request.client else "?")
            await asyncio.sleep(0.5)
            return RedirectResponse("/login?failed=1", 303)
        log.info("login: %s (%s)", s.user, s.role.value)
        resp = RedirectResponse("/", 303)
        resp.set_cookie(COOKIE, s.token, max_age=int(cfg.session_ttl_s), httponly=True,
                        samesite="strict", secure=cfg.cookie_secure, path="/")
        return resp

    async def logout(request: Request) -> Response:
        s = session_of(request)
        if s is not None and csrf_ok(s, request.headers.get("x-csrf-token")):
            sessions.logout(s.token)
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(COOKIE, path="/")
        return resp

    def need_session(request: Request) -> Session | Response:
        s = session_of(request)
        if s is None:
            return JSONResponse({"error": "log in first"}, 401)
        return s

    async def me(request: Request) -> Response:
        s = need_session(request)
        if isinstance(s, Response):
            return s
        return JSONResponse({"user": s.user, "role": s.role.value, "may_act": s.may_act,
                             "csrf": s.csrf}, headers={"Cache-Control": "no-store"})

    async def sites_json(request: Request) -> Response:
        s = need_session(request)
        return s if isinstance(s, Response) else JSONResponse(sites.to_json())

    async def state(request: Request) -> Response:
        s = need_session(request)
        if isinstance(s, Response):
            return s
        return Response(live.body, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    async def events(request: Request) -> Response:
        s = need_session(request)
        if isinstance(s, Response):
            return s

        async def stream() -> AsyncIterator[str]:
            seen = -1
            while sessions.get(s.token) is not None:  # a logout ends the stream
                if live.version != seen:
                    seen = live.version
                    yield f"event: state\ndata: {live.body}\n\n"
                else:
                    yield ": keep-alive\n\n"
                await live.wait(seen, 15.0)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store",
                                          "X-Accel-Buffering": "no"})

    async def act(request: Request, what: str) -> Response:
        s = need_session(request)
        if isinstance(s, Response):
            return s
        if not same_origin(request) or not csrf_ok(s, request.headers.get("x-csrf-token")):
            return JSONResponse({"error": "missing or wrong CSRF token"}, 403)
        if not s.may_act:
            return JSONResponse({"error": f"{s.user} is a viewer: only operators act"}, 403)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return JSONResponse({"error": "send JSON"}, 415)
        try:
            body = json.loads(await request.body())
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            return JSONResponse({"error": f"bad JSON: {e}"}, 400)
        planned = await plan(what, body)
        if isinstance(planned, Response):
            return planned
        target, units, args = planned
        log.info("%s by %s: %s -> %s %s", what, s.user, target, units, args)
        replies = await asyncio.gather(*(send(u, what, args) for u in units))
        action = Action(str(uuid.uuid4()), time.time(), s.user, what, target, args,
                        tuple(replies))
        if what == "alert/stop" and any(r.get("code") == 200 for r in replies):
            live.stopped.add((target, args["alert_id"]))
        elif what == "alert/start":
            live.stopped.discard((target, args["alert_id"]))
        live.record(action)
        return JSONResponse({"id": action.id, "replies": list(replies)})

    async def send(unit: str, what: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = await commander(unit, what, args, cfg.command_timeout_s)
        except TimeoutError:
            reply = {"code": 504, "reason": f"no reply within {cfg.command_timeout_s:g} s"}
        except Exception as e:  # the broker unreachable, the key unreadable: shown, not raised
            log.warning("%s to %s failed: %s", what, unit, e)
            reply = {"code": 502, "reason": f"not sent: {e}"}
        return {"unit": unit, **reply}

    async def plan(what: str, body: dict[str, Any]
                   ) -> tuple[str, list[str], dict[str, Any]] | Response:
        """(target shown, units to send to, command args) from the form, or a 4xx."""
        if what == "locate":
            child = str(body.get("child", "")).strip()
            if not child:
                return JSONResponse({"error": "name a child reference"}, 400)
            unit = str(body.get("unit") or "") or await live.source.last_unit(child)
            if not unit:
                return JSONResponse({"error": f"{child} was never seen: name a unit"}, 404)
            return child, [unit], {"child": child}
        site = str(body.get("site", ""))
        units = sites.units_of(site)
        if not units:
            return JSONResponse({"error": f"no units at site {site!r} in the sites file"}, 404)
        alert_id = str(body.get("alert_id") or "").strip()
        if what == "alert/start":
            alert_id = alert_id or f"disaster-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
            interval = float(body.get("interval_s") or 30)
            if not 5 <= interval <= 3600:
                return JSONResponse({"error": "interval_s: 5 to 3600"}, 400)
            return site, units, {"alert_id": alert_id, "interval_s": interval}
        if not alert_id:
            return JSONResponse({"error": "name the alert to stop"}, 400)
        return site, units, {"alert_id": alert_id}

    async def do_locate(request: Request) -> Response:
        return await act(request, "locate")

    async def do_alert_start(request: Request) -> Response:
        return await act(request, "alert/start")

    async def do_alert_stop(request: Request) -> Response:
        return await act(request, "alert/stop")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(live.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            close = getattr(source, "close", None)  # the pool lives on this loop: closed here
            if close is not None:
                await close()

    routes = [
        Route("/", index),
        Route("/favicon.ico", lambda _r: Response(status_code=204)),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/api/me", me),
        Route("/api/sites", sites_json),
        Route("/api/state", state),
        Route("/events", events),
        Route("/api/locate", do_locate, methods=["POST"]),
        Route("/api/alert/start", do_alert_start, methods=["POST"]),
        Route("/api/alert/stop", do_alert_stop, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    if LEAFLET.is_dir():
        routes.append(Mount("/leaflet", StaticFiles(directory=LEAFLET), name="leaflet"))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.live = live
    app.state.sessions = sessions
    return app
