"""The wheel ships every package: pyproject's explicit list matches the source tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_listed() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    renamed = {path: name for name, path in cfg.get("package-dir", {}).items()}
    found = set()
    for init in ROOT.glob("*/**/__init__.py"):
        parts = init.parent.relative_to(ROOT).parts
        if parts[0] in {"tests", "bench", ".venv", ".typecheck", "build"}:
            continue
        top = renamed.get(parts[0], parts[0])
        found.add(".".join((top, *parts[1:])))
    shipped = {p for p in found if p.split(".")[0] in {n.split(".")[0] for n in cfg["packages"]}}
    assert set(cfg["packages"]) == shipped, "pyproject [tool.setuptools] packages"
