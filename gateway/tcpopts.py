"""Socket options for MQTT clients: shared by the publisher and the command tool (which
the backend's operator page uses, so it must not import the publisher)."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import paho.mqtt.client as mqtt


def nodelay(client: mqtt.Client) -> None:
    """No Nagle delay for small packets (a command's reply, an SOS after a PUBACK): paho
    leaves Nagle on, and behind a packet the peer has not ACKed yet (Linux delays ACKs up
    to 40 ms) a small one waits. paho writes packet by packet either way."""
    sock: Any = client.socket()
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
