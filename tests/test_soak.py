"""Soak: 500 flow runs of mixed shapes over HTTP, a worker killed with SIGKILL in the middle.

Real processes only: the session's redis-server, an API (``python -m api.server``, with its
services, on its own SQLite database, or PostgreSQL when ORCHESTRATOR_TEST_DATABASE_URL names a
server), and Celery prefork workers of concurrency 2 on a private queue: ``steady`` and ``doomed``
from the start, ``spare`` started right after ``doomed`` is killed (its whole process group,
SIGKILL). The runs are submitted in the background at a steady pace, so the load lasts; the kill
comes once about 30% of the executions are done, preferably (if it comes along within a few
seconds) while a slow task has slept on ``doomed`` long enough to have heartbeated and its other
process runs short tasks: then both recovery paths are taken, the crash detector's and the
redelivery of unacknowledged messages.

The shapes (tests/soak_flows.py): a chain, a fan-out over an upstream result with its fan-in, a
diamond, a sensor poking once or twice, flaky tasks with retries=2 failing at random (seeded by
the run's parameter and the attempt number: reproducible), a task failing for good (its
downstream UpstreamFailed), a parent with two subflows, a slow task. Every task execution counts
itself in Redis; from the seeds the test predicts every task run's final state and attempts.

Afterwards, reading the API's database directly once everything is final and quiet:
- every flow run is final (only Completed and Failed), and every task run is there and final;
- each run ends as its seeds predict (flow state; each task run's state and attempts), unless a
  task run of it went Crashed: a task running on the killed worker after its first heartbeat is
  declared Crashed and retried as its next attempt if it has retries left, or ends Crashed (its
  flow run Failed) if not, which takes the run off its seeded course (the slow task has retries=1
  and completes anyway). A Crashed task run must have run on the killed worker;
- the executions counted by the tasks match the attempts recorded: for each task run the attempts
  executed are exactly 1..attempts, once each, except that an execution on the killed worker may
  have been cut off and run again under the same attempt number (redelivered after the visibility
  timeout): at most one such repeat per task run, at most one per process of the killed worker in
  all. Map and subflow nodes run no user code;
- no applied state history regresses (nothing applied after a final state, except AwaitingRetry or
  Retrying right after Crashed), and no task run is Completed twice;
- the kill hit running work: it is sent at a moment when a task surely executes on ``doomed`` (a nap
  with time left, or a short task inside its body, judged by the clock just after the kill), and every
  task run executing then went Crashed or was run again. At most CONCURRENCY task runs are hit (Crashed
  or repeated), and at most CONCURRENCY flow runs are let off their seeded course: the killed worker
  executed at most that many at once, and the messages it had only reserved come back whole.

The worker's Redis visibility timeout is 15 s here: a task killed before its first heartbeat, and
the messages the killed worker had reserved, come back only through it (README, "Not there yet");
with the default (1 hour) they would wait an hour.

Run it with ``pytest -m slow tests/test_soak.py -s`` (it prints a summary line either way).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from orchestrator.devstack.localstack import ApiProcess, worker
from orchestrator.runstate import keys
from tests import soak_flows as sf
from tests.api_support import FINAL, api_database, eventually

pytestmark = pytest.mark.slow

RUNS = 500
MIX = {"chain": 85, "fan": 70, "diamond": 75, "sensor": 60, "flaky": 80, "broken": 40, "parent": 60, "slow": 30}
BASE_SEED = 20_260
SHUFFLE_SEED = 7
CONCURRENCY = 2
VISIBILITY_SECONDS = 15
SUBMIT_RATE = 20.0  # runs a second: about what 2 workers of concurrency 2 get through on 2 cores
KILL_AFTER_EXECUTIONS = 700  # of about 2,350 in all
FLOW_MODULES = ["tests.soak_flows"]
REOPEN_AFTER_CRASH = {"AwaitingRetry", "Retrying"}
NAP_SECONDS = 1.5  # what soak_slow's nap sleeps (tests/soak_flows.py)


# -- what the seeds predict -------------------------------------------------------------------------
@dataclass(frozen=True)
class Expect:
    """A task run's predicted end: state, attempts, and whether user code runs (no: map and subflow nodes)."""

    state: str
    attempts: int
    user: bool = True


