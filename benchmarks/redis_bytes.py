"""How many bytes of Redis a finished run leaves behind, per task run and per flow run, by key family.

    .venv/bin/python -m benchmarks.redis_bytes [--tasks 5000] [--flows 200] [--no-api | --api-only]

Whatever a run leaves in Redis stays there for ``result_ttl_seconds`` (7 days by default),
so bytes per finished run, times runs per week, is what a Redis must hold. It starts a
private redis-server on a free port and one worker (flow module ``benchmarks.workloads``);
then, in each phase (without the API, then with the API and its recorder consuming the
event stream), it runs one after another:

- ``raw``: hand-written Celery, ``group(raw_noop.si(i) ...)`` with results (what a Celery
  user pays: the results and nothing else);
- ``group``: ``bench-w3-independent``, n independent ``noop`` task runs in one flow run;
- ``fan``: ``bench-w1-fan``, a source, n parallel task runs and a reduce;
- ``flows``: ``--flows`` flow runs of ``bench-api-five`` (5 task runs each: the cost of a flow run).

After each one it waits until Redis is quiet (and, with the API, until the recorder has
acknowledged every event), then measures ``used_memory`` and ``MEMORY USAGE key SAMPLES 0``
of every key, grouped by family (the key's ``orc:<name>`` prefix from
:mod:`orchestrator.runstate.keys`, or Celery's and kombu's own). Each figure is the
difference from the snapshot before, divided by the task runs (and flow runs) the
scenario finished. ``..._after_grace`` counts only the keys whose TTL outlasts
``Settings.finished_grace_seconds`` (what a finished run keeps for ``result_ttl_seconds``;
a completed tree's bookkeeping goes after the grace). Nothing here asserts a size. Results go to
``benchmarks/results/redis_bytes.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from benchmarks.private_redis import private_redis
from orchestrator.config.settings import get_settings
from orchestrator.devstack.localstack import api_server, worker
from orchestrator.runstate import keys

RESULTS = Path(__file__).parent / "results"
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32}")


def family(key: str) -> str:
    """The family a key belongs to: ``orc:<name>`` for the run store's, a fixed name for Celery's and kombu's."""
    if key.startswith(keys.PREFIX + ":"):
        parts = key.split(":")
        if key.startswith(keys.EVENTS_STREAM + ":"):
            return ":".join(parts[:3])  # orc:events:dead
        return ":".join(parts[:2])
    for celery in ("celery-task-meta-", "celery-taskset-meta-"):
        if key.startswith(celery):
            return celery[:-1]
    if key.startswith("_kombu.binding."):
        return "_kombu.binding"
    return _ID.sub("{id}", key)


@dataclass
class Snapshot:
    """Redis's memory at one moment: ``used_memory`` and bytes (and keys) per family; ``lasting``: the
    bytes per family of the keys that outlive the grace (no TTL, or a longer one)."""

    used_memory: int
    families: dict[str, int]
    counts: dict[str, int]
    lasting: dict[str, int]


def snapshot(client: redis.Redis) -> Snapshot:
    """Every key's exact size (``SAMPLES 0``: a stream or hash is walked whole), summed by family."""
    names = list(client.scan_iter(count=1000))
    grace = get_settings().finished_grace_seconds
    families: dict[str, int] = {}
    counts: dict[str, int] = {}
    lasting: dict[str, int] = {}
    for start in range(0, len(names), 500):
        part = names[start : start + 500]
        pipe = client.pipeline(transaction=False)
        for name in part:
            pipe.memory_usage(name, samples=0)
            pipe.ttl(name)
        replies = pipe.execute()
        for name, size, ttl in zip(part, replies[::2], replies[1::2], strict=True):
            fam = family(name.decode() if isinstance(name, bytes) else name)
            families[fam] = families.get(fam, 0) + int(size or 0)  # None: expired between SCAN and MEMORY
            counts[fam] = counts.get(fam, 0) + (1 if size else 0)
            if ttl == -1 or ttl > grace:
                lasting[fam] = lasting.get(fam, 0) + int(size or 0)
    used = int(client.info("memory")["used_memory"])
    return Snapshot(used, families, counts, lasting)


