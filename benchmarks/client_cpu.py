"""The client's CPU per phase of a W0 run (``w0_single.delay(x=1).result()``), in µs per run.

    .venv/bin/python -m benchmarks.client_cpu [--runs 400] [--rounds 2]

Starts one private redis-server and one worker (``benchmarks.workloads``), like
``benchmarks.run``, warms up, then times ``time.process_time()`` (CPU, not time: load moves it
less) around each phase of the client, each phase exclusive of the phases inside it:
checking the parameters and building the record, tracing, compiling, building the records,
their write (``records pipeline``: a redis-py pipeline; ``launch script``: the one Lua step
that writes them and sends the messages), publishing (Celery's ``apply_async`` and kombu's
batch; ``capture``: the same message built and captured, not sent) and waiting and reading
the result. Phases that a checkout does not have are left out, so the same command measures
an older checkout too. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

SPENT: Counter[str] = Counter()
STACK: list[list[Any]] = []  # [phase, CPU time when it last resumed]
ACTIVE = [False]


def _enter(phase: str) -> None:
    now = time.process_time()
    if STACK:
        SPENT[STACK[-1][0]] += now - STACK[-1][1]
    STACK.append([phase, now])


def _leave() -> None:
    now = time.process_time()
    phase, since = STACK.pop()
    SPENT[phase] += now - since
    if STACK:
        STACK[-1][1] = now


def timed(owner: Any, attr: str, phase: str | Callable[[], str]) -> None:
    """Count the CPU of ``owner.attr`` (not of the phases it calls) as ``phase``; nothing if it has no such attr."""
    original = getattr(owner, attr, None)
    if original is None:
        return

    @functools.wraps(original)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if not ACTIVE[0]:
            return original(*args, **kwargs)
        _enter(phase() if callable(phase) else phase)
        try:
            return original(*args, **kwargs)
        finally:
            _leave()

    setattr(owner, attr, wrapped)


def instrument() -> None:
    import redis.client

    from orchestrator.runs import create, handle, lifecycle
    from orchestrator.runstate import flow_runs
    from orchestrator.transport import messaging

    timed(create, "create_flow_run", "create (the rest)")
    timed(create, "new_flow_run", "check parameters, build the record")
    timed(handle, "trace_flow", "trace")
    timed(messaging.CeleryMessaging, "compile", "compile")
    timed(create, "launch_prepared", "records build")
    timed(lifecycle, "_apply", "publish")
    timed(messaging.CeleryMessaging, "captured_canvas", "capture (publish, not sent)")
    timed(flow_runs.FlowRuns, "launch", "launch script")
    timed(handle.FlowRun, "result", "wait + read")

    def pipeline_phase() -> str:
        parent = STACK[-1][0] if STACK else "-"
        return "records pipeline" if parent == "records build" else f"pipeline in {parent}"

    timed(redis.client.Pipeline, "execute", pipeline_phase)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.client_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    for name in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL", "ORCHESTRATOR_FLOW_MODULES"):
        os.environ.pop(name, None)
    from orchestrator.config.settings import reset_settings
    from orchestrator.devstack.localstack import redis_server, worker
    from orchestrator.transport.celery_app import client_app

    with tempfile.TemporaryDirectory(prefix="orc-cpu-") as tmp, redis_server() as url:
        os.environ["ORCHESTRATOR_REDIS_URL"] = url
        reset_settings()
        client_app.cache_clear()
        with worker(url, ["benchmarks.workloads"], concurrency=2, log_path=Path(tmp) / "worker.log"):
            from benchmarks import workloads as w

            instrument()

            def run() -> None:
                if w.w0_single.delay(x=1).result(timeout=60) != 1:
                    raise AssertionError("W0 returned something else than 1")

            for _ in range(30):
                run()
            for number in range(1, args.rounds + 1):
                SPENT.clear()
                ACTIVE[0] = True
                start = time.process_time()
                for _ in range(args.runs):
                    _enter("outside (the loop, the instrument)")
                    run()
                    _leave()
                total = time.process_time() - start
                ACTIVE[0] = False
                print(f"round {number}: {args.runs} runs, client CPU µs per run, each phase exclusive")
                for phase, spent in sorted(SPENT.items(), key=lambda item: -item[1]):
                    print(f"  {phase:40s} {spent / args.runs * 1e6:8.1f}")
                print(f"  {'total':40s} {total / args.runs * 1e6:8.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