@dataclass(frozen=True)
class Planned:
    shape: str
    seed: int

    @property
    def flow(self) -> str:
        return f"soak-{self.shape}"


def plan_runs() -> list[Planned]:
    """The 500 runs, shapes shuffled (always the same way), seeds BASE_SEED + i."""
    assert sum(MIX.values()) == RUNS
    shapes = [shape for shape, n in MIX.items() for _ in range(n)]
    random.Random(SHUFFLE_SEED).shuffle(shapes)
    return [Planned(shape, BASE_SEED + i) for i, shape in enumerate(shapes)]


def flaky_end(key: str) -> Expect:
    """A flaky task run: completed at its first lucky attempt, or failed after all of them."""
    for attempt in range(1, sf.FLAKY_ATTEMPTS + 1):
        if not sf.attempt_fails(key, attempt):
            return Expect("Completed", attempt)
    return Expect("Failed", sf.FLAKY_ATTEMPTS)


def predict(run: Planned) -> dict[str, Expect]:
    """Every task run of ``run`` (a parent's: its subflows' too), by label."""
    ok = Expect("Completed", 1)
    seed = run.seed
    if run.shape == "chain":
        return {f"step-{i}": ok for i in range(4)}
    if run.shape == "fan":
        squares = {f"square-0[{i}]": ok for i in range(sf.fan_width(seed))}
        return {"numbers-0": ok, "square-0": Expect("Completed", 1, user=False), **squares, "total-0": ok}
    if run.shape == "diamond":
        return {"step-0": ok, "square-0": ok, "step-1": ok, "add-0": ok}
    if run.shape == "sensor":
        return {"sensor-0": Expect("Completed", sf.sensor_pokes(seed) + 1), "step-0": ok}
    if run.shape == "flaky":
        *mapped, later = sf.flaky_keys(seed)
        ends = {f"flaky_now-{i}": flaky_end(key) for i, key in enumerate(mapped)} | {"flaky_later-0": flaky_end(later)}
        all_ok = all(e.state == "Completed" for e in ends.values())
        return ends | {"total-0": ok if all_ok else Expect("UpstreamFailed", 0)}
    if run.shape == "broken":
        return {"step-0": ok, "broken-0": Expect("Failed", 1), "step-1": Expect("UpstreamFailed", 0), "step-2": ok}
    if run.shape == "parent":
        subflows = {f"subflow-soak-child-{i}": Expect("Completed", 1, user=False) for i in range(2)}
        return {f"step-{i}": ok for i in range(4)} | subflows | {"add-0": ok}
    if run.shape == "slow":
        return {"nap-0": ok, "step-0": ok}
    raise AssertionError(f"unknown shape {run.shape}")


def predicted_flow_state(expected: dict[str, Expect]) -> str:
    return "Completed" if all(e.state == "Completed" for e in expected.values()) else "Failed"


# -- driving the load -------------------------------------------------------------------------------
def submit_all(http: httpx.Client, queue: str, runs: list[Planned], pool: ThreadPoolExecutor) -> Future[list[str]]:
    """Create the runs over HTTP in the background, four requests at a time, paced at SUBMIT_RATE runs
    a second so the load lasts (pacing only: nothing is asserted about time); their ids, in order."""
    began = time.monotonic()

    def one(i: int, run: Planned) -> str:
        time.sleep(max(0.0, began + i / SUBMIT_RATE - time.monotonic()))
        body = {"parameters": {"seed": run.seed}, "queue": queue}
        response = http.post(f"/flows/{run.flow}/runs", json=body)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    futures = [pool.submit(one, i, run) for i, run in enumerate(runs)]
    return pool.submit(lambda: [f.result() for f in futures])


