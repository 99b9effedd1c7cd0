"""Reader drivers: one module per hardware family, found by its file name.

A module ``drivers/<kind>.py`` defines ``DRIVER``, a :class:`drivers._base.Driver`
subclass. Adding a reader model is adding a file; the config's ``kind`` is the
module name. Modules starting with ``_`` are shared plumbing, and
``drivers.codecs`` holds the pure protocol decoders the drivers use.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from drivers._base import Driver


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and not m.ispkg
    )


def load(kind: str) -> type[Driver]:
    if kind not in available():
        raise KeyError(f"unknown reader kind {kind!r}")
    module = importlib.import_module(f"{__name__}.{kind}")
    driver: type[Driver] = module.DRIVER
    return driver
