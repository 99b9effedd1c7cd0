"""Ending the processes the simulators, the demo and the tests start."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def spawn_listening(argv: list[str], log: Path, port: int, name: str,
                    timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Start a server with its output appended to ``log``; return once it accepts TCP
    connections on 127.0.0.1:``port``. If it exits or never listens, say so with its log."""
    out = open(log, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(argv, stdout=out, stderr=out, start_new_session=True)
    out.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited at start: {_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return proc
        time.sleep(0.05)
    end(proc)
    raise RuntimeError(f"{name} did not listen on {port}: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


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
