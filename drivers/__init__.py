"""Reader drivers: one module per hardware family, listed in :mod:`drivers.registry`.

A module ``drivers/<kind>.py`` defines ``DRIVER``, a :class:`drivers._base.Driver`
subclass whose ``Options`` declare its config keys. Modules starting with ``_``
are shared plumbing, and ``drivers.codecs`` holds the pure protocol decoders
the drivers use. :func:`available` and :func:`load` are the registry's, kept
for callers that name the package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drivers import registry

if TYPE_CHECKING:
    from drivers._base import Driver


def available() -> list[str]:
    return registry.names()


def load(kind: str) -> type[Driver[Any]]:
    return registry.driver(kind)
