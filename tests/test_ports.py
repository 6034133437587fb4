"""free_port under pytest-xdist: parallel test processes never hand out the same port.

scripts/test.sh runs test files in parallel processes, each starting its own servers on ports it
picks itself; a port one worker picked and has not bound yet must never be offered to another.
"""

from __future__ import annotations

import pytest

from orchestrator.devstack.localstack import free_port, port_share


@pytest.mark.parametrize("index", [0, 1, 2])
def test_each_xdist_worker_hands_out_only_ports_of_its_own_share(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    """Worker gwK of 3 (and every process it starts, which inherits the variables) gets only
    ports of share K: the three workers' ports are disjoint whatever the kernel offers."""
    monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{index}")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    assert port_share() == (index, 3)
    ports = [free_port() for _ in range(30)]
    assert len(set(ports)) == 30
    assert {port // 2 % 3 for port in ports} == {index}


def test_outside_xdist_every_free_port_is_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """A serial run (or `orchestrator dev` on a laptop) keeps the whole range: one share of one."""
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert port_share() == (0, 1)
    assert free_port() != free_port()
