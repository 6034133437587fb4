"""Cached tasks and the flows that call them (``tests/test_caching.py``).

Every task counts its own executions in Redis under ``test:cache:<token>`` (each test
passes a token of its own): a cached call leaves the count as it was.
"""

from __future__ import annotations

import threading
from typing import Any

from orchestrator import FLOW_PARAMETERS, INPUTS, NO_CACHE, RUN_ID, TASK_SOURCE, flow, task, task_input_hash
from orchestrator.authoring.caching import CacheContext
from orchestrator.runstate.store import get_store

QUEUE = "caching"
OTHER_QUEUE = "caching-b"  # served by a second worker process


def executed(token: str) -> int:
    """Count one execution of a task for ``token``; the count so far."""
    return int(get_store().redis.incr(f"test:cache:{token}"))


@task(cache_policy=INPUTS)
def by_inputs(token: str, x: int) -> int:
    executed(token)
    return x * 2


@task(cache_policy=INPUTS)
def stamped(token: str) -> int:
    """Returns how many times it executed: a refreshed entry holds the newer count."""
    return executed(token)


@task(cache_policy=TASK_SOURCE)
def by_source(token: str) -> str:
    executed(token)
    return token


@task(cache_policy=RUN_ID)
def per_run(token: str) -> str:
    executed(token)
    return token


@task(cache_policy=NO_CACHE)
def never_cached(token: str) -> int:
    return executed(token)


@task(cache_policy=INPUTS + TASK_SOURCE)
def combined(token: str, x: int) -> int:
    executed(token)
    return x + 1


@task(cache_policy=INPUTS - "note")
def without_note(token: str, x: int, note: str) -> str:
    executed(token)
    return f"{x}:{note}"


def key_by_x(context: CacheContext, parameters: dict[str, Any]) -> str | None:
    """The key is the token and x; a negative x is never cached."""
    return None if parameters["x"] < 0 else f"{parameters['token']}-{parameters['x']}"


@task(cache_key_fn=key_by_x)
def keyed(token: str, x: int) -> int:
    executed(token)
    return x


@task(cache_policy=INPUTS, cache_expiration=2.5)
def short_lived(token: str) -> int:
    return executed(token)


@task(cache_policy=INPUTS, persist_result=True)
def persisted(token: str, x: int) -> dict[str, int]:
    executed(token)
    return {"x": x, "square": x * x}


@task(cache_policy=INPUTS)
def shared(token: str, x: int) -> int:
    executed(token)
    return x * 10


@task(cache_policy=FLOW_PARAMETERS)
def by_flow_parameters(token: str) -> int:
    return executed(token)


@task(cache_key_fn=task_input_hash)
def prefect_style(token: str, x: int) -> int:
    executed(token)
    return x


@task(cache_policy=INPUTS)
async def async_cached(token: str, x: int) -> int:
    executed(token)
    return x + 100


class Opaque:
    """A value that has no JSON form (it travels pickled)."""

    def __init__(self, n: int) -> None:
        self.n = n


@task(result_serializer="pickle")
def make_opaque(n: int) -> Opaque:
    return Opaque(n)


@task(cache_policy=INPUTS, result_serializer="pickle", retries=2)  # a key error is never retried
def takes_opaque(token: str, obj: Any) -> int:
    executed(token)
    return int(getattr(obj, "n", 0))


# -- flows ------------------------------------------------------------------------------------
@flow(name="cache-inputs", queue=QUEUE)
def inputs_flow(token: str, x: int) -> int:
    return by_inputs.submit(token, x)  # type: ignore[no-any-return]


@flow(name="cache-stamped", queue=QUEUE)
def stamped_flow(token: str, refresh: bool = False) -> int:
    if refresh:  # decided while tracing, from a parameter: the flow stays compiled
        return stamped.with_options(refresh_cache=True).submit(token)  # type: ignore[no-any-return]
    return stamped.submit(token)  # type: ignore[no-any-return]


@flow(name="cache-source", queue=QUEUE)
def source_flow(token: str) -> str:
    return by_source.submit(token)  # type: ignore[no-any-return]


