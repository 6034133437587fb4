"""CPU of capturing one send (``messaging.captured_sends``), in µs: a W0 message and a chain link.

    .venv/bin/python -m benchmarks.capture_cpu [--captures 3000] [--rounds 3]

Both are on the latency path of issue 18: the client's ``.delay()`` of a one-task flow captures
its message (``CeleryMessaging.captured_canvas``, the W0 canvas), and a worker finishing a chain
link captures the next one (as ``workers/celery_tasks.py``'s ``chained`` sends it: a worker-like
app with Celery's own message builder and a publish retry policy; W2). Starts one private
redis-server (no worker: nothing is sent) and times ``time.process_time()`` around each capture,
after a warm-up that connects and declares. The same command measures an older checkout. See
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

RUN_ID = "0b8f1d7e-0000-4000-8000-000000000001"


def per_capture(capture: Callable[[], Any], captures: int) -> float:
    """µs of CPU per call of ``capture`` (which must capture something)."""
    for _ in range(200):
        if not capture():
            raise AssertionError("nothing was captured: the broker is not the run store's Redis?")
    start = time.process_time()
    for _ in range(captures):
        capture()
    return (time.process_time() - start) / captures * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.capture_cpu", description=__doc__.split("\n")[0])
    parser.add_argument("--captures", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    for name in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL", "ORCHESTRATOR_FLOW_MODULES"):
        os.environ.pop(name, None)
    from orchestrator.config.settings import Settings, reset_settings
    from orchestrator.devstack.localstack import redis_server
    from orchestrator.transport.celery_app import client_app, make_celery_app, tolerate_redis_outages

    with redis_server() as url:
        os.environ["ORCHESTRATOR_REDIS_URL"] = url
        reset_settings()
        client_app.cache_clear()
        from celery import signature

        from benchmarks import workloads as w
        from orchestrator.planning.compiler import make_signature
        from orchestrator.runs.create import client_messaging
        from orchestrator.runs.handle import prepare_run
        from orchestrator.runstate.store import get_store
        from orchestrator.transport.messaging import CeleryMessaging, captured_sends

        server = get_store().server()
        messaging = client_messaging()
        canvas = prepare_run(w.w0_single, {"x": 1}, run_id=RUN_ID, queue="default", messaging=messaging).compiled.canvas
        messaging.send_canvas(canvas)  # connects the client's producer (a capture needs a connection)

        worker_app = make_celery_app("capture-cpu-worker", Settings(redis_url=url))
        tolerate_redis_outages(worker_app, 30)
        links = [
            make_signature(
                "benchmarks.workloads.noop",
                {"run": {"flow_run_id": RUN_ID, "label": f"noop-{i}"}, "inputs": {"i": i}},
                queue="default",
                app=worker_app,
            )
            for i in range(3)
        ]
        for link in links:
            link.freeze()
        chain = [dict(link) for link in reversed(links[1:])]  # Celery keeps a chain's rest reversed
        following = signature(chain[-1], app=worker_app)

        def send_link(producer: Any) -> None:
            following.apply_async(
                (None,), chain=chain[:-1], parent_id="upstream", root_id=RUN_ID, priority=None, producer=producer
            )

        link_options = {"chain": chain[:-1], "parent_id": "upstream", "root_id": RUN_ID, "priority": None}
        worker_messaging = CeleryMessaging(worker_app)
        captured_sends(worker_app, send_link, server)  # opens the worker app's producer connection

        def capture_link() -> Any:
            if hasattr(worker_messaging, "captured_signatures"):  # as workers/celery_tasks.py's chained does
                return worker_messaging.captured_signatures([following], link_options, server, (None,))
            return captured_sends(worker_app, send_link, server)  # an older checkout

        for number in range(1, args.rounds + 1):
            w0 = per_capture(lambda: messaging.captured_canvas(canvas, server), args.captures)
            link = per_capture(capture_link, args.captures)
            print(f"round {number}: CPU µs per capture: W0 message {w0:6.1f}, chain link {link:6.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