def flow_run_states(http: httpx.Client) -> dict[str, str]:
    """Every flow run the API has recorded (paged through GET /flow-runs), id -> state."""
    out: dict[str, str] = {}
    offset = 0
    while True:
        page = http.get("/flow-runs", params={"limit": 1000, "offset": offset}).json()
        out.update({r["id"]: r["state"] for r in page["items"]})
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return out


def wait_all_final(http: httpx.Client, ids: list[str], timeout: float) -> dict[str, str]:
    """Poll until every run in ``ids`` is final (or ``timeout`` passes: the rest is reported as lost)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            states = flow_run_states(http)
            if all(states.get(i) in FINAL for i in ids) or time.monotonic() > deadline:
                return states
        time.sleep(1.0)


def wait_for_kill_moment(client: redis.Redis, marker: str) -> bool:
    """Wait until a good share of the load has run (the doomed worker taking part); then, for a few
    seconds, for a moment when a slow task has slept on the doomed worker long enough to have
    heartbeated while its other process has just begun a short task. Returns whether that moment came
    (else the kill cuts off whatever runs then)."""

    def under_way() -> bool:
        doomed = int(client.get(sf.by_worker_key(marker, "doomed")) or 0)
        return doomed >= 50 and client.llen(sf.log_key(marker)) >= KILL_AFTER_EXECUTIONS

    eventually(under_way, 180, interval=0.1, what="the load under way, the doomed worker running tasks")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        naps = client.hgetall(sf.napping_key(marker, "doomed"))
        if len(naps) == 1 and time.time() - float(*naps.values()) > 1.15:
            _, what, began = str(client.get(sf.last_start_key(marker, "doomed")) or "||0").split("|")
            if what != "nap" and time.time() - float(began or 0) < sf.TASK_SECONDS / 3:
                return True
        time.sleep(0.001)
    return False


@dataclass(frozen=True)
class Kill:
    """The SIGKILL of the doomed worker, and the task runs it surely cut off mid-way."""

    on_plan: bool  # at the planned moment (see wait_for_kill_moment)
    running: dict[str, str]  # task run id -> task: executing on ``doomed`` when the kill had been sent
    executed_before: int  # executions counted before the kill


def kill_mid_task(client: redis.Redis, marker: str, doomed: subprocess.Popen[bytes]) -> Kill:
    """Kill the doomed worker's whole process group at the planned moment, or else at the next moment when it is
    surely running a task: a nap with a good part of its sleep left, or a short task that has just begun (its body
    lasts at least TASK_SECONDS after it counts itself). What ran is read just before the kill, and kept only if the
    clock just after the kill shows it still inside its body then (the planned moment is one such moment)."""
    on_plan = wait_for_kill_moment(client, marker)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        naps = {trid: float(t) for trid, t in client.hgetall(sf.napping_key(marker, "doomed")).items()}
        trid, what, began = str(client.get(sf.last_start_key(marker, "doomed")) or "||0").split("|")
        napping = any(time.time() - t < NAP_SECONDS - 0.3 for t in naps.values())
        if on_plan or napping or time.time() - float(began or 0) < sf.TASK_SECONDS / 3:
            executed = client.llen(sf.log_key(marker))
            os.killpg(doomed.pid, signal.SIGKILL)
            sent = time.time()
            running = {t: "nap" for t, at in naps.items() if sent - at < NAP_SECONDS - 0.05}
            if trid and what != "nap" and sent - float(began) < sf.TASK_SECONDS - 0.002:
                running[trid] = what
            return Kill(on_plan, running, executed)
        time.sleep(0.001)
    raise AssertionError("the doomed worker was never seen running a task in 60 s: the kill would hit nothing")


def quiet(client: redis.Redis, queue: str) -> bool:
    """Nothing of ``queue`` is queued, reserved (unacknowledged) or delayed, and the recorder has read
    and acknowledged every event."""
    if any(client.llen(k) for k in client.scan_iter(match=f"{queue}*") if client.type(k) == "list"):
        return False
    if any(queue in v for v in client.hvals("unacked")):
        return False
    if any(queue in m for m in client.zrange(keys.DELAYED, 0, -1)):
        return False
    last = client.xinfo_stream(keys.EVENTS_STREAM)["last-generated-id"]
    groups = [g for g in client.xinfo_groups(keys.EVENTS_STREAM) if g["name"] == "recorder"]
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] == last


def wait_quiet(client: redis.Redis, queue: str, marker: str, timeout: float) -> bool:
    """Quiet, and no execution counted, over three checks a second apart."""
    deadline = time.monotonic() + timeout
    streak, length = 0, -1
    while time.monotonic() < deadline:
        now_length = client.llen(sf.log_key(marker))
        streak = streak + 1 if quiet(client, queue) and now_length == length else 0
        length = now_length
        if streak >= 3:
            return True
        time.sleep(1.0)
    return False


def wait_announced(client: redis.Redis, prefixes: list[str]) -> None:
    def announced() -> bool:
        workers = cast(list[str], client.hkeys(keys.WORKERS))
        return all(any(w.startswith(p) for w in workers) for p in prefixes)

    eventually(announced, 90, what=f"workers {prefixes} announced")


# -- reading back -----------------------------------------------------------------------------------
@dataclass
class Facts:
    """What the database and the tasks' own counts say, once all is quiet."""

    flows: dict[str, dict[str, Any]]
    tasks: dict[str, dict[str, Any]]
    history: dict[str, list[dict[str, Any]]]  # run id -> its state events in recorded order
    executions: dict[str, list[tuple[str, int]]]  # task run id -> (worker role, attempt) per execution
    counters: dict[str, int]  # task run id -> INCR count
    refused: int = 0


