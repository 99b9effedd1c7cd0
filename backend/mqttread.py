"""Reading the broker's PUBLISH packets past paho: 64 KiB reads, split in one tight loop.

paho reads each packet with three or four ``recv`` calls (the command byte, each length
byte, the body) and then builds an ``MQTTMessage`` (with an ``MQTTMessageInfo`` and its
``threading.Condition``), matches the topic against its per-topic callbacks and logs: a
third of the backend's time while it drained a backlog (py-spy, docs/backend.md). This
module puts a :class:`Tap` between paho and its socket. The tap reads up to 64 KiB at a
time, hands every complete QoS 0/1 PUBLISH straight to the backend (topic, payload, mid,
qos) and serves paho, through its usual small ``recv`` calls, every other packet (CONNACK,
SUBACK, the PUBACKs of our receipts, PINGRESP, ...), whole: paho is never left in the
middle of a packet, so what it does with them is unchanged. The backend still
acknowledges through paho (``Client.ack``: with manual acknowledgements paho keeps no state
for a received QoS 1 message, so it does not matter that paho never saw it).

:func:`split` is the pure part (bytes in, publishes and the next packet for paho out);
:func:`install` is the only code that touches private paho state: it replaces paho's
``_sock`` with the tap as the socket opens (paho's public ``on_socket_open`` hook, before
CONNECT is sent, so no byte is read around it). Checked against paho-mqtt 2.1.0 and 2.2.0
with aiomqtt 2.3 - 2.5.1 (``_sock``, ``_sock_recv`` calling ``_sock.recv(n)``, aiomqtt's
reader looping while ``_sock.pending()``). On any other paho version, or with MQTT 5
(whose PUBLISH carries properties), it installs nothing and paho reads as before
(``install`` returns False; the backend logs which path it uses).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt

CHUNK = 65536  # bytes asked of the socket per read
CHECKED_PAHO = ("2.1.", "2.2.")
PUBLISH = 3


class Received(NamedTuple):
    """A PUBLISH the broker delivered: what the backend needs of it."""

    topic: str
    payload: bytes
    mid: int  # 0 for QoS 0
    qos: int


class Malformed(ConnectionError):
    """The broker's bytes are not MQTT: the connection is dropped (paho: CONN_LOST)."""


def split(buf: bytes, pos: int, out: list[Received]) -> tuple[int, int]:
    """Take the complete QoS 0/1 PUBLISH packets from ``buf[pos:]`` into ``out``, stopping
    at the first packet that is another kind, or at an incomplete one.

    Returns ``(pos, end)``: ``pos`` where the rest starts; ``end`` > 0 when ``buf[pos:end]``
    is a complete packet for paho, else 0 (the rest is an incomplete packet, or nothing).
    MQTT 3.1.1 framing: a command byte, the remaining length (1 to 4 bytes, 7 bits each,
    least significant first), then the body; a PUBLISH body is the topic (2-byte length,
    UTF-8), the packet id when QoS > 0, and the payload.
    """
    n = len(buf)
    while pos + 2 <= n:
        command = buf[pos]
        # The remaining length; one byte in the common case (bodies under 128 bytes).
        b = buf[pos + 1]
        length, i = b & 127, pos + 2
        if b & 128:
            mult = 128
            while True:
                if i >= n:
                    return pos, 0
                b = buf[i]
                i += 1
                length += (b & 127) * mult
                if not b & 128:
                    break
                mult *= 128
                if mult > 128 ** 3:
                    raise Malformed("remaining length longer than 4 bytes")
        end = i + length
        if end > n:
            return pos, 0
        qos = (command >> 1) & 3
        if command >> 4 != PUBLISH or qos == 2:
            return pos, end
        if length < 2:
            raise Malformed("PUBLISH shorter than its topic length")
        t = i + 2 + (buf[i] << 8 | buf[i + 1])
        if qos:
            if t + 2 > end:
                raise Malformed("PUBLISH shorter than its topic and packet id")
            mid, body = buf[t] << 8 | buf[t + 1], t + 2
        else:
            if t > end:
                raise Malformed("PUBLISH shorter than its topic")
            mid, body = 0, t
        # The broker checks that topics are UTF-8; a broken one is quarantined, not fatal.
        out.append(Received(buf[i + 2:t].decode("utf-8", "replace"), buf[body:end], mid, qos))
        pos = end
    return pos, 0


