"""CPU of sending W1's chord from a worker, per header member, in µs: Celery's send and the collected one.

    .venv/bin/python -m benchmarks.chord_send [--width 500] [--rounds 5]

W1's source task is followed by a chord of ``--width`` tasks. Celery's tracer sends it after the
task returns (``chord.apply_async``: the chord's size into the result backend, then each member
through ``Task.apply_async`` and its own round trip); since issue 18's ``collected_sends.py`` the
worker collects the members' messages instead, to go out with the source's end. Both are timed
here in one process with the worker's own app (``workers.app``, the W1 tasks registered) against
a private redis-server: ``time.process_time()`` and the wall time around each send, the queue
emptied between rounds (no worker runs anything). An older checkout without ``collected_sends``
measures Celery's send only. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


def timed(send: Callable[[], Any], width: int, rounds: int) -> tuple[float, float]:
    """Median µs of CPU and of wall time per member over ``rounds`` sends, after one to warm up."""
    send()
    cpu, wall = [], []
    for _ in range(rounds):
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        send()
        cpu.append((time.process_time() - start_cpu) / width * 1e6)
        wall.append((time.perf_counter() - start_wall) / width * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chord_send", description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    from benchmarks.private_redis import private_redis

    with private_redis({"ORCHESTRATOR_FLOW_MODULES": "benchmarks.workloads"}) as url:
        import redis
        from celery.canvas import signature

        from benchmarks import workloads
        from orchestrator.planning.compiler import compile_plan
        from orchestrator.runstate.store import get_store
        from workers.app import app

        logging.disable(logging.WARNING)  # Celery warns of nothing useful here
        compiled = compile_plan(workloads.w1_fan.plan(n=args.width), app)
        following = dict(compiled.canvas.tasks[-1])  # the chord, as the source's message carries it
        options = {"chain": [], "parent_id": "bench-parent", "root_id": "bench-root", "priority": None}
        queue = redis.Redis.from_url(url)

        def by_celery() -> None:
            signature(following, app=app).apply_async((None,), **options)
            queue.delete("default")

        rows = {"celery": timed(by_celery, args.width, args.rounds)}
        if importlib.util.find_spec("orchestrator.transport.collected_sends") is not None:
            from orchestrator.transport.collected_sends import captured_chord

            server = get_store().server()

            def collected() -> None:
                writes = captured_chord(app, signature(following, app=app), (None,), options, server)
                if not writes:
                    raise AssertionError("the chord was not collected")
                with queue.pipeline(transaction=False) as pipe:  # what the end's script then runs
                    for command, key, text in writes:
                        getattr(pipe, command)(key, text)
                    pipe.execute()
                queue.delete("default")

            rows["collected"] = timed(collected, args.width, args.rounds)
    print(f"W1 chord of {args.width} members, sent from a worker's app; µs per member (median of {args.rounds})")
    for name, (cpu, wall) in rows.items():
        print(f"  {name:10s} CPU {cpu:7.1f}   wall {wall:7.1f}")
    print(f"load average: {os.getloadavg()[0]:.2f}")
    # Celery's header send subscribes to each member's result; those results are let go at exit,
    # after the private Redis has stopped, and would print one unsubscribe error each.
    sys.unraisablehook = lambda _: None
    return 0


if __name__ == "__main__":
    sys.exit(main())
