"""Flows for tests/test_cli_text.py; its worker imports this module with --flows tests.cli_text_flows.

Every text the CLI later shows comes from the run's caller: the run name, the log line the
task writes and the error it fails with (the task run's and the flow run's state message).
The flow's own name looks like Rich markup too, so the ``flow`` column is tested as well.
"""

from __future__ import annotations

from orchestrator import flow, get_run_logger, task

FLOW_NAME = "hostile[red]-text"


@task
def echo_then_fail(text: str) -> str:
    """Logs ``text`` and fails with it as the error message."""
    get_run_logger().info("said: %s", text)
    raise ValueError(text)


@flow(name=FLOW_NAME)
def hostile_text_flow(text: str = "") -> str:
    return echo_then_fail.submit(text)  # type: ignore[no-any-return]
