"""Ending the processes the simulators, the demo and the tests start."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from typing import Any


def end(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM,
        timeout: float = 10.0) -> None:
    """Ask with ``sig`` (a paused process is resumed first), then kill after ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