def read_facts(database_url: str, client: redis.Redis, marker: str) -> Facts:
    engine = create_engine(database_url)
    try:
        with engine.connect() as db:
            # The recorder reads the whole event stream of the session's Redis, so the database also
            # holds the runs of tests that ran before this one: judge the soak's own runs only.
            flows = {
                r.id: dict(r._mapping)
                for r in db.execute(text("SELECT * FROM flow_run"))
                if str(r.flow_name).startswith("soak-")
            }
            tasks = {
                r.id: dict(r._mapping) for r in db.execute(text("SELECT * FROM task_run")) if r.flow_run_id in flows
            }
            events = db.execute(text("SELECT run_id, kind, state, applied, cause FROM state_event ORDER BY seq")).all()
    finally:
        engine.dispose()
    history: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    refused = 0
    for e in events:
        if e.run_id not in flows and e.run_id not in tasks:
            continue
        history[e.run_id].append({"state": e.state, "applied": bool(e.applied), "cause": e.cause, "kind": e.kind})
        refused += not e.applied
    executions: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    for line in cast(list[str], client.lrange(sf.log_key(marker), 0, -1)):
        trid, role, attempt, _ = line.split("|")
        executions[trid].append((role, int(attempt)))
    ids = sorted(set(tasks) | set(executions))
    counters: dict[str, int] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        values = client.mget([sf.exec_key(marker, t) for t in chunk])
        counters.update({t: int(v or 0) for t, v in zip(chunk, values, strict=True)})
    return Facts(flows, tasks, history, executions, counters, refused)


@dataclass
class Verdict:
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    repeats_after_kill: list[str] = field(default_factory=list)  # cut off on the killed worker, run again
    repeated: list[str] = field(default_factory=list)  # the task run ids of repeats_after_kill
    crashed: list[str] = field(default_factory=list)  # task runs with an applied Crashed
    unpredictable: list[str] = field(default_factory=list)  # flow runs a crash took off their seeded course


def check_history(run_id: str, entries: list[dict[str, Any]], verdict: Verdict) -> None:
    """No applied state after a final one (but a reopen right after Crashed); Completed at most once."""
    applied = [e["state"] for e in entries if e["applied"]]
    for before, after in itertools.pairwise(applied):
        if before in FINAL and not (before == "Crashed" and after in REOPEN_AFTER_CRASH):
            verdict.wrong.append(f"{run_id}: history regresses {before} -> {after}: {applied}")
    if applied.count("Completed") > 1:
        verdict.duplicated.append(f"{run_id}: Completed {applied.count('Completed')} times: {applied}")


