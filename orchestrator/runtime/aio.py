"""``async def`` tasks and flows, run from the synchronous code that calls every task and flow.

The executor (a Celery pool process), the local runner's threads, the tracer and the
dynamic driver all call a task or flow function from plain synchronous code. An
``async def`` function returns a coroutine instead of its value: :func:`run` runs it to
its end on an event loop kept per thread, created on first use and reused by every later
call in that thread. ``asyncio.run`` per call would build and tear down a loop (and its
selector and self-pipe) for every task run, which costs more than a small task does.

A reused loop must stay clean between calls: what a call leaves running (a task the body
started and forgot, the rest of an ``asyncio.gather`` whose first member raised) is
cancelled before the call returns, and a call interrupted from outside the loop (Celery's
soft time limit raises ``SoftTimeLimitExceeded`` from a signal handler, wherever the thread
happens to be, often inside the loop's own ``select``) has its coroutine cancelled and
finished before the exception goes on. A loop that will not settle is closed and replaced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import contextvars
import inspect
import os
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from orchestrator.errors import TaskTimedOut
from orchestrator.runtime.engine import call_bound

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow
    from orchestrator.authoring.tasks import Task
    from orchestrator.runtime.engine import Engine
    from orchestrator.runtime.futures import Future
    from orchestrator.states import State

SETTLE_SECONDS = 2.0  # how long a cancelled coroutine may take to finish before its loop is replaced


class _KeptLoop:
    """One thread's loop; closed when the thread ends (its thread-local slot is dropped)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.pid = os.getpid()  # a loop inherited through fork() shares its selector with the parent

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if not self.loop.is_running() and not self.loop.is_closed():
                self.loop.close()

    def __del__(self) -> None:
        self.close()


class _Slot(threading.local):
    kept: _KeptLoop | None = None


_slot = _Slot()


def thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's event loop: created the first time, the same one on every later call."""
    kept = _slot.kept
    if kept is None or kept.pid != os.getpid() or kept.loop.is_closed():
        if kept is not None:
            kept.close()
        kept = _slot.kept = _KeptLoop()
    return kept.loop


def _replace_loop() -> None:
    """Drop this thread's loop (it would not settle); the next call makes a new one."""
    if _slot.kept is not None:
        _slot.kept.close()
        _slot.kept = None


def call(fn: Callable[..., Any], arguments: dict[str, Any], timeout: float | None = None) -> Any:
    """Call ``fn`` with arguments bound by name; an ``async def`` one is run to its value."""
    value = call_bound(fn, arguments)
    if inspect.iscoroutine(value):
        return run(value, timeout)
    return collected(value, timeout)


def collected(value: Any, timeout: float | None = None) -> Any:
    """A generator's values as a list (an async generator's too); any other value as it is.

    A generator task's or flow's values are collected when it runs, as Prefect 2 did: a result
    is stored and sent to the next task whole, so it cannot stream (Prefect 3 streams them
    in-process). Collecting here also runs a generator flow body under the tracer.
    """
    if inspect.isgenerator(value):
        return list(value)
    if inspect.isasyncgen(value):
        return run(_listed(value), timeout)
    return value


async def _listed(values: Any) -> list[Any]:
    return [item async for item in values]


