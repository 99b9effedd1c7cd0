"""Reading typed values out of TOML tables, collecting every error on the way.

The bottom layer of the config: the config loader, the engine's settings and
the drivers' option declarations (:mod:`gateway.options`) all report through
one :class:`Checker`, so a technician sees every problem of a file at once.
The shared checks live here once: :func:`positive` is *the* "number greater
than 0" check. Every number is finite (TOML allows ``inf`` and ``nan``; a
``repeat_window_s = inf`` would pass any lower bound and break the unit), and
:func:`seconds` is the bounded duration. A :class:`Checker` also collects
warnings: things that still work but are probably wrong (``check-config``
prints them and exits 0). Nothing here imports the loader, the engine or the
drivers.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

Check = Callable[[Any], str | None]  # a message when the value is wrong, else None

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

MAX_DELAY_S = 3600.0  # the longest back-off, timeout or silence any part of the unit waits


@dataclass(frozen=True, slots=True)
class ConfigError:
    file: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message}"


class ConfigInvalid(Exception):
    def __init__(self, errors: list[ConfigError],
                 warnings: list[ConfigError] | None = None) -> None:
        super().__init__("\n".join(str(e) for e in errors))
        self.errors = errors
        self.warnings = warnings or []


def type_name(value: Any) -> str:
    """A value's type in TOML's words (``string``, ``integer``, ``array`` ...)."""
    return {
        str: "string", int: "integer", float: "float", bool: "boolean", list: "array", dict: "table"
    }.get(type(value), type(value).__name__)


def kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(type_name(k()) if k in (str, int, float, bool, list, dict) else k.__name__
                       for k in kinds)


def _num(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def bounds(gt: float | None = None, ge: float | None = None, le: float | None = None,
           lt: float | None = None) -> Check:
    """A check for a number within the given limits (the one place limits are worded)."""
    low = f"greater than {_num(gt)}" if gt is not None else None
    if ge is not None:
        low = f"{_num(ge)} or more"
    high = f"less than {_num(lt)}" if lt is not None else None
    if le is not None:
        high = f"{_num(le)} or less"
    if ge is not None and le is not None:
        wording = f"between {_num(ge)} and {_num(le)}"
    elif low and le is not None:
        wording = f"{low} and at most {_num(le)}"
    else:
        wording = " and ".join(w for w in (low, high) if w)

    def check(v: float) -> str | None:
        if not math.isfinite(v):
            return f"must be a finite number ({wording})"
        ok = ((gt is None or v > gt) and (ge is None or v >= ge)
              and (le is None or v <= le) and (lt is None or v < lt))
        return None if ok else f"must be {wording}"

    return check


positive = bounds(gt=0)  # "must be greater than 0"
non_negative = bounds(ge=0)  # "must be 0 or more"


def seconds(most: float = MAX_DELAY_S) -> Check:
    """A duration: greater than 0 and at most ``most`` seconds."""
    return bounds(gt=0, le=most)


def printable(v: str) -> str | None:
    """No control characters (a tag id or host name with a newline breaks logs and topics)."""
    if (m := _CONTROL_RE.search(v)) is not None:
        return f"must not contain control characters (found {m.group()!r})"
    return None


def tcp_port(v: int) -> str | None:
    return None if 0 < v < 65536 else "must be a TCP port between 1 and 65535"


def identifier(v: str) -> str | None:
    return None if _ID_RE.match(v) else "must be 1-64 letters, digits, '_', '.', '-'"


def non_empty(v: str | tuple[object, ...]) -> str | None:
    return None if v else "must not be empty"


def one_of(choices: Iterable[Any]) -> Check:
    allowed = tuple(choices)

    def check(v: Any) -> str | None:
        return None if v in allowed else f"must be one of {', '.join(map(repr, allowed))}"

    return check


def did_you_mean(key: str, allowed: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return close[0] if close else None


class Checker:
    """Reads typed values out of nested TOML tables, collecting errors."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[ConfigError] = []
        self.warnings: list[ConfigError] = []

    def error(self, key: str, message: str) -> None:
        self.errors.append(ConfigError(self.file, key, message))

    def warn(self, key: str, message: str) -> None:
        """Works, but probably not as meant: reported, never refused."""
        self.warnings.append(ConfigError(self.file, key, message))

    def table(self, parent: dict[str, Any], key: str, path: str, required: bool) -> dict[str, Any]:
        value = parent.get(key)
        if value is None:
            if required:
                self.error(path, "missing table")
            return {}
        if not isinstance(value, dict):
            self.error(path, f"expected a table, got {type_name(value)}")
            return {}
        return value

    def get(
        self,
        tbl: dict[str, Any],
        key: str,
        path: str,
        kind: type[T] | tuple[type, ...],
        default: T | None = None,
        required: bool = False,
        check: Check | None = None,
    ) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in tbl:
            if required:
                self.error(full, f"missing key (expected {kind_name(kind)})")
            return default
        value = tbl[key]
        # bool is an int in Python; TOML keeps them apart, so do we.
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind in (int, float))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            self.error(full, f"expected {kind_name(kind)}, got {type_name(value)} {value!r}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.error(full, f"must be a finite number, got {value!r}")
            return default
        if check is not None and (msg := check(value)):
            self.error(full, msg)
            return default
        return value

    def unknown(self, tbl: dict[str, Any], allowed: Iterable[str], path: str) -> None:
        """Each key not in ``allowed`` is an error, naming the closest allowed key."""
        allowed = set(allowed)
        for key in tbl:
            if key not in allowed:
                full = f"{path}.{key}" if path else key
                near = did_you_mean(key, allowed)
                self.error(full, f"unknown key; did you mean {near!r}?" if near else
                           f"unknown key (allowed: {', '.join(sorted(allowed))})")
