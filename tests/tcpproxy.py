"""A loopback TCP proxy in front of a real broker, for faults a broker's own process
cannot be made to show on cue (tests/test_standby_e2e.py, tests/test_connack_wait.py).

``cut()`` closes the port and every connection through it, as a node's death does;
``restore()`` listens again. ``mute_first=n``: the first n connections are accepted and
read but never forwarded, so a CONNECT on them is never answered (RabbitMQ 3.10 does
that right after a node of its cluster died: docs/fleet.md).
"""

from __future__ import annotations

import contextlib
import socket
import threading

from firmware_sim.broker import free_port


class Proxy:
    def __init__(self, upstream: int, mute_first: int = 0) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.mute_left = mute_first
        self.accepted = 0  # connections accepted, muted ones included
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.lock = threading.Lock()

    def restore(self) -> Proxy:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() (close alone does not)
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self.lock:
            socks, self._socks = self._socks, []
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                down, _ = listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                mute = self.mute_left > 0
                self.mute_left -= mute
                self._socks.append(down)
            if mute:
                threading.Thread(target=self._swallow, args=(down,), daemon=True).start()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                down.close()
                continue
            with self.lock:
                self._socks.append(up)
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _swallow(a: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while a.recv(65536):
                pass

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_RDWR)