def run(coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
    """Run ``coro`` on this thread's loop and return its value (or raise its error).

    ``timeout`` (a task's ``timeout_seconds``) cancels the coroutine when it has passed and
    raises :class:`TaskTimedOut`. The coroutine sees the caller's context variables (the
    engine and run of :func:`~orchestrator.runtime.context.using`, ``log_prints``).

    Called where a loop already runs in this thread (``flow.delay()`` or ``flow.plan()`` of
    an async flow from async code, an async subflow traced inside an async parent), the
    coroutine runs in a helper thread, on that thread's loop, while this thread waits.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return _run_beside(coro, timeout)
    loop = thread_loop()
    main = loop.create_task(_bounded(coro, timeout))
    try:
        return loop.run_until_complete(main)
    except BaseException:
        if not main.done():  # interrupted from outside the loop: a signal handler raised
            _cancel_and_settle(loop, [main])
        raise
    finally:
        _cancel_leftovers(loop)


async def _bounded(coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
    if timeout is None:
        return await coro
    scope = asyncio.timeout(timeout)
    try:
        async with scope:
            return await coro
    except TimeoutError:
        if scope.expired():  # ours, not a TimeoutError the task's own code raised
            raise TaskTimedOut(f"ran past timeout_seconds={timeout:g} and was cancelled") from None
        raise


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what the finished call left on the loop, so the next call starts clean."""
    if loop.is_closed():
        return
    left = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if left:
        _cancel_and_settle(loop, left)


def _cancel_and_settle(loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and let them finish (their ``finally`` blocks run); replace the loop if they will not."""
    for t in tasks:
        t.cancel()
    try:
        loop.run_until_complete(asyncio.wait(tasks, timeout=SETTLE_SECONDS))
    except Exception:  # interrupted again (a second signal): the loop cannot be trusted
        pass
    if not all(t.done() for t in tasks):
        _replace_loop()
        return
    for t in tasks:  # retrieve their outcome, so asyncio does not log "exception never retrieved"
        if not t.cancelled():
            t.exception()


def _run_beside(coro: Coroutine[Any, Any, Any], timeout: float | None) -> Any:
    """Run ``coro`` to its end in a new thread with this thread's context; block until then.

    A new thread each time (not a pool): the coroutine may itself come back here, and a
    bounded pool would deadlock on nested calls. This only happens for nested async calls
    made from synchronous code inside a running loop, never per task run on a worker.
    """
    context = contextvars.copy_context()
    done: cf.Future[Any] = cf.Future()

    def target() -> None:
        try:
            done.set_result(context.run(run, coro, timeout))
        except BaseException as exc:
            done.set_exception(exc)

    thread = threading.Thread(target=target, name="orchestrator-aio", daemon=True)
    thread.start()
    thread.join()
    return done.result()


# -- what an async flow body awaits ------------------------------------------------------------------


async def task_call(engine: Engine, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``await my_async_task(x)`` inside a flow: submit it, then wait without blocking the loop.

    Under the tracer the awaited future is the planned stand-in itself, as a sync call gives.
    """
    future = engine.submit(task, args, kwargs, [])
    return await future


async def task_state_call(engine: Engine, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any]) -> State:
    """``await my_async_task(x, return_state=True)``: the task run's final state, waited for without
    blocking the loop (its ``result()`` gives the value or raises the task's exception)."""
    engine.needs_values(f"{task.name}(..., return_state=True)")
    future = engine.submit(task, args, kwargs, [])
    try:
        await future
    except Exception:  # the state carries it
        pass
    return future.state


async def subflow_call(engine: Engine, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``await my_async_flow(x)`` inside a flow: a subflow run, as the engine runs subflows.

    The local runner and the dynamic driver run it in a thread (the engine's call blocks),
    so ``asyncio.gather`` of subflows runs them side by side; the tracer records one subflow
    at a time, in this thread, so a plan's nodes keep their order.
    """
    if not engine.subflows_in_threads:
        return engine.call_subflow(flow, args, kwargs)
    return await asyncio.to_thread(engine.call_subflow, flow, args, kwargs)


async def flow_call(flow: Flow, parameters: dict[str, Any], return_state: bool = False) -> Any:
    """``await my_async_flow(x)`` outside any flow: an in-process run, in a thread.

    The local runner is synchronous (it waits on its task threads); in a thread it leaves
    the caller's loop free, so ``asyncio.run(my_flow(1))`` and ``await my_flow(1)`` both work.
    """
    from orchestrator.local.runner import run_flow_locally  # on use: the runner imports the engines

    return await asyncio.to_thread(run_flow_locally, flow, parameters, return_state=return_state)


async def result_of(future: Future[Any], first_pause: float = 0.005, longest_pause: float = 0.1) -> Any:
    """``await future``: poll its state without blocking the loop, then return its result."""
    pause = first_pause
    while not future.state_type.is_final:
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, longest_pause)
    return future.result()
