"""Pure (sans-I/O) decoders: bytes in, frames and rejects out.

One module per protocol family, each defining ``Decoder`` (a class whose
``feed(data: bytes)`` returns decoded frames and :class:`Reject` records) and
``KIND``. No ports, sockets or clocks here, so they can be fuzzed and replayed.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from drivers.codecs._frames import Reject

__all__ = ["Reject", "available", "load"]


def available() -> list[str]:
    """Protocol kinds a technician can name to ``gatewayd decode``."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(kind: str) -> ModuleType:
    if kind not in available():
        raise KeyError(kind)
    return importlib.import_module(f"{__name__}.{kind}")
