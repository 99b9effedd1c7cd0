"""A real gpsd for the tests, reading a simulated receiver's pty on a loopback port.

``gpsd -N -n -s 9600 -f 8N1 -S PORT DEVICE``: -N stays in the foreground (we own
the pid), -n polls the device at once (as root it would otherwise drop to the
gpsd user and fail to open the pty later), -S keeps us off the system's 2947.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from firmware_sim import procs
from firmware_sim.broker import free_port


def gpsd_path() -> str | None:
    return shutil.which("gpsd") or next(
        (p for p in ("/usr/sbin/gpsd", "/usr/bin/gpsd") if os.path.exists(p)), None)


def require_gpsd() -> str:
    exe = gpsd_path()
    if exe is None:
        pytest.skip("gpsd is not installed (Debian package 'gpsd'): gpsd client tests skipped")
    return exe


class Gpsd:
    def __init__(self, device: str, log: Path, port: int | None = None) -> None:
        self.exe = require_gpsd()
        self.device = device
        self.port = port or free_port()
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Gpsd:
        self.proc = procs.spawn_listening(
            [self.exe, "-N", "-n", "-s", "9600", "-f", "8N1", "-S", str(self.port), self.device],
            self.log, self.port, "gpsd", timeout)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        procs.end(self.proc, sig)
        self.proc = None