def wait_quiet(client: redis.Redis, recorder: bool, timeout: float = 300) -> None:
    """Block until the queue is empty, no message is unacknowledged or delayed, no task run is
    under heartbeat and (``recorder``) the recorder's group has read and acknowledged every event."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = any(
            (
                client.llen("default"),
                client.zcard("unacked_index"),
                client.zcard(keys.DELAYED),
                client.zcard(keys.HEARTBEATS),  # a worker forgets ended task runs at its next beat
            )
        )
        if recorder and not busy:
            busy = not recorded_all(client)
        if not busy:
            time.sleep(1.0)  # the last heartbeats and ends settle
            return
        time.sleep(0.2)
    raise TimeoutError("Redis did not go quiet (queue, unacked messages or events not recorded)")


def recorded_all(client: redis.Redis) -> bool:
    """The recorder's group has read up to the stream's last entry and has nothing pending."""
    if not client.exists(keys.EVENTS_STREAM):
        return True
    last = client.xinfo_stream(keys.EVENTS_STREAM)["last-generated-id"]
    for group in client.xinfo_groups(keys.EVENTS_STREAM):
        if group["name"] in ("recorder", b"recorder"):
            return bool(group["pending"] == 0 and group["last-delivered-id"] == last)
    return False


def diff(before: Snapshot, after: Snapshot, tasks: int, flows: int) -> dict[str, Any]:
    """Bytes per task run and per flow run, in total and per family, between two snapshots."""
    names = sorted(set(before.families) | set(after.families))
    delta = {n: after.families.get(n, 0) - before.families.get(n, 0) for n in names}
    keys_delta = {n: after.counts.get(n, 0) - before.counts.get(n, 0) for n in names}
    delta = {n: d for n, d in delta.items() if d or keys_delta[n]}
    total = sum(delta.values())
    kept = {n: after.lasting.get(n, 0) - before.lasting.get(n, 0) for n in delta}
    return {
        "task_runs": tasks,
        "flow_runs": flows,
        "used_memory_delta": after.used_memory - before.used_memory,
        "used_memory_per_task_run": round((after.used_memory - before.used_memory) / tasks),
        "keys_bytes_per_task_run": round(total / tasks),
        "keys_bytes_per_flow_run": round(total / flows) if flows else None,
        "per_task_run": {n: round(d / tasks) for n, d in sorted(delta.items(), key=lambda kv: -kv[1])},
        "keys_added": {n: keys_delta[n] for n in delta},
        "keys_bytes_per_task_run_after_grace": round(sum(kept.values()) / tasks),
        "per_task_run_after_grace": {n: round(d / tasks) for n, d in sorted(kept.items(), key=lambda kv: -kv[1])},
    }


@dataclass
class Scenario:
    """One workload: how to run it to completion, and how many task runs and flow runs it finishes."""

    name: str
    run: Callable[[], None]
    tasks: int
    flows: int


def scenarios(n: int, flows: int, timeout: float) -> list[Scenario]:
    """The workloads, built only now (``benchmarks.workloads`` reads the Redis URL on import)."""
    from benchmarks import workloads as w

    def raw() -> None:
        values = w.raw_w3(n).apply_async().get(timeout=timeout, interval=0.005)
        assert values == list(range(n)), "raw group returned wrong values"

    def group() -> None:
        assert w.w3_independent.delay(n=n).result(timeout=timeout) == list(range(n))

    def fan() -> None:
        assert w.w1_fan.delay(n=n).result(timeout=timeout) == sum(range(n))

    def many() -> None:
        runs = [w.api_five.delay(x=i) for i in range(flows)]
        for i, run in enumerate(runs):
            assert run.result(timeout=timeout) == 3 * i + 3

    return [
        Scenario("raw", raw, n, 0),
        Scenario("group", group, n, 1),
        Scenario("fan", fan, n + 2, 1),
        Scenario("flows", many, 5 * flows, flows),
    ]


def measure(client: redis.Redis, phase: str, plan: list[Scenario], recorder: bool) -> dict[str, Any]:
    """Each scenario in turn, measured from the snapshot just before it."""
    out: dict[str, Any] = {}
    wait_quiet(client, recorder)
    for scenario in plan:
        before = snapshot(client)
        started = time.perf_counter()
        scenario.run()
        wait_quiet(client, recorder)
        after = snapshot(client)
        out[scenario.name] = diff(before, after, scenario.tasks, scenario.flows)
        out[scenario.name]["seconds"] = round(time.perf_counter() - started, 1)
        print_scenario(phase, scenario.name, out[scenario.name])
    return out


def run_phases(phases: list[str], n: int, flows: int, timeout: float) -> dict[str, Any]:
    """The phases on one private Redis and worker: ``no_api`` first, then the API is started and
    ``api`` measured once its recorder has caught up with what the first phase left in the stream.

    One Redis for both: the worker app's clients are bound to one URL for the life of this process.
    """
    out: dict[str, Any] = {}
    folder = Path(tempfile.mkdtemp(prefix="orc-bytes-"))
    with private_redis() as url:
        client = redis.Redis.from_url(url)
        with worker(url, ["benchmarks.workloads"], log_path=folder / "worker.log"):
            for warm in scenarios(5, 2, timeout):  # imports and connections
                warm.run()
            if "no_api" in phases:
                out["no_api"] = measure(client, "no api", scenarios(n, flows, timeout), recorder=False)
            if "api" in phases:
                with api_server(url, f"sqlite:///{folder / 'api.db'}", log_path=folder / "api.log"):
                    for warm in scenarios(5, 2, timeout):
                        warm.run()
                    out["api"] = measure(client, "api", scenarios(n, flows, timeout), recorder=True)
        client.close()
    print(f"logs in {folder}")
    return out


def print_scenario(phase: str, name: str, row: dict[str, Any]) -> None:
    """One scenario's figures, biggest family first."""
    per_flow = row["keys_bytes_per_flow_run"]
    print(
        f"[{phase}] {name}: {row['keys_bytes_per_task_run']} B per task run"
        + (f", {per_flow} B per flow run" if per_flow is not None else "")
        + f" (used_memory {row['used_memory_per_task_run']} B per task run, {row['seconds']} s);"
        + f" {row['keys_bytes_per_task_run_after_grace']} B per task run after the grace",
        flush=True,
    )
    for fam, size in row["per_task_run"].items():
        kept = row["per_task_run_after_grace"][fam]
        print(f"    {fam:<24} {size:>6} B   {row['keys_added'][fam]:>6} keys   {kept:>6} B after the grace", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000, help="task runs of the group and the fan-out")
    parser.add_argument("--flows", type=int, default=200, help="flow runs of 5 task runs each")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one scenario may take")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-api", action="store_true", help="only the phase without the API")
    which.add_argument("--api-only", action="store_true", help="only the phase with the API's recorder")
    parser.add_argument("--output", type=Path, default=RESULTS / "redis_bytes.json")
    args = parser.parse_args(argv)
    for name in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL", "ORCHESTRATOR_FLOW_MODULES"):
        os.environ.pop(name, None)  # everything on the private server
    report: dict[str, Any] = {
        "measured_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python -m benchmarks.redis_bytes", *(argv if argv is not None else sys.argv[1:])]),
        "tasks": args.tasks,
        "flows": args.flows,
        "phases": {},
    }
    phases = ["no_api"] if args.no_api else ["api"] if args.api_only else ["no_api", "api"]
    report["phases"] = run_phases(phases, args.tasks, args.flows, args.timeout)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
