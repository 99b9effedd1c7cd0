"""Where the shared real-world captures live (outside the repo; never copied in).

``$KIDSAFE_CAPTURES`` overrides the default ``<repo>/../shared/data/captures``.
Tests call :func:`captures_dir` and are skipped, with the reason, when it is absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "captures"


def captures_dir() -> Path:
    root = Path(os.environ.get("KIDSAFE_CAPTURES", DEFAULT))
    if not root.is_dir():
        pytest.skip(f"real-world captures not found at {root} (set KIDSAFE_CAPTURES)")
    return root


def capture(*parts: str) -> Path:
    p = captures_dir().joinpath(*parts)
    if not p.exists():
        pytest.skip(f"capture file {p} missing")
    return p


def jsonl(*parts: str) -> list[dict[str, Any]]:
    with capture(*parts).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
