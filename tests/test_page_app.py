"""The operator page's own parts: password hashes, the page's state from database rows
(pure), and who may do what over real HTTP (uvicorn on loopback)."""

from __future__ import annotations

import http.client
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backend.views import build_state
from backend.web import sites as sitesmod
from backend.web.auth import hash_password, verify_password
from backend.web.config import WebConfig
from pagerig import PASSWORDS, serving, web_config

SITES = """
[[sites]]
id = "park-site"
name = "Riverside park"
units = [{id = "park-01", lat = 37.5600, lon = 126.9700}]
zones = [{id = "playground", unit = "park-01", lat = 37.5601, lon = 126.9701, radius_m = 30}]
geofences = [{id = "bus-loop", lat = 37.5610, lon = 126.9710, radius_m = 150}]
cameras = [{id = "cam-near", lat = 37.5602, lon = 126.9702},
           {id = "cam-mid", lat = 37.5620, lon = 126.9700},
           {id = "cam-far", lat = 37.6000, lon = 126.9700}]

[[sites]]
id = "school"
units = [{id = "gate-01", lat = 37.5700, lon = 126.9800},
         {id = "gate-02", lat = 37.5702, lon = 126.9802}]
"""
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def ev(kind: str, unit: str, site: str, child: str, data: dict[str, Any], ago_s: float = 5,
       reader: str = "ble-park") -> dict[str, Any]:
    t = NOW - timedelta(seconds=ago_s)
    return {"id": f"{kind}-{unit}-{child}-{ago_s}", "kind": kind, "unit": unit, "site": site,
            "reader": reader, "child": child, "data": data, "time": t, "received": t}


@pytest.fixture
def sites() -> sitesmod.Sites:
    return sitesmod.parse(__import__("tomllib").loads(SITES))


def test_password_hashes() -> None:
    h = hash_password("correct horse", n=2**10)
    assert h.startswith("scrypt$1024$8$1$") and "correct" not in h
    assert verify_password("correct horse", h)
    assert not verify_password("correct horsE", h)
    assert hash_password("correct horse", n=2**10) != h  # salted
    for bad in ("", "scrypt$x", "md5$1$2$3$4$5", "scrypt$1024$8$1$!!$!!"):
        assert not verify_password("correct horse", bad)


def test_sites_errors_name_their_key() -> None:
    with pytest.raises(sitesmod.SitesError, match=r"sites\[0\]\.cameras\[0\]\.lat"):
        sitesmod.parse({"sites": [{"id": "s", "cameras": [{"id": "c", "lon": 1}]}]})


def test_state_alerts_first_with_place_and_cameras(sites: sitesmod.Sites) -> None:
    alerts = [
        ev("zone_alert", "park-01", "park-site", "c-2", {"zone": "playground",
                                                          "position": None}, ago_s=60),
        ev("sos", "park-01", "park-site", "c-1",
           {"zone": "playground", "cameras": ["cam-x"],
            "position": {"lat": 37.5602, "lon": 126.9703, "source": "gps"}}, ago_s=2),
    ]
    st = build_state(alerts, [], [], sites, NOW.timestamp())
    sos, zone = st.alerts
    assert (sos.kind, sos.child, sos.where, sos.unit_cameras) == ("sos", "c-1", "gps", ("cam-x",))
    assert [c.id for c in sos.cameras] == ["cam-near", "cam-mid"]  # cam-far is 4 km off
    assert sos.cameras[0].distance_m < 10
    assert (zone.kind, zone.where, zone.lat) == ("zone_alert", "unit", 37.56)  # the unit's place
    # Units from the sites file that never reported are listed as such.
    assert {u.unit: u.state for u in st.units} == {"park-01": "never seen",
                                                   "gate-01": "never seen",
                                                   "gate-02": "never seen"}


