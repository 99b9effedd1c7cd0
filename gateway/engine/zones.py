"""Safety-zone presence from BLE sightings (docs/zones.md).

Per tag and zone, on each advert of one of the zone's readers:

    OUT/ENTERING --smoothed level >= enter_dbm held dwell_s--> IN          (zone_enter)
    OUT/ENTERING --enter score (CUSUM of rssi - boundary) >= enter_score_db--> IN (zone_enter)
    IN/LEAVING --exit score (CUSUM of exit_dbm - rssi) >= exit_score_db--> OUT (zone_exit)
    IN/LEAVING --no sighting above exit_dbm - CLIP_DB for absence_s--> OUT (zone_exit, absent)

The exit is a one-sided CUSUM on the raw RSSI (each advert clipped to +-CLIP_DB around
the exit threshold): a fade of seconds adds a bounded amount and then drains away, so
it takes a sustained drop below ``exit_dbm`` to leave. The crossing time each event
carries (``time``) is the change point of a CUSUM referenced to the boundary level:
the advert that started its current run (for an enter, the step of a two-segment fit
of the tag's binned adverts while out, when earlier); ``data.decided`` is the decision
time.
Leaving a zone one must stay in is also a zone_alert (emergency lane).
"""

from __future__ import annotations

from typing import Any

from gateway.engine.locate import unit_position
from gateway.engine.runtime import Runtime, ZoneRuntime
from gateway.engine.state import ENTERING, IN, LEAVING, OUT, EngineState, Presence
from gateway.model import Event, Lane

CLIP_DB = 10.0  # one advert moves a score by at most this: deep nulls count as one bad advert
# A tag that was well inside and has dropped far below its own level there has moved:
# its exit evidence counts from NEAR_DB below the boundary level instead of exit_dbm.
# Its home level (a slow average of the level while in) does not follow drops deeper
# than DROP_DB, so it keeps the level the tag left from. A tag standing just inside has
# its home at the boundary, so its exit margin stays whole.
DROP_DB = 6.0
NEAR_DB = 1.5
HOME_TAU_S = 120.0
# Nor does a tag leave while it stays within HOLD_DB of its home level: a child standing
# still whose tag is weaker than the calibration's (or a calibration a little high) keeps
# its own level for hours, and a still level is not a move.
HOLD_DB = 4.0
# Enter times. While a tag is out its adverts are binned over time (STEP_BIN_S; past
# STEP_BINS bins, neighbours merge and the bins double); at the enter, the split of the
# bins with the largest rise between the mean before and the mean after (a two-segment
# least-squares fit) is where the tag stepped in. The change-point tracker's run is late
# for a child who comes to stand just inside: its adverts are then barely above the
# boundary level (or below, when the calibration is high) and the run restarts on every
# fade for minutes. The fit compares the tag with its own level before, not with the
# boundary. A walk in is a ramp, not a step, and the fit splits it midway, before the
# crossing: the crossing is the first bin from the split on whose mean reaches the
# boundary level, or STEP_NEAR_DB below the mean after the split when that is lower (a
# tag weaker than the calibration's, standing just inside). The earlier of the tracker's
# and this estimate is the crossing.
STEP_BIN_S = 10.0
STEP_BINS = 64
STEP_MIN = 3  # adverts on each side of a split
STEP_NEAR_DB = 1.5
# A child who walked up, stood outside for minutes (a rise from far away), then walked in
# shows two rises; the largest may be the first. A second rise of at least STEP_AGAIN_DB
# within the bins after the split, with STEP_AGAIN_N adverts after it, is the walk in.
STEP_AGAIN_DB = 5.0
STEP_AGAIN_N = 20