def check_executions(trid: str, row: dict[str, Any], expect: Expect, facts: Facts, verdict: Verdict) -> None:
    """The attempts the task run's executions counted against the attempts recorded (see the module doc)."""
    runs = facts.executions.get(trid, [])
    if facts.counters.get(trid, 0) != len(runs):
        verdict.wrong.append(f"{trid}: INCR count {facts.counters.get(trid)} != {len(runs)} logged executions")
    if not expect.user:
        if runs:
            verdict.wrong.append(f"{trid} ({row['label']}): a map/subflow node ran user code: {runs}")
        return
    attempts = int(row["attempts"])
    seen = collections.Counter(a for _, a in runs)
    if set(seen) != set(range(1, attempts + 1)):
        where = f"{trid} ({row['label']}, {row['state']})"
        if set(seen) - set(range(1, attempts + 1)):
            verdict.duplicated.append(f"{where}: executed attempts {sorted(seen)} beyond the {attempts} recorded")
        else:
            verdict.lost.append(f"{where}: {attempts} attempts recorded, executed only {sorted(seen)}")
    for attempt, n in seen.items():
        if n == 1:
            continue
        first = next(role for role, a in runs if a == attempt)
        if n == 2 and first == "doomed":
            verdict.repeats_after_kill.append(f"{trid} ({row['label']}) attempt {attempt}: {runs}")
            verdict.repeated.append(trid)
        else:
            verdict.duplicated.append(f"{trid} ({row['label']}): attempt {attempt} executed {n} times: {runs}")


