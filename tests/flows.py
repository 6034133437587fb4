"""Flows and tasks the fleet tests run; workers import this module with --flows tests.flows."""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from orchestrator import (
    allow_failure,
    as_completed,
    exponential_backoff,
    flow,
    get_run_logger,
    rename_flow_run,
    task,
    unmapped,
    wait,
)
from orchestrator.runstate.store import get_store
from orchestrator.runtime.context import current_run
from orchestrator.runtime.signals import FAIL, RETRY, SKIP
from workers.app import app as celery_app


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def inc(x: int) -> int:
    return x + 1


@task
def double(x: int) -> int:
    return x * 2


@task
def total(values: list[int]) -> int:
    return sum(values)


@task
def sleepy(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def unsendable() -> object:
    return object()


@task(result_serializer="pickle")
def pickled_value() -> object:
    return complex(1, 2)


@task(result_serializer="pickle")
def describe_value(value: object) -> str:
    return repr(value)


@task
def explode(message: str) -> int:
    raise ValueError(message)


@task
def fail_now() -> int:
    raise FAIL("bad input, no retries")


@task
def skip_me() -> int:
    raise SKIP("nothing to do today")


@task
def today_of(day: dt.date) -> str:
    return day.isoformat()


@flow
def chain_flow(x: int = 1) -> int:
    a = inc.submit(x)
    b = inc.submit(a)
    c = double.submit(b)
    return c  # type: ignore[no-any-return]


@flow
def fan_flow(n: int = 20) -> int:
    parts = [double.submit(i) for i in range(n)]
    return total.submit(parts)  # type: ignore[no-any-return]


@flow
def source_fan_flow(n: int = 4) -> int:
    """W1's shape: a source, a fan-out that reads its result, a reduce. The worker that runs the
    source sends the fan-out with the source's end (``collected_sends.py``)."""
    start = inc.submit(1)
    parts = [add.submit(start, i) for i in range(n)]
    return total.submit(parts)  # type: ignore[no-any-return]


@flow
def failing_source_fan_flow(n: int = 3) -> int:
    """:func:`source_fan_flow` whose source fails: no member may run."""
    start = explode.submit("the source failed")
    parts = [add.submit(start, i) for i in range(n)]
    return total.submit(parts)  # type: ignore[no-any-return]


@flow
def diamond_flow(x: int = 1) -> int:
    a = inc.submit(x)
    b = double.submit(a)
    c = inc.submit(a)
    return add.submit(b, c)  # type: ignore[no-any-return]


@flow
def non_sp_flow(slow: float = 1.5) -> dict[str, Any]:
    """A->C, B->C, B->D: D must not wait for A."""
    a = sleepy.submit(slow, "a")
    b = sleepy.submit(0.05, "b")
    c = sleepy.submit(0.05, "c", wait_for=[a, b])
    d = sleepy.submit(0.05, "d", wait_for=[b])
    return {"c": c, "d": d}


@flow
def map_param_flow(values: list[int]) -> int:
    doubled = double.map(values)
    return total.submit(doubled)  # type: ignore[no-any-return]


@flow
def map_upstream_flow(n: int = 5) -> int:
    nums = numbers.submit(n)
    doubled = double.map(nums)
    return total.submit(doubled)  # type: ignore[no-any-return]


@flow
def child_flow(seconds: float, value: int) -> int:
    return sleepy.submit(seconds, value)  # type: ignore[no-any-return]


@flow
def dependent_child(value: int) -> int:
    return double.submit(value)  # type: ignore[no-any-return]


@flow
def parent_flow() -> dict[str, int]:
    first = child_flow(0.8, 1)
    second = child_flow(2.0, 2)
    third = dependent_child(first)
    return {"first": first, "second": second, "third": third}  # type: ignore[dict-item]


@flow(queue="solo")
def dynamic_flow(x: int = 1) -> int:
    first = add.submit(x, 2).result()
    if first > 2:
        return add(first, 10)  # type: ignore[no-any-return]
    return first


@flow
def wait_for_flow() -> list[str]:
    audit = sleepy.submit(0.5, "audited")
    load = sleepy.submit(0.0, "loaded", wait_for=[audit])
    return load  # type: ignore[no-any-return]


@flow
def early_return_flow() -> str:
    sleepy.submit(1.0, "late")
    return "early"


@flow
def unsendable_flow() -> object:
    return unsendable.submit()


@flow
def pickle_flow() -> str:
    return describe_value.submit(pickled_value.submit())  # type: ignore[no-any-return]


@task(result_serializer="pickle")
def pickled_values() -> list[complex]:
    return [complex(1, 2), complex(3, 4)]


@task(result_serializer="pickle")
def scale(value: complex, factor: complex) -> complex:
    return value * factor


@flow
def pickle_map_flow() -> tuple[list[complex], str]:
    """Pickled inputs on every path: a map of a pickle task over a pickled upstream result with a
    pickled constant beside it, and a pickled constant given straight to a task (both ride in the
    run store, never in a message)."""
    scaled = scale.map(pickled_values.submit(), unmapped(complex(0, 1)))
    return scaled, describe_value.submit(complex(5, 6))  # type: ignore[return-value]


@flow
def one_task_flow(x: int = 1) -> int:
    """One task: its message is the whole canvas (W0's shape)."""
    return inc.submit(x)  # type: ignore[no-any-return]


@flow
def failing_flow() -> int:
    bad = explode.submit("boom")
    return inc.submit(bad)  # type: ignore[no-any-return]


@flow
def many_returned_flow(n: int = 12, fail_at: int = -1) -> list[int]:
    """Returns n futures: a record with a long return template; one of them fails if ``fail_at`` says."""
    return [explode.submit("boom") if i == fail_at else double.submit(i) for i in range(n)]  # type: ignore[misc]


@flow
def barrier_flow() -> int:
    first = sleepy.submit(0.3, 1)
    wait([first])
    return inc.submit(0)  # type: ignore[no-any-return]


@flow
def fail_and_skip_flow() -> dict[str, int]:
    return {"failed": fail_now.submit(), "skipped": inc.submit(skip_me.submit())}  # type: ignore[dict-item]


@flow
def slow_flow(seconds: float = 3.0) -> Any:
    return sleepy.submit(seconds, "slept")


@task
def held_until_released(marker: str) -> str:
    """Runs until the test sets ``test:release:<marker>`` (60 s at most): a Running window that the test
    ends when it has seen what it looks for, not one a clock ends while a loaded machine is still drawing."""
    client = get_store().redis
    deadline = time.monotonic() + 60
    while not client.exists(f"test:release:{marker}"):
        if time.monotonic() > deadline:
            return "never released"
        time.sleep(0.05)
    return "released"


@flow
def held_flow(marker: str) -> Any:
    return held_until_released.submit(marker)


@task(retries=3, retry_delay_seconds=[0.1, 0.2])
def flaky_until_third() -> int:
    run = current_run()
    attempt = run.attempt if run else 1
    if attempt < 3:
        raise OSError(f"attempt {attempt} failed")
    return attempt


@flow
def retry_flow() -> int:
    return flaky_until_third.submit()  # type: ignore[no-any-return]


@flow
def dynamic_fan_flow(n: int = 4) -> dict[str, Any]:
    """Dynamic: reads results, maps, uses as_completed, calls a subflow, survives a failure."""
    count = len(numbers.submit(n).result())
    doubled = double.map(list(range(count)))
    finished = [f.result() for f in as_completed(doubled)]
    bad = explode.submit("dynamic boom")
    after_bad = inc.submit(bad)
    child = dependent_child(sum(finished))
    return {"finished": sorted(finished), "child": child, "after_bad_state": after_bad.wait(30).value}


@celery_app.task(name="tests.raw.add")
def raw_add(x: int, y: int) -> int:
    """A plain Celery task on the worker app, used like any Celery user would."""
    return x + y


@flow
def with_options_flow() -> int:
    """flaky_until_third needs 3 attempts; with retries=1 it must fail on the fleet too."""
    return flaky_until_third.with_options(retries=1, retry_delay_seconds=0).submit()  # type: ignore[no-any-return]


@flow
def dated_flow(day: dt.date = dt.date.today) -> str:  # type: ignore[assignment]
    return today_of.submit(day)  # type: ignore[no-any-return]


@flow
def long_chain_flow(n: int = 80) -> int:
    value = inc.submit(0)
    for _ in range(n - 1):
        value = inc.submit(value)
    return value  # type: ignore[return-value]


# -- retries and sensors ------------------------------------------------------------------
def _stamp(name: str) -> int:
    """Record one execution of ``name`` in this flow run; return how many there were."""
    run = current_run()
    key = f"test:stamps:{name}:{run.flow_run_id if run else ''}"
    store = get_store()
    store.redis.rpush(key, repr(time.time()))
    return int(store.redis.llen(key))


@task(retries=2, retry_delay_seconds=[0.5, 1.5])
def flaky_list() -> int:
    if _stamp("flaky_list") < 3:
        raise OSError("not yet")
    return 3


@task(retries=2, retry_delay_seconds=exponential_backoff(0.5))
def flaky_exponential() -> int:
    if _stamp("flaky_exponential") < 3:
        raise OSError("not yet")
    return 3


@task(retries=3, retry_delay_seconds=0.2, retry_on=(OSError,))
def wrong_kind_of_error() -> int:
    _stamp("wrong_kind_of_error")
    raise ValueError("not worth retrying")


@flow
def delay_forms_flow() -> dict[str, int]:
    return {
        "list": flaky_list.submit(),
        "exponential": flaky_exponential.submit(),
    }  # type: ignore[dict-item]


@flow
def retry_on_flow() -> int:
    return wrong_kind_of_error.submit()  # type: ignore[no-any-return]


@task(queue="solo")
def sensor_third_time() -> int:
    count = _stamp("sensor")
    if count < 3:
        raise RETRY(f"poke {count}: file not there yet", delay=1)
    return count


@task(queue="solo")
def between_pokes() -> str:
    _stamp("between")
    time.sleep(0.3)
    return "ran between pokes"


@task(queue="solo", poke_timeout_seconds=2)
def sensor_never_ready() -> int:
    _stamp("never")
    raise RETRY("still nothing", delay=0.8)


@flow(queue="solo")
def sensor_flow() -> dict[str, Any]:
    return {"sensor": sensor_third_time.submit(), "other": between_pokes.submit()}  # type: ignore[dict-item]


@flow(queue="solo")
def sensor_timeout_flow() -> int:
    return sensor_never_ready.submit()  # type: ignore[no-any-return]


@task(timeout_seconds=1)
def overruns() -> None:
    time.sleep(10)


@task(timeout_seconds=1)
def ignores_its_timeout() -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except Exception:  # swallows SoftTimeLimitExceeded, as careless code does
            pass


@flow
def timeout_flow(hard: bool = False) -> None:
    (ignores_its_timeout if hard else overruns).submit()


# -- hooks ---------------------------------------------------------------------------------
def record_hook(obj: Any, run: Any, state: Any) -> None:
    """Append "<task or flow name>:<state>" to a list per flow run."""
    get_store().redis.rpush(f"test:hooks:{run.flow_run_id}", f"{obj.name.rsplit('.', 1)[-1]}:{state.name}")


def broken_hook(obj: Any, run: Any, state: Any) -> None:
    raise RuntimeError("this hook is broken")


@task(on_completion=[broken_hook, record_hook], on_failure=record_hook)
def hooked_ok() -> int:
    return 1


@task(retries=1, retry_delay_seconds=0.1, on_retry=record_hook, on_failure=record_hook)
def hooked_fails() -> int:
    raise OSError("always")


@flow(on_completion=record_hook, on_failure=[broken_hook, record_hook])
def hooked_flow(fail: bool = False) -> int:
    return (hooked_fails if fail else hooked_ok).submit()  # type: ignore[no-any-return]


# -- trigger rules --------------------------------------------------------------------------
@task(trigger="all_finished")
def cleanup(tag: str) -> str:
    return tag


@task(trigger="any_failed")
def alert(tag: str) -> str:
    return tag


@task(trigger="all_failed")
def all_failed_task(tag: str) -> str:
    return tag


@task
def show(value: Any) -> str:
    return repr(value)


@flow
def trigger_flow() -> None:
    bad = explode.submit("bad")
    ok = inc.submit(1)
    cleanup.submit("cleanup", wait_for=[bad, ok])
    alert.submit("alert", wait_for=[bad, ok])
    all_failed_task.submit("all failed", wait_for=[bad])
    all_failed_task.submit("not all failed", wait_for=[bad, ok])
    alert.submit("nothing failed", wait_for=[ok])
    show.submit(allow_failure(bad))
    inc.submit(bad)


@flow
def chord_header_fails() -> int:
    parts = [double.submit(1), explode.submit("header"), double.submit(3)]
    return total.submit(parts)  # type: ignore[no-any-return]


@flow
def skip_then_cleanup() -> None:
    skipped = skip_me.submit()
    inc.submit(skipped)
    cleanup.submit("after skip", wait_for=[skipped])


@flow
def wait_only_waits() -> int:
    bad = explode.submit("waited on")
    wait([bad])
    return inc.submit(1)  # type: ignore[no-any-return]


@flow
def child_with_failing_side_task() -> int:
    explode.submit("side task")
    return inc.submit(1)  # type: ignore[no-any-return]


@flow
def parent_of_side_failure() -> int:
    return double.submit(child_with_failing_side_task())  # type: ignore[no-any-return]


@flow(timeout_seconds=1)
def slow_flow_with_timeout() -> int:
    return inc.submit(sleepy.submit(6, 1))  # type: ignore[no-any-return]


# -- flow retries ---------------------------------------------------------------------------
@task
def stamped_ok(value: int) -> int:
    _stamp("stamped_ok")
    return value


@task
def fails_first_time(value: int) -> int:
    if _stamp("fails_first_time") == 1:
        raise OSError("first flow attempt fails")
    return value


@flow(retries=1, retry_delay_seconds=0.5)
def retried_flow() -> int:
    ok = stamped_ok.submit(2)
    bad = fails_first_time.submit(3)
    return add.submit(ok, bad)  # type: ignore[no-any-return]


@flow(retries=1, retry_delay_seconds=0.2)
def retried_one_task_flow() -> int:
    return fails_first_time.submit(4)  # type: ignore[no-any-return]


@flow(retries=1, retry_delay_seconds=0.2)
def retried_dynamic_flow() -> int:
    value = fails_first_time.submit(5).result()
    return add(value, 1)  # type: ignore[no-any-return]


@flow
def revocable_chord() -> int:
    return total.submit([sleepy.submit(8, 1), double.submit(1)])  # type: ignore[no-any-return]


@task(retries=2, retry_delay_seconds=0.7)
def flaky_fixed() -> int:
    if _stamp("flaky_fixed") < 3:
        raise OSError("not yet")
    return 3


@flow
def fixed_delay_flow() -> int:
    return flaky_fixed.submit()  # type: ignore[no-any-return]


@task
def killable(seconds: float) -> int:
    """Records its process id so a test can kill -9 it on the first execution."""
    run = current_run()
    count = _stamp("killable")
    get_store().redis.set(f"test:pid:{run.flow_run_id if run else ''}", os.getpid())
    time.sleep(seconds if count == 1 else 0)
    return count


@flow
def killable_chord() -> int:
    return total.submit([killable.submit(5), double.submit(1)])  # type: ignore[no-any-return]


@task
def renames(name: str) -> str:
    rename_flow_run(name)
    return name


@flow
def renamed_flow(name: str = "renamed-by-task") -> str:
    return renames.submit(name)  # type: ignore[no-any-return]


@task
def double_fails_once_on_two(value: int) -> int:
    if value == 2 and _stamp("double_two") == 1:
        raise OSError("element 2 fails on the first flow attempt")
    return value * 2


@flow(retries=1, retry_delay_seconds=0.2)
def retried_map_flow() -> int:
    parts = double_fails_once_on_two.map(numbers.submit(4))
    return total.submit(parts)  # type: ignore[no-any-return]


@flow
def child_fails_once() -> int:
    return double_fails_once_on_two.submit(2)  # type: ignore[no-any-return]


@flow(retries=1, retry_delay_seconds=0.2)
def retried_parent_flow() -> int:
    return inc.submit(child_fails_once())  # type: ignore[no-any-return]


@task
def chatty(lines: int) -> int:
    logger = get_run_logger()
    for i in range(lines):
        logger.info("line %d of %d", i + 1, lines)
    return lines


@task(retries=1)
def chatty_then_killed() -> str:
    """Killed with its process on the first execution; the next one completes.

    Which path runs it again is a race on a loaded machine: Celery's pool requeues the message
    when it notices the dead process, and an API's crash detector (1 s heartbeats in the tests:
    a 3 s window) may declare the task Crashed first. The one retry lets either win, so the
    tests judge what they are about (the logs kept up to the kill), not the race."""
    if _stamp("chatty_then_killed") == 1:
        get_run_logger().warning("about to be killed")
        time.sleep(1.5)  # the shipper flushes every 0.5 s
        os.kill(os.getpid(), 9)
    return "second execution"


@flow
def logging_flow() -> int:
    return chatty.submit(3)  # type: ignore[no-any-return]


@flow
def mapped_logging_flow(lines: list[int] = [1, 2]) -> list[int]:  # noqa: B006 (a JSON default, never mutated)
    # a map over an upstream result expands at run time: its children are chatty-0[0], chatty-0[1], ...
    return chatty.map(sleepy.submit(0, lines))  # type: ignore[return-value]


@flow
def two_chatty_flow() -> list[int]:
    """Two task runs that log, chatty-0 one line and chatty-1 two: a task run's logs are its own lines only."""
    return [chatty.submit(1), chatty.submit(2)]  # type: ignore[list-item]


@flow
def killed_logging_flow() -> str:
    return chatty_then_killed.submit()  # type: ignore[no-any-return]


# -- flows the API tests submit over HTTP ------------------------------------------------------


@task
def counted(key: str, value: int) -> int:
    """Counts its executions in Redis (a retry test asserts what ran again)."""
    get_store().redis.incr(f"test:count:{key}")
    return value


@task
def fails_until_fixed(key: str, value: int) -> int:
    """Fails until a test sets the key ``test:fixed:<key>``: a bug fixed between two attempts."""
    get_store().redis.incr(f"test:count:{key}-fix")
    if not get_store().redis.exists(f"test:fixed:{key}"):
        raise ValueError(f"{key} is not fixed yet")
    return value


@flow(flow_run_name="api-{label}-{n}")
def api_flow(n: int, label: str = "x", day: dt.date = dt.date.today) -> int:  # type: ignore[assignment]
    """Typed parameters, a callable default and a name template: what the API checks and records."""
    first = counted.submit(f"{label}-a", n)
    side = counted.submit(f"{label}-c", n)
    fixed = fails_until_fixed.submit(label, n, wait_for=[first])
    return add.submit(fixed, side)  # type: ignore[no-any-return]


@flow
def api_sleepy_flow(seconds: float = 30.0, width: int = 2) -> list[Any]:
    """Long-running tasks for the cancel and restart tests."""
    return [sleepy.submit(seconds, i) for i in range(width)]


@task
def prints_without_saying(n: int) -> int:
    """Prints; its flow has log_prints=True, so the lines go to the run log."""
    print(f"inherited print {n}")
    return n


@task(log_prints=False)
def prints_but_opted_out() -> int:
    print("this line stays on stdout")
    return 0


@flow(log_prints=True)
def printing_flow(n: int = 2) -> list[Any]:
    return [prints_without_saying.submit(n), prints_but_opted_out.submit()]


@task(log_prints=True)
def prints_itself() -> int:
    print("first line")
    print("second", "line")
    return 1


@flow
def printing_task_flow() -> int:
    return prints_itself.submit()  # type: ignore[no-any-return]


@task(persist_result=True)
def kept(value: int) -> int:
    """Its result is also written to the result storage."""
    return value * 10


@task
def not_kept(value: int) -> int:
    return value + 1


@flow
def kept_flow(n: int = 4) -> int:
    return kept.submit(n)  # type: ignore[no-any-return]


@flow
def not_kept_flow(n: int = 4) -> int:
    return not_kept.submit(n)  # type: ignore[no-any-return]


@flow
def kept_then_fails(label: str) -> int:
    """A persisted result, then a task that fails until the test fixes it (retry reads the result)."""
    return fails_until_fixed.submit(label, kept.submit(5))  # type: ignore[no-any-return]


@task(retries=1)
def dies_on_first_attempt(marker: str) -> str:
    """Signals it is running, then hangs on its first attempt (the test kills its worker)."""
    run = current_run()
    attempt = run.attempt if run is not None else 1
    if attempt == 1:
        get_store().redis.set(f"test:crashy:{marker}", os.getpid())
        time.sleep(120)
    return f"attempt {attempt}"


@flow(queue="crashy")
def crashy_flow(marker: str) -> str:
    return dies_on_first_attempt.submit(marker)  # type: ignore[no-any-return]


@task
def hangs_without_retries(marker: str) -> str:
    get_store().redis.set(f"test:crashy:{marker}", os.getpid())
    time.sleep(120)
    return "never"


@flow(queue="crashy")
def crashy_no_retry_flow(marker: str) -> str:
    return hangs_without_retries.submit(marker)  # type: ignore[no-any-return]


# -- concurrency limits ---------------------------------------------------------------------
_COUNT_RUNNING = """
local now = redis.call('INCR', KEYS[1])
if now > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], now) end
return now
"""


@task(tags=["test-db"])
def uses_the_db(marker: str, i: int, seconds: float = 0.4) -> int:
    """Counts how many of its kind run at once (test:db:<marker>:max holds the highest count seen)."""
    client = get_store().redis
    client.eval(_COUNT_RUNNING, 2, f"test:db:{marker}:now", f"test:db:{marker}:max")
    try:
        time.sleep(seconds)
    finally:
        client.decr(f"test:db:{marker}:now")
    return i


@flow
def db_fan_flow(marker: str, n: int = 10) -> list[int]:
    return [uses_the_db.submit(marker, i) for i in range(n)]  # type: ignore[misc]


@task(tags=["test-lease"])
def holds_a_lease(marker: str) -> str:
    """Takes the only slot of 'test-lease', then hangs (the test kills its worker)."""
    get_store().redis.set(f"test:lease:{marker}", os.getpid())
    time.sleep(120)
    return "never"


@task(tags=["test-lease"])
def needs_the_lease(marker: str) -> str:
    return f"got the slot after {marker}"


@flow(queue="crashy")
def lease_holder_flow(marker: str) -> str:
    return holds_a_lease.submit(marker)  # type: ignore[no-any-return]


@flow
def lease_taker_flow(marker: str) -> str:
    return needs_the_lease.submit(marker)  # type: ignore[no-any-return]


@flow
def body_raises_flow(n: int = 1) -> int:
    """Its body fails while it is traced, before any task is planned."""
    if n > 0:
        raise ValueError(f"no rows for n={n}")
    return inc.submit(n)  # type: ignore[no-any-return]


@flow
def slow_then_quick_flow(seconds: float = 3.0) -> int:
    """``inc`` cannot start before ``sleepy`` ends: a planned task run that has not reported yet."""
    return inc.submit(sleepy.submit(seconds, 1))  # type: ignore[no-any-return]


@task(queue="db")
def query_db() -> int:
    return 1


@flow(queue="etl")
def routed_flow() -> int:
    """A task on its own queue feeding a task on the flow's queue (tests/test_compiler.py)."""
    return inc.submit(query_db.submit())  # type: ignore[no-any-return]


@flow
def dynamic_reads_a_failure() -> int:
    """Dynamic: the body reads the result of a task that raised, so the body raises too."""
    return inc.submit(explode.submit("read boom").result()).result()  # type: ignore[no-any-return]


def kill_own_process(obj: Any, run: Any, state: Any) -> None:
    """An on_completion hook that kills the pool process it runs in: after the end was recorded."""
    os.kill(os.getpid(), 9)


@task(on_completion=kill_own_process)
def ends_then_dies(marker: str) -> int:
    """Counts its executions (``test:count:<marker>``), returns 1, and its process dies in its hook."""
    get_store().redis.incr(f"test:count:{marker}")
    return 1


@flow
def dies_after_end_flow(marker: str) -> int:
    """A chain whose first task's pool process is killed after its end (and its next link's send)."""
    return inc.submit(ends_then_dies.submit(marker))  # type: ignore[no-any-return]
