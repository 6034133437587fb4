"""Flows for tests/test_authoring_compat.py (Prefect 3 authoring on the fleet): ``tags()`` blocks,
``quote()`` / ``opaque()``, tasks on methods and tasks submitted inside tasks.

Each feature has a static flow (traced and compiled where ``.delay()`` is called) and, where
the mode matters, a dynamic one (it reads a value, so its body runs on a worker).
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator import flow, opaque, quote, tags, task, unmapped
from orchestrator.runstate.store import get_store

QUEUE = "authoring"

_COUNT_RUNNING = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
return now
"""


@task
def ident(value: Any) -> Any:
    return value


@task
def counted(marker: str, i: int, seconds: float = 0.3) -> int:
    """Counts how many run at once (test:auth:<marker>:max holds the highest count seen)."""
    client = get_store().redis
    client.eval(_COUNT_RUNNING, 2, f"test:auth:{marker}:now", f"test:auth:{marker}:max")
    try:
        time.sleep(seconds)
    finally:
        client.decr(f"test:auth:{marker}:now")
    return i


# -- tags() ------------------------------------------------------------------------------------------
@flow(queue=QUEUE)
def tagged_static(marker: str, tag: str, n: int = 3) -> list[int]:
    """Compiled: the tasks carry no tags of their own; the block gives them ``tag``."""
    with tags(tag):
        return [counted.submit(marker, i) for i in range(n)]  # type: ignore[misc]


@flow(queue=QUEUE)
def tagged_dynamic(marker: str, tag: str, n: int = 3) -> list[int]:
    """Dynamic (it reads a value): the block holds in the body the worker drives, map included."""
    count = int(ident(n))
    with tags("outer"), tags(tag):
        futures = counted.map(unmapped(marker), list(range(count)))
    return futures.result()  # type: ignore[no-any-return]


# -- quote() / opaque() ----------------------------------------------------------------------------------
@flow(queue=QUEUE)
def quoted_static(size: int) -> dict[str, Any]:
    upstream = ident.submit(size)
    return {
        "quoted": ident.submit(quote({"rows": list(range(size))})),
        "opaque": ident.submit(opaque(upstream)),  # resolved: the value, after upstream ran
        "mapped": ident.map(quote([[1], [2]])),  # each run gets its element
    }


@flow(queue=QUEUE)
def quoted_dynamic(size: int) -> dict[str, Any]:
    upstream = ident.submit(size)
    n = int(upstream.result())
    return {
        "quoted": ident.submit(quote({"rows": list(range(n))})).result(),
        "opaque": ident.submit(opaque(upstream)).result(),
    }


@flow(queue=QUEUE)
def quoted_future_dynamic() -> Any:
    """A future inside quote() cannot travel to a worker: the body fails saying so."""
    first = ident.submit(1)
    if first.result() == 1:
        return ident.submit(quote([first])).result()
    return None


# -- methods -----------------------------------------------------------------------------------------------
class Maths:
    """Tasks reachable by module and qualified name: workers import them with this module."""

    @staticmethod
    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    @staticmethod
    def triple(x: int) -> int:
        return 3 * x


class Scaler:
    """An instance that can travel: the task opts into pickle, so ``self`` is pickled into its inputs."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @task(result_serializer="pickle")
    def scale(self, x: int) -> int:
        return self.factor * x


class Plain:
    """An instance JSON cannot carry: a bound task of it cannot be sent."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    @task
    def scale(self, x: int) -> int:
        return self.factor * x

    @flow(name="authoring-bound-flow", queue=QUEUE)
    def run(self, x: int) -> int:
        return self.scale(x)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def static_methods(x: int) -> list[int]:
    return [Maths.double.submit(x), Maths().triple.submit(x), Maths.double.map([x, x + 1])]  # type: ignore[list-item]


@flow(queue=QUEUE)
def pickled_instance(x: int) -> int:
    return Scaler(5).scale.submit(x)  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def json_instance(x: int) -> int:
    return Plain(5).scale.submit(x)  # type: ignore[no-any-return]


# -- tasks inside tasks -------------------------------------------------------------------------------------
@task
def square(x: int) -> int:
    return x * x


@task(retries=2, retry_delay_seconds=0)
def flaky_square(marker: str, x: int) -> int:
    """Fails its first attempt for each x (counted in Redis: the retry runs in the same process or not)."""
    if get_store().redis.incr(f"test:auth:nested:{marker}:{x}") == 1:
        raise RuntimeError(f"first attempt for {x} fails")
    return x * x


@task
def fan_out_inside(marker: str, xs: list[int]) -> dict[str, Any]:
    """A task that maps and submits other tasks itself (Prefect 3): threads of its worker process."""
    squares = square.map(xs)
    squares.wait()
    retried = flaky_square.submit(marker, xs[0])
    return {"squares": squares.result(), "retried": retried.result(), "direct": square(3)}


@flow(queue=QUEUE)
def nested_static(marker: str, xs: list[int]) -> dict[str, Any]:
    return fan_out_inside.submit(marker, xs)  # type: ignore[no-any-return]
