"""Facts about the box that status and doctor report: clock synchronisation, disk space.

The kernel's view of the clock (``adjtimex(2)``, read-only: mode 0) says whether
an NTP client (systemd-timesyncd, chrony, ntpd; gpsd through chrony) keeps it
synchronised, whichever one runs, without asking each over its own interface.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any

STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timex(ctypes.Structure):
    # struct timex (linux/timex.h): the fields we read come first; the rest is padding
    # large enough for every architecture's layout.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    ]


@dataclass(frozen=True, slots=True)
class ClockSync:
    synchronized: bool | None  # None: could not ask the kernel
    max_error_s: float | None
    source: str  # what keeps it synchronised, as far as the box shows it

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _source() -> str:
    for path, name in (("/run/systemd/timesync/synchronized", "systemd-timesyncd"),
                       ("/run/chrony", "chrony"), ("/var/run/chrony", "chrony"),
                       ("/run/ntpd.pid", "ntpd")):
        if os.path.exists(path):
            return name
    return "unknown"


def _fallback() -> ClockSync:
    """Without adjtimex (the unit's ProtectClock= and system call filter refuse it, even
    read-only): systemd-timesyncd's flag file, which it creates once synchronised."""
    source = _source()
    if os.path.exists("/run/systemd/timesync/synchronized"):
        return ClockSync(True, None, source)
    return ClockSync(None, None, source)


def clock_sync() -> ClockSync:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return _fallback()
    if state < 0:
        return _fallback()
    synced = state != TIME_ERROR and not tx.status & STA_UNSYNC
    return ClockSync(synced, tx.maxerror / 1e6, _source())


@dataclass(frozen=True, slots=True)
class Disk:
    path: str
    free_mb: float
    total_mb: float

    @property
    def free_pct(self) -> float:
        return 100.0 * self.free_mb / self.total_mb if self.total_mb else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "free_mb": round(self.free_mb, 1),
                "total_mb": round(self.total_mb, 1), "free_pct": round(self.free_pct, 1)}


def disk(path: str) -> Disk | None:
    """Free space of the filesystem holding ``path`` (or its nearest existing parent)."""
    p = os.path.abspath(path)
    if os.path.isfile(p):
        p = os.path.dirname(p)  # the folder is what a technician frees space in
    while not os.path.exists(p) and p != os.path.dirname(p):
        p = os.path.dirname(p)
    try:
        u = shutil.disk_usage(p)
    except OSError:
        return None
    return Disk(p, u.free / 2**20, u.total / 2**20)
