"""Flows the multi-host tests (tests/test_hosts.py) run; their workers import this module by name.

Each worker runs in its own network namespace with ``ORCHESTRATOR_TEST_HOST`` naming its host.
The task records where every attempt ran (the host's label, and the address Redis sees its
connection come from, which proves the namespace whatever the label says) when it starts and
again when it returns.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from orchestrator import flow, task
from orchestrator.runstate.store import get_store
from orchestrator.runtime.context import current_run

HOST_ENV = "ORCHESTRATOR_TEST_HOST"


def started_key(marker: str) -> str:
    """Redis list, one entry per attempt that started: {"attempt", "host", "address", "pid"}."""
    return f"test:hosts:{marker}:started"


def release_key(marker: str) -> str:
    """Set by the test to let a held first attempt return."""
    return f"test:hosts:{marker}:release"


def returned_key(marker: str) -> str:
    """Redis list, one entry per attempt whose function returned (before its result is stored)."""
    return f"test:hosts:{marker}:returned"


@task(retries=1)
def where_am_i(marker: str, hold_seconds: float) -> dict[str, Any]:
    """Record this attempt's host; the first attempt then holds (its host is cut off meanwhile) until
    the test sets :func:`release_key` or ``hold_seconds`` pass."""
    run = current_run()
    attempt = run.attempt if run is not None else 1
    redis = get_store().redis
    address = str(redis.client_info()["addr"]).rsplit(":", 1)[0]  # as Redis sees this process
    here = {"attempt": attempt, "host": os.environ.get(HOST_ENV, ""), "address": address, "pid": os.getpid()}
    redis.rpush(started_key(marker), json.dumps(here))
    deadline = time.monotonic() + hold_seconds
    while attempt == 1 and time.monotonic() < deadline and not redis.exists(release_key(marker)):
        time.sleep(0.2)
    redis.rpush(returned_key(marker), json.dumps(here))
    return here


@flow(name="host-failover", queue="hosts")
def host_failover(marker: str, hold_seconds: float = 120.0) -> dict[str, Any]:
    return where_am_i.submit(marker, hold_seconds)  # type: ignore[no-any-return]
