"""The public surface is what orchestrator.__all__ exports; keep it stable."""

from __future__ import annotations

import orchestrator
from orchestrator.runtime import signals


def test_exported_members() -> None:
    assert sorted(orchestrator.__all__) == sorted(
        [
            "Flow",
            "FlowRun",
            "Future",
            "StateType",
            "Task",
            "allow_failure",
            "as_completed",
            "exponential_backoff",
            "flow",
            "get_run_logger",
            "rename_flow_run",
            "task",
            "unmapped",
            "wait",
        ]
    )
    for name in orchestrator.__all__:
        assert getattr(orchestrator, name) is not None


def test_signals_contract() -> None:
    assert {"RETRY", "FAIL", "SKIP"} <= set(dir(signals))
