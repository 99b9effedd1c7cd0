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


def load(path: str) -> Scenario:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ScenarioError(f"{path}: {e}") from None
    return parse(raw, path)
