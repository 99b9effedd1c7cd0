"""A serial port that is a pseudo-terminal, with a stable link name and a plug.

``plug()`` makes a new pty and points the link (e.g. /tmp/kidsafe/ttyRFID0) at
its slave side; ``unplug()`` closes it and removes the link, as a USB adapter
pulled out of the box would: the driver's reads then fail and its re-opens
fail until ``plug()`` again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import tty
from pathlib import Path


class VirtualSerial:
    def __init__(self, link: str | None = None) -> None:
        self.link = link
        self.master: int | None = None
        self._slave: int | None = None
        self.device = ""
        self._lock = threading.Lock()
        self.dropped_bytes = 0

    @property
    def path(self) -> str:
        return self.link or self.device

    def plug(self) -> str:
        with self._lock:
            if self.master is not None:
                return self.device
            master, slave = os.openpty()
            tty.setraw(slave)
            tty.setraw(master)
            fl = fcntl.fcntl(master, fcntl.F_GETFL)
            fcntl.fcntl(master, fcntl.F_SETFL, fl | os.O_NONBLOCK)
            self.master, self._slave = master, slave
            self.device = os.ttyname(slave)
            if self.link:
                Path(self.link).parent.mkdir(parents=True, exist_ok=True)
                tmp = f"{self.link}.{os.getpid()}.tmp"
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                os.symlink(self.device, tmp)
                os.replace(tmp, self.link)  # atomic: the link never points nowhere mid-way
            return self.device

    def unplug(self) -> None:
        with self._lock:
            if self.link:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.link)
            for fd in (self.master, self._slave):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self.master = self._slave = None

    @property
    def plugged(self) -> bool:
        return self.master is not None

    def write(self, data: bytes) -> int:
        """Write what fits; a full buffer drops the rest, like a UART overrun."""
        with self._lock:
            if self.master is None:
                self.dropped_bytes += len(data)
                return 0
            try:
                n = os.write(self.master, data)
            except BlockingIOError:
                n = 0
            except OSError as e:
                if e.errno not in (errno.EIO, errno.EAGAIN):
                    raise
                n = 0
            self.dropped_bytes += len(data) - n
            return n

    def read(self, n: int = 4096) -> bytes:
        """Bytes the driver sent to the device (commands), if any; never blocks."""
        with self._lock:
            if self.master is None:
                return b""
            try:
                return os.read(self.master, n)
            except (BlockingIOError, OSError):
                return b""

    def close(self) -> None:
        self.unplug()
