"""Issue 16's compatibility suite: small flows as Prefect 3's documentation writes them, each with its CASE.

Every flow is written the way a Prefect user writes it (the imports changed from ``prefect`` to
``orchestrator``), runs on queue ``compat`` (the worker of ``tests/test_prefect_compat.py``), and is
followed by its :class:`Case`: the parameters, the value Prefect 3 returns for them (or the exception
type it raises), and ``needs``, the feature the flow exercises. The expectations are Prefect's, never
what this product does today: a case that fails names a gap to close.

Where Prefect 3 behaves in a way that was checked in its source or docs (PrefectHQ/prefect, the
snapshot of 2026-08-21), the comment says so. Two Prefect behaviours that differ from ours by design
are left out: Prefect 3 caches task results by default (we cache only when asked), and
``allow_failure`` hands the downstream the upstream's exception (we hand it None); no case here
depends on either.

Helpers that are not Prefect API (``new_token``, ``marker``, ``count_attempt``) let a flow observe
order, attempts and hooks across threads and worker processes through small files.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from orchestrator import (
    INPUTS,
    Completed,
    Failed,
    Flow,
    StateType,
    allow_failure,
    as_completed,
    exponential_backoff,
    flow,
    get_run_logger,
    quote,
    tags,
    task,
    task_input_hash,
    unmapped,
    wait,
)
from orchestrator.errors import FlowRunFailed, SerializationError

QUEUE = "compat"  # the dedicated worker of tests/test_prefect_compat.py consumes it


# -- the cases ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One flow run and what Prefect 3 gives for it.

    ``expected`` is the flow's value (compared after any State in it is replaced by its result, since
    Prefect 3 hands back States where a flow returns futures), unless ``raises`` names the exception
    type Prefect raises. On the fleet a raising case ends FlowRunFailed whose message contains
    ``fleet_says`` (by default the exception type's name). The other fields are what else Prefect
    documents about the run: its name, its task runs' names and final states, log lines, and the
    marker files its hooks write (name -> content).
    """

    flow: Flow[..., Any]
    params: dict[str, Any]
    expected: Any = None
    raises: type[BaseException] | None = None
    needs: str = ""
    fleet_says: str | None = None
    run_name: str | None = None
    task_run_names: tuple[str, ...] = ()
    task_states: dict[str, str] = field(default_factory=dict)
    log_lines: tuple[str, ...] = ()
    markers: dict[str, str] = field(default_factory=dict)
    # A difference by design, listed in README.md's "Coming from Prefect" table: on the fleet the run is
    # refused when sent, with this error (and nothing runs), where Prefect would run it.
    fleet_refuses: type[BaseException] | None = None

    @property
    def name(self) -> str:
        """The flow's name: the test id."""
        return self.flow.name

    @property
    def fleet_message(self) -> str:
        """What a failed fleet run's FlowRunFailed message must contain."""
        if self.fleet_says is not None:
            return self.fleet_says
        return self.raises.__name__ if self.raises else ""


CASES: list[Case] = []


def case(flow_: Flow[..., Any], params: dict[str, Any], expected: Any = None, **details: Any) -> None:
    """Declare the case of the flow just above (see :class:`Case` for ``details``)."""
    CASES.append(Case(flow_, params, expected, **details))


# -- helpers (not Prefect API) ------------------------------------------------------------------------
def new_token() -> str:
    """A fresh name for this run's marker files (flows run in-process and on the fleet at once)."""
    return uuid.uuid4().hex


def marker(name: str) -> Path:
    """A file shared by the test process and the worker's processes: ``COMPAT_MARKER_DIR`` (set by the
    test module for both), else a folder in the system's temporary directory."""
    folder = Path(os.environ.get("COMPAT_MARKER_DIR") or Path(tempfile.gettempdir()) / "orchestrator-compat")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def count_attempt(token: str) -> int:
    """Count one more attempt under ``token`` and return the count: one byte appended per attempt, so
    retries counted in different worker processes add up."""
    path = marker(f"{token}.attempts")
    with path.open("ab") as counter:
        counter.write(b".")
    return path.stat().st_size


# -- tasks shared by several flows --------------------------------------------------------------------
@task
def say_hello(name: str) -> str:
    return f"Hello, {name}!"


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def multiply(x: int, y: int) -> int:
    return x * y


@task
def square(x: int) -> int:
    return x * x


@task
def total(numbers: list[int]) -> int:
    return sum(numbers)


@task
def make_range(n: int) -> list[int]:
    return list(range(n))


@task
def fail_with(reason: str) -> int:
    raise ValueError(reason)


@task
def check_positive(x: int) -> int:
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x


@task
def note(text: str) -> str:
    return text


@task
def write_note(token: str, text: str) -> None:
    marker(token).write_text(text)


@task
def read_note(token: str) -> str:
    path = marker(token)
    return path.read_text() if path.exists() else "nothing written yet"