class Tap:
    """paho's socket, seen through :func:`split`: publishes go to ``sink``, the rest to
    paho. One socket read per event-loop turn at most, so a broker streaming a backlog
    cannot hold the loop (paho's ``loop_read`` reads on while receipts of ours await
    their PUBACK). How much the backend holds unprocessed is bounded, as before, by the
    broker's in-flight window for its session (docs/backend.md)."""

    def __init__(self, sock: Any, sink: Callable[[list[Received]], None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._sink = sink
        self._loop = loop
        self._buf = b""
        self._pos = 0
        self._paho_end = 0  # > 0: buf[pos:paho_end] is a complete packet for paho
        self._serving = b""  # the packet paho is reading, and how far it got
        self._served = 0
        self._read_this_turn = False

    def __getattr__(self, name: str) -> Any:  # fileno, send, close, setsockopt, ...
        return getattr(self._sock, name)

    def _divert(self) -> None:
        got: list[Received] = []
        self._pos, self._paho_end = split(self._buf, self._pos, got)
        if got:
            self._sink(got)

    def _new_turn(self) -> None:
        self._read_this_turn = False

    def recv(self, n: int) -> bytes:
        if not self._serving:
            if not self._paho_end:
                self._divert()  # what a packet served to paho left behind
            if not self._paho_end:
                if self._read_this_turn:
                    raise BlockingIOError
                data = self._sock.recv(CHUNK)  # BlockingIOError, SSLWantReadError: paho's
                if not data:
                    return b""  # closed by the broker (paho: connection lost)
                self._read_this_turn = True
                self._loop.call_soon(self._new_turn)
                self._buf = self._buf[self._pos:] + data
                self._pos = 0
                self._divert()
                if not self._paho_end:
                    raise BlockingIOError
            self._serving = self._buf[self._pos:self._paho_end]
            self._served = 0
            self._pos, self._paho_end = self._paho_end, 0
        out = self._serving[self._served:self._served + n]
        self._served += len(out)
        if self._served >= len(self._serving):
            self._serving = b""
        return out

    def pending(self) -> int:
        """Bytes paho can read now without the socket (aiomqtt's reader loops while this
        is > 0: it was written for TLS sockets' decrypted bytes, which count too)."""
        left = len(self._serving) - self._served if self._serving else 0
        if not left:
            if not self._paho_end:
                self._divert()
            left = self._paho_end - self._pos if self._paho_end else 0
        real = self._sock.pending() if isinstance(self._sock, ssl.SSLSocket) else 0
        return left + real


def supported() -> bool:
    return paho.mqtt.__version__.startswith(CHECKED_PAHO)


def install(paho_client: Any, sink: Callable[[list[Received]], None],
            loop: asyncio.AbstractEventLoop, protocol: str) -> bool:
    """Have ``paho_client``'s socket read through a :class:`Tap` (call before connecting);
    False (paho reads as before) on MQTT 5 or an unchecked paho version."""
    if protocol != "3.1.1" or not supported() or not hasattr(paho_client, "_sock_recv"):
        return False
    opened = paho_client.on_socket_open  # aiomqtt's: registers its reader with the loop

    def on_socket_open(client: Any, userdata: Any, sock: Any) -> None:
        client._sock = Tap(sock, sink, loop)  # paho reads, writes, closes through it now
        if opened is not None:
            opened(client, userdata, sock)

    paho_client.on_socket_open = on_socket_open
    return True