def judge(planned: list[Planned], ids: list[str], facts: Facts) -> Verdict:
    verdict = Verdict()
    by_root: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in facts.tasks.values():
        by_root[row["root_id"] or row["flow_run_id"]].append(row)
    crashes: collections.Counter[str] = collections.Counter()
    for run_id, entries in facts.history.items():
        check_history(run_id, entries, verdict)
        crashes[run_id] = sum(e["applied"] and e["state"] == "Crashed" for e in entries)
        if crashes[run_id] and run_id in facts.tasks:
            verdict.crashed.append(run_id)
            if not any(role == "doomed" for role, _ in facts.executions.get(run_id, [])):
                verdict.wrong.append(f"task run {run_id} was declared Crashed but never ran on the killed worker")
    for run, run_id in zip(planned, ids, strict=True):
        expected = predict(run)
        flow_row = facts.flows.get(run_id)
        state = flow_row["state"] if flow_row else "(not recorded)"
        if state not in FINAL:
            verdict.lost.append(f"flow run {run_id} ({run.flow}, seed {run.seed}) is {state}")
        rows = {r["label"]: r for r in by_root.get(run_id, [])}
        # A crash of a task run (one running on the killed worker when it died, after a heartbeat) uses up
        # a retry, or ends it Crashed when it has none: the seeds no longer predict that run. The slow
        # task has retries=1 for that: crashed once, it completes on its second attempt.
        if any(crashes[r["id"]] and r["label"] != "nap-0" for r in rows.values()):
            verdict.unpredictable.append(run_id)
        else:
            want = predicted_flow_state(expected)
            if state in FINAL and state != want:
                verdict.wrong.append(f"flow run {run_id} ({run.flow}, seed {run.seed}) is {state}, predicted {want}")
        for label in sorted(set(expected) - set(rows)):
            verdict.lost.append(f"flow run {run_id} ({run.flow}): no task run {label} recorded")
        for label in sorted(set(rows) - set(expected)):
            verdict.wrong.append(f"flow run {run_id} ({run.flow}): unexpected task run {label}")
        for label, row in rows.items():
            expect = expected.get(label)
            if expect is None:
                continue
            if row["state"] not in FINAL:
                verdict.lost.append(f"task run {row['id']} ({run.flow} {label}) is {row['state']}")
            want_end = (expect.state, expect.attempts + crashes[row["id"]])
            if run_id not in verdict.unpredictable and (row["state"], int(row["attempts"])) != want_end:
                verdict.wrong.append(
                    f"task run {row['id']} ({run.flow} seed {run.seed} {label}): {row['state']} after "
                    f"{row['attempts']} attempts, predicted {want_end[0]} after {want_end[1]}"
                )
            check_executions(row["id"], row, expect, facts, verdict)
    for child in (f for f in facts.flows.values() if f["parent_id"]):
        if child["state"] != "Completed" and child["root_id"] not in verdict.unpredictable:
            verdict.wrong.append(f"subflow run {child['id']} is {child['state']}")
    known = set(facts.tasks)
    for trid in sorted(set(facts.executions) - known):
        verdict.lost.append(f"task run {trid} executed {facts.executions[trid]} but was never recorded")
    if len(verdict.repeats_after_kill) > CONCURRENCY:
        verdict.duplicated.append(
            f"{len(verdict.repeats_after_kill)} executions cut off by the kill and repeated, but the killed "
            f"worker ran only {CONCURRENCY} at a time: {verdict.repeats_after_kill}"
        )
    # The exemptions. A task run is Crashed or repeated only if it was executing on the killed worker when it died
    # (messages it had only reserved come back whole, and run as predicted), and a prefork worker of concurrency
    # CONCURRENCY executes at most CONCURRENCY task runs at once: at most that many hit, each exempting at most its
    # own flow run from the seeds' prediction.
    hit = sorted(set(verdict.crashed) | set(verdict.repeated))
    if len(hit) > CONCURRENCY:
        verdict.wrong.append(
            f"{len(hit)} task runs were cut off by the kill (Crashed or run again), but the killed worker ran only "
            f"{CONCURRENCY} at a time: {hit}"
        )
    if len(verdict.unpredictable) > CONCURRENCY:
        verdict.wrong.append(
            f"{len(verdict.unpredictable)} flow runs exempted from their seeded course after the kill, more than "
            f"the {CONCURRENCY} task runs the killed worker could run at once: {verdict.unpredictable}"
        )
    return verdict


