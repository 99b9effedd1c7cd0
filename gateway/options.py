"""Reader options declared once, as frozen dataclasses; validation comes from the declaration.

A driver declares its options like this::

    @dataclass(frozen=True, slots=True, kw_only=True)
    class RdmOptions(SerialOptions):
        baud: int = opt(9600, "serial speed", gt=0)

The field's type (``int``, ``float``, ``bool``, ``str``, ``str | None``,
``tuple[int, ...]`` from a TOML array, ``dict[str, str]`` from a TOML table)
is what the config must hold; :func:`opt` adds the one-line doc and the
limits (``gt``/``ge``/``le``/``lt``, applied to each item of a tuple),
``choices`` or a ``check`` callable. A field without a default is required.
:func:`parse_options` turns a reader's TOML table into the typed object,
reporting every problem to a :class:`~gateway.checker.Checker`;
:func:`option_docs` lists the declarations for the docs and their test.
Unknown keys are the caller's business (the loader also allows keys other
layers own), see :func:`option_names`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar

from gateway.checker import Check, Checker, bounds, one_of, type_name

_META = "kidsafe.option"

OptionsT = TypeVar("OptionsT", bound="ReaderOptions")


@dataclass(frozen=True, slots=True)
class OptionSpec:
    doc: str
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True, slots=True)
class ReaderOptions:
    """Base of every driver's options; no fields of its own."""

    def where(self) -> str:
        """Where the reader is (serial port, adapter, host:port), for log lines; '' if nowhere."""
        return ""


def opt(default: Any = MISSING, doc: str = "", *, gt: float | None = None,
        ge: float | None = None, le: float | None = None, lt: float | None = None,
        choices: tuple[Any, ...] | None = None, check: Check | None = None) -> Any:
    """A declared option: default (none: required), one-line doc and its checks."""
    checks: list[Check] = []
    if (gt, ge, le, lt) != (None, None, None, None):
        checks.append(bounds(gt=gt, ge=ge, le=le, lt=lt))
    if choices is not None:
        checks.append(one_of(choices))
    if check is not None:
        checks.append(check)
    meta = {_META: OptionSpec(doc, tuple(checks))}
    if isinstance(default, dict):
        frozen = dict(default)
        return dataclasses.field(default_factory=lambda: dict(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True, slots=True)
class OptionDoc:
    name: str
    type: str  # in TOML's words: "integer", "array of integers", ...
    default: Any  # MISSING when required
    doc: str

    @property
    def required(self) -> bool:
        return self.default is MISSING


def _fields(cls: type[ReaderOptions]) -> list[tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def option_spec(cls: type[ReaderOptions], name: str) -> tuple[OptionSpec, Any]:
    """(declaration, type) of one option, e.g. for the test that every number is bounded."""
    for f, tp in _fields(cls):
        if f.name == name:
            return f.metadata.get(_META, OptionSpec("")), tp
    raise KeyError(name)


def option_names(cls: type[ReaderOptions]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); TOML has no null, so None is only ever the default."""
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)
            and type(None) in args and len(args) == 2):
        return next(a for a in args if a is not type(None)), True
    return tp, False


def _type_words(tp: Any) -> str:
    tp, _ = _optional(tp)
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"array of {_type_words(typing.get_args(tp)[0])}s"
    if origin is dict:
        return f"table of {_type_words(typing.get_args(tp)[1])}s"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, str(tp))


def _scalar(tp: Any, v: Any) -> tuple[bool, Any]:
    """(ok, converted) for one TOML value against int/float/bool/str."""
    if tp is bool:
        return isinstance(v, bool), v
    if isinstance(v, bool):
        return False, v  # bool is an int in Python; TOML keeps them apart, so do we
    if tp is int:
        return isinstance(v, int), v
    if tp is float:
        return isinstance(v, int | float), float(v) if isinstance(v, int | float) else v
    if tp is str:
        return isinstance(v, str), v
    raise TypeError(f"unsupported option type {tp!r}")


def _convert(tp: Any, v: Any) -> tuple[str | None, Any, list[Any]]:
    """(type error, value, the scalars the limits apply to)."""
    tp, _ = _optional(tp)
    origin = typing.get_origin(tp)
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(v, list):
            return f"expected an {_type_words(tp)}, got {type_name(v)} {v!r}", None, []
        out = []
        for x in v:
            ok, cx = _scalar(item, x)
            if not ok:
                return f"expected an {_type_words(tp)}, got {type_name(x)} {x!r} in it", None, []
            out.append(cx)
        return None, tuple(out), out
    if origin is dict:
        item = typing.get_args(tp)[1]
        if not isinstance(v, dict):
            return f"expected a {_type_words(tp)}, got {type_name(v)} {v!r}", None, []
        table = {}
        for k, x in v.items():
            ok, cx = _scalar(item, x)
            if not ok:
                return f"expected a {_type_words(tp)}, got {type_name(x)} {x!r} at {k!r}", None, []
            table[str(k)] = cx
        return None, table, list(table.values())
    ok, cv = _scalar(tp, v)
    if not ok:
        return f"expected {_type_words(tp)}, got {type_name(v)} {v!r}", None, []
    return None, cv, [cv]


def parse_options(cls: type[OptionsT], table: dict[str, Any], checker: Checker,
                  path: str) -> OptionsT | None:
    """The typed options from a reader's table, or None after reporting errors to ``checker``.

    Only the declared keys are read; the caller reports keys nobody declared.
    """
    values: dict[str, Any] = {}
    ok = True
    for f, tp in _fields(cls):
        spec: OptionSpec = f.metadata.get(_META, OptionSpec(""))
        full = f"{path}.{f.name}"
        if f.name not in table:
            if f.default is MISSING and f.default_factory is MISSING:
                checker.error(full, f"missing key (expected {_type_words(tp)}"
                                    + (f": {spec.doc})" if spec.doc else ")"))
                ok = False
            continue
        problem, value, scalars = _convert(tp, table[f.name])
        if problem is None and any(isinstance(x, float) and not math.isfinite(x)
                                   for x in scalars):
            problem = "must be a finite number"  # TOML has inf and nan; no option means them
        if problem is None:
            # Limits apply to the scalars (each item of an array); other checks to the value.
            for check in spec.checks:
                targets = scalars if typing.get_origin(_optional(tp)[0]) is tuple else [value]
                problem = next((m for t in targets if (m := check(t))), None)
                if problem:
                    break
        if problem:
            checker.error(full, problem)
            ok = False
        else:
            values[f.name] = value
    return cls(**values) if ok else None


def option_docs(cls: type[ReaderOptions]) -> list[OptionDoc]:
    """(name, type, default, doc) of each declared option, in declaration order."""
    out = []
    for f, tp in _fields(cls):
        spec: OptionSpec = f.metadata.get(_META, OptionSpec(""))
        default = f.default
        if default is MISSING and f.default_factory is not MISSING:
            default = f.default_factory()
        out.append(OptionDoc(f.name, _type_words(tp), default, spec.doc))
    return out


def toml_default(doc: OptionDoc) -> str:
    """A default as it would be written in the config ('' when required or None)."""
    v = doc.default
    if v is MISSING or v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, tuple):
        return "[" + ", ".join(str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f'"{k}" = "{x}"' for k, x in v.items()) + " }" if v else "{}"
    return repr(v)  # 30.0 stays a float, 9600 an integer
