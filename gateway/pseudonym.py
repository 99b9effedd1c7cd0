"""Pseudonyms on the wire: the child reference in events is a keyed hash of the
enrolment id, under a per-term key the backend installs (the ``roster`` command's
``term``), so a reader of the events who lacks the term key can neither recover the
enrolment id nor link a child across terms.

``pseudonym = "p-" + hex(HMAC-SHA-256(term key, UTF-8 enrolment id)[:16])``: 128
bits (34 characters); collisions among a city's children are out of reach (2^-64
at four billion children). Each event carries the term's id (``term``), so the
backend, which keeps every term key and the enrolment ids, maps a pseudonym back
by computing it for each enrolled child (one table per term). Until a term is
installed, events carry the enrolment reference as enrolled (itself a reference,
never a name) and no ``term``. docs/privacy.md says who holds which key.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from gateway.model import Event
from gateway.roster import Term

PREFIX = "p-"
DIGEST_BYTES = 16
_CACHE_MAX = 100_000


def pseudonym(key: bytes, enrolment_id: str) -> str:
    digest = hmac.new(key, enrolment_id.encode(), hashlib.sha256).digest()
    return PREFIX + digest[:DIGEST_BYTES].hex()


def names(enrolment_id: str, terms: Iterable[Term]) -> set[str]:
    """Every name a child's events may carry on this unit: the enrolment id (events
    from before any term) and its pseudonym under each term still known (erase)."""
    return {enrolment_id} | {pseudonym(t.key, enrolment_id) for t in terms}


class Pseudonyms:
    """The term in force and a cache of its pseudonyms (one HMAC per child, not per event).
    Used on the pipeline thread only."""

    def __init__(self, term: Term | None) -> None:
        self.term = term
        self._cache: dict[str, str] = {}

    def set_term(self, term: Term | None) -> None:
        if term != self.term:
            self.term = term
            self._cache.clear()

    def of(self, child: str) -> str:
        if self.term is None:
            return child
        name = self._cache.get(child)
        if name is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            name = self._cache[child] = pseudonym(self.term.key, child)
        return name

    def events(self, events: list[Event]) -> list[Event]:
        """``events`` as they go to the buffer: every child reference (the envelope's, and
        those listed in a roll-call's data) replaced by its pseudonym, the term named."""
        if self.term is None or not events:
            return events
        out = []
        for ev in events:
            if ev.term is not None:  # named already (held after a failed commit)
                out.append(ev)
                continue
            data = ev.data
            if ev.kind == "roll_call":  # lists children in its data
                data = {**data, **{k: [self._item(x) for x in data[k]]
                                   for k in ("present", "missing") if k in data}}
            elif not ev.child:
                out.append(ev)  # names no child: no term either
                continue
            out.append(replace(ev, child=self.of(ev.child) if ev.child else None, data=data,
                               term=self.term.id))
        return out

    def _item(self, x: Any) -> Any:
        if isinstance(x, dict) and isinstance(x.get("child"), str):
            return {**x, "child": self.of(x["child"])}
        return x