# -- calling and submitting ---------------------------------------------------------------------------
@flow(queue=QUEUE)
def hello_flow(name: str) -> str:
    """The first flow of every tutorial: a task called like a function gives its value."""
    return say_hello(name)


case(hello_flow, {"name": "Marvin"}, "Hello, Marvin!", needs="direct task call")


@flow(queue=QUEUE)
def add_with_submit(a: int, b: int) -> int:
    """``submit`` gives a future at once; ``result()`` waits for the value."""
    future = add.submit(a, b)
    return future.result()  # type: ignore[no-any-return]


case(add_with_submit, {"a": 1, "b": 2}, 3, needs="submit/result")


@flow(queue=QUEUE)
def chained_futures(x: int) -> int:
    """A future passed to another task: Prefect waits for it and passes its value."""
    plus_one = add.submit(x, 1)
    times_ten = multiply.submit(plus_one, 10)
    return times_ten.result()  # type: ignore[no-any-return]


case(chained_futures, {"x": 2}, 30, needs="future as task input")


@flow(queue=QUEUE)
def returns_a_future(x: int) -> int:
    """Prefect 3 resolves a returned future to its State (flow_engine.handle_success:
    resolve_futures_to_states) and the call gives that State; compared through its result."""
    return square.submit(x)  # type: ignore[no-any-return]


case(returns_a_future, {"x": 4}, 16, needs="return a future")


@flow(queue=QUEUE)
def futures_in_a_list_argument(n: int) -> int:
    """Futures inside a list argument are resolved too (Prefect visits collections)."""
    squares = [square.submit(i) for i in range(n)]
    return total.submit(squares).result()  # type: ignore[no-any-return]


case(futures_in_a_list_argument, {"n": 4}, 14, needs="futures inside a collection argument")


# -- map ----------------------------------------------------------------------------------------------
@flow(queue=QUEUE)
def map_squares(numbers: list[int]) -> list[int]:
    """``map`` gives a list of futures with ``.result()`` on it."""
    return square.map(numbers).result()  # type: ignore[no-any-return]


case(map_squares, {"numbers": [1, 2, 3]}, [1, 4, 9], needs="map().result()")


@flow(queue=QUEUE)
def map_with_static_value(numbers: list[int], offset: int) -> list[int]:
    """A value that is not iterable is passed whole to every mapped run (no ``unmapped`` needed)."""
    return add.map(numbers, offset).result()  # type: ignore[no-any-return]


case(map_with_static_value, {"numbers": [1, 2, 3], "offset": 5}, [6, 7, 8], needs="map with a scalar argument")


@task
def sum_plus(x: int, static_iterable: list[int]) -> int:
    return x + sum(static_iterable)


@flow(queue=QUEUE)
def map_with_unmapped(numbers: list[int], extra: list[int]) -> list[int]:
    """An iterable wrapped in ``unmapped`` is passed whole instead of being iterated."""
    return sum_plus.map(numbers, unmapped(extra)).result()  # type: ignore[no-any-return]


case(map_with_unmapped, {"numbers": [4, 5, 6], "extra": [1, 2, 3]}, [10, 11, 12], needs="map + unmapped")


@flow(queue=QUEUE)
def map_over_upstream_future(n: int) -> list[int]:
    """Mapping over a future maps over its value (Prefect's task runner resolves top-level futures
    before it splits the iterables: task_runners.py, ``resolve_inputs_sync(parameters, max_depth=0)``)."""
    numbers = make_range.submit(n)
    return square.map(numbers).result()  # type: ignore[no-any-return]


case(map_over_upstream_future, {"n": 4}, [0, 1, 4, 9], needs="map over an upstream future")


@flow(queue=QUEUE)
def map_over_range_then_wait(n: int) -> list[int]:
    """Any iterable but str/bytes is mapped in Prefect (utilities.collections.isiterable), ``range`` too;
    ``.wait()`` on the list waits for every run."""
    futures = square.map(range(n))
    futures.wait()
    return [future.result() for future in futures]


case(map_over_range_then_wait, {"n": 3}, [0, 1, 4], needs="map over range + .wait()")


@flow(queue=QUEUE)
def map_two_iterables(xs: list[int], ys: list[int]) -> list[int]:
    """Two iterables of the same length are zipped."""
    return add.map(xs, ys).result()  # type: ignore[no-any-return]


case(map_two_iterables, {"xs": [1, 2], "ys": [10, 20]}, [11, 22], needs="map over two iterables")


@flow(queue=QUEUE)
def map_chained(numbers: list[int]) -> list[int]:
    """A map over the futures of another map: each run waits for its own upstream only."""
    squares = square.map(numbers)
    return add.map(squares, 1).result()  # type: ignore[no-any-return]


case(map_chained, {"numbers": [1, 2, 3]}, [2, 5, 10], needs="map over a list of futures")


