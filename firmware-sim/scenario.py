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
    kind = "uhf_r2000"        # a reader kind with a simulator (drivers.registry)
    miss_rate = 0.1           # simulator settings: its module's SIMULATOR.settings
    [device.reader]           # extra keys copied into the [[readers]] snippet
    antennas = [1, 2]

    [[step]]
    at = 1.0
    device = "gate-uhf"
    action = "walk"           # see its module's SIMULATOR.actions
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

from firmware_sim import simulator


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
    """Read a single RDM6300 scenario (the RDM6300 simulator's actions)."""
    actions = simulator.get("rdm6300").actions
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
        if not isinstance(action, str) or action not in actions:
            errors.append(f"step[{i}].action: expected one of {', '.join(actions)}")
            continue
        if "tag" in actions[action] and not isinstance(st.get("tag"), str):
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
# What a [[device]] table may hold and which steps it plays is each simulator's own
# declaration (firmware_sim.simulator.Simulator), found through drivers.registry.


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
        if isinstance(kind, str) and kind in simulator.RENAMED:
            errors.append(f"device[{i}].kind: {kind!r} is now called "
                          f"{simulator.RENAMED[kind]!r} (the reader kind's one name)")
            continue
        if kind not in simulator.kinds():
            errors.append(f"device[{i}].kind: expected one of {', '.join(simulator.kinds())}")
            continue
        sim = simulator.get(kind)
        if any(x.id == did for x in devices):
            errors.append(f"device[{i}].id: duplicate device id {did!r}")
        reader = d.get("reader", {})
        if not isinstance(reader, dict):
            errors.append(f"device[{i}].reader: expected a table")
            reader = {}
        settings = {k: v for k, v in d.items() if k not in ("id", "kind", "reader")}
        unknown = [k for k in settings if k not in sim.settings]
        for k in unknown:
            errors.append(f"device[{i}].{k}: unknown key for a {kind} device "
                          f"(allowed: {', '.join(sorted(sim.settings))})")
        if not unknown:
            errors += [f"device[{i}].{k}: {problem}"
                       for k, problem in sim.check(sim.with_defaults(settings))]
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
        actions = simulator.get(kind).actions
        if not isinstance(action, str) or action not in actions:
            errors.append(f"step[{i}].action: a {kind} device does {', '.join(actions)}")
            continue
        missing = [k for k in actions[action] if k not in st]
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
