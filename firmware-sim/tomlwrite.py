"""Writing the small TOML values our config snippets need (tomllib only reads)."""

from __future__ import annotations

import json
from typing import Any


def toml_value(v: Any) -> str:
    """A TOML literal for a bool, number, string, list or inline table."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # TOML basic strings escape like JSON for what we write
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}"
                               for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} as TOML")
