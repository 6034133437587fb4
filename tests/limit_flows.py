"""Flows for tests/test_input_limits.py; its worker imports this module with --flows tests.limit_flows."""

from __future__ import annotations

from typing import Any

from orchestrator import flow, task


@task
def limit_sink(value: Any) -> str:
    """Take any JSON value; return a short text of it."""
    return repr(value)[:80]


@flow(name="limit-echo")
def limit_echo(config: Any = None) -> str:
    """A flow whose one parameter takes any JSON value (how deep it nests is the API's business)."""
    return limit_sink.submit(config)  # type: ignore[no-any-return]


@flow(name="limit-named", flow_run_name="named-{label}")
def limit_named(label: str = "x") -> str:
    """A flow whose runs are named from a parameter by its flow_run_name template."""
    return limit_sink.submit(label)  # type: ignore[no-any-return]