# -- the test ---------------------------------------------------------------------------------------
@pytest.mark.timeout(900)
def test_soak_500_mixed_runs_with_a_worker_killed_mid_load(
    redis_url: str, worker_logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    began = time.monotonic()
    marker = uuid.uuid4().hex[:8]
    queue = f"soak-{marker}"
    logs = worker_logs / f"soak-{marker}"
    logs.mkdir()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    planned = plan_runs()
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")

    with contextlib.ExitStack() as stack:
        database_url = stack.enter_context(api_database(tmp_path, admin_url))
        api = ApiProcess(redis_url, database_url, log_path=logs / "api.log")
        stack.callback(api.stop)
        api.start()
        http = stack.enter_context(httpx.Client(base_url=api.url, timeout=30))

        def start(role: str) -> subprocess.Popen[bytes]:
            env = {
                "SOAK_MARKER": marker,
                "SOAK_WORKER": role,
                "ORCHESTRATOR_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_SECONDS),
            }
            return stack.enter_context(
                worker(redis_url, FLOW_MODULES, queues=queue, concurrency=CONCURRENCY, name=f"{role}-{marker}@%h",
                       log_path=logs / f"{role}.log", extra_env=env)
            )  # fmt: skip

        start("steady")
        doomed = start("doomed")
        wait_announced(client, [f"steady-{marker}@", f"doomed-{marker}@"])

        load_began = time.monotonic()
        pool = ThreadPoolExecutor(5)
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        submitted = submit_all(http, queue, planned, pool)
        kill = kill_mid_task(client, marker, doomed)
        on_plan, executed_at_kill = kill.on_plan, kill.executed_before
        doomed.wait(10)
        killed_at = time.monotonic() - load_began
        start("spare")
        ids = submitted.result(timeout=300)
        states = wait_all_final(http, ids, timeout=480)
        load_seconds = time.monotonic() - load_began
        settled = wait_quiet(client, queue, marker, timeout=VISIBILITY_SECONDS * 4)
        facts = read_facts(database_url, client, marker)

    verdict = judge(planned, ids, facts)
    finals = collections.Counter(states.get(i, "(missing)") for i in ids)
    predictable = [(r, i) for r, i in zip(planned, ids, strict=True) if i not in verdict.unpredictable]
    predicted = collections.Counter(predicted_flow_state(predict(r)) for r, _ in predictable)
    completed = sum(states.get(i) == "Completed" for _, i in predictable)
    executions = sum(len(v) for v in facts.executions.values())
    attempts = sum(int(r["attempts"]) for r in facts.tasks.values())
    seeded_failures = int(client.get(sf.faults_key(marker)) or 0)
    pokes = sum(sf.sensor_pokes(r.seed) for r in planned if r.shape == "sensor")
    summary = (
        f"SOAK runs={len(ids)} (+{sum(1 for f in facts.flows.values() if f['parent_id'])} subflow runs) "
        f"completed={finals['Completed']} failed={finals['Failed']} (of the {len(predictable)} a crash left on "
        f"their seeded course: {completed} completed, {predicted['Completed']} predicted) "
        f"task_runs={len(facts.tasks)} executions={executions} attempts={attempts} "
        f"faults: seeded_failures={seeded_failures} failing_for_good={MIX['broken']} sensor_pokes={pokes} "
        f"kill=1 (at {killed_at:.1f}s, {executed_at_kill} executions in, at the planned moment: {on_plan}, "
        f"running then: {sorted(kill.running.values())}) "
        f"crashed={len(verdict.crashed)} repeated_after_kill={len(verdict.repeats_after_kill)} "
        f"refused_events={facts.refused} duplicates={len(verdict.duplicated)} lost={len(verdict.lost)} "
        f"wrong={len(verdict.wrong)} settled={settled} load={load_seconds:.1f}s wall={time.monotonic() - began:.1f}s"
    )
    with capsys.disabled():
        print("\n" + summary, flush=True)
        for what, items in (("LOST", verdict.lost), ("DUPLICATE", verdict.duplicated), ("WRONG", verdict.wrong)):
            for item in items[:20]:
                print(f"  {what}: {item}", flush=True)
        for item in verdict.repeats_after_kill:
            print(f"  repeated after the kill (allowed): {item}", flush=True)
        for trid in verdict.crashed:
            applied = [e["state"] for e in facts.history[trid] if e["applied"]]
            print(f"  crashed, then: {trid} {applied} executions {facts.executions.get(trid)}", flush=True)
    (logs / "summary.txt").write_text(
        json.dumps(
            {"summary": summary, "lost": verdict.lost, "duplicated": verdict.duplicated, "wrong": verdict.wrong,
             "repeats_after_kill": verdict.repeats_after_kill, "crashed": verdict.crashed,
             "unpredictable": verdict.unpredictable},
            indent=1,
        )
    )  # fmt: skip

    hit = set(verdict.crashed) | set(verdict.repeated)
    assert kill.running, "the kill was sent while no task run was surely running on the doomed worker"
    missed = {trid: what for trid, what in kill.running.items() if trid not in hit}
    assert not missed, (
        f"task runs executing on the doomed worker when it was killed were neither Crashed nor run again: {missed} "
        f"(crashed: {verdict.crashed}, repeated: {verdict.repeats_after_kill})"
    )
    assert not verdict.lost, verdict.lost[:20]
    assert not verdict.duplicated, verdict.duplicated[:20]
    assert not verdict.wrong, verdict.wrong[:20]
    assert set(finals) <= {"Completed", "Failed"}, finals
    assert completed == predicted["Completed"], (finals, predicted)
    assert settled, "messages of the soak queue were still queued, reserved or delayed, or events unrecorded"