@flow(name="cache-run-id", queue=QUEUE)
def run_id_flow(token: str) -> list[str]:
    first = per_run.submit(token)
    second = per_run.submit(token, wait_for=[first])  # after the first: it finds its entry
    return [first, second]  # type: ignore[list-item]


@flow(name="cache-none", queue=QUEUE)
def no_cache_flow(token: str) -> list[int]:
    first = never_cached.submit(token)
    second = never_cached.submit(token, wait_for=[first])
    uncached = by_inputs.with_options(cache_policy=NO_CACHE)  # a cached task, its cache turned off
    third = uncached.submit(token, 1, wait_for=[second])
    fourth = uncached.submit(token, 1, wait_for=[third])
    return [first, second, third, fourth]  # type: ignore[list-item]


@flow(name="cache-combined", queue=QUEUE)
def combined_flow(token: str, x: int) -> int:
    return combined.submit(token, x)  # type: ignore[no-any-return]


@flow(name="cache-without-note", queue=QUEUE)
def without_note_flow(token: str, x: int, note: str) -> str:
    return without_note.submit(token, x, note)  # type: ignore[no-any-return]


@flow(name="cache-keyed", queue=QUEUE)
def keyed_flow(token: str, x: int) -> int:
    return keyed.submit(token, x)  # type: ignore[no-any-return]


@flow(name="cache-short-lived", queue=QUEUE)
def short_lived_flow(token: str) -> int:
    return short_lived.submit(token)  # type: ignore[no-any-return]


@flow(name="cache-persisted", queue=QUEUE)
def persisted_flow(token: str, x: int) -> dict[str, int]:
    return persisted.submit(token, x)  # type: ignore[no-any-return]


@flow(name="cache-shared-a", queue=QUEUE)
def shared_on_a(token: str, x: int) -> int:
    return shared.submit(token, x)  # type: ignore[no-any-return]


@flow(name="cache-shared-b", queue=OTHER_QUEUE)
def shared_on_b(token: str, x: int) -> int:
    return shared.submit(token, x)  # type: ignore[no-any-return]


@flow(name="cache-flow-parameters", queue=QUEUE)
def flow_parameters_flow(token: str, day: str, scale: int = 1) -> int:
    """Its task takes only the token: FLOW_PARAMETERS keys it by the day and the scale too."""
    return by_flow_parameters.submit(token)  # type: ignore[no-any-return]


@flow(name="cache-prefect-style", queue=QUEUE)
def prefect_style_flow(token: str, x: int) -> int:
    return prefect_style.submit(token, x)  # type: ignore[no-any-return]


@flow(name="cache-async", queue=QUEUE)
def async_flow(token: str, x: int) -> list[int]:
    first = async_cached.submit(token, x)
    return [first, async_cached.submit(token, x, wait_for=[first])]  # type: ignore[list-item]


@flow(name="cache-opaque", queue=QUEUE)
def opaque_flow(token: str, leave_out: bool = False) -> int:
    consumer = takes_opaque.with_options(cache_policy=INPUTS - "obj") if leave_out else takes_opaque
    return consumer.submit(token, make_opaque.submit(7))  # type: ignore[no-any-return]


@flow(name="cache-dynamic", queue=QUEUE)
def dynamic_flow(token: str) -> int:
    """Reads task values in its body (dynamic): the second call finds the first one's entry."""
    return by_inputs(token, 3) + by_inputs(token, 3)


@flow(name="cache-lock")
def lock_flow(token: str) -> int:
    """In-process only: a lock has no JSON form, so INPUTS cannot hash it."""
    return takes_opaque(token, threading.Lock())  # type: ignore[no-any-return]


@flow(name="cache-dynamic-refresh", queue=QUEUE)
def dynamic_refresh_flow(token: str) -> int:
    """A dynamic body: its with_options(refresh_cache=True) copy travels in the driver's message."""
    first = stamped(token)
    second = stamped.with_options(refresh_cache=True)(token)
    return first + 10 * second
