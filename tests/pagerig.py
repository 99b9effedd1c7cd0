"""The operator page for the tests: the real app under a real uvicorn on a free loopback
port, in a thread of the test process; Debian's headless Chromium under Selenium."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from backend.web.app import Commander, Source, create_app
from backend.web.auth import Role, User, hash_password
from backend.web.config import WebConfig
from backend.web.sites import Sites

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# Cheap hashes for the tests (the real cost is in backend.web.auth.SCRYPT_N).
PASSWORDS = {"olga": "operator-password", "vic": "viewer-password"}
USERS = {"olga": User("olga", Role.OPERATOR, hash_password(PASSWORDS["olga"], n=2**10)),
         "vic": User("vic", Role.VIEWER, hash_password(PASSWORDS["vic"], n=2**10))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def web_config(sites_path: Path, **kw: Any) -> WebConfig:
    return WebConfig(host="127.0.0.1", port=free_port(), sites=sites_path, users=USERS, **kw)


@contextlib.contextmanager
def serving(cfg: WebConfig, sites: Sites, source: Source, commander: Commander
            ) -> Iterator[str]:
    """The app served until the block ends; yields its base URL."""
    app = create_app(cfg, sites, source, commander)
    server = uvicorn.Server(uvicorn.Config(app, host=cfg.host, port=cfg.port,
                                           log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=1))
    t = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not t.is_alive():
            raise AssertionError("the page's server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{cfg.host}:{cfg.port}"
    finally:
        server.should_exit = True
        t.join(10)


@contextlib.contextmanager
def browser(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """Debian's chromium, headless, through its chromedriver (no browser download)."""
    import pytest
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("the page tests need chromium and chromium-driver (./dev.sh setup)")
    o = webdriver.ChromeOptions()
    o.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--window-size={width},{height}"):
        o.add_argument(a)
    d = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=o)
    try:
        yield d
    finally:
        d.quit()


def log_in(driver: Any, base: str, user: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/")
    WebDriverWait(driver, 10).until(ec.presence_of_element_located((By.ID, "login")))
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[user])
    driver.find_element(By.ID, "submit").click()
    WebDriverWait(driver, 10).until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