@flow(queue=QUEUE)
def map_then_reduce(numbers: list[int]) -> int:
    """Fan-out then fan-in: the future list is passed whole to one task."""
    squares = square.map(numbers)
    return total.submit(squares).result()  # type: ignore[no-any-return]


case(map_then_reduce, {"numbers": [1, 2, 3]}, 14, needs="map then reduce")


# -- waiting ------------------------------------------------------------------------------------------
@flow(queue=QUEUE)
def ordered_by_wait_for() -> str:
    """``wait_for`` orders two tasks that share no data."""
    token = new_token()
    written = write_note.submit(token, "written first")
    return read_note.submit(token, wait_for=[written])  # type: ignore[no-any-return]


case(ordered_by_wait_for, {}, "written first", needs="submit(wait_for=...)")


@flow(queue=QUEUE)
def direct_call_waits_for() -> str:
    """A task called directly takes ``wait_for`` too."""
    token = new_token()
    written = write_note.submit(token, "written before the call")
    return read_note(token, wait_for=[written])


case(direct_call_waits_for, {}, "written before the call", needs="direct call with wait_for")


@flow(queue=QUEUE)
def as_completed_results(n: int) -> list[int]:
    """``as_completed`` yields each future once it is done, in whatever order they finish."""
    futures = [square.submit(i) for i in range(n)]
    return sorted(future.result() for future in as_completed(futures))


case(as_completed_results, {"n": 4}, [0, 1, 4, 9], needs="as_completed")


@flow(queue=QUEUE)
def wait_for_all(n: int) -> list[int]:
    """``wait`` returns the done and not-done futures (a named tuple, as concurrent.futures does)."""
    futures = [square.submit(i) for i in range(n)]
    done, not_done = wait(futures)
    return [len(done), len(not_done)]


case(wait_for_all, {"n": 3}, [3, 0], needs="wait")


@flow(queue=QUEUE)
def future_state_after_wait() -> list[Any]:
    """Prefect 3's ``future.wait()`` returns None; the future's ``state`` tells what became of it."""
    future = add.submit(1, 1)
    future.wait()
    return [future.state.name, future.state.is_completed(), future.result()]


case(future_state_after_wait, {}, ["Completed", True, 2], needs="future.state (State)")


# -- failures -----------------------------------------------------------------------------------------
@task
def cleanup(upstream: Any) -> str:
    """Prefect passes the failed upstream's exception here (we pass None, by design); this task does
    not look at it, so the case holds either way."""
    return "cleaned up"


@flow(queue=QUEUE)
def cleanup_after_failure() -> str:
    """``allow_failure`` lets a downstream run although its upstream failed; the flow returns the
    downstream's future, so it completes."""
    broken = fail_with.submit("disk full")
    return cleanup.submit(allow_failure(broken))  # type: ignore[no-any-return]


case(cleanup_after_failure, {}, "cleaned up", needs="allow_failure as an argument")


@flow(queue=QUEUE)
def report_after_failure() -> str:
    """``allow_failure`` inside ``wait_for``: a pure ordering edge that tolerates the failure."""
    broken = fail_with.submit("database went away")
    return note.submit("report sent", wait_for=[allow_failure(broken)])  # type: ignore[no-any-return]


case(report_after_failure, {}, "report sent", needs="wait_for=[allow_failure(...)]")


@flow(queue=QUEUE)
def task_error_fails_flow() -> int:
    """A task's exception propagates through a direct call and fails the flow with its own type."""
    return fail_with("bad input")


case(task_error_fails_flow, {}, raises=ValueError, needs="task exception type through the flow")


@flow(queue=QUEUE)
def direct_call_caught() -> str:
    """The exception of a directly called task can be caught in the body like any Python error; the
    flow returns normally, so it completes (Prefect 3: the final state follows the return value)."""
    try:
        fail_with("bad input")
    except ValueError as exc:
        return f"recovered from {exc}"
    return "not reached"


case(direct_call_caught, {}, "recovered from bad input", needs="try/except around a direct call")


@flow(queue=QUEUE)
def future_error_caught() -> str:
    """``future.result()`` raises the task's own exception, which the body catches."""
    future = fail_with.submit("bad row")
    try:
        future.result()
    except ValueError as exc:
        return f"recovered from {exc}"
    return "not reached"


case(future_error_caught, {}, "recovered from bad row", needs="try: fut.result() except ValueError")


@flow(queue=QUEUE)
def error_as_value() -> str:
    """``result(raise_on_failure=False)`` returns the exception instead of raising it."""
    future = fail_with.submit("bad row")
    error = future.result(raise_on_failure=False)
    return f"{type(error).__name__}: {error}"


case(error_as_value, {}, "ValueError: bad row", needs="result(raise_on_failure=False)")


