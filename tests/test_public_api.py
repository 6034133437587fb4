"""The public surface is what orchestrator.__all__ exports; keep it stable."""

from __future__ import annotations

import enum
import inspect
import types

import orchestrator
from orchestrator import states
from orchestrator.authoring import caching, flows, naming, tags, tasks
from orchestrator.runs import deployments, handle
from orchestrator.runtime import annotations, futures, run_logger, signals

# Each public name: the module that defines it, and whether it is a class, a function or a constant.
PUBLIC: dict[str, tuple[types.ModuleType, str]] = {
    "CachePolicy": (caching, "class"),
    "FLOW_PARAMETERS": (caching, "constant"),
    "INPUTS": (caching, "constant"),
    "NO_CACHE": (caching, "constant"),
    "RUN_ID": (caching, "constant"),
    "TASK_SOURCE": (caching, "constant"),
    "Flow": (flows, "class"),
    "FlowRun": (handle, "class"),
    "Future": (futures, "class"),
    "StateType": (states, "class"),
    "State": (states, "class"),
    "Completed": (states, "function"),
    "Failed": (states, "function"),
    "Cancelled": (states, "function"),
    "Crashed": (states, "function"),
    "Pending": (states, "function"),
    "Running": (states, "function"),
    "Scheduled": (states, "function"),
    "Task": (tasks, "class"),
    "allow_failure": (futures, "function"),
    "as_completed": (futures, "function"),
    "exponential_backoff": (tasks, "function"),
    "flow": (flows, "function"),
    "get_run_logger": (run_logger, "function"),
    "opaque": (annotations, "function"),
    "quote": (annotations, "function"),
    "rename_flow_run": (naming, "function"),
    "run_deployment": (deployments, "function"),
    "tags": (tags, "function"),
    "task": (tasks, "function"),
    "task_input_hash": (caching, "function"),
    "unmapped": (futures, "function"),
    "wait": (futures, "function"),
}


def test_exported_members() -> None:
    assert sorted(orchestrator.__all__) == sorted(PUBLIC)
    assert len(orchestrator.__all__) == len(set(orchestrator.__all__))  # no name listed twice
    for name, (module, kind) in PUBLIC.items():
        exported = getattr(orchestrator, name)
        assert exported is getattr(module, name), f"orchestrator.{name} is not {module.__name__}.{name}"
        if kind == "constant":  # a cache policy, Prefect 3's names (prefect.cache_policies)
            assert isinstance(exported, caching.CachePolicy), f"{name} is not a cache policy: {exported!r}"
            continue
        assert exported.__module__ == module.__name__, f"{name} is defined in {exported.__module__}"
        assert exported.__name__ == name, f"orchestrator.{name} is {exported.__name__}"
        if kind == "class":
            assert inspect.isclass(exported), f"{name} is not a class: {exported!r}"
        else:
            assert inspect.isfunction(exported), f"{name} is not a function: {exported!r}"
    assert issubclass(orchestrator.StateType, enum.Enum)
    assert orchestrator.StateType("Completed") is orchestrator.StateType.COMPLETED


def test_signals_contract() -> None:
    assert {"RETRY", "FAIL", "SKIP"} <= set(dir(signals))
    for name in ("RETRY", "FAIL", "SKIP"):
        assert issubclass(getattr(signals, name), Exception), f"signals.{name} is not an exception class"
