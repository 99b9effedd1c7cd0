"""Chafon UHF gate end to end: simulated UHFReader288 (two antennas, outer/inner) on a
pty -> gatewayd process (pyserial, uhf_chafon driver, engine) -> mosquitto -> backend.
The steps and checks both UHF kinds share are in uhfgate.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import LocalBroker
from firmware_sim.uhf_chafon import UhfChafonSim
from firmware_sim.vserial import VirtualSerial
from harness import GatewayProcess, Subscriber
from uhfgate import check_antenna_missing_and_unplug, check_in_and_out, gate_process, plugged

CHILD_EPC = "E2801160600002084F5B1B01"
OTHER_EPC = "E2801160600002084F5B1B02"
STRANGER = "300833B2DDD9014000000007"

Rig = tuple[VirtualSerial, UhfChafonSim, GatewayProcess, Subscriber]


@pytest.fixture
def rig(tmp_path: Path, broker: LocalBroker) -> Iterator[Rig]:
    port = plugged(tmp_path / "ttyCF0")
    sim = UhfChafonSim(port, miss_rate=0.15, per_frame=2, seed=11).start()
    with gate_process(tmp_path, broker, port, sim, {"id": "gate-cf", "kind": "uhf_chafon"},
                      [{"id": CHILD_EPC, "child": "c-3001"},
                       {"id": OTHER_EPC.lower(), "child": "c-3002"}]) as running:
        yield running


def test_arrival_and_departure_through_a_two_antenna_gate(rig: Rig) -> None:
    check_in_and_out(rig, "gate-cf", (CHILD_EPC, OTHER_EPC), STRANGER, ("c-3001", "c-3002"))


def test_antenna_error_and_unplug_reported(rig: Rig) -> None:
    check_antenna_missing_and_unplug(rig, "gate-cf", CHILD_EPC)