@flow(queue=QUEUE)
def map_failure_raises(items: list[int]) -> list[int]:
    """``.result()`` on a future list raises the first failure's own exception."""
    return check_positive.map(items).result()  # type: ignore[no-any-return]


case(map_failure_raises, {"items": [1, -1, 2]}, raises=ValueError, needs="map().result() with a failure")


@flow(queue=QUEUE)
def keep_the_successes(items: list[int]) -> list[int]:
    """Prefect's docs pattern for partial failure: wait for every run, keep the completed ones; the
    flow returns a value, so it completes although some runs failed."""
    futures = check_positive.map(items)
    done, _ = wait(futures)
    return sorted(future.result() for future in done if future.state.is_completed())


case(keep_the_successes, {"items": [1, -2, 3]}, [1, 3], needs="wait + state filter, final state by return")


@flow(queue=QUEUE)
def returned_failed_future() -> int:
    """A returned future that failed makes the flow fail, and the call raises the task's exception
    (states.aget_state_exception unwraps the returned task state)."""
    return fail_with.submit("returned broken")  # type: ignore[no-any-return]


case(returned_failed_future, {}, raises=ValueError, needs="a returned failed future fails the flow")


# -- states ------------------------------------------------------------------------------------------
@flow(queue=QUEUE)
def completed_state_facts() -> dict[str, Any]:
    """``return_state=True`` gives the task run's State instead of its value."""
    state = add(2, 3, return_state=True)  # type: ignore[call-arg]
    return {
        "completed": state.is_completed(),
        "final": state.is_final(),
        "type": state.type == StateType.COMPLETED,
        "name": state.name,
        "value": state.result(),
    }


case(
    completed_state_facts,
    {},
    {"completed": True, "final": True, "type": True, "name": "Completed", "value": 5},
    needs="return_state=True (State)",
)


@flow(queue=QUEUE)
def failed_state_facts() -> dict[str, Any]:
    """A failed task's State: ``result()`` raises the original exception, ``raise_on_failure=False``
    returns it; the flow returns a value, so it completes (Prefect's final-state docs show this)."""
    state = fail_with("bad row", return_state=True)  # type: ignore[call-arg]
    raised = "nothing"
    try:
        state.result()
    except ValueError as exc:
        raised = f"ValueError: {exc}"
    return {
        "failed": state.is_failed(),
        "type": state.type == StateType.FAILED,
        "name": state.name,
        "raised": raised,
        "returned": type(state.result(raise_on_failure=False)).__name__,
    }


case(
    failed_state_facts,
    {},
    {"failed": True, "type": True, "name": "Failed", "raised": "ValueError: bad row", "returned": "ValueError"},
    needs="return_state=True on a failure, final state by return",
)


@flow(queue=QUEUE)
def nothing_to_do(work: list[int]) -> int | None:
    """A flow may end with a State of its own making; ``Completed(message=...)`` completes with no value."""
    if not work:
        return Completed(message="no work today")  # type: ignore[no-any-return]
    return sum(work)


case(nothing_to_do, {"work": []}, None, needs="return Completed(...)")


@flow(queue=QUEUE)
def refuse_politely(ok: bool) -> str:
    """``return Failed(message=...)`` fails the run without an exception. Prefect's call raises its
    FailedRun; ours raises FlowRunFailed (orchestrator.errors), its counterpart."""
    if not ok:
        return Failed(message="nope: the input was refused")  # type: ignore[no-any-return]
    return "done"


case(refuse_politely, {"ok": False}, raises=FlowRunFailed, fleet_says="nope", needs="return Failed(...)")


# -- returning collections of futures -----------------------------------------------------------------
@flow(queue=QUEUE)
def returns_a_tuple_of_futures() -> tuple[int, int]:
    """Prefect 3 gives a tuple of States here (compared through their results); all completed, so
    the run completes."""
    return add.submit(1, 1), add.submit(2, 2)  # type: ignore[return-value]


case(returns_a_tuple_of_futures, {}, (2, 4), needs="return a tuple of futures")


@flow(queue=QUEUE)
def returns_a_dict_of_futures() -> dict[str, int]:
    """A dict is not a state iterable for Prefect (states.is_state_iterable): the run completes and
    the call gives the dict with States in it (compared through their results)."""
    return {"sum": add.submit(1, 2), "product": multiply.submit(2, 3)}  # type: ignore[dict-item]


case(returns_a_dict_of_futures, {}, {"sum": 3, "product": 6}, needs="return a dict of futures")


@flow(queue=QUEUE)
def returns_a_list_of_futures(n: int) -> list[int]:
    """A list of futures: States in Prefect 3 (compared through their results)."""
    return [square.submit(i) for i in range(n)]  # type: ignore[misc]


case(returns_a_list_of_futures, {"n": 3}, [0, 1, 4], needs="return a list of futures")


