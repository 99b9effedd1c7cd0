"""The running daemon's local status socket (``gatewayd status`` asks it).

A unix stream socket, mode 0600, next to the buffer in the state directory
(``/var/lib/kidsafe/gatewayd.sock``): a connection gets one JSON document and is
closed. A socket rather than a status file the daemon rewrites: nothing is written
to the SD card every few seconds, and an answer is always current. Only the
daemon's user (and root) can connect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway")

SOCKET_NAME = "gatewayd.sock"
MAX_REPLY = 4 * 1024 * 1024


def socket_path(buffer_path: str) -> str:
    return str(Path(buffer_path).parent / SOCKET_NAME)


class StatusSocket:
    """Serves ``status()`` as JSON; :meth:`serve` is called from the daemon's main loop."""

    def __init__(self, path: str, status: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.status = status
        self.sock: socket.socket | None = None

    def open(self) -> bool:
        """Listen; False (logged) when another daemon answers there or binding fails."""
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(0.5)
            probe.connect(self.path)
            log.error("status socket %s: another gatewayd answers there; "
                      "`gatewayd status` will show that one", self.path)
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # left behind by a daemon that was killed
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.bind(self.path)
            os.chmod(self.path, 0o600)
            s.listen(4)
        except OSError as e:
            s.close()
            log.error("status socket %s: %s; `gatewayd status` will not answer", self.path, e)
            return False
        s.setblocking(False)
        self.sock = s
        return True

    def serve(self, timeout: float) -> None:
        """Answer the connections waiting now, or arriving within ``timeout``."""
        if self.sock is None:
            return
        readable, _, _ = select.select([self.sock], [], [], timeout)
        while readable:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            with conn:
                conn.settimeout(1.0)  # a client that does not read must not stall the daemon
                try:
                    conn.sendall(json.dumps(self.status(), separators=(",", ":")).encode())
                except Exception as e:  # a failing status must never take the daemon down
                    log.warning("status socket: could not answer (%s)", e)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class NotRunning(Exception):
    """No daemon answers on the socket."""


def query(path: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """The running daemon's status document; raises NotRunning with the reason."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout_s)
            s.connect(path)
            chunks: list[bytes] = []
            size = 0
            while chunk := s.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_REPLY:
                    raise NotRunning(f"{path}: reply too large")
    except FileNotFoundError:
        raise NotRunning(f"no status socket at {path}: is gatewayd running "
                         "(systemctl status kidsafe-gatewayd)?") from None
    except ConnectionRefusedError:
        raise NotRunning(f"{path}: nobody answers (gatewayd stopped without "
                         "removing it?)") from None
    except PermissionError:
        raise NotRunning(f"{path}: permission denied; run as the daemon's user "
                         "(sudo -u kidsafe gatewayd status ...) or root") from None
    except OSError as e:
        raise NotRunning(f"{path}: {e}") from None
    try:
        doc: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError as e:
        raise NotRunning(f"{path}: not a status reply ({e})") from None
    return doc
