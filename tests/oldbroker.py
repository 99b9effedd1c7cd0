"""A broker that predates MQTT 5, made from a real mosquitto and a loopback proxy.

mosquitto 2 always speaks MQTT 5, so to test the 3.1.1 fallback this proxy
answers a CONNECT with protocol level 5 the way a 3.1.1-only broker does
(CONNACK return code 1, "unacceptable protocol version", then close) and
forwards every other connection to the real broker byte for byte.
"""

from __future__ import annotations

import contextlib
import socket
import threading


def _read_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _read_packet(conn: socket.socket) -> tuple[bytes, int]:
    """(the whole packet, the length of its fixed header)."""
    head = _read_exact(conn, 1)
    length, mult, raw_len = 0, 1, b""
    while True:
        b = _read_exact(conn, 1)
        raw_len += b
        length += (b[0] & 0x7F) * mult
        mult *= 128
        if not b[0] & 0x80:
            break
    return head + raw_len + _read_exact(conn, length), len(head + raw_len)


class V311OnlyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refused_v5 = 0
        self.forwarded = 0
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()

    def start(self) -> V311OnlyProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._socks.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            packet, hdr = _read_packet(conn)
            name_len = int.from_bytes(packet[hdr:hdr + 2], "big")
            level = packet[hdr + 2 + name_len]
            if level == 5:
                self.refused_v5 += 1
                conn.sendall(b"\x20\x02\x00\x01")
                conn.close()
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self._socks.append(up)
            up.sendall(packet)
            self.forwarded += 1
            threading.Thread(target=self._pipe, args=(up, conn), daemon=True).start()
            self._pipe(conn, up)
        except (OSError, ConnectionError, IndexError):
            with contextlib.suppress(OSError):
                conn.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # wakes the accept() (close alone does not)
            self.listener.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.listener.close()
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.close()
