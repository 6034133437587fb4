"""Flows for tests/test_with_options.py: each changes one option with ``with_options`` in its body.

The tasks are declared with the defaults (no retries, no timeout, no tags, ...): whatever
the test sees on the fleet comes from the option the body changed, carried in the message.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from orchestrator import flow, task
from orchestrator.runstate.store import get_store
from orchestrator.runtime.context import RunInfo, current_run

QUEUE = "options"
OTHER_QUEUE = "options-b"

_COUNT_RUNNING = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
return now
"""


@task
def sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def ident(value: Any) -> Any:
    return value


@task
def fails_then_sleeps(marker: str, seconds: float) -> str:
    """Attempt 1 raises; later attempts sleep ``seconds`` (a retry that must still time out)."""
    attempt = get_store().redis.incr(f"test:opt:attempts:{marker}")
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    time.sleep(seconds)
    return marker


@task
def counted(marker: str, i: int, seconds: float = 0.3) -> int:
    """Counts how many run at once (test:opt:<marker>:max holds the highest count seen)."""
    client = get_store().redis
    client.eval(_COUNT_RUNNING, 2, f"test:opt:{marker}:now", f"test:opt:{marker}:max")
    try:
        time.sleep(seconds)
    finally:
        client.decr(f"test:opt:{marker}:now")
    return i


@task
def host() -> str:
    return socket.gethostname()


@task
def talker(marker: str) -> str:
    print(f"said {marker}")
    return marker


def record_hook(obj: Any, run: RunInfo, state: Any) -> None:
    """A module-level hook: workers that import this module resolve it by name."""
    get_store().redis.set(f"test:opt:hook:{run.task_run_id}", f"{state.name}:{obj.name}")


def run_parameters() -> str:
    """A task_run_name callable: reads the bound arguments from the run context."""
    run = current_run()
    return f"via-context-{run.extra['parameters']['table']}" if run else "no-run"


@task(task_run_name="load-{table}")
def load(table: str) -> str:
    return table


# -- flows, one option each ----------------------------------------------------------------------
@flow(queue=QUEUE)
def timeout_static(seconds: float) -> float:
    return sleeper.with_options(timeout_seconds=1).submit(seconds)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def timeout_dynamic(seconds: float) -> float:
    first = float(ident(seconds))  # a value the body reads: the run is dynamic
    return sleeper.with_options(timeout_seconds=1).submit(first)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def timeout_mapped(seconds: float) -> list[float]:
    return sleeper.with_options(timeout_seconds=1).map(ident.submit([seconds]))  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def timeout_on_retry(marker: str, seconds: float) -> str:
    changed = fails_then_sleeps.with_options(retries=1, retry_delay_seconds=0.5, timeout_seconds=1)
    return changed.submit(marker, seconds)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def retried(marker: str) -> str:
    return fails_then_sleeps.with_options(retries=2, retry_delay_seconds=0.5).submit(marker, 0)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def tagged(marker: str, tag: str, n: int = 3) -> list[int]:
    limited = counted.with_options(tags=[tag])
    return [limited.submit(marker, i) for i in range(n)]  # type: ignore[misc]


@flow(queue=QUEUE)
def elsewhere() -> list[str]:
    return [host.submit(), host.with_options(queue=OTHER_QUEUE).submit()]  # type: ignore[list-item]


@flow(queue=QUEUE)
def renamed(value: int) -> int:
    return ident.with_options(name="renamed").submit(value)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def persisted(value: int) -> list[int]:
    return [ident.with_options(persist_result=True).submit(value), ident.submit(value + 1)]  # type: ignore[list-item]


@flow(queue=QUEUE)
def printing(marker: str) -> list[str]:
    return [talker.with_options(log_prints=True).submit(marker), talker.submit(f"{marker}-quiet")]  # type: ignore[list-item]


@flow(queue=QUEUE)
def hooked(value: int) -> int:
    return ident.with_options(on_completion=[record_hook]).submit(value)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def hooked_dynamic(value: int) -> int:
    first = ident(value)
    return ident.with_options(on_completion=[record_hook]).submit(first + 1)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def lambda_hooked(value: int) -> int:
    return ident.with_options(on_completion=lambda *_: None).submit(value)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def named_runs(table: str) -> list[str]:
    upstream = ident.submit(f"{table}-computed")
    by_context = load.with_options(task_run_name=run_parameters)
    return [load.submit(table), load.submit(upstream), by_context.submit(table)]  # type: ignore[list-item]


@flow(queue=QUEUE)
def slow_dynamic(seconds: float) -> float:
    first = float(ident(seconds))
    return sleeper.submit(first)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def child(value: int) -> str:
    return host.submit()  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def parent_of_moved_child(value: int) -> str:
    return child.with_options(queue=OTHER_QUEUE)(value)


@task
def local_sleeper(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@flow
def local_timeout(seconds: float) -> float:
    return local_sleeper.with_options(timeout_seconds=0.3, retries=2).submit(seconds)  # type: ignore[no-any-return]


@flow
def local_labels(table: str) -> list[str]:
    futures = [load.submit(table), load.with_options(task_run_name=run_parameters).submit(table)]
    for future in futures:
        future.wait()
    return [f.label for f in futures]
