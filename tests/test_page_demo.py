"""`./dev.sh demo`'s chain (`kidsafe-sim demo --chain`): it prints the page's URL and a
login, and the page, logged into over HTTP, shows what the scenario did: the SOS and the
must-stay alert, and the disaster roll-call at both sites."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from test_page_app import Client

from blezmock import require_ble_tools


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_demo_runs_the_chain_to_the_page(tmp_path: Path) -> None:
    require_ble_tools()
    proc = subprocess.Popen([sys.executable, "-m", "firmware_sim", "demo", "--chain",
                             "--for", "60", "--workdir", str(tmp_path / "demo")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    out: list[str] = []
    try:
        while not any("stored in PostgreSQL" in ln for ln in out):
            line = proc.stdout.readline()
            assert line, "the demo ended early:\n" + "".join(out)
            out.append(line)
        text = "".join(out)
        url = re.search(r"OPERATOR PAGE: http://(\S+)/", text)
        login = re.search(r"log in as operator / (\S+)", text)
        assert url and login, text
        assert "200 roll-call on" in text, text
        stored = next(ln for ln in out if "stored in PostgreSQL" in ln)
        for kind in ("gate", "sos", "zone_alert", "roll_call"):
            assert re.search(rf"\d+ {kind}\b", stored), stored
        c = Client("http://" + url.group(1))
        assert c.req("GET", "/api/state")[0] == 401
        c.login("operator", login.group(1))
        state = json.loads(c.req("GET", "/api/state")[2])
        kinds = {(a["kind"], a["child"]) for a in state["alerts"]}
        assert kinds == {("sos", "c-2001"), ("zone_alert", "c-2003")}, state["alerts"]
        sos = next(a for a in state["alerts"] if a["kind"] == "sos")
        assert sos["cameras"][0]["id"] == "cam-park-slide"
        calls = {rc["site"]: rc for rc in state["roll_calls"]}
        assert set(calls) == {"demo-school", "demo-park"}
        park = calls["demo-park"]
        assert [m["child"] for m in park["missing"]] == ["c-2003"]
        assert {p["child"] for p in park["present"]} >= {"c-2001"}
        assert {u["unit"]: u["state"] for u in state["units"]} == {
            "demo-gate-01": "online", "demo-park-01": "online"}
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, text + rest
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
