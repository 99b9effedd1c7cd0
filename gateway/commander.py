"""The shell around gateway.commands: one worker thread admits, runs, records and replies.

The publisher hands each message on ``cmd/#`` over (:meth:`Commander.submit`, from
its network loop: never blocks, a bounded queue); this thread runs the pure
admission (``commands.core.admit``) with the request id looked up in the buffer's
``commands`` table, the command's handler against the :class:`Unit` (which queues
engine work to the pipeline thread), stores the reply under the request id, and
gives the reply to the publisher, which sends it ahead of any event backlog.
One thread, one command at a time: a repeated id can never run twice at once.

Logging: every refused command is one bounded line (one call site, so the CLI's
log filter rate-limits a flood with a count); no signature, no args (child
references are pseudonymous, but args are the backend's business).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from typing import Any

from gateway import logs
from gateway.clock import Clock
from gateway.commands import core
from gateway.commands.config import PENDING
from gateway.commands.core import Code, Command, Handler, Limits, Reply, Seen
from gateway.commands.registry import HANDLERS
from gateway.commands.unit import Unit
from gateway.config import Config
from gateway.outbox import BufferReadError, BufferWriteError, Outbox
from gateway.publisher import Incoming, OutgoingReply

log = logging.getLogger("gateway.commands")

QUEUE_MAX = 64  # commands waiting for the worker; more are answered "busy" at once
PURGE_S = 600.0  # expired request ids are forgotten this often


class Commander:
    def __init__(self, cfg: Config, outbox: Outbox, unit: Unit,
                 send: Callable[[OutgoingReply], None], clock: Clock,
                 handlers: Mapping[str, Handler] = HANDLERS) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.unit = unit
        self.send = send
        self.clock = clock
        self.handlers = handlers
        self.prefix = cfg.broker.topic_prefix
        self.unit_id = cfg.unit.id
        c = cfg.commands
        self.limits = Limits(c.max_bytes, c.clock_skew_s, c.max_lifetime_s)
        self._q: queue.Queue[Incoming | None] = queue.Queue(QUEUE_MAX)
        self.counts: dict[str, int] = {"received": 0, "done": 0, "refused": 0, "repeated": 0,
                                       "busy": 0, "failed": 0}
        self._next_purge = 0.0
        self.current: Incoming | None = None  # the message being run (its reply route)

    # -- from the publisher's thread ---------------------------------------------------------

    def submit(self, msg: Incoming) -> None:
        try:
            self._q.put_nowait(msg)
        except queue.Full:
            self.counts["busy"] += 1
            self._log_refused(msg, Code.FAILED, "busy: too many commands waiting")
            reply = Reply(None, self.unit_id, _name(msg.suffix)[:core.MAX_NAME_CHARS],
                          Code.FAILED, "busy: too many commands waiting")
            self._send(msg, reply)

    def wake(self) -> None:
        with contextlib.suppress(queue.Full):
            self._q.put_nowait(None)

    # -- the worker thread -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                msg = self._q.get(timeout=1.0)
            except queue.Empty:
                msg = None
            if msg is not None:
                self.handle(msg, functools.partial(self._send, msg))
            self._purge()

    def handle(self, msg: Incoming,
               send: Callable[[Reply], None] | None = None) -> Reply:
        """One message from the broker to its reply, given to ``send`` (if any) as soon as
        it is known: before it is recorded (a write that may wait for the publisher's
        deletes), so a reply never waits on the disk. Only this thread admits commands, so
        a repeat cannot slip in between; after a crash in between, a repeat runs again."""
        return self._handle(msg, send)

    def _handle(self, msg: Incoming, send: Callable[[Reply], None] | None) -> Reply:
        def out(reply: Reply) -> Reply:
            if send is not None:
                send(reply)
            return reply

        self.counts["received"] += 1
        name = _name(msg.suffix)
        try:
            result = core.admit(name, msg.payload, unit=self.unit_id,
                                keys=self.cfg.commands.keyring, known=self.handlers,
                                now=self.clock.now(), seen=self._seen, limits=self.limits)
        except (BufferReadError, BufferWriteError) as e:  # the request-id table is unreadable
            log.error("command %s: request ids unreadable (%s); refused", logs.clip(name, 64), e)
            self.counts["failed"] += 1
            return out(Reply(None, self.unit_id, name[:core.MAX_NAME_CHARS], Code.FAILED,
                             "failed: request ids unreadable"))
        if isinstance(result, Reply):
            if result.repeat:
                self.counts["repeated"] += 1
                log.info("command %s id=%s repeated: its stored reply sent again", result.name,
                         result.id)
            else:
                self.counts["refused"] += 1
                self._log_refused(msg, result.code, result.reason)
            return out(result)
        self.current = msg
        try:
            return self._run(result, out)
        finally:
            self.current = None

    def _run(self, cmd: Command, out: Callable[[Reply], Reply]) -> Reply:
        try:
            reply = core.dispatch(self.unit, cmd, self.handlers)
        except Exception as e:  # a handler's bug or the unit's failure: 500, nothing stored
            self.counts["failed"] += 1
            # The type only: an exception's text may hold arguments.
            log.error("command %s id=%s failed: %s", cmd.name, cmd.id, type(e).__name__)
            return out(core.refuse(cmd, Code.FAILED, f"failed: {type(e).__name__}"))
        if reply.code == PENDING:  # config: neither sent nor stored; the outcome is, later
            log.info("command %s id=%s: %s", cmd.name, cmd.id, reply.reason)
            return reply
        out(reply)
        try:
            self.outbox.command_done(cmd.id, cmd.digest, cmd.expires, core.reply_record(reply))
        except BufferWriteError as e:
            # Done but not recorded: a repeat would run it again (each command is safe to).
            log.error("command %s id=%s: reply not recorded (%s)", cmd.name, cmd.id, e)
        self.counts["done" if reply.ok else "refused"] += 1
        level = logging.INFO if reply.ok else logging.WARNING
        log.log(level, "command %s id=%s: %d %s", cmd.name, cmd.id, reply.code,
                logs.clip(reply.reason, 120))
        return reply

    def _seen(self, request_id: str) -> Seen | None:
        row = self.outbox.command_seen(request_id)
        if row is None:
            return None
        return Seen(row[0], core.reply_from_record(row[1]))

    def _send(self, msg: Incoming, reply: Reply) -> None:
        topic = core.reply_topic(self.prefix, self.unit_id, reply.id, msg.response_topic,
                                 reply.reply_to)
        self.send(OutgoingReply(topic, core.reply_body(reply, self.clock.now()),
                                msg.correlation))

    def _log_refused(self, msg: Incoming, code: int, reason: str) -> None:
        # One call site for every refusal: a flood is rate-limited as one (gateway/logs.py).
        log.warning("command %s received (%d bytes), refused: %d %s", logs.clip(msg.suffix, 80),
                    len(msg.payload), code, logs.clip(reason, 120))

    def _purge(self) -> None:
        now = self.clock.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_S
        try:
            n = self.outbox.command_purge(self.clock.now() - self.limits.clock_skew_s)
        except BufferWriteError as e:
            log.warning("expired request ids not purged (%s)", e)
            return
        if n:
            log.info("%d expired request ids forgotten", n)

    def stats(self) -> dict[str, Any]:
        return dict(self.counts)


def _name(suffix: str) -> str:
    return suffix[4:] if suffix.startswith("cmd/") else suffix