# -- retries ------------------------------------------------------------------------------------------
@task(retries=2, retry_delay_seconds=0)
def flaky(token: str, failures: int) -> int:
    """Fails its first ``failures`` attempts; returns the attempt that worked."""
    attempt = count_attempt(token)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@flow(queue=QUEUE)
def retried_until_it_works() -> int:
    """Two failures and ``retries=2``: the third attempt gives the value."""
    return flaky(new_token(), 2)


case(retried_until_it_works, {}, 3, needs="retries, retry_delay_seconds=0")


@flow(queue=QUEUE)
def retries_run_out() -> int:
    """More failures than retries: the last attempt's exception fails the flow."""
    return flaky(new_token(), 5)


case(retries_run_out, {}, raises=ConnectionError, needs="retries exhausted")


def retry_unless_value_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect 3's retry_condition_fn is called as (task, task_run, state), and ``state.result()`` raises
    the attempt's exception (task_engine.can_retry; docs: how-to-guides/workflows/retries)."""
    try:
        state.result()
    except ValueError:
        return False
    except Exception:
        return True
    return True


@task(retries=3, retry_delay_seconds=0, retry_condition_fn=retry_unless_value_error)
def picky(token: str, error: str) -> int:
    """Raises ``error`` (KeyError only on its first attempt, ValueError always)."""
    attempt = count_attempt(token)
    if error == "KeyError" and attempt < 2:
        raise KeyError("transient")
    if error == "ValueError":
        raise ValueError("permanent")
    return attempt


@task
def attempts_so_far(token: str) -> int:
    return marker(f"{token}.attempts").stat().st_size


@flow(queue=QUEUE)
def retry_only_some_errors() -> dict[str, int]:
    """A KeyError is retried (second attempt works), a ValueError is not (one attempt)."""
    token = new_token()
    transient = picky.submit(f"{token}-key", "KeyError")
    permanent = picky.submit(f"{token}-value", "ValueError")
    tried = attempts_so_far.submit(f"{token}-value", wait_for=[allow_failure(permanent)])
    return {"transient": transient, "permanent": tried}  # type: ignore[dict-item]


case(retry_only_some_errors, {}, {"transient": 2, "permanent": 1}, needs="retry_condition_fn(task, task_run, state)")


@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=0.01))
def backs_off(token: str, failures: int) -> int:
    attempt = count_attempt(token)
    if attempt <= failures:
        raise TimeoutError(f"attempt {attempt} timed out")
    return attempt


@flow(queue=QUEUE)
def backoff_until_it_works() -> int:
    """``exponential_backoff``: delays of 0.01, 0.02, 0.04 s, then the fourth attempt works."""
    return backs_off(new_token(), 3)


case(backoff_until_it_works, {}, 4, needs="exponential_backoff")


@task
def fragile(token: str, failures: int) -> int:
    attempt = count_attempt(token)
    if attempt <= failures:
        raise ConnectionError(f"attempt {attempt} failed")
    return attempt


@flow(queue=QUEUE)
def retried_with_options() -> int:
    """``with_options`` gives a copy with other options: here a name and retries."""
    sturdy = fragile.with_options(name="sturdy", retries=2, retry_delay_seconds=0)
    return sturdy(new_token(), 2)


case(retried_with_options, {}, 3, needs="with_options(retries=...)")


@task(timeout_seconds=0.05)
def overslept() -> str:
    time.sleep(0.2)
    return "woke up too late"


@flow(queue=QUEUE)
def task_past_its_timeout() -> str:
    """A task past ``timeout_seconds`` ends Failed named TimedOut and raises TaskRunTimeoutError, a
    TimeoutError (task_engine.handle_timeout); the flow fails. On the fleet the message names the
    state, TimedOut."""
    return overslept()


case(
    task_past_its_timeout,
    {},
    raises=TimeoutError,
    fleet_says="TimedOut",
    task_states={"overslept": "TimedOut"},
    needs="task timeout_seconds",
)


# -- names and logs -----------------------------------------------------------------------------------
@flow(queue=QUEUE, flow_run_name="greet-{name}")
def named_greeting(name: str) -> str:
    """``flow_run_name`` is a template over the parameters."""
    return say_hello(name)


case(named_greeting, {"name": "marvin"}, "Hello, marvin!", run_name="greet-marvin", needs="flow_run_name template")


@task(task_run_name="load-{table}")
def load_table(table: str) -> str:
    return f"{table} loaded"


@flow(queue=QUEUE)
def load_tables(tables: list[str]) -> list[str]:
    """``task_run_name`` is a template over the task's arguments, each mapped run named by its own."""
    return load_table.map(tables).result()  # type: ignore[no-any-return]


case(
    load_tables,
    {"tables": ["users", "orders"]},
    ["users loaded", "orders loaded"],
    task_run_names=("load-users", "load-orders"),
    needs="task_run_name template",
)


@task
def log_and_double(x: int) -> int:
    logger = get_run_logger()
    logger.info("doubling %s", x)
    return 2 * x


