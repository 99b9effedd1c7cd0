"""The operator page in a real browser, on the whole real chain: a simulated BLE tag
(mock BlueZ on a private D-Bus) -> gatewayd -> mosquitto -> kidsafe-backend -> PostgreSQL
-> the page (uvicorn) -> Debian's headless Chromium (Selenium, its own chromedriver).

An SOS pressed on the tag is on the page within 2 s of the press; Locate on the alert
sends a signed command through gateway.cmdtool and the unit's reply is shown; a disaster
roll-call started from the page lists the child present. A screenshot is kept in the
test's tmp dir (its path printed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backend import config as backend_config
from backend.web import serve
from backend.web import sites as sitesmod
from backend.web.source import PgSource
from backendproc import BackendProcess, keypair
from backendproc import write_config as write_backend_config
from blezmock import ALERT_UUID, TAG_UUID, ble_world
from firmware_sim.ble import SimTag
from firmware_sim.broker import LocalBroker
from firmware_sim.postgres import query
from gateway import config as configmod
from harness import GatewayProcess, wait_until, write_config
from pagerig import browser, log_in, serving, web_config

KID = "C0:00:00:00:01:01"
UNIT = "park-unit-1"
SITES = f"""
[[sites]]
id = "test-site"
name = "Riverside park"
units = [{{id = "{UNIT}", lat = 37.5600, lon = 126.9700}}]
zones = [{{id = "playground", unit = "{UNIT}", lat = 37.5601, lon = 126.9702, radius_m = 30}}]
cameras = [{{id = "cam-gate", lat = 37.5603, lon = 126.9699}},
           {{id = "cam-slide", lat = 37.5598, lon = 126.9705}}]
"""

pytestmark = [pytest.mark.timeout(150)]


@pytest.fixture
def chain(tmp_path: Path, broker: LocalBroker, backend_dsn: str) -> Iterator[dict[str, Any]]:
    priv, pub = keypair(tmp_path)
    bcfg_path = write_backend_config(tmp_path / "backend.toml", broker_port=broker.port,
                                     dsn=backend_dsn, key_file=priv)
    bcfg = backend_config.load(bcfg_path)
    with ble_world(tmp_path, drop_rate=0.1, seed=3) as (bus, sim):
        sim.add_tag(SimTag(KID, "ibeacon", uuid=TAG_UUID, major=7, minor=42, rssi=-60,
                           interval_s=0.2))
        cfg = write_config(
            tmp_path / "gw.toml", broker_port=broker.port, buffer=tmp_path / "buf.db",
            unit=UNIT,
            readers=[{"id": "ble-park", "kind": "ble", "role": "zone", "adapter": "hci0",
                      "button_uuid": ALERT_UUID, "silence_s": 5.0,
                      "reconnect_initial_s": 0.1, "reconnect_max_s": 0.5}],
            tags=[{"id": f"ibeacon:{TAG_UUID}:7:42", "child": "c-3001"}],
            extra=("[commands]\npublic_keys = [\"" + str(pub) + "\"]\n\n"
                   "[[zones]]\nid = \"playground\"\nreaders = [\"ble-park\"]\n"
                   "enter_dbm = -75.0\nexit_dbm = -88.0\ndwell_s = 1.0\n"))
        configmod.load(cfg)
        backend = BackendProcess(bcfg_path, tmp_path / "backend.log")
        gw = GatewayProcess(cfg, tmp_path / "gateway.log",
                            env={"DBUS_SYSTEM_BUS_ADDRESS": bus.address})
        (tmp_path / "sites.toml").write_text(SITES)
        wcfg = web_config(tmp_path / "sites.toml")
        source = PgSource(backend_dsn)
        try:
            backend.start()
            gw.start()
            gw.wait_log("reader ble-park: online")
            gw.wait_log("connected (MQTT")
            sim.start()
            with serving(wcfg, sitesmod.load(wcfg.sites), source,
                         serve.commander(bcfg)) as base:
                yield {"base": base, "sim": sim, "gw": gw, "backend": backend,
                       "dsn": backend_dsn, "tmp": tmp_path}
        finally:
            gw.stop()
            backend.stop()


def test_sos_on_the_page_within_2s_and_locate_from_it(chain: dict[str, Any]) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, sim, dsn, tmp = chain["base"], chain["sim"], chain["dsn"], chain["tmp"]
    # The child is in the playground (stored), so the SOS is placed in it.
    wait_until(lambda: bool(query(dsn, "SELECT 1 FROM events WHERE kind = 'zone_enter'")),
               30, "zone_enter stored")
    with browser() as d:
        log_in(d, base, "olga")
        WebDriverWait(d, 20).until(ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, f'tr[data-unit="{UNIT}"] td.state'), "online"))
        assert not d.find_elements(By.CSS_SELECTOR, ".alert.sos")

        t0 = time.monotonic()
        sim.press(KID, hold_s=1.0)
        WebDriverWait(d, 10, poll_frequency=0.02).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, '.alert.sos[data-child="c-3001"]')))
        took = time.monotonic() - t0
        print(f"SOS on the page {took * 1000:.0f} ms after the press")
        assert took < 2.0, f"SOS took {took:.2f} s to reach the page"
        # The page re-renders on every update (the main session's copy of the SOS, stored
        # a moment after the emergency session's, updates the unit's last_seen): find the
        # alert again rather than hold an element that may be gone.
        sos = '.alert.sos[data-child="c-3001"]'
        text = WebDriverWait(d, 5, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda drv: drv.find_element(By.CSS_SELECTOR, sos).text)
        assert "unit park-unit-1" in text and "zone playground" in text
        assert "cam-gate" in text  # the nearest camera from the sites file
        assert d.find_elements(By.CSS_SELECTOR, "path.alert-marker")  # on the map

        # Locate from the alert: a signed command, the unit's reply on the page.
        WebDriverWait(d, 5, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda drv: drv.find_element(By.CSS_SELECTOR, f"{sos} button").click() or True)
        reply = WebDriverWait(d, 15, ignored_exceptions=(StaleElementReferenceException,)).until(
            lambda drv: drv.find_element(By.CSS_SELECTOR,
                                         '.action[data-what="locate"] .reply').text)
        assert reply.startswith(f"{UNIT}: 200"), reply
        assert "ble-park" in reply and "playground" in reply

        # A disaster roll-call for the site, started from the page: the child is present.
        d.find_element(By.ID, "alert-id").send_keys("drill-1")
        d.find_element(By.ID, "alert-interval").clear()
        d.find_element(By.ID, "alert-interval").send_keys("5")
        d.find_element(By.ID, "alert-start-btn").click()
        WebDriverWait(d, 30).until(ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, '.rollcall[data-alert="drill-1"] .present'), "c-3001"))
        shot = tmp / "operator-page.png"
        d.save_screenshot(str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
