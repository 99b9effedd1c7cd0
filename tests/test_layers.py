"""Imports run one way: the engine loads neither the config loader nor any driver.

The full contracts are import-linter's (pyproject.toml, run by ./dev.sh test); this
checks what actually gets imported, including imports made at run time.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import gateway.engine
from gateway.engine import Engine, EngineConfig
Engine(EngineConfig(reader_roles={"g": "gate"}, tags={}))
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    modules: list[str] = json.loads(out)
    return modules


def test_engine_loads_neither_config_nor_drivers() -> None:
    modules = loaded_by(PROBE)
    assert "gateway.engine" in modules
    assert "gateway.config" not in modules
    assert [m for m in modules if m == "drivers" or m.startswith("drivers.")] == []


def test_a_driver_does_not_load_the_config_loader_or_the_engine() -> None:
    modules = loaded_by("import json, sys\nimport drivers.gpsd\n"
                        "print(json.dumps(sorted(sys.modules)))")
    assert "drivers.gpsd" in modules
    assert "drivers.gps_nmea" not in modules  # a reader kind is one module
    assert "gateway.config" not in modules
    assert not [m for m in modules if m.startswith("gateway.engine")]