@flow(queue=QUEUE)
def flow_with_logs(x: int) -> int:
    """``get_run_logger()`` in the flow and in its task: both lines belong to the run's logs."""
    logger = get_run_logger()
    logger.info("compat flow got %s", x)
    return log_and_double(x)


case(flow_with_logs, {"x": 3}, 6, log_lines=("compat flow got 3", "doubling 3"), needs="get_run_logger")


@task
def shout(word: str) -> str:
    print(f"printed {word.upper()}")
    return word.upper()


@flow(queue=QUEUE, log_prints=True)
def flow_that_prints(word: str) -> str:
    """``log_prints=True`` on the flow turns print() in its tasks into log lines."""
    return shout(word)


case(flow_that_prints, {"word": "hello"}, "HELLO", log_lines=("printed HELLO",), needs="log_prints")


# -- subflows -----------------------------------------------------------------------------------------
@flow(queue=QUEUE)
def double_child(x: int) -> int:
    return multiply(x, 2)


@flow(queue=QUEUE)
def parent_plus_one(x: int) -> int:
    """A flow called inside a flow is a subflow; the call gives its value."""
    return double_child(x) + 1


case(parent_plus_one, {"x": 3}, 7, needs="subflow")


@flow(queue=QUEUE)
def size_label(x: int) -> str:
    doubled = multiply(x, 2)
    if doubled > 10:
        return "big"
    return "small"


@flow(queue=QUEUE)
def parent_labels(values: list[int]) -> list[str]:
    """A subflow whose body computes with its task's values (an ``if``)."""
    return [size_label(v) for v in values]


case(parent_labels, {"values": [3, 7]}, ["small", "big"], needs="subflow computing on its inputs")


@flow(queue=QUEUE)
def parent_submits_children(n: int) -> list[int]:
    """Doubt: Prefect 3 has ``Flow.submit`` only on infrastructure-bound flows (flows.py,
    InfrastructureBoundFlow.submit gives a PrefectFlowRunFuture); this product offers it on every flow.
    The value is what such futures give."""
    futures = [double_child.submit(i) for i in range(n)]
    return [future.result() for future in futures]


case(parent_submits_children, {"n": 3}, [0, 2, 4], needs="subflow .submit()")


@flow(queue=QUEUE)
def refusing_child(reason: str) -> str:
    raise ValueError(reason)


@flow(queue=QUEUE)
def parent_inspects_child() -> dict[str, Any]:
    """``return_state=True`` on a subflow call gives its State instead of raising."""
    state = refusing_child("no input", return_state=True)  # type: ignore[call-arg]
    return {"failed": state.is_failed(), "name": state.name}


case(parent_inspects_child, {}, {"failed": True, "name": "Failed"}, needs="subflow return_state=True")


@flow(queue=QUEUE)
def parent_of_refusing_child() -> str:
    """A subflow's exception propagates to its parent with its own type."""
    return refusing_child("missing file")


case(parent_of_refusing_child, {}, raises=ValueError, needs="subflow exception type")


