"""A three-node RabbitMQ 3.10 cluster with MQTT for the tests (fleet/cluster.py).

Debian's rabbitmq-server (``./dev.sh setup`` installs it without starting the system
node). The nodes, their epmd and their cookie live in the test's tmp dir; the nodes are
this process's children and are stopped at the end. Starting and joining three nodes
takes 15-30 s on two busy cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet.cluster import RABBIT_BIN, Cluster


def need_rabbit() -> None:
    if not (RABBIT_BIN / "rabbitmq-server").exists():
        pytest.fail(f"{RABBIT_BIN}/rabbitmq-server not found: Debian package rabbitmq-server "
                    "(./dev.sh setup installs it)")


@pytest.fixture
def rabbit_cluster(tmp_path: Path) -> Iterator[Cluster]:
    need_rabbit()
    cluster = Cluster(tmp_path / "rabbit").start()
    try:
        yield cluster
    finally:
        cluster.stop()
