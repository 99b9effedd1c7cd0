"""UHF gate end to end: simulated R2000 reader (two antennas, outer/inner) on a pty ->
gatewayd process (pyserial, uhf_r2000 driver, engine) -> mosquitto -> backend.
The steps and checks both UHF kinds share are in uhfgate.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import LocalBroker
from firmware_sim.uhf_r2000 import UhfR2000Sim
from firmware_sim.vserial import VirtualSerial
from harness import GatewayProcess, Subscriber
from uhfgate import check_antenna_missing_and_unplug, check_in_and_out, gate_process, plugged

CHILD_EPC = "E2801160600002084F5B1A01"
OTHER_EPC = "E2801160600002084F5B1A02"
STRANGER = "300833B2DDD9014000000000"

Rig = tuple[VirtualSerial, UhfR2000Sim, GatewayProcess, Subscriber]


@pytest.fixture
def rig(tmp_path: Path, broker: LocalBroker) -> Iterator[Rig]:
    port = plugged(tmp_path / "ttyUHF0")
    sim = UhfR2000Sim(port, miss_rate=0.15, seed=11).start()
    with gate_process(tmp_path, broker, port, sim,
                      {"id": "gate-uhf", "kind": "uhf_r2000", "baud": 115200},
                      [{"id": CHILD_EPC, "child": "c-2001"},
                       {"id": OTHER_EPC.lower(), "child": "c-2002"}]) as running:
        yield running


def test_arrival_and_departure_through_a_two_antenna_gate(rig: Rig) -> None:
    check_in_and_out(rig, "gate-uhf", (CHILD_EPC, OTHER_EPC), STRANGER, ("c-2001", "c-2002"))


def test_antenna_missing_and_unplug_reported(rig: Rig) -> None:
    check_antenna_missing_and_unplug(rig, "gate-uhf", CHILD_EPC)