def on_level(state: EngineState, runtime: Runtime, zone: ZoneRuntime, tag: str, reader: str,
             t: float, rssi: float, level: float | None, events: list[Event]) -> None:
    """One sighting of ``tag`` (raw ``rssi``, smoothed ``level``) by a reader of ``zone``."""
    settings = zone.settings
    zid = settings.id
    tags = state.zones.get(zid)
    if tags is None:
        tags = state.zones[zid] = {}
    presence = tags.get(tag)
    if presence is None:
        presence = tags[tag] = Presence(OUT, t, t, None, t, 0.0, 0.0, t)
    elif t > presence.seen:
        presence.seen = t
        # A faint advert from far away (CLIP_DB below exit_dbm) is not presence: sparse
        # ones would otherwise hold a tag "in" that left, below min_samples forever.
        # Adverts between the two are presence (a child standing just inside through a
        # fade) and, when the tag did leave, each is strong exit evidence for the CUSUM.
        if rssi >= settings.exit_dbm - CLIP_DB:
            presence.last_seen = t
    status = presence.status
    previous = presence.level_time
    if level is not None:
        presence.level = level
        presence.level_time = t
    # Change-point tracker: evidence that the tag is on the other side of the boundary
    # than its state says; the advert that started the current run is the crossing.
    inside = status in (IN, LEAVING)
    side = rssi - settings.boundary_dbm
    if side > CLIP_DB:
        side = CLIP_DB
    elif side < -CLIP_DB:
        side = -CLIP_DB
    drift = presence.drift + (-side if inside else side)
    if drift <= 0.0:
        presence.drift = 0.0
    else:
        if presence.drift == 0.0:
            presence.cross = t
        presence.drift = drift
    if inside:
        reference = settings.exit_dbm
        home = presence.home
        if home is not None:
            if level is not None and level >= home - DROP_DB:
                weight = (t - previous) / HOME_TAU_S
                home = presence.home = home + (level - home) * (weight if weight < 1.0 else 1.0)
            moved = home - DROP_DB
            if moved > settings.boundary_dbm - NEAR_DB:
                moved = settings.boundary_dbm - NEAR_DB
            if moved > reference:
                reference = moved
            if reference > home - HOLD_DB:
                reference = home - HOLD_DB
        below = reference - rssi
        if below > CLIP_DB:
            below = CLIP_DB
        elif below < -CLIP_DB:
            below = -CLIP_DB
        if zone.multi and level is not None and level >= settings.exit_dbm and below > 0.0:
            below = 0.0  # another reader of the zone still hears the tag well
        score = presence.score + below
        if score <= 0.0:
            presence.score = 0.0
            presence.status = IN
        else:
            presence.score = score
            if status == IN:
                presence.status, presence.since = LEAVING, t
            if score >= settings.exit_score_db and t - presence.since >= settings.exit_dwell_s:
                _exit(state, runtime, zone, tag, presence, t, reader, "weak", events)
        return
    if t < presence.step_end:  # the step bins (see STEP_BIN_S): the current one
        steps = presence.steps
        steps[-2] += side
        steps[-1] += 1.0
    else:
        _bin(presence, t, side)  # a new bin, the first, or a merge
    if level is None:
        return
    # Slow enter: while out, the tracker is a CUSUM of the adverts above the boundary
    # level (clipped), so a tag that comes to stand just inside gathers evidence at its
    # own mean above the boundary and enters; one standing a little outside drifts back to
    # 0 however long it stands, where a threshold on the 15 s level is crossed sooner or
    # later by a fade (docs/zones.md, "Fourth pass").
    if settings.enter_score_db and presence.drift >= settings.enter_score_db:
        _enter(state, runtime, zone, tag, presence, t, reader, presence.cross, events)
        return
    if status == OUT:
        if level >= settings.enter_dbm:
            presence.status, presence.since = ENTERING, t
            if settings.dwell_s <= 0:
                _enter(state, runtime, zone, tag, presence, t, reader, t, events)
    elif level < settings.enter_dbm:  # ENTERING: the dwell must be unbroken
        presence.status = OUT
    elif t - presence.since >= settings.dwell_s:
        _enter(state, runtime, zone, tag, presence, t, reader, presence.since, events)


def _bin(presence: Presence, t: float, side: float) -> None:
    """One advert of a tag that is out (``side``: dB about the boundary level, clipped)
    past the end of its last step bin."""
    steps = presence.steps
    width = presence.step_w
    if not width or not steps:  # the first since it went out
        presence.step_w = STEP_BIN_S
        presence.step_end = t + STEP_BIN_S
        presence.steps = [side, 1.0]
        return
    start = presence.step_end - len(steps) // 2 * width
    k = int((t - start) / width)
    while k >= STEP_BINS:  # half the bins, twice as wide: memory stays flat
        merged: list[float] = []
        for i in range(0, len(steps), 4):
            merged.append(sum(steps[i:i + 4:2]))
            merged.append(sum(steps[i + 1:i + 4:2]))
        steps[:] = merged
        width *= 2.0
        k = int((t - start) / width)
    while len(steps) <= 2 * k:
        steps += (0.0, 0.0)
    steps[2 * k] += side
    steps[2 * k + 1] += 1.0
    presence.step_w = width
    presence.step_end = start + len(steps) // 2 * width


