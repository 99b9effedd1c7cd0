"""The backend's tap under paho (backend/mqttread.py): publishes split from the socket's
bytes however they are cut, every other packet served to paho whole, in order; the paho
versions it was checked against; the real backend through it over TLS (the plain
broker path: test_backend_ingest.py and the fault tests)."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_tls_acl import UNIT, Pki, pki, tls_broker, try_connect  # noqa: F401 - fixtures

from backend import mqttread
from backend.mqttread import Malformed, Received, Tap, split
from backendproc import PREFIX, BackendProcess, encode, event, keypair, write_config
from firmware_sim.broker import LocalBroker
from firmware_sim.postgres import query
from harness import wait_until


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n % 128, n // 128
        out.append(b | (128 if n else 0))
        if not n:
            return bytes(out)


def publish(topic: str, payload: bytes, mid: int, qos: int) -> bytes:
    t = topic.encode()
    body = struct.pack("!H", len(t)) + t + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | qos << 1]) + _length(len(body)) + body


PUBACK = bytes([0x40, 2, 0, 7])
PINGRESP = bytes([0xD0, 0])
SUBACK = bytes([0x90, 3, 0, 1, 1])


class FakeSocket:
    """Hands out a byte stream in given cuts; then would block."""

    def __init__(self, cuts: list[bytes]) -> None:
        self.cuts = list(cuts)

    def recv(self, n: int) -> bytes:
        if not self.cuts:
            raise BlockingIOError
        c = self.cuts.pop(0)
        if len(c) > n:
            self.cuts.insert(0, c[n:])
            c = c[:n]
        return c

    def fileno(self) -> int:
        return -1


def paho_read(sock: Any) -> bytes | None:
    """One packet the way paho's _packet_read asks for it: 1 byte, each length byte, the
    body; None when the socket would block before the first byte."""
    try:
        head = sock.recv(1)
    except BlockingIOError:
        return None
    length, mult, raw = 0, 1, b""
    while True:
        b = sock.recv(1)  # a tap never leaves paho in the middle of a packet
        raw += b
        length += (b[0] & 127) * mult
        mult *= 128
        if not b[0] & 128:
            break
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return head + raw + body


def drain(stream: list[bytes]) -> tuple[list[Received], list[bytes]]:
    """Run the tap over a stream cut as given, as aiomqtt's reader would: a read per loop
    turn, then paho while ``pending()`` says more is there."""
    loop = asyncio.new_event_loop()
    got: list[Received] = []
    tap = Tap(FakeSocket(stream), got.extend, loop)
    served: list[bytes] = []
    try:
        for _ in range(10 * len(stream) + 10):
            while True:
                p = paho_read(tap)
                if p is not None:
                    served.append(p)
                if not tap.pending():
                    break
            loop.call_soon(loop.stop)
            loop.run_forever()  # the turn ends: the next may read again
    finally:
        loop.close()
    return got, served


def test_split_takes_publishes_and_stops_at_the_first_other_packet() -> None:
    a = publish("kidsafe/v1/u/event/gate", b'{"x":1}', 1, 1)
    b = publish("kidsafe/v1/u/status", b"", 0, 0)
    buf = a + b + PUBACK + a
    out: list[Received] = []
    pos, end = split(buf, 0, out)
    assert out == [Received("kidsafe/v1/u/event/gate", b'{"x":1}', 1, 1),
                   Received("kidsafe/v1/u/status", b"", 0, 0)]
    assert buf[pos:end] == PUBACK
    assert split(buf, end, out) == (len(buf), 0) and len(out) == 3
    assert split(a[:-1], 0, []) == (0, 0)  # incomplete: nothing taken


def test_lengths_of_two_three_and_four_bytes() -> None:
    for size in (200, 20_000, 2_100_000):
        p = publish("t/x", bytes(range(256)) * (size // 256), 9, 1)
        out: list[Received] = []
        assert split(p, 0, out) == (len(p), 0)
        assert out[0].payload == bytes(range(256)) * (size // 256) and out[0].mid == 9


def test_qos2_publish_goes_to_paho() -> None:
    p = publish("t", b"x", 3, 2)
    assert split(p, 0, []) == (0, len(p))


def test_malformed_lengths_drop_the_connection() -> None:
    with pytest.raises(Malformed):
        split(bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), 0, [])
    with pytest.raises(Malformed):  # the topic runs past the packet
        split(bytes([0x32, 3, 0, 9, 0x61]), 0, [])
    assert issubclass(Malformed, ConnectionError)  # paho: connection lost, reconnect


stream_parts = st.lists(st.sampled_from(["pub0", "pub1", "big", "puback", "ping", "suback"]),
                        min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(parts=stream_parts, seed=st.randoms(use_true_random=False))
def test_any_cut_of_the_stream_gives_the_same_packets(parts: list[str], seed: Any) -> None:
    pubs, others, stream = [], [], b""
    for i, kind in enumerate(parts):
        if kind in ("pub0", "pub1", "big"):
            qos = 0 if kind == "pub0" else 1
            payload = (b"%d" % i) * (40_000 if kind == "big" else 20)
            stream += publish(f"kidsafe/v1/u{i}/event/gate", payload, i + 1 if qos else 0, qos)
            pubs.append(Received(f"kidsafe/v1/u{i}/event/gate", payload, i + 1 if qos else 0,
                                 qos))
        else:
            pkt = {"puback": PUBACK, "ping": PINGRESP, "suback": SUBACK}[kind]
            stream += pkt
            others.append(pkt)
    cuts, pos = [], 0
    while pos < len(stream):
        n = seed.choice([1, 2, 3, 7, 100, 5000, 70_000])
        cuts.append(stream[pos:pos + n])
        pos += n
    got, served = drain(cuts)
    assert got == pubs
    assert served == others


def test_the_broker_closing_reads_as_closed() -> None:
    class Closed(FakeSocket):
        def recv(self, n: int) -> bytes:
            return b""

    loop = asyncio.new_event_loop()
    try:
        assert Tap(Closed([]), lambda _: None, loop).recv(1) == b""
    finally:
        loop.close()


def test_installed_only_where_checked() -> None:
    loop = asyncio.new_event_loop()
    try:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        assert not mqttread.install(c, lambda _: None, loop, "5")
        assert mqttread.install(c, lambda _: None, loop, "3.1.1") == mqttread.supported()
    finally:
        loop.close()
    # A new paho release is checked (and added to CHECKED_PAHO) before the tap runs on it.
    assert mqttread.supported() == paho.mqtt.__version__.startswith(("2.1.", "2.2."))


def test_the_backend_over_tls_reads_through_the_tap(tmp_path: Path, pki: Pki,  # noqa: F811
                                                     tls_broker: LocalBroker,  # noqa: F811
                                                     backend_dsn: str) -> None:
    """A TLS socket holds decrypted bytes the selector does not see (aiomqtt loops while
    ``pending()``): the real backend, its client certificate and password and the sample
    ACL, takes every event, a few of them larger than the tap's 64 KiB reads."""
    priv, _pub = keypair(tmp_path)
    (tmp_path / "backend-pw").write_text("backend-pw\n")
    cfg = write_config(
        tmp_path / "backend.toml", broker_port=tls_broker.port, dsn=backend_dsn,
        key_file=priv, client_id="backend-tls",
        broker={"username": "backend", "password_file": str(tmp_path / "backend-pw"),
                "tls": {"ca_file": str(pki.ca.cert), "cert_file": str(pki.backend[0]),
                        "key_file": str(pki.backend[1])}})
    backend = BackendProcess(cfg, tmp_path / "backend.log").start()
    ok, unit = try_connect(tls_broker.port, pki.ca.cert, pki.unit[0], pki.unit[1], UNIT,
                           "unit-pw")
    assert ok
    try:
        bodies = [event(UNIT, s) for s in range(1, 401)]
        for i, b in enumerate(bodies):
            if i % 100 == 50:  # larger than a read, still valid: a long gate name
                b["data"]["gate"] = "g" * 100_000
            unit.publish(f"{PREFIX}/{UNIT}/event/gate", encode(b), qos=1)
        wait_until(lambda: int(query(backend_dsn, "SELECT count(*) FROM events")[0][0]) == 400,
                   30, "every event stored")
    finally:
        unit.disconnect()
        unit.loop_stop()
        assert backend.stop() == 0, backend.log_text()[-2000:]
    assert "publishes read by the tap" in backend.log_text()
    assert int(query(backend_dsn, "SELECT count(*) FROM quarantine")[0][0]) == 0