def test_roll_call_per_site_merges_units(sites: sitesmod.Sites) -> None:
    started = NOW.timestamp() - 100
    calls = [
        # gate-01's older report, then its newer one: only the newer counts.
        ev("roll_call", "gate-01", "school", "", {"alert_id": "quake", "started": started,
           "present": [], "missing": [{"child": "c-1", "last_seen": 1, "last_reader": "g"}]},
           ago_s=50),
        ev("roll_call", "gate-01", "school", "", {"alert_id": "quake", "started": started,
           "present": [{"child": "c-1", "zones": [], "last_seen": started}],
           "missing": [{"child": "c-2", "last_seen": started - 50, "last_reader": "gate-a"},
                       {"child": "c-3", "last_seen": None, "last_reader": None}]}, ago_s=10),
        # gate-02 sees c-2: present at the site, whatever gate-01 says.
        ev("roll_call", "gate-02", "school", "", {"alert_id": "quake", "started": started,
           "present": [{"child": "c-2", "zones": [], "last_seen": started + 5}],
           "missing": [{"child": "c-3", "last_seen": started - 9, "last_reader": "gate-b"}]},
           ago_s=12),
    ]
    (rc,) = build_state([], calls, [], sites, NOW.timestamp()).roll_calls
    assert (rc.site, rc.alert_id, rc.units) == ("school", "quake", ("gate-01", "gate-02"))
    assert [(p.child, p.units) for p in rc.present] == [("c-1", ("gate-01",)),
                                                       ("c-2", ("gate-02",))]
    assert [(m.child, m.last_reader) for m in rc.missing] == [("c-3", "gate-b")]


def test_unit_health_backlog_receipts_clock(sites: sitesmod.Sites) -> None:
    units = [{"unit": "gate-01", "site": "school", "state": "online",
              "last_seen": NOW - timedelta(seconds=3), "health_received": NOW,
              "health": {"time": (NOW + timedelta(seconds=7.5)).isoformat(),
                         "buffer": {"depth": 12, "awaiting_receipt": 4},
                         "readers": {"gate-a": {"state": "online"}}}},
             {"unit": "gate-02", "site": "school", "state": "online",
              "last_seen": NOW - timedelta(seconds=300), "health": None,
              "health_received": None}]
    st = {u.unit: u for u in build_state([], [], units, sites, NOW.timestamp()).units}
    g1, g2 = st["gate-01"], st["gate-02"]
    assert (g1.state, g1.backlog, g1.awaiting_receipt, g1.clock) == ("online", 12, 4,
                                                                     "off by +7.5 s")
    assert g1.readers == {"gate-a": "online"}
    assert (g2.state, g2.backlog, g2.clock) == ("silent", None, "unknown")


# -- over HTTP -------------------------------------------------------------------------


