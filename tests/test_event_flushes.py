"""Task events leave the worker's main process in batches (``workers/event_flushes.py``), and every
one still reaches an event receiver (Flower) in order."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import pytest

from tests import flows
from tests.conftest import TEST_BROKER
from tests.event_receiver import receiving
from tests.test_acked_with_end import _monitored

pytestmark = [
    pytest.mark.usefixtures("fleet"),
    pytest.mark.skipif(TEST_BROKER != "redis", reason="Redis's MONITOR counts the publishes"),
]

BY_THE_MAIN_PROCESS = ("task-received", "task-started", "task-succeeded")


def test_task_events_go_out_in_batches_and_each_arrives(redis_url: str) -> None:
    seen: dict[str, list[str]] = defaultdict(list)
    runs: list[Any] = []

    def run_flow() -> None:
        runs.append(flows.many_returned_flow.delay(n=12))
        assert runs[0].result(timeout=60) == [2 * i for i in range(12)]

    with receiving(redis_url, {"*": lambda event: seen[event.get("uuid", "")].append(event["type"])}):
        lines = _monitored(redis_url, run_flow)
        ids = [row["id"] for row in runs[0].task_runs()]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any("task-succeeded" not in seen[i] for i in ids):
            time.sleep(0.05)
    assert len(ids) == 12
    for task_id in ids:  # each event once, in the order the main process sent them
        assert [kind for kind in seen[task_id] if kind in BY_THE_MAIN_PROCESS] == list(BY_THE_MAIN_PROCESS)
    sent = sum(kind in BY_THE_MAIN_PROCESS for kinds in seen.values() for kind in kinds)
    batches = [x for x in lines if x["command"].startswith("PUBLISH") and "task.multi" in x["command"].split(" ")[1]]
    assert 0 < len(batches) < sent / 2, (len(batches), sent)  # one publish per event, nearly, without batches