def _split(steps: list[float], lo: int, min_after: float) -> tuple[int, float]:
    """The two-segment least-squares split of bins lo.. with the largest rise: (bin, rise)."""
    total_sum, total_n = sum(steps[2 * lo::2]), sum(steps[2 * lo + 1::2])
    best, at, at_rise = 0.0, 0, 0.0
    sum_a = n_a = 0.0
    for k in range(lo + 1, len(steps) // 2):
        sum_a += steps[2 * k - 2]
        n_a += steps[2 * k - 1]
        n_b = total_n - n_a
        if n_a < STEP_MIN or n_b < min_after or not steps[2 * k + 1]:
            continue
        rise = (total_sum - sum_a) / n_b - sum_a / n_a
        fit = n_a * n_b / total_n * rise * rise
        if rise > 0.0 and fit > best:
            best, at, at_rise = fit, k, rise
    return at, at_rise


def _stepped_in(presence: Presence) -> float | None:
    """When the tag's binned adverts rose to the level it entered at (see STEP_BIN_S):
    the middle of that bin, or None (too few adverts, or no rise)."""
    steps = presence.steps
    at, _ = _split(steps, 0, STEP_MIN)
    if not at:
        return None
    while True:  # a later rise (see STEP_AGAIN_DB)
        again, rise = _split(steps, at, STEP_AGAIN_N)
        if not again or rise < STEP_AGAIN_DB:
            break
        at = again
    total_sum, total_n = sum(steps[0::2]), sum(steps[1::2])
    sum_a = sum(steps[0:2 * at:2])
    n_a = sum(steps[1:2 * at:2])
    after = (total_sum - sum_a) / (total_n - n_a)
    reached = min(0.0, after - STEP_NEAR_DB)
    for k in range(at, len(steps) // 2):
        n = steps[2 * k + 1]
        if n and steps[2 * k] >= reached * n:
            at = k
            break
    return presence.step_end - (len(steps) // 2 - at - 0.5) * presence.step_w


def _crossing(presence: Presence, decided: float) -> float:
    """Best estimate of when the tag crossed: the start of the tracker's run."""
    return presence.cross if presence.drift > 0.0 and presence.cross <= decided else decided


def _enter(state: EngineState, runtime: Runtime, zone: ZoneRuntime, tag: str, presence: Presence,
           t: float, reader: str, held: float, events: list[Event]) -> None:
    """``held``: since when the evidence that decided it held (the dwell, or the run of
    the slow test)."""
    crossed = _crossing(presence, t)
    stepped = _stepped_in(presence)
    if stepped is not None and stepped < crossed:
        crossed = stepped
    presence.steps, presence.step_w, presence.step_end = [], 0.0, 0.0
    presence.status = IN
    presence.home = zone.settings.boundary_dbm  # rises while the tag shows it is well inside
    presence.drift = presence.score = 0.0
    presence.cross = t
    zid = zone.settings.id
    state.last_zone[tag] = zid
    events.append(Event(kind="zone_enter", time=crossed, lane=Lane.ROUTINE, reader=reader,
                        child=runtime.tags[tag].child,
                        data={"zone": zid, "rssi": _round1(presence.level),
                              "dwell_s": round(t - held, 1),
                              "decided": t}))  # engine time: RFC 3339 wall time at the boundary


def _exit(state: EngineState, runtime: Runtime, zone: ZoneRuntime, tag: str, presence: Presence,
          t: float, reader: str | None, reason: str, events: list[Event]) -> None:
    if reason == "absent" and presence.drift <= 0.0:
        crossed = min(presence.seen, t)  # gone at once (a door, a car): last heard
    else:
        crossed = _crossing(presence, t)
    presence.status = OUT
    presence.steps, presence.step_w, presence.step_end = [], 0.0, 0.0  # afresh
    presence.home = None
    presence.drift = presence.score = 0.0
    presence.cross = t
    tag_config = runtime.tags[tag]
    heard = max((state.heard.get(r, 0.0) for r in zone.settings.readers), default=0.0)
    data: dict[str, Any] = {"zone": zone.settings.id, "reason": reason,
                            "rssi": _round1(presence.level),
                            "last_seen": round(presence.seen, 3),
                            "zone_quiet_s": round(max(0.0, t - heard), 1),
                            "decided": t}  # engine time: RFC 3339 wall time at the boundary
    events.append(Event(kind="zone_exit", time=crossed, lane=Lane.ROUTINE, reader=reader,
                        child=tag_config.child, data=data))
    groups = runtime.staying(zone, tag_config, t)  # the stay hours at the decision
    if groups:
        events.append(Event(kind="zone_alert", time=crossed, lane=Lane.EMERGENCY, reader=reader,
                            child=tag_config.child,
                            data={**data, "stay_groups": groups,
                                  "position": unit_position(state, runtime)}))


def expire(state: EngineState, runtime: Runtime, now: float, events: list[Event]) -> None:
    """Absence timeouts, measured on the engine clock (reading/tick time)."""
    for zone in runtime.zones:
        tags = state.zones.get(zone.settings.id)
        if not tags:
            continue
        absence = zone.settings.absence_s
        gone = []
        for tag, presence in tags.items():
            if now - presence.last_seen > absence:
                if presence.status == IN or presence.status == LEAVING:
                    _exit(state, runtime, zone, tag, presence, now, None, "absent", events)
                gone.append(tag)  # forget tags out of range: memory stays flat
        for tag in gone:
            del tags[tag]


def _round1(v: float | None) -> float | None:
    return None if v is None else round(v, 1)