class FakeDb:
    """Rows as the database would give them (the HTTP tests are about access)."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self.down = False

    async def rows(self, cfg: WebConfig) -> tuple[list[Any], list[Any], list[Any]]:
        if self.down:
            raise OSError("connection refused")
        return self.alerts, [], []

    async def last_unit(self, child: str) -> str | None:
        return "park-01" if child == "c-1" else None


class Client:
    """A browser's cookie jar, nothing more: http.client, no redirects followed."""

    def __init__(self, base: str) -> None:
        self.host = base.removeprefix("http://")
        self.cookie = ""

    def req(self, method: str, path: str, body: bytes | str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        c = http.client.HTTPConnection(self.host, timeout=10)
        h = {"Cookie": self.cookie} if self.cookie else {}
        c.request(method, path, body=body, headers={**h, **(headers or {})})
        r = c.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        if "set-cookie" in hdrs:
            self.cookie = hdrs["set-cookie"].split(";")[0]
        c.close()
        return r.status, hdrs, data

    def login(self, user: str, password: str | None = None) -> tuple[int, dict[str, str]]:
        body = f"user={user}&password={password or PASSWORDS[user]}"
        st, h, _ = self.req("POST", "/login", body,
                            {"Content-Type": "application/x-www-form-urlencoded"})
        return st, h

    def csrf(self) -> str:
        st, _, data = self.req("GET", "/api/me")
        assert st == 200
        return str(json.loads(data)["csrf"])


@pytest.fixture
def served(tmp_path: Path, sites: sitesmod.Sites) -> Any:
    (tmp_path / "sites.toml").write_text(SITES)
    sent: list[tuple[str, str, dict[str, Any]]] = []

    async def commander(unit: str, cmd: str, args: dict[str, Any],
                        timeout: float) -> dict[str, Any]:
        sent.append((unit, cmd, args))
        return {"code": 200, "reason": "ok", "data": {"children": [{"child": "c-1"}]}}

    db = FakeDb()
    now = datetime.now(UTC)
    db.alerts = [{**ev("sos", "park-01", "park-site", "c-1", {}), "time": now, "received": now}]
    with serving(web_config(tmp_path / "sites.toml"), sites, db, commander) as base:
        yield base, sent, db


def test_no_anonymous_access(served: Any) -> None:
    base, _, _ = served
    c = Client(base)
    st, h, _ = c.req("GET", "/")
    assert st == 303 and h["location"] == "/login"
    for path in ("/api/state", "/api/me", "/api/sites", "/events"):
        assert c.req("GET", path)[0] == 401, path
    st, _, _ = c.req("POST", "/api/locate", json.dumps({"child": "c-1"}),
                     {"Content-Type": "application/json"})
    assert st == 401
    st, h = c.login("olga", "wrong password")
    assert st == 303 and h["location"] == "/login?failed=1" and not c.cookie
    st, h = c.login("nobody", "whatever")
    assert st == 303 and not c.cookie


def test_session_cookie_and_csrf(served: Any) -> None:
    base, sent, _ = served
    c = Client(base)
    st, h = c.login("olga")
    assert st == 303 and h["location"] == "/"
    cookie = h["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
    st, h, page = c.req("GET", "/")
    assert st == 200 and b"kidsafe operator" in page
    assert "default-src 'self'" in h["content-security-policy"]
    js = {"Content-Type": "application/json"}
    body = json.dumps({"child": "c-1"})
    # No token, a wrong one, or the right one from another origin: refused, nothing sent.
    assert c.req("POST", "/api/locate", body, js)[0] == 403
    assert c.req("POST", "/api/locate", body, {**js, "X-CSRF-Token": "guess"})[0] == 403
    token = c.csrf()
    evil = {**js, "X-CSRF-Token": token, "Origin": "http://evil.example"}
    assert c.req("POST", "/api/locate", body, evil)[0] == 403
    # A form post (no JSON) is refused too.
    form = {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": token}
    assert c.req("POST", "/api/locate", "child=c-1", form)[0] == 415
    assert sent == []
    st, _, data = c.req("POST", "/api/locate", body, {**js, "X-CSRF-Token": token})
    assert st == 200, data
    assert sent == [("park-01", "locate", {"child": "c-1"})]  # where c-1 was last seen
    assert json.loads(data)["replies"][0]["code"] == 200
    # The action and its reply are in the state every browser gets.
    state = json.loads(c.req("GET", "/api/state")[2])
    assert state["actions"][0]["what"] == "locate" and state["actions"][0]["user"] == "olga"
    # Logged out: the cookie no longer opens anything.
    assert c.req("POST", "/logout", None, {"X-CSRF-Token": token})[0] == 200
    c.cookie = cookie.split(";")[0].replace("kidsafe_session", "kidsafe_session")
    assert c.req("GET", "/api/state")[0] == 401


def test_viewer_sees_but_cannot_act(served: Any) -> None:
    base, sent, _ = served
    c = Client(base)
    c.login("vic")
    me = json.loads(c.req("GET", "/api/me")[2])
    assert (me["role"], me["may_act"]) == ("viewer", False)
    assert c.req("GET", "/api/state")[0] == 200
    hdr = {"Content-Type": "application/json", "X-CSRF-Token": me["csrf"]}
    for path, body in (("/api/locate", {"child": "c-1"}),
                       ("/api/alert/start", {"site": "school"}),
                       ("/api/alert/stop", {"site": "school", "alert_id": "x"})):
        st, _, data = c.req("POST", path, json.dumps(body), hdr)
        assert st == 403 and b"viewer" in data, path
    assert sent == []


def test_alert_start_goes_to_every_unit_of_the_site(served: Any) -> None:
    base, sent, _ = served
    c = Client(base)
    c.login("olga")
    hdr = {"Content-Type": "application/json", "X-CSRF-Token": c.csrf()}
    st, _, data = c.req("POST", "/api/alert/start",
                        json.dumps({"site": "school", "alert_id": "quake", "interval_s": 20}),
                        hdr)
    assert st == 200, data
    assert sent == [("gate-01", "alert/start", {"alert_id": "quake", "interval_s": 20.0}),
                    ("gate-02", "alert/start", {"alert_id": "quake", "interval_s": 20.0})]
    assert c.req("POST", "/api/alert/start", json.dumps({"site": "nowhere"}), hdr)[0] == 404
    assert c.req("POST", "/api/locate", json.dumps({"child": "c-404"}), hdr)[0] == 404


def test_passwd_prints_a_users_entry_that_logs_in(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tomllib

    from backend.web.config import parse

    r = subprocess.run([sys.executable, "-m", "backend", "passwd", "ann \"the\" op",
                        "--role", "operator"], input="a long password\n", capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "a long password" not in r.stdout
    cfg = parse(tomllib.loads(r.stdout)["web"], tmp_path)
    user = cfg.users['ann "the" op']
    assert user.role.value == "operator" and verify_password("a long password",
                                                             user.password_hash)
    short = subprocess.run([sys.executable, "-m", "backend", "passwd", "bob"], input="short\n",
                           capture_output=True, text=True, timeout=30)
    assert short.returncode == 2 and "at least" in short.stderr


def test_page_shows_data_as_text_and_viewer_buttons_off(tmp_path: Path,
                                                        sites: sitesmod.Sites) -> None:
    """A unit's strings (child refs, zones) are data: shown as text, never as markup, also
    in the map's tooltips; a viewer's action buttons are off."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from pagerig import browser, log_in

    (tmp_path / "sites.toml").write_text(SITES)
    db = FakeDb()
    now = datetime.now(UTC)
    evil = '<img src=x id="pwn">'
    db.alerts = [{**ev("sos", "park-01", "park-site", evil, {"zone": evil}), "time": now,
                  "received": now}]

    async def commander(unit: str, cmd: str, args: dict[str, Any],
                        timeout: float) -> dict[str, Any]:
        raise AssertionError("a viewer sent a command")

    with serving(web_config(tmp_path / "sites.toml"), sites, db, commander) as base, \
            browser() as d:
        log_in(d, base, "vic")
        alert = WebDriverWait(d, 10).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, ".alert.sos")))
        assert evil in alert.text
        assert not d.find_elements(By.ID, "pwn")
        assert evil in d.find_element(By.CSS_SELECTOR, ".leaflet-tooltip-pane").text
        assert not alert.find_element(By.TAG_NAME, "button").is_enabled()
        assert not d.find_element(By.ID, "locate-btn").is_enabled()
        assert "viewer" in d.find_element(By.ID, "role-note").text


def test_database_down_keeps_the_last_state_and_says_so(served: Any) -> None:
    import time

    base, _, db = served
    c = Client(base)
    c.login("vic")
    state = json.loads(c.req("GET", "/api/state")[2])
    assert [a["child"] for a in state["alerts"]] == ["c-1"] and state["error"] is None
    db.down = True
    time.sleep(0.5)
    state = json.loads(c.req("GET", "/api/state")[2])
    assert [a["child"] for a in state["alerts"]] == ["c-1"]
    assert "connection refused" in state["error"]
    db.down = False
    time.sleep(0.5)
    assert json.loads(c.req("GET", "/api/state")[2])["error"] is None
