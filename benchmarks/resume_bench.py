"""What supervision costs when a dynamic body's worker dies: resume and replay time.

    .venv/bin/python -m benchmarks.resume_bench [--calls 200] [--kill-after 120] [--step 0.02]

Starts a private redis-server, the API (whose services run the crash detector), a worker for
the steps and a worker for the bodies, with 1 s heartbeats (a 3 s crash window). Then:

1. **Uninterrupted**: a body of ``--calls`` sequential ``submit().result()`` calls runs to
   its end; its time gives the time per call.
2. **Killed**: the same body again, with a second body worker up; once ``--kill-after`` steps
   began, the worker driving the body is killed with SIGKILL (its whole process group). The
   figure is the time from the kill to the run's end, against the issue's bound: the crash
   window plus the time of the calls left. Every step must have begun exactly once.

There is no raw-Celery side: a client loop of ``AsyncResult.get()`` dies with its process,
so the same work by hand has nothing to resume. Results go to ``benchmarks/results/resume.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.private_redis import private_redis
from orchestrator.devstack.localstack import ApiProcess, worker
from orchestrator.runstate.store import RunStore

from .resume_flows import BODIES, STEPS, begun_key

RESULTS = Path(__file__).parent / "results"
HEARTBEAT_SECONDS = 1.0
CRASH_AFTER = 3
MODULES = ["benchmarks.resume_flows"]


def wait_begun(store: RunStore, marker: str, count: int, timeout: float = 120) -> None:
    """Until ``count`` steps of the run marked ``marker`` began."""
    deadline = time.monotonic() + timeout
    while len(store.redis.hkeys(begun_key(marker))) < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(store.redis.hkeys(begun_key(marker)))} of {count} steps began in {timeout}s")
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--kill-after", type=int, default=120)
    parser.add_argument("--step", type=float, default=0.02, help="seconds each step works")
    parser.add_argument("--output", type=Path, default=RESULTS / "resume.json")
    args = parser.parse_args(argv)
    env = {
        "ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS": str(HEARTBEAT_SECONDS),
        "ORCHESTRATOR_CRASH_AFTER_HEARTBEATS": str(CRASH_AFTER),
    }
    logs = Path(tempfile.mkdtemp(prefix="resume-bench-"))
    report: dict[str, Any] = {"calls": args.calls, "kill_after": args.kill_after, "step_seconds": args.step}
    with ExitStack() as stack:
        url = stack.enter_context(private_redis(env))
        from .resume_flows import resume_calls  # settings are read on import: after the environment is set

        api = ApiProcess(url, f"sqlite:///{logs / 'api.db'}", log_path=logs / "api.log", extra_env=env)
        api.start()
        stack.callback(api.stop)
        store = RunStore(url)

        def start_worker(name: str, queue: str) -> Any:
            log = logs / f"{name}.log"
            return worker(url, MODULES, queues=queue, concurrency=1, name=f"{name}@%h", log_path=log, extra_env=env)

        stack.enter_context(start_worker("steps", STEPS))
        with start_worker("bodies", BODIES):
            began = time.monotonic()
            whole = resume_calls.delay(run_marker=uuid.uuid4().hex, n=args.calls, seconds=args.step).result(600)
            uninterrupted = time.monotonic() - began
        per_call = uninterrupted / args.calls

        marker = uuid.uuid4().hex
        with start_worker("doomed", BODIES) as doomed:
            run = resume_calls.delay(run_marker=marker, n=args.calls, seconds=args.step)
            wait_begun(store, marker, 1)  # the doomed worker took the body
            with start_worker("spare", BODIES):  # the fleet's other worker, up before the crash
                wait_begun(store, marker, args.kill_after + 1)  # kill_after calls done, the next one running
                os.killpg(doomed.pid, signal.SIGKILL)
                killed_at = time.monotonic()
                value = run.result(600)
                resumed_in = time.monotonic() - killed_at
        begun = {k: int(v) for k, v in store.redis.hgetall(begun_key(marker)).items()}
        other_than_once = sorted(int(k) for k, v in begun.items() if v != 1) + sorted(
            set(range(args.calls)) - {int(k) for k in begun}
        )
        window = HEARTBEAT_SECONDS * CRASH_AFTER
        bound = window + (args.calls - args.kill_after) * per_call
        report |= {
            "uninterrupted_seconds": round(uninterrupted, 3),
            "per_call_ms": round(per_call * 1000, 2),
            "crash_window_seconds": window,
            "kill_to_end_seconds": round(resumed_in, 3),
            "bound_seconds": round(bound, 3),
            "within_bound": resumed_in <= bound,
            "steps_not_run_exactly_once": other_than_once,
            "values_match": value == whole,
        }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"wrote {args.output}; logs in {logs}")
    return 0 if report["within_bound"] and not other_than_once and report["values_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