# -- async --------------------------------------------------------------------------------------------
@task
async def double_async(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@flow(queue=QUEUE)
async def gather_doubles(n: int) -> list[int]:
    """``async def`` tasks awaited together with ``asyncio.gather`` (Prefect 3 runs async tasks in
    async flows only)."""
    return list(await asyncio.gather(*(double_async(i) for i in range(n))))


case(gather_doubles, {"n": 3}, [0, 2, 4], needs="async tasks + asyncio.gather")


@flow(queue=QUEUE)
async def async_doubling_child(x: int) -> int:
    return await double_async(x)


@flow(queue=QUEUE)
async def async_parent_plus_one(x: int) -> int:
    """An async subflow awaited in an async flow."""
    doubled = await async_doubling_child(x)
    return doubled + 1


case(async_parent_plus_one, {"x": 2}, 5, needs="async subflow")


# -- caching ------------------------------------------------------------------------------------------
@task(cache_key_fn=task_input_hash)
def stamp_by_hash(x: int) -> str:
    return uuid.uuid4().hex


@flow(queue=QUEUE)
def cached_by_input_hash(x: int) -> list[bool]:
    """``cache_key_fn=task_input_hash``: the same inputs give the cached value, other inputs run again."""
    first = stamp_by_hash(x)
    second = stamp_by_hash(x)
    other = stamp_by_hash(x + 1)
    return [first == second, first != other]


case(cached_by_input_hash, {"x": 41}, [True, True], needs="cache_key_fn=task_input_hash")


@task(cache_policy=INPUTS)
def stamp_by_inputs(x: int) -> str:
    return uuid.uuid4().hex


@flow(queue=QUEUE)
def cached_by_inputs_policy(x: int) -> list[bool]:
    """``cache_policy=INPUTS``: the key is the inputs."""
    first = stamp_by_inputs(x)
    second = stamp_by_inputs(x)
    other = stamp_by_inputs(x + 1)
    return [first == second, first != other]


case(cached_by_inputs_policy, {"x": 7}, [True, True], needs="cache_policy=INPUTS")


# -- Python in the body -------------------------------------------------------------------------------
@flow(queue=QUEUE)
def running_total(n: int) -> dict[str, Any]:
    """A loop that feeds each result into the next call, then an ``if`` on the result."""
    current = 0
    for i in range(n):
        current = add(current, i)
    size = "big" if current > 5 else "small"
    return {"total": current, "size": size}


case(running_total, {"n": 4}, {"total": 6, "size": "big"}, needs="loop + if on results")


@flow(queue=QUEUE)
def triple_until_large(limit: int) -> list[int]:
    """A ``while`` whose condition reads task results: how many calls it takes is known only at run time."""
    value, steps = 1, 0
    while value < limit:
        value = multiply(value, 3)
        steps += 1
    return [value, steps]


case(triple_until_large, {"limit": 100}, [243, 5], needs="while on results")


def split_words(text: str) -> list[str]:
    return text.split()


def longest(words: list[str]) -> str:
    return max(words, key=len)


@task
def describe_text(text: str) -> dict[str, Any]:
    """A task is plain Python: it calls ordinary functions."""
    words = split_words(text)
    return {"words": len(words), "longest": longest(words)}


@flow(queue=QUEUE)
def plain_function_helpers(text: str) -> dict[str, Any]:
    return describe_text(text)


case(
    plain_function_helpers,
    {"text": "tasks call plain functions"},
    {"words": 4, "longest": "functions"},
    needs="task calling plain functions",
)


@task
def total_of(*numbers: int, scale: int = 1) -> int:
    return scale * sum(numbers)


@task
def keys_of(**fields: Any) -> list[str]:
    return sorted(fields)


@flow(queue=QUEUE)
def variadic_tasks() -> list[Any]:
    """Tasks with ``*args`` and ``**kwargs``, called and submitted."""
    return [total_of(1, 2, 3, scale=2), keys_of(b=1, a=2), total_of.submit(4, 5).result()]


case(variadic_tasks, {}, [12, ["a", "b"], 9], needs="*args/**kwargs tasks")


def note_tags(task: Any, task_run: Any, state: Any) -> None:
    """Prefect's hooks get the task run, whose ``tags`` are the task's own and those of ``with tags(...)``."""
    marker("hook-task-tags").write_text(",".join(sorted(task_run.tags)))


@task(tags=["db"], on_completion=[note_tags])
def tagged_add(x: int, y: int) -> int:
    return x + y


@flow(queue=QUEUE)
def tagged_run() -> int:
    """``with tags(...)`` adds tags to every run created inside it."""
    with tags("compat", "nightly"):
        result = tagged_add.submit(1, 2)
    return result.result()  # type: ignore[no-any-return]


case(tagged_run, {}, 3, markers={"hook-task-tags": "compat,db,nightly"}, needs="tags() context manager")


@flow(queue=QUEUE)
def quoted_input(n: int) -> int:
    """``quote`` passes a large collection through without Prefect visiting it for futures; the task
    gets it unwrapped."""
    numbers = list(range(n))
    return total.submit(quote(numbers)).result()  # type: ignore[no-any-return]


case(quoted_input, {"n": 1000}, 499500, needs="quote()")


class Calculator:
    """Prefect 3 tasks may be methods (Task.__get__ binds the instance); static methods too."""

    def __init__(self, base: int) -> None:
        self.base = base

    @task
    def plus(self, x: int) -> int:
        return self.base + x

    @task
    @staticmethod
    def twice(x: int) -> int:
        return 2 * x


@flow(queue=QUEUE)
def method_tasks(base: int, x: int) -> list[int]:
    calculator = Calculator(base)
    return [calculator.plus(x), Calculator.twice(x)]


# On the fleet a bound instance (or class) travels only with result_serializer="pickle": JSON cannot carry it.
case(method_tasks, {"base": 10, "x": 5}, [15, 10], needs="@task on methods", fleet_refuses=SerializationError)


class Catalog:
    """``@task`` above ``@classmethod``, the order Prefect's tests use."""

    @task
    @classmethod
    def describe(cls, item: str) -> str:
        return f"{cls.__name__} lists {item}"


@flow(queue=QUEUE)
def classmethod_task(item: str) -> str:
    return Catalog.describe(item)


case(
    classmethod_task,
    {"item": "books"},
    "Catalog lists books",
    needs="@task on a classmethod",
    fleet_refuses=SerializationError,
)


@dataclass
class Point:
    x: int
    y: int


@task
def shift(point: Point, dx: int) -> Point:
    return Point(point.x + dx, point.y)


@flow(queue=QUEUE)
def dataclass_values(dx: int) -> list[int]:
    """A dataclass passed to a task and returned by it (Prefect pickles what JSON cannot carry)."""
    moved = shift(Point(1, 2), dx)
    return [moved.x, moved.y]


case(dataclass_values, {"dx": 3}, [4, 2], needs="dataclass task values")


@task
def sum_of_squares(n: int) -> int:
    """Prefect 3 lets a task submit tasks of its own (nested task runs)."""
    futures = [square.submit(i) for i in range(n)]
    return sum(future.result() for future in futures)


@flow(queue=QUEUE)
def tasks_inside_tasks(n: int) -> int:
    return sum_of_squares(n)


case(tasks_inside_tasks, {"n": 4}, 14, needs="submit inside a task")


@task
def square_plus_one(x: int) -> int:
    """A task calling another task directly: a nested task run in Prefect 3, the value either way."""
    return square(x) + 1


@flow(queue=QUEUE)
def task_calls_task(x: int) -> int:
    return square_plus_one(x)


case(task_calls_task, {"x": 3}, 10, needs="direct task call inside a task")


# -- parameters ---------------------------------------------------------------------------------------
@flow(queue=QUEUE)
def coerced_parameter(n: int) -> int:
    """Prefect validates parameters against the annotations (validate_parameters=True by default, with
    pydantic): "5" becomes 5."""
    return n + 1


case(coerced_parameter, {"n": "5"}, 6, needs="parameter coercion (int)")


@flow(queue=QUEUE)
def coerced_date_parameter(day: date) -> list[int]:
    """An ISO string for a ``date`` parameter becomes a date."""
    return [day.year, day.month, day.day]


case(coerced_date_parameter, {"day": "2024-03-01"}, [2024, 3, 1], needs="parameter coercion (date)")


@flow(queue=QUEUE)
def default_parameters(greeting: str = "hello", name: str = "world") -> str:
    """Defaults fill the parameters not given."""
    return f"{greeting} {name}"


case(default_parameters, {"name": "compat"}, "hello compat", needs="default parameters")


# -- hooks --------------------------------------------------------------------------------------------
def note_task_completion(task: Any, task_run: Any, state: Any) -> None:
    marker("hook-task-completion").write_text(state.name)


@task(on_completion=[note_task_completion])
def checked_step(x: int) -> int:
    return x + 1


@flow(queue=QUEUE)
def task_hook_on_completion(x: int) -> int:
    """A task's on_completion hook is called as (task, task_run, state) with state.name "Completed"."""
    return checked_step(x)


case(
    task_hook_on_completion,
    {"x": 1},
    2,
    markers={"hook-task-completion": "Completed"},
    needs="task on_completion hook",
)


def note_task_failure(task: Any, task_run: Any, state: Any) -> None:
    marker("hook-task-failure").write_text(state.name)


@task(on_failure=[note_task_failure])
def doomed_step(reason: str) -> None:
    raise ValueError(reason)


@flow(queue=QUEUE)
def task_hook_on_failure() -> str:
    """A task's on_failure hook sees state.name "Failed"; the flow returns a downstream that tolerated
    the failure, so it completes."""
    doomed = doomed_step.submit("on purpose")
    return note.submit("after the failure", wait_for=[allow_failure(doomed)])  # type: ignore[no-any-return]


case(
    task_hook_on_failure,
    {},
    "after the failure",
    markers={"hook-task-failure": "Failed"},
    needs="task on_failure hook",
)


def note_flow_completion(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect's hook docs read ``flow_run.name`` (the name made by flow_run_name) and ``state.name``."""
    marker("hook-flow-completion").write_text(f"{flow_run.name}:{state.name}")


@flow(queue=QUEUE, flow_run_name="nightly-{region}", on_completion=[note_flow_completion])
def flow_hook_on_completion(region: str) -> str:
    return say_hello(region)


case(
    flow_hook_on_completion,
    {"region": "eu"},
    "Hello, eu!",
    run_name="nightly-eu",
    markers={"hook-flow-completion": "nightly-eu:Completed"},
    needs="flow on_completion hook (flow_run.name, state.name)",
)


def note_flow_failure(flow: Any, flow_run: Any, state: Any) -> None:
    marker("hook-flow-failure").write_text(f"{flow.name}:{state.name}")


@flow(queue=QUEUE, on_failure=[note_flow_failure])
def flow_hook_on_failure() -> None:
    """A flow's on_failure hook runs before the call raises the body's exception."""
    raise ValueError("this flow fails on purpose")


case(
    flow_hook_on_failure,
    {},
    raises=ValueError,
    markers={"hook-flow-failure": "flow-hook-on-failure:Failed"},
    needs="flow on_failure hook",
)


def marker_names() -> set[str]:
    """Every marker file a case's hooks write (cleared before each run)."""
    return {name for c in CASES for name in c.markers}
