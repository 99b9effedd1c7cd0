"""What every decoder hands back besides its own frames."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reject:
    """Bytes a decoder refused, and why. Counted, never turned into a reading."""

    reason: str  # short, stable machine word: "checksum", "garbage", "truncated", ...
    raw: bytes
    detail: str = ""
