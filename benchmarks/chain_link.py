"""Wall and CPU time of one chain link as a worker's pool child runs it, in process, in µs.

    .venv/bin/python -m benchmarks.chain_link [--links 2000] [--warmup 200]

W2 (issue 18) is a chain: each link's time in the child is on its critical path. Here a link is
a real Celery message (a one-line task with one more link after it, sent as a chain sends its
first task, captured and not sent) run by Celery's own :class:`~celery.worker.request.Request`
(``execute``: Celery's tracer, the executor, the start and finish scripts, the next link sent with
the end) on one private redis-server, no worker process and no pool. Prints the median and low
percentiles of the wall time per link (what the CPU does not explain is waiting for Redis) and the
mean CPU (``time.process_time``). The same command measures an older checkout (``PYTHONPATH``).
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

QUEUE = "chain-link-bench"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chain_link", description=__doc__.split("\n")[0])
    parser.add_argument("--links", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    args = parser.parse_args(argv)
    for name in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL", "ORCHESTRATOR_FLOW_MODULES"):
        os.environ.pop(name, None)
    from orchestrator.config.settings import Settings, reset_settings
    from orchestrator.devstack.localstack import redis_server

    with redis_server() as url:
        os.environ["ORCHESTRATOR_REDIS_URL"] = url
        reset_settings()
        from celery.worker.request import Request

        from orchestrator import task
        from orchestrator.planning.compiler import make_signature
        from orchestrator.runstate import keys
        from orchestrator.runstate.records import NewTaskRun
        from orchestrator.runstate.store import get_store
        from orchestrator.transport.celery_app import make_celery_app
        from orchestrator.transport.messaging import captured_sends
        from workers.celery_tasks import register_user_task

        @task(name="benchmarks.chain_link.step")
        def step(i: int) -> int:
            return i + 1

        app = make_celery_app("chain-link-bench", Settings(redis_url=url))
        register_user_task(app, step)
        store = get_store()
        walls: list[float] = []
        cpus: list[float] = []
        with app.connection_for_write() as connection:
            channel = connection.default_channel
            for number in range(args.warmup + args.links):
                root, trid = str(uuid.uuid4()), str(uuid.uuid4())
                store.task_runs.add_to_dynamic_tree(NewTaskRun(trid, "link-0", step.name, root, root), None)
                store.redis.incr(keys.remaining(root))
                run = {"root": root, "flow_run_id": root, "task_run_id": trid, "label": "link-0"}
                following = {"run": {"flow_run_id": root, "label": "link-1"}, "inputs": {"i": 2}}
                nxt = make_signature(step.name, following, queue=QUEUE, app=app)
                nxt.freeze()
                first = make_signature(step.name, {"run": run, "inputs": {"i": 1}}, queue=QUEUE, task_id=trid, app=app)

                def send(producer: Any, first: Any = first, nxt: Any = nxt) -> None:
                    first.apply_async(chain=[dict(nxt)], producer=producer)

                writes = captured_sends(app, send, store.server(), envelope=False)
                if not writes:
                    raise AssertionError("nothing was captured: the broker is not the run store's Redis?")
                message = channel.Message(json.loads(writes[0][2]), channel=channel)
                request = Request(message, app=app, task=app.tasks[step.name], hostname="chain-link@bench")
                w0, c0 = time.perf_counter(), time.process_time()
                request.execute()
                wall, cpu = time.perf_counter() - w0, time.process_time() - c0
                if store.redis.llen(QUEUE) != 1:
                    raise AssertionError("the next link was not sent exactly once")
                store.redis.delete(QUEUE)
                if number >= args.warmup:
                    walls.append(wall * 1e6)
                    cpus.append(cpu * 1e6)
        walls.sort()
        print(
            f"per link: wall median {statistics.median(walls):.0f} µs, p10 {walls[len(walls) // 10]:.0f}, "
            f"p25 {walls[len(walls) // 4]:.0f}; CPU mean {statistics.mean(cpus):.0f} µs ({len(walls)} links)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
