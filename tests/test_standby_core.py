"""The standby connection's rules (gateway/standby.py) without a broker: rules, then a
property over random histories (hypothesis), as tests/test_delivery_core.py does for the
main connection's core."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_delivery_core import E, R, Store, T

from gateway.delivery import Delete, DeleteRanges, Publish
from gateway.standby import Standby, StandbyAction, StandbyLimits, Subscribe, Unsubscribe

RECEIPTS = StandbyLimits(reserve=3, receipts=True, receipt_timeout_s=10.0, linger_s=5.0)
PUBACKS = StandbyLimits(reserve=3, receipts=False)
AT_CONNECT = StandbyLimits(reserve=3, receipts=True, receipt_timeout_s=10.0, linger_s=5.0,
                           subscribe_at_connect=True)


@dataclass
class Shell:
    """Carries out the standby core's actions as gateway/standbylink.py does."""

    store: Store
    core: Standby
    now: float = 0.0
    next_handle: int = 1
    in_flight: dict[int, int] = field(default_factory=dict)  # handle -> seq
    published: list[int] = field(default_factory=list)  # every seq published, in order
    deleted: list[int] = field(default_factory=list)
    subscribed: bool = False
    log: list[str] = field(default_factory=list)
    pubacked: set[int] = field(default_factory=set)

    def poll(self) -> list[StandbyAction]:
        actions = self.core.poll(self.now)
        for a in actions:
            match a:
                case Publish(rows):
                    assert all(r.lane == E for r in rows), "only the emergency lane"
                    handles = list(range(self.next_handle, self.next_handle + len(rows)))
                    self.next_handle += len(rows)
                    for h, r in zip(handles, rows, strict=True):
                        self.in_flight[h] = r.seq
                    self.published += [r.seq for r in rows]
                    self.core.published(a, handles)
                    self.log.append("publish")
                case Delete(seqs):
                    self._delete(seqs)
                case DeleteRanges(ranges):
                    self._delete([s for lo, hi in ranges for s in range(lo, hi + 1)])
                case Subscribe():
                    assert not self.subscribed
                    self.subscribed = True
                    self.log.append("subscribe")
                case Unsubscribe():
                    assert self.subscribed
                    self.subscribed = False
                    self.log.append("unsubscribe")
        return actions

    def _delete(self, seqs: list[int]) -> None:
        for s in seqs:
            assert s in self.published, f"seq {s} deleted but never left on the standby"
            if not self.core.limits.receipts:
                assert s in self.pubacked, f"seq {s} deleted without its PUBACK"
            self.store.rows.pop(s, None)
            self.deleted.append(s)

    def ack_all(self, ok: bool = True) -> None:
        for h in list(self.in_flight):
            seq = self.in_flight.pop(h)
            if ok:
                self.pubacked.add(seq)
            self.core.acked(h, ok, self.now)


def shell(limits: StandbyLimits) -> Shell:
    store = Store()
    return Shell(store, Standby(store.fetch, store.refetch, limits))


def awaiting(n: int) -> tuple[Shell, list[int]]:
    """A receipt-mode standby, its main down, that sent ``n`` emergency events and had
    their PUBACKs: they await their receipts."""
    sh = shell(RECEIPTS)
    seqs = sh.store.add(E, n)
    sh.core.connected(0.0)
    sh.poll()
    sh.ack_all()
    return sh, seqs


def test_nothing_goes_while_the_main_is_up() -> None:
    sh = shell(RECEIPTS)
    sh.store.add(E, 2)
    sh.core.main(True, 0.0)
    sh.core.connected(0.0)
    assert sh.poll() == [] and not sh.core.active


def test_an_outage_sends_the_buffered_emergency_events_then_each_new_one_once() -> None:
    sh = shell(PUBACKS)
    sh.store.add(R, 3)
    first = sh.store.add(E, 2)
    sh.core.connected(0.0)
    sh.core.main(True, 0.0)
    sh.poll()
    sh.core.main(False, 1.0)
    sh.now = 1.0
    sh.poll()
    assert sh.published == first  # routine events stay for the main
    assert sh.poll() == []  # at most once per outage
    later = sh.store.add(E, 1)
    sh.core.committed()
    sh.poll()
    assert sh.published == first + later


def test_at_most_reserve_in_flight() -> None:
    sh = shell(PUBACKS)
    seqs = sh.store.add(E, 5)
    sh.core.connected(0.0)
    sh.poll()
    assert sh.published == seqs[:3]
    sh.ack_all()
    sh.poll()
    assert sh.published == seqs  # PUBACKs freed the slots
    sh.ack_all()
    sh.poll()
    assert sorted(sh.deleted) == seqs and not sh.store.rows  # broker mode: a PUBACK deletes


def test_receipt_mode_subscribes_before_the_first_publish_and_deletes_only_its_own() -> None:
    sh = shell(RECEIPTS)
    mains = sh.store.add(E, 2)  # the main had sent these before the outage: say they left
    sh.core.connected(0.0)
    sh.core.main(True, 0.0)
    assert sh.poll() == []
    assert sh.log == []  # no subscription while there is nothing to carry
    sh.core.main(False, 1.0)
    sh.store.rows.pop(mains[0])  # receipted on the main just before it went down
    sos = sh.store.add(E, 1)
    sh.core.committed()
    sh.poll()
    assert sh.log == ["subscribe", "publish"]
    assert sh.published == [mains[1], *sos]
    sh.ack_all()
    sh.poll()
    assert sh.deleted == []  # a PUBACK deletes nothing in receipt mode
    other = sh.store.add(E, 1)  # committed, not yet sent: a receipt must never delete it
    sh.core.receipt([(1, 100)], upto=200)
    sh.poll()
    assert sorted(sh.deleted) == [mains[1], *sos]
    assert other[0] in sh.store.rows


