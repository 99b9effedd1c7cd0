"""Pure (sans-I/O) decoders: bytes in, frames and rejects out.

One module per protocol family, each defining ``Decoder`` (a class whose
``feed(data: bytes)`` returns decoded frames and :class:`Reject` records, and
``flush()`` at the end of input), ``KIND`` (its reader kind), ``REASONS`` (every
reject reason it gives) and ``INPUT`` (``"binary"`` or ``"lines"``, plus
``COMMENT`` for lines) and ``DERIVED`` (frame properties to print) for
``gatewayd decode``. No ports, sockets or clocks
here, so they can be fuzzed and replayed. :mod:`drivers.registry` names the
codec of each reader kind.
"""

from __future__ import annotations

from drivers.codecs._frames import Reject

__all__ = ["Reject"]
