"""What a simulator module declares, and the lookup through the reader-kind registry.

Each simulator module (``firmware_sim.<kind>``) defines ``SIMULATOR``, a
:class:`Simulator`: its kind (the same name as the driver's), the settings a
scenario's ``[[device]]`` table may hold (with their defaults), the step actions
it plays (with the step keys each needs), and how to start it. ``kidsafe-sim run``
and the scenario loader know no kind by name: they find the module through
``drivers.registry`` and use what it declares, so a new kind needs no branch here.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers import registry
from firmware_sim.vserial import VirtualSerial

# Kinds that were once called otherwise in scenario files: a clear error, not a guess.
RENAMED = {"gps": "gps_nmea"}

Settings = Mapping[str, Any]  # a [[device]] table's settings, defaults filled in
StepArgs = Mapping[str, Any]  # a [[step]] table without at/action/device


@dataclass
class Context:
    """What starting the devices of one scenario shares."""

    work: Path  # where device links and private buses go
    stack: contextlib.ExitStack  # every started thing registers its stop here
    env: dict[str, str] = field(default_factory=dict)  # what gatewayd needs in its environment
    shared: dict[str, Any] = field(default_factory=dict)  # per kind, e.g. BLE's one mock BlueZ

    def serial_port(self, device_id: str, settings: Settings) -> VirtualSerial:
        """A plugged pty behind ``link`` (default: tty-<id> in the work dir), closed at the end."""
        port = VirtualSerial(str(settings.get("link") or self.work / f"tty-{device_id}"))
        port.plug()
        self.stack.callback(port.close)
        return port


@dataclass
class Started:
    """One running simulated device."""

    reader: dict[str, Any]  # its [[readers]] snippet for gatewayd, without the id
    where: str  # where the gateway finds it, for the log
    act: Callable[[str, StepArgs, threading.Event], None]  # play one step (own thread)
    # Ids of the tags it simulates that no step names (e.g. BLE tags listed in the device
    # table), for the [[tags]] snippet; steps' ``tag`` values are collected by kidsafe-sim.
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Simulator:
    kind: str  # the reader kind, as in drivers.registry
    settings: Mapping[str, Any]  # [[device]] keys it takes -> default (None: unset)
    actions: Mapping[str, tuple[str, ...]]  # step action -> step keys it needs
    start: Callable[[str, Settings, Context], Started]  # (device id, settings, context)
    # Further checks of a [[device]] table: (key, problem) for each mistake.
    check: Callable[[Settings], list[tuple[str, str]]] = lambda _settings: []

    def with_defaults(self, settings: Settings) -> dict[str, Any]:
        return {**self.settings, **settings}


def kinds() -> list[str]:
    """The reader kinds that have a simulator, in registry order."""
    return [k.name for k in registry.KINDS if k.simulator is not None]


def get(kind: str) -> Simulator:
    """The kind's SIMULATOR (imports its module); KeyError for a kind without one."""
    module = registry.get(kind).simulator
    if module is None:
        raise KeyError(f"reader kind {kind!r} has no simulator")
    sim: Simulator = importlib.import_module(module).SIMULATOR
    if sim.kind != kind:
        raise RuntimeError(f"{module}.SIMULATOR says kind {sim.kind!r}, the registry {kind!r}")
    return sim


# -- helpers the simulator modules share ---------------------------------------------------

def serial_where(port: VirtualSerial) -> str:
    return f"{port.path} -> {port.device}"


def later(args: StepArgs, stop: threading.Event, undo: Callable[[], object]) -> None:
    """For a step with ``for_s``: wait that long (unless stopping), then undo it."""
    if "for_s" in args and not stop.wait(float(args["for_s"])):
        undo()


def plug_action(port: VirtualSerial, action: str, args: StepArgs,
                stop: threading.Event) -> bool:
    """The serial adapter's ``unplug`` (for ``for_s``) and ``replug``; False for other actions."""
    if action == "replug":
        port.plug()
    elif action == "unplug":
        port.unplug()
        later(args, stop, port.plug)
    else:
        return False
    return True