def test_a_receipt_while_in_flight_then_the_puback_awaits_nothing() -> None:
    sh = shell(RECEIPTS)
    seq = sh.store.add(E, 1)
    sh.core.connected(0.0)
    sh.poll()
    sh.core.receipt([(seq[0], seq[0])])
    sh.poll()
    sh.ack_all()
    assert sh.core.awaiting_receipt == 0 and sh.deleted == seq


def test_no_receipt_in_time_goes_again_while_the_main_is_down() -> None:
    sh, seq = awaiting(1)
    sh.now = 9.0
    sh.poll()
    assert sh.published == seq
    sh.now = 10.5
    assert 0 <= sh.core.timeout() <= 0.5
    sh.poll()
    sh.poll()
    assert sh.published == seq + seq


def test_the_main_back_stops_sending_and_unsubscribes_when_nothing_awaits() -> None:
    sh, seq = awaiting(1)
    sh.core.main(True, 1.0)
    sh.now = 1.0
    sh.store.add(E, 1)
    sh.core.committed()
    sh.poll()
    assert sh.published == seq and sh.subscribed  # still awaiting its receipt
    sh.core.receipt([(seq[0], seq[0])])
    sh.poll()
    assert not sh.subscribed and sh.deleted == seq


def test_the_main_back_lingers_at_most_linger_s() -> None:
    sh, _ = awaiting(1)
    sh.core.main(True, 1.0)
    sh.now = 5.9
    sh.poll()
    assert sh.subscribed
    sh.now = 6.0
    sh.poll()
    assert not sh.subscribed and sh.core.awaiting_receipt == 0


def test_a_lost_standby_connection_offers_again_on_the_next() -> None:
    sh, seqs = awaiting(2)  # awaiting receipts on a clean session that is about to go
    sh.core.disconnected()
    sh.in_flight.clear()
    sh.subscribed = False
    assert sh.core.poll(1.0) == []  # not linked: nothing
    sh.core.connected(2.0)
    sh.now = 2.0
    sh.poll()
    assert sh.published == seqs + seqs
    assert sh.log == ["subscribe", "publish", "subscribe", "publish"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["emergency", "routine", "telemetry", "poll", "ack",
                                           "refuse", "receipt", "main_up", "main_down",
                                           "link_down", "link_up", "tick"]),
                          st.integers(1, 40)), max_size=60),
       st.sampled_from([RECEIPTS, PUBACKS, AT_CONNECT]))
# Found by hypothesis: a receipt in broker mode deleted an SOS still awaiting its PUBACK.
@example(ops=[("emergency", 1), ("receipt", 1)], limits=PUBACKS)
def test_never_deletes_what_did_not_leave_and_never_sends_while_the_main_is_up(
        ops: list[tuple[str, int]], limits: StandbyLimits) -> None:
    sh = shell(limits)
    main_up = False
    linked = True
    sh.core.connected(0.0)
    for op, k in ops:
        before = len(sh.published)
        match op:
            case "emergency" | "routine" | "telemetry":
                sh.store.add({"emergency": E, "routine": R, "telemetry": T}[op], k % 3 + 1)
                sh.core.committed()
            case "poll":
                pass
            case "ack" | "refuse":
                sh.ack_all(op == "ack")
            case "receipt":
                sh.core.receipt([(k, k + 5)])
            case "main_up" | "main_down":
                main_up = op == "main_up"
                sh.core.main(main_up, sh.now)
            case "link_down":
                if linked:
                    sh.core.disconnected()
                    sh.in_flight.clear()
                    sh.subscribed = False
                    linked = False
            case "link_up":
                if not linked:
                    sh.core.connected(sh.now)
                    linked = True
            case "tick":
                sh.now += k
        sh.poll()
        if main_up or not linked:
            assert len(sh.published) == before, "sent while the main was up or unlinked"
        assert sh.core.in_flight <= 3
    # Every delete was of a seq published on the standby (checked in _delete); in broker
    # mode only after its PUBACK; everything else is still in the buffer for the main.
    assert set(sh.deleted) <= set(sh.published)


def test_subscribe_at_connect_subscribes_once_and_never_unsubscribes() -> None:
    sh = shell(StandbyLimits(reserve=3, receipts=True, receipt_timeout_s=10.0, linger_s=5.0,
                             subscribe_at_connect=True))
    sh.core.main(True, 0.0)
    sh.core.connected(0.0)
    sh.poll()
    assert sh.log == ["subscribe"] and sh.published == []  # main up: nothing sent
    assert not sh.core.expecting_receipts  # the shell drops receipts unread
    seq = sh.store.add(E, 1)
    sh.core.main(False, 1.0)
    sh.poll()
    assert sh.log == ["subscribe", "publish"] and sh.core.expecting_receipts
    sh.ack_all()
    sh.core.main(True, 2.0)
    sh.now = 10.0
    sh.poll()
    assert sh.subscribed and sh.core.awaiting_receipt == 0  # linger over: forgotten
    sh.core.receipt([(seq[0], seq[0])])
    sh.poll()
    assert sh.deleted == [] and sh.log == ["subscribe", "publish"]
