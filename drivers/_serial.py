"""Shared plumbing for readers on a serial port (USB-serial adapters, UARTs).

pyserial opens, configures and closes the port exactly as in the field; the read
loop waits on the port's descriptor with one ``select`` and takes what is there
with one ``read`` (``_read_some``: what pyserial's ``read()`` does, without its
per-call overhead, which a polled UHF reader paid ~60 times a second). An
unplugged adapter makes that read raise ``SerialException`` (as pyserial's
``read()`` would) or ``OSError``; both are ``OSError``, so one handler closes the
port and reconnects with exponential back-off and jitter (tenacity), reporting
the outage once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import serial

from drivers._base import Driver
from drivers.codecs import Reject
from gateway import backoff
from gateway.checker import non_empty
from gateway.model import ReaderState, Reading
from gateway.options import ReaderOptions, opt

log = logging.getLogger("gateway.driver")


class _Stopped(Exception):
    pass


# errnos a serial port gives when its adapter is pulled or loses power mid-read
_GONE_ERRNOS = {errno.EIO, errno.ENXIO, errno.ENODEV, errno.EBADF}


def lost_in_words(e: OSError) -> str:
    """Why a port was lost, for a technician: pyserial's own text on an unplugged adapter is
    "device reports readiness to read but returned no data (device disconnected or multiple
    access on port?)", which reads like a bug."""
    text = str(e)
    if "returned no data" in text or e.errno in _GONE_ERRNOS:
        return ("the device went away: unplugged, a loose cable, no power, or another program "
                "reading the port")
    return text[:200]


@dataclass(frozen=True, slots=True, kw_only=True)
class SerialOptions(ReaderOptions):
    """Options of every serial reader; a kind redeclares ``baud`` with its own default."""

    port: str = opt(doc="serial device, e.g. /dev/serial/by-id/... (stable across reboots)",
                    check=non_empty)
    baud: int = opt(9600, "serial speed in baud", gt=0, le=4_000_000)
    reconnect_initial_s: float = opt(0.5, "first back-off delay after the port is lost",
                                     gt=0, le=3600)
    reconnect_max_s: float = opt(30.0, "back-off cap while the reader is unplugged", gt=0, le=3600)

    def where(self) -> str:
        return self.port


SerialT = TypeVar("SerialT", bound=SerialOptions)


class SerialDriver(Driver[SerialT]):
    """Open, read, decode, reconnect. Subclasses name a decoder and map its frames."""

    Options: ClassVar[type[SerialOptions]] = SerialOptions
    read_timeout_s: ClassVar[float] = 0.2
    # Readers that must answer commands are online when they answer, not when the port opens.
    online_when_open: ClassVar[bool] = True
    WAITING = "port open, waiting for the reader to answer"

    @abstractmethod
    def new_decoder(self) -> Any:
        """A fresh sans-I/O decoder (one per connection: no state crosses a replug)."""

    @abstractmethod
    def readings(self, frame: Any, now: float, mono: float) -> Iterable[Reading]:
        """Readings from one decoded frame."""

    # Hooks for readers that must be talked to. Each returns the bytes to send (b"" for
    # none) and gets the injected clock's monotonic time; an OSError raised from one
    # closes the port and reconnects like a lost adapter.
    def on_open(self, mono: float) -> bytes:
        """The port is open (a fresh decoder): e.g. the first command of a polled reader."""
        return b""

    def on_frame(self, frame: Any, mono: float) -> bytes:
        """A well-formed frame arrived (its readings are already passed on): answer it."""
        return b""

    def watch(self, mono: float, got_data: bool) -> bytes:
        """Called after every read, empty or not (about every read_timeout_s): watchdogs."""
        return b""

    def run(self, stop: threading.Event) -> None:
        opts = self.cfg.options
        initial, cap = opts.reconnect_initial_s, opts.reconnect_max_s
        self._report(ReaderState.STARTING, opts.port)
        was_online = False

        while not stop.is_set():
            retry = backoff.retrying(stop, log, f"reader {self.cfg.id}: opening {opts.port}",
                                     initial, cap, self.clock)
            try:
                port = retry(self._open)
            except OSError:
                return  # stop was set while retrying
            if stop.is_set():
                port.close()
                return
            if self.online_when_open:
                self._report(ReaderState.ONLINE, opts.port)
            else:
                self._report(ReaderState.STARTING, self.WAITING)
            if was_online:
                log.info("reader %s: reconnected on %s", self.cfg.id, opts.port)
            was_online = True
            try:
                self._read_loop(port, stop)
            except OSError as e:  # SerialException is an OSError too
                why = lost_in_words(e)
                log.warning("reader %s: lost %s (%s); reconnecting", self.cfg.id, opts.port, why)
                self._report(ReaderState.OFFLINE, why)
            finally:
                with contextlib.suppress(OSError):
                    port.close()
        self._report(ReaderState.OFFLINE, "stopped")

    def _open(self) -> serial.Serial:
        opts = self.cfg.options
        return serial.Serial(opts.port, baudrate=opts.baud, timeout=self.read_timeout_s)

    def _read_loop(self, port: serial.Serial, stop: threading.Event) -> None:
        decoder = self.new_decoder()
        rid = self.cfg.id
        sink = self.sink
        clock = self.clock
        fd = port.fileno()
        if out := self.on_open(clock.monotonic()):
            _write(port, fd, out)
        timeout = self.read_timeout_s
        while not stop.is_set():
            data = _read_some(fd, timeout)
            mono = clock.monotonic()
            if data:
                now = clock.now()
                for item in decoder.feed(data):
                    if isinstance(item, Reject):
                        sink.reject(rid, item.reason)
                        continue
                    for r in self.readings(item, now, mono):
                        sink.reading(r)
                    if out := self.on_frame(item, mono):
                        _write(port, fd, out)
            if out := self.watch(mono, bool(data)):
                _write(port, fd, out)


# What pyserial's read() raises when a port that select() calls readable gives no bytes.
_NO_DATA = ("device reports readiness to read but returned no data "
            "(device disconnected or multiple access on port?)")
_RETRY_ERRNOS = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR}


def _read_some(fd: int, timeout_s: float) -> bytes:
    """Whatever the port holds once a byte is there (b"" after ``timeout_s`` without one).

    What ``port.read(port.in_waiting or 1)`` and a second read of the rest did, with one
    select and one read instead of six syscalls and two turns of pyserial's read loop (a
    polled UHF reader answers ~60 times a second; bench/site_load.py). The port is still
    pyserial's (opened, configured and closed by it, non-blocking); the failures are its
    read()'s: an unplugged adapter reads as "ready, no data" (SerialException) or EIO."""
    if not select.select((fd,), (), (), timeout_s)[0]:
        return b""
    try:
        data = os.read(fd, 4096)
    except OSError as e:
        if e.errno in _RETRY_ERRNOS:
            return b""
        raise serial.SerialException(f"read failed: {e}") from e
    if not data:
        raise serial.SerialException(_NO_DATA)
    return data


def _write(port: serial.Serial, fd: int, data: bytes) -> None:
    """``port.write(data)`` in one syscall when the port takes it all at once (a command
    of a few bytes always does); pyserial writes the rest, or after EAGAIN, and raises
    as its write() does."""
    try:
        n = os.write(fd, data)
    except BlockingIOError:
        n = 0
    except OSError as e:
        if e.errno != errno.EINTR:
            raise serial.SerialException(f"write failed: {e}") from e
        n = 0
    if n < len(data):
        port.write(data[n:])
