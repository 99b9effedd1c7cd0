"""Scenario files: what a simulated device does, and when, in TOML.

A scenario is a list of steps, each ``at`` seconds after the start::

    name = "morning gate"
    repeat_s = 0.1            # how often the reader repeats a held card's frame

    [[step]]
    at = 1.0
    action = "present"        # present | garbage | bad_checksum | split | unplug | replug
    tag = "62E3086CED"
    hold_s = 1.2              # how long the card stays on the reader

Unknown actions or missing fields are reported with the step's index.

Multi-device scenarios (``kidsafe-sim run``) add ``[[device]]`` tables, one per
simulated device, and name the device in each step::

    name = "morning rush"

    [[device]]
    id = "gate-uhf"           # becomes the reader id in the printed [[readers]] snippet
    kind = "uhf_r2000"        # uhf_r2000 | gps | ble | rdm6300
    miss_rate = 0.1           # simulator settings; see DEVICE_KEYS
    [device.reader]           # extra keys copied into the [[readers]] snippet
    antennas = [1, 2]

    [[step]]
    at = 1.0
    device = "gate-uhf"
    action = "walk"           # see ACTIONS_BY_KIND
    tag = "E2801160600002084F5B1A01"
    direction = "in"

A file without ``[[device]]`` is a single RDM6300 scenario (the format above);
:func:`load_multi` reads both, so every scenario file plays through one command.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIONS = ("present", "garbage", "bad_checksum", "split", "unplug", "replug")


class ScenarioError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Step:
    at: float
    action: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    steps: tuple[Step, ...]
    repeat_s: float = 0.1

    @property
    def duration(self) -> float:
        return max((s.at + float(s.args.get("hold_s", 0)) for s in self.steps), default=0.0)


def parse(raw: dict[str, Any], source: str = "<scenario>") -> Scenario:
    errors = []
    steps = []
    for i, st in enumerate(raw.get("step", [])):
        if not isinstance(st, dict):
            errors.append(f"step[{i}]: expected a table")
            continue
        at = st.get("at")
        action = st.get("action")
        if not isinstance(at, int | float) or isinstance(at, bool) or at < 0:
            errors.append(f"step[{i}].at: expected seconds >= 0")
            continue
        if action not in ACTIONS:
            errors.append(f"step[{i}].action: expected one of {', '.join(ACTIONS)}")
            continue
        if action in ("present", "bad_checksum", "split") and not isinstance(st.get("tag"), str):
            errors.append(f"step[{i}].tag: expected the tag id (10 hex digits)")
            continue
        args = {k: v for k, v in st.items() if k not in ("at", "action")}
        steps.append(Step(float(at), action, args))
    if errors:
        raise ScenarioError(f"{source}: " + "; ".join(errors))
    return Scenario(name=str(raw.get("name", Path(source).stem)),
                    steps=tuple(sorted(steps, key=lambda s: s.at)),
                    repeat_s=float(raw.get("repeat_s", 0.1)))


# -- multi-device scenarios --------------------------------------------------------------

KINDS = ("uhf_r2000", "gps", "ble", "rdm6300")
ACTIONS_BY_KIND: dict[str, tuple[str, ...]] = {
    "uhf_r2000": ("enter", "leave", "walk", "garbage", "corrupt", "antenna_missing", "mute",
                  "unplug", "replug"),
    "gps": ("jump", "no_fix", "week_rollover", "checksum_errors", "unplug", "replug"),
    "ble": ("press", "move", "leave", "arrive", "wander", "stall", "remove_adapter",
            "add_adapter"),
    "rdm6300": ACTIONS,
}
# Simulator settings a [[device]] table may hold, per kind (anything else is a typo).
DEVICE_KEYS: dict[str, frozenset[str]] = {
    "uhf_r2000": frozenset({"link", "antennas", "miss_rate", "rssi_jitter_db", "round_s",
                            "seed"}),
    "gps": frozenset({"link", "track", "speed_mps", "rate_hz", "talker", "jitter_m",
                      "checksum_error_rate", "satellites", "hdop", "seed"}),
    "ble": frozenset({"adapter", "alert_uuid", "drop_rate", "rssi_jitter_db", "tags",
                      "generate", "seed"}),
    "rdm6300": frozenset({"link", "repeat_s"}),
}
# Step fields each action needs.
REQUIRED: dict[tuple[str, str], tuple[str, ...]] = {
    ("uhf_r2000", "enter"): ("tag",), ("uhf_r2000", "leave"): ("tag",),
    ("uhf_r2000", "walk"): ("tag",), ("uhf_r2000", "antenna_missing"): ("antenna",),
    ("ble", "press"): ("tag",), ("ble", "move"): ("tag", "rssi"),
    ("ble", "leave"): ("tag",), ("ble", "arrive"): ("tag",),
    ("gps", "jump"): ("north_m",), ("gps", "checksum_errors"): ("rate",),
    ("rdm6300", "present"): ("tag",), ("rdm6300", "bad_checksum"): ("tag",),
    ("rdm6300", "split"): ("tag",),
}


@dataclass(frozen=True, slots=True)
class Device:
    id: str
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)
    reader: dict[str, Any] = field(default_factory=dict)  # extra [[readers]] keys


@dataclass(frozen=True, slots=True)
class DeviceStep:
    at: float
    device: str
    action: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MultiScenario:
    name: str
    description: str
    devices: tuple[Device, ...]
    steps: tuple[DeviceStep, ...]
    duration_s: float

    def device(self, did: str) -> Device:
        return next(d for d in self.devices if d.id == did)


def _span(st: dict[str, Any]) -> float:
    return max((float(st[k]) for k in ("hold_s", "for_s") if isinstance(st.get(k), int | float)),
               default=0.0)


def parse_multi(raw: dict[str, Any], source: str = "<scenario>") -> MultiScenario:
    """Read a multi-device scenario; a file without [[device]] is one RDM6300 reader."""
    if "device" not in raw:
        single = parse(raw, source)
        dev = Device("gate-main", "rdm6300", {"repeat_s": single.repeat_s})
        return MultiScenario(single.name, str(raw.get("description", "")), (dev,),
                             tuple(DeviceStep(s.at, dev.id, s.action, s.args)
                                   for s in single.steps), single.duration + 1.0)
    errors: list[str] = []
    devices: list[Device] = []
    devs = raw.get("device")
    if not isinstance(devs, list):
        raise ScenarioError(f"{source}: device: expected [[device]] tables")
    for i, d in enumerate(devs):
        did, kind = d.get("id") if isinstance(d, dict) else None, None
        if not isinstance(d, dict) or not isinstance(did, str) or not did:
            errors.append(f"device[{i}]: expected a table with an id")
            continue
        kind = d.get("kind")
        if kind not in KINDS:
            errors.append(f"device[{i}].kind: expected one of {', '.join(KINDS)}")
            continue
        if any(x.id == did for x in devices):
            errors.append(f"device[{i}].id: duplicate device id {did!r}")
        reader = d.get("reader", {})
        if not isinstance(reader, dict):
            errors.append(f"device[{i}].reader: expected a table")
            reader = {}
        settings = {k: v for k, v in d.items() if k not in ("id", "kind", "reader")}
        for k in settings:
            if k not in DEVICE_KEYS[kind]:
                errors.append(f"device[{i}].{k}: unknown key for a {kind} device "
                              f"(allowed: {', '.join(sorted(DEVICE_KEYS[kind]))})")
        if kind == "gps" and not isinstance(settings.get("track"), list):
            errors.append(f"device[{i}].track: expected [[lat, lon] or [lat, lon, t], ...]")
        devices.append(Device(did, kind, settings, reader))
    kinds = {d.id: d.kind for d in devices}
    dsteps: list[DeviceStep] = []
    for i, st in enumerate(raw.get("step", [])):
        if not isinstance(st, dict):
            errors.append(f"step[{i}]: expected a table")
            continue
        at, action = st.get("at"), st.get("action")
        did = st.get("device", devices[0].id if len(devices) == 1 else None)
        if not isinstance(at, int | float) or isinstance(at, bool) or at < 0:
            errors.append(f"step[{i}].at: expected seconds >= 0")
            continue
        if did not in kinds:
            errors.append(f"step[{i}].device: expected one of {', '.join(kinds)}")
            continue
        kind = kinds[did]
        if action not in ACTIONS_BY_KIND[kind]:
            errors.append(f"step[{i}].action: a {kind} device does "
                          f"{', '.join(ACTIONS_BY_KIND[kind])}")
            continue
        missing = [k for k in REQUIRED.get((kind, action), ()) if k not in st]
        if missing:
            errors.append(f"step[{i}]: {action} needs {', '.join(missing)}")
            continue
        args = {k: v for k, v in st.items() if k not in ("at", "action", "device")}
        dsteps.append(DeviceStep(float(at), did, action, args))
    if errors:
        raise ScenarioError(f"{source}: " + "; ".join(errors))
    dsteps.sort(key=lambda s: s.at)
    end = max((s.at + _span(s.args) for s in dsteps), default=0.0)
    duration = float(raw.get("duration_s", end + 5.0))
    return MultiScenario(str(raw.get("name", Path(source).stem)),
                         str(raw.get("description", "")), tuple(devices), tuple(dsteps), duration)


def load_multi(path: str) -> MultiScenario:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: {e}") from None
    return parse_multi(raw, path)


def load(path: str) -> Scenario:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: {e}") from None
    return parse(raw, path)
