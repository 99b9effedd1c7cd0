"""A paho client on the gateway's own loop, as the publisher and its standby connection
(gateway/standbylink.py) both run one: built from ``[broker]`` (credentials, TLS), and
driven one turn at a time beside a wake pipe, with no paho network thread.

``poll(2)`` where the platform has it (every Linux), not ``select()``, which cannot watch
a descriptor numbered above 1023 (a daemon with many open files, or many units in one
process: docs/fleet.md)."""

from __future__ import annotations

import contextlib
import os
import selectors
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import BrokerConfig

_Selector: type[selectors.BaseSelector] = getattr(selectors, "PollSelector",
                                                  selectors.DefaultSelector)


def new_client(b: BrokerConfig, client_id: str, v5: bool, clean: bool) -> mqtt.Client:
    """A client with ``[broker]``'s credentials and TLS. ``clean`` is the 3.1.1 session
    flag; under MQTT 5 clean start goes with CONNECT instead."""
    if v5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=clean)
    if b.username:
        client.username_pw_set(b.username, b.password)
    if b.tls:
        client.tls_set(ca_certs=b.tls.ca_file, certfile=b.tls.cert_file,
                       keyfile=b.tls.key_file)
        if b.tls.insecure_skip_hostname:
            client.tls_insecure_set(True)
    return client


def loop_turn(client: mqtt.Client, wake_r: int, timeout: float,
              woken: Callable[[], None]) -> bool:
    """One turn of paho's external loop: wait up to ``timeout`` for the broker socket or
    the wake pipe, call ``woken()`` once the pipe is drained (a wake-up after that is not
    lost), then read, write and keep alive. False when the connection is gone."""
    sock: Any = client.socket()  # a socket or an SSL socket: both poll-able
    if sock is None:
        return False
    # A PollSelector holds no kernel object, so one per turn costs no more than select()
    # did (epoll would need one per connection).
    sel = _Selector()
    try:
        sock_fd = sock.fileno()  # -1 once closed: register raises ValueError
        sel.register(sock_fd, selectors.EVENT_READ
                     | (selectors.EVENT_WRITE if client.want_write() else 0))
        sel.register(wake_r, selectors.EVENT_READ)
        ready = sel.select(timeout)
    except (OSError, ValueError):  # the socket was closed under us
        return False
    finally:
        sel.close()
    readable = {key.fd for key, ev in ready if ev & selectors.EVENT_READ}
    writable = {key.fd for key, ev in ready if ev & selectors.EVENT_WRITE}
    if wake_r in readable:
        with contextlib.suppress(BlockingIOError):
            while os.read(wake_r, 4096):
                pass
        woken()
    rc = mqtt.MQTT_ERR_SUCCESS
    if sock_fd in readable:
        rc = client.loop_read()
    if rc == mqtt.MQTT_ERR_SUCCESS and sock_fd in writable:
        rc = client.loop_write()
    if rc == mqtt.MQTT_ERR_SUCCESS:
        rc = client.loop_misc()  # keepalive: PINGREQ, and a broker that stopped answering
    return rc == mqtt.MQTT_ERR_SUCCESS
