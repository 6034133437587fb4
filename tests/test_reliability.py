"""Reliability against real faults: a worker stopped mid-task, Redis restarted mid-flow, the API
killed mid-flow. Every process is real (redis-server, Celery prefork workers, ``python -m
api.server``) and every fault a real signal. Each task counts its executions in Redis
(tests/reliability_flows.py), so what really ran is checked next to what was recorded.

That the API killed mid-run loses no state event is proved by
tests/test_api.py::test_api_killed_mid_run_loses_no_event; here its log lines are. A kill at
some moment of a run rarely lands between the recorder's read, its commit and its
acknowledgement; an API whose recorder dies at exactly those points (tests/crashing_api.py)
shows that replaying the batch it held loses nothing and records nothing twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.devstack.localstack import ApiProcess, api_server, free_port, redis_server, stop_process, worker
from orchestrator.devstack.rabbitmq import RabbitMQServer, rabbitmq_binary
from orchestrator.runstate import keys
from orchestrator.runstate.event_stream import DEAD_LETTERS, RECORDER_GROUP
from tests.api_support import api_database, eventually
from tests.conftest import TEST_BROKER

FLOW_MODULES = ["tests.reliability_flows"]
# Heartbeats every 2 s here (the suite's 1 s otherwise): a crash window of 6 s. The faults in this
# file are real; a test machine busy with other suites can starve a process for a few seconds, and
# the crash detector must not add a fault of its own (a live task declared Crashed).
SLOWER_BEATS = {"ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS": "2"}
# Tests of Redis as the Celery broker (its outages and lost connections); on RabbitMQ the broker
# restart test below stands for them. The run store is on Redis either way.
redis_broker_only = pytest.mark.skipif(TEST_BROKER != "redis", reason="the broker is not Redis in this pass")
FINAL = {"Completed", "Failed", "TimedOut", "Crashed", "UpstreamFailed", "Skipped", "Cancelled"}


# -- helpers -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite, or a fresh PostgreSQL database when ORCHESTRATOR_TEST_DATABASE_URL names a server."""
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    with api_database(tmp_path_factory.mktemp("reliability-db"), admin_url) as url:
        yield url


@pytest.fixture(scope="module")
def api(redis_url: str, database_url: str, worker_logs: Path) -> Iterator[ApiProcess]:
    """An API (routes, recorder, services) on the session's Redis."""
    with api_server(
        redis_url, database_url, log_path=worker_logs / "reliability-api.log", extra_env=SLOWER_BEATS
    ) as server:
        yield server


def submit(http: httpx.Client, flow: str, queue: str, **parameters: Any) -> str:
    """Submit over HTTP to ``queue`` (the test's own worker); the API knows the flow from the worker's announcement."""

    def sent() -> httpx.Response | None:
        response = http.post(f"/flows/{flow}/runs", json={"parameters": parameters, "queue": queue})
        return None if response.status_code == 404 else response  # 404: the worker has not announced it yet

    response = eventually(sent, 30, what=f"flow {flow} known to the API")
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def wait_final(http: httpx.Client, run_id: str, timeout: float = 60) -> dict[str, Any]:
    """The run once the database shows it final."""

    def final() -> dict[str, Any] | None:
        with contextlib.suppress(httpx.HTTPError):
            response = http.get(f"/flow-runs/{run_id}")
            if response.status_code == 200 and response.json()["state"] in FINAL:
                return dict(response.json())
        return None

    return eventually(final, timeout, what=f"flow run {run_id} final in the database")


def applied_history(http: httpx.Client, run_id: str) -> dict[str, list[str]]:
    """Applied states by run id (the flow run's and each of its task runs'), in recorded order."""
    out: dict[str, list[str]] = {}
    for entry in http.get(f"/flow-runs/{run_id}/states").json():
        if entry["applied"]:
            out.setdefault(entry["run_id"], []).append(entry["state"])
    return out


def assert_completed_once(http: httpx.Client, run_id: str, tasks: int, exact: bool = True) -> dict[str, list[str]]:
    """The run and its ``tasks`` task runs are Completed, each Completed exactly once in its history.

    ``exact``: every task run went Running -> Completed and nothing else; otherwise a task run may
    show Running more than once (run again after its process died) but nothing else before Completed.
    Returns the applied history by task label.
    """
    task_runs: list[dict[str, Any]] = http.get(f"/flow-runs/{run_id}/task-runs").json()
    assert len(task_runs) == tasks, task_runs
    assert {t["state"] for t in task_runs} == {"Completed"}, [(t["label"], t["state"]) for t in task_runs]
    history = applied_history(http, run_id)
    assert history[run_id] == ["Pending", "Running", "Completed"], history[run_id]
    by_label = {}
    for task_run in task_runs:
        states = history[task_run["id"]]
        by_label[task_run["label"]] = states
        if exact:
            assert states == ["Running", "Completed"], (task_run["label"], states)
        else:
            assert states[-1] == "Completed" and set(states[:-1]) == {"Running"}, (task_run["label"], states)
    return by_label


def count(client: Any, key: str) -> int:
    """How many times the task counting under ``key`` really ran."""
    return int(client.get(f"test:count:{key}") or 0)


def children_of(pid: int) -> set[int]:
    """The direct child processes of ``pid`` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(entry.name))
    return out


# -- 1. a worker stopped in the middle of a task ----------------------------------------------------
def test_a_warm_shutdown_mid_task_finishes_it_once_and_the_run_completes_on_the_next_worker(
    redis_url: str, http: httpx.Client, worker_logs: Path
) -> None:
    """SIGTERM to the worker while ``first`` runs: Celery lets it finish (once) and leaves;
    ``second`` (sent when ``first`` ended) waits in the queue and the next worker runs it."""
    marker = uuid.uuid4().hex[:8]
    queue = f"rel-warm-{marker}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    logs = worker_logs / f"warm-{marker}.log"
    with worker(
        redis_url, FLOW_MODULES, queues=queue, concurrency=1, log_path=logs, extra_env=SLOWER_BEATS
    ) as stopping:
        run_id = submit(http, "reliable-pair", queue, marker=marker, seconds=3.0)
        eventually(lambda: client.get(f"test:pid:{marker}-first"), 60, what="first running")
        os.kill(stopping.pid, signal.SIGTERM)  # the main process only: Celery's warm shutdown
        assert stopping.wait(60) == 0, logs.read_text()[-3000:]
    assert count(client, f"{marker}-first") == 1  # let finish, not cut off and run again
    assert count(client, f"{marker}-second") == 0  # the stopping worker took nothing new
    with worker(
        redis_url,
        FLOW_MODULES,
        queues=queue,
        concurrency=1,
        log_path=worker_logs / f"warm2-{marker}.log",
        extra_env=SLOWER_BEATS,
    ):
        run = wait_final(http, run_id)
    assert run["state"] == "Completed", run
    assert_completed_once(http, run_id, tasks=2)
    assert [count(client, f"{marker}-{k}") for k in ("first", "second")] == [1, 1]


def test_a_pool_process_killed_mid_task_is_redelivered_and_completes_once(
    redis_url: str, http: httpx.Client, worker_logs: Path
) -> None:
    """SIGKILL to the pool child running ``first`` (not the worker), after it heartbeated, with 3
    tasks queued behind it: task_reject_on_worker_lost puts its message back at the end of the
    queue, so it runs again only after the crash detector's window (6 s) has passed. It must run
    again exactly once and complete; the crash detector must not also declare it Crashed."""
    marker = uuid.uuid4().hex[:8]
    queue = f"rel-child-{marker}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    logs = worker_logs / f"child-{marker}.log"
    with worker(
        redis_url, FLOW_MODULES, queues=queue, concurrency=1, log_path=logs, extra_env=SLOWER_BEATS
    ) as survivor:
        run_id = submit(http, "reliable-backlog", queue, marker=marker, seconds=60.0, pads=3, pad_seconds=2.5)
        trid = str(eventually(lambda: client.get(f"test:trid:{marker}-first"), 60, what="first running"))
        eventually(lambda: client.zscore(keys.HEARTBEATS, trid), 30, interval=0.05, what="first heartbeating")
        pid = int(client.get(f"test:pid:{marker}-first") or 0)
        assert pid in children_of(survivor.pid), "the task runs in a pool child, not in the main process"
        os.kill(pid, signal.SIGKILL)
        run = wait_final(http, run_id)
        assert survivor.poll() is None, "the worker's main process survives the loss of its child"
    assert run["state"] == "Completed", run
    assert_completed_once(http, run_id, tasks=4, exact=False)  # first: Running (again), never Crashed
    assert [count(client, f"{marker}-{k}") for k in ("first", "pad0", "pad1", "pad2")] == [2, 1, 1, 1]
    assert "WorkerLostError" in logs.read_text()


# -- 2. Redis restarted in the middle of flows ------------------------------------------------------
class RestartableRedis:
    """A redis-server keeping its append-only file in ``data_dir``, on a port that stays the same across restarts."""

    def __init__(self, data_dir: Path, fsync: str) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.data_dir = data_dir
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (scripts/setup.sh installs it)"
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", self.fsync, "--dir", str(self.data_dir)]
        with open(self.data_dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        eventually(lambda: self._answers(client), 30, interval=0.05, what=f"redis-server on port {self.port}")

    def _answers(self, client: redis.Redis) -> bool:
        assert self.proc is not None and self.proc.poll() is None, (self.data_dir / "redis.log").read_text()
        with contextlib.suppress(redis.RedisError):
            return bool(client.ping())
        return False

    def stop(self, how: signal.Signals) -> None:
        """SIGTERM (Redis writes its file and leaves) or SIGKILL (a crash: only what was fsynced is kept)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, how)
            self.proc.wait(30)

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@contextlib.contextmanager
def stack_on(
    server: RestartableRedis, tmp_path: Path, logs: Path, queue: str, env: dict[str, str]
) -> Iterator[httpx.Client]:
    """Redis, an API with its own database and one worker (concurrency 2), all on ``server``.

    The API picks its free port once Redis listens on its own: picked before, both could get the same one.
    """
    api: ApiProcess | None = None
    try:
        server.start()
        api = ApiProcess(
            server.url, f"sqlite:///{tmp_path / 'api.db'}", log_path=logs.with_suffix(".api.log"), extra_env=env
        )
        api.start()
        with (
            worker(
                server.url,
                FLOW_MODULES,
                queues=queue,
                concurrency=2,
                log_path=logs.with_suffix(".worker.log"),
                extra_env=env,
            ),
            httpx.Client(base_url=api.url, timeout=15) as http,
        ):
            yield http
    finally:
        if api is not None:
            api.stop()
        server.close()


@pytest.mark.parametrize(
    ("how", "fsync"), [(signal.SIGTERM, "everysec"), (signal.SIGKILL, "always")], ids=["restart", "crash"]
)
def test_redis_restarted_mid_flows_every_run_completes_and_nothing_is_lost(
    redis_url: str, tmp_path: Path, worker_logs: Path, how: signal.Signals, fsync: str
) -> None:
    """5 runs of 3 sleepy tasks (two in parallel, then one after both: a chord) on one worker; Redis
    goes away while tasks run (stopped, or killed with appendfsync always) and comes back on the
    same port with its append-only file. The worker and the API reconnect by themselves; every run
    completes, every task ran exactly once and is recorded Completed exactly once."""
    del redis_url  # requested for the session's environment only (heartbeat interval, result storage)
    marker = uuid.uuid4().hex[:8]
    runs = 5
    server = RestartableRedis(tmp_path / "redis", fsync)
    logs = worker_logs / f"redis-{how.name}-{marker}"
    with stack_on(server, tmp_path, logs, f"rel-redis-{marker}", SLOWER_BEATS) as http:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        run_ids = [
            submit(http, "reliable-diamond", f"rel-redis-{marker}", marker=f"{marker}-{i}", seconds=1.0)
            for i in range(runs)
        ]
        labels = [f"{marker}-{i}-{side}" for i in range(runs) for side in ("left", "right", "last")]
        eventually(lambda: sum(count(client, label) for label in labels) >= 3, 60, what="tasks under way")
        server.stop(how)
        time.sleep(1.0)  # away for as long as its tasks take: they end and send what follows meanwhile
        server.start()
        finished = [wait_final(http, run_id) for run_id in run_ids]
        assert [run["state"] for run in finished] == ["Completed"] * runs, finished
        for run_id in run_ids:
            assert_completed_once(http, run_id, tasks=3)
        executions = {label: count(client, label) for label in labels}
        assert set(executions.values()) == {1}, executions  # 15 tasks, 15 executions


@redis_broker_only
def test_the_worker_app_sends_and_counts_chord_parts_through_a_redis_restart(tmp_path: Path) -> None:
    """What ``tolerate_redis_outages`` gives a running worker's app: a message sent (the next task
    of a chain, a join) and a chord part counted while Redis restarts wait for it, where Celery's
    defaults fail (publishing after about 0.6 s, the result backend at once)."""
    from kombu.exceptions import OperationalError

    from orchestrator.config.settings import Settings
    from orchestrator.transport.celery_app import make_celery_app, tolerate_redis_outages

    server = RestartableRedis(tmp_path / "redis", "everysec")
    try:
        server.start()
        settings = Settings(redis_url=server.url)
        tolerant = make_celery_app("reliability-tolerant", settings)
        tolerate_redis_outages(tolerant, 30)
        plain = make_celery_app("reliability-plain", settings)
        for app in (tolerant, plain):
            assert app.backend.client.ping()  # connected before the outage, as a running worker is
        server.stop(signal.SIGTERM)
        with pytest.raises(redis.ConnectionError):
            plain.backend.client.incr("test:chord-part")
        with pytest.raises(OperationalError):
            plain.send_task("tests.reliability.nothing", queue="rel-plain", ignore_result=True)
        comeback = threading.Timer(1.5, server.start)
        comeback.start()
        try:
            tolerant.send_task("tests.reliability.nothing", queue="rel-tolerant", ignore_result=True)  # waits for Redis
            assert tolerant.backend.client.incr("test:chord-part") == 1
        finally:
            comeback.join()
        client = redis.Redis.from_url(server.url)
        assert client.llen("rel-tolerant") == 1 and client.llen("rel-plain") == 0
    finally:
        server.close()


def test_a_redis_outage_longer_than_the_crash_window_does_not_crash_a_running_task(
    redis_url: str, tmp_path: Path, worker_logs: Path
) -> None:
    """Redis away 5 s (the crash window is 3 heartbeats of 1 s) while ``first`` runs 12 s:
    the task is alive all along and must complete, once."""
    del redis_url
    marker = uuid.uuid4().hex[:8]
    server = RestartableRedis(tmp_path / "redis", "everysec")
    with stack_on(server, tmp_path, worker_logs / f"redis-long-{marker}", f"rel-long-{marker}", {}) as http:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        run_id = submit(http, "reliable-pair", f"rel-long-{marker}", marker=marker, seconds=12.0)
        trid = str(eventually(lambda: client.get(f"test:trid:{marker}-first"), 60, what="first running"))
        eventually(lambda: client.zscore(keys.HEARTBEATS, trid), 30, interval=0.05, what="first heartbeating")
        server.stop(signal.SIGTERM)
        time.sleep(5.0)
        server.start()
        run = wait_final(http, run_id)
        assert run["state"] == "Completed", (run["state"], run["state_message"])
        assert_completed_once(http, run_id, tasks=2)
        assert [count(client, f"{marker}-{k}") for k in ("first", "second")] == [1, 1]


@redis_broker_only
def test_a_connection_lost_to_a_redis_that_stays_up_runs_no_task_twice(
    redis_url: str, tmp_path: Path, worker_logs: Path
) -> None:
    """Every client connection is cut (CLIENT KILL) while ``first`` runs 5 s; Redis itself stays
    up. Celery's worker reconnects and gives back the messages it holds; the one of the task it is
    still running must not be among them (a second copy would start at once), and it must not
    exit on the way (kombu 5.7 made it exit with an AttributeError)."""
    del redis_url
    marker = uuid.uuid4().hex[:8]
    server = RestartableRedis(tmp_path / "redis", "everysec")
    with stack_on(server, tmp_path, worker_logs / f"redis-cut-{marker}", f"rel-cut-{marker}", SLOWER_BEATS) as http:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        run_id = submit(http, "reliable-pair", f"rel-cut-{marker}", marker=marker, seconds=5.0)
        trid = str(eventually(lambda: client.get(f"test:trid:{marker}-first"), 60, what="first running"))
        eventually(lambda: client.zscore(keys.HEARTBEATS, trid), 30, interval=0.05, what="first heartbeating")
        assert client.client_kill_filter(_type="normal", skipme=True) >= 2  # the worker's and the API's
        run = wait_final(http, run_id)
        assert run["state"] == "Completed", (run["state"], run["state_message"])
        assert_completed_once(http, run_id, tasks=2)
        assert [count(client, f"{marker}-{k}") for k in ("first", "second")] == [1, 1]
    log = (worker_logs / f"redis-cut-{marker}.worker.log").read_text()
    assert "Connection to broker lost" in log and "Unrecoverable error" not in log


@pytest.mark.skipif(TEST_BROKER != "amqp", reason="RabbitMQ pass only (ORCHESTRATOR_TEST_BROKER=amqp)")
@pytest.mark.skipif(rabbitmq_binary() is None, reason="rabbitmq-server is not installed")
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["restart", "crash"])
def test_rabbitmq_restarted_mid_flows_every_run_completes_and_nothing_is_lost(
    redis_url: str, tmp_path: Path, worker_logs: Path, how: signal.Signals
) -> None:
    """The RabbitMQ counterpart of the Redis restart above: 5 runs of 3 sleepy tasks (a chord) on one
    worker, and a private rabbitmq-server (the shared one is not ours to stop) stopped or killed
    while tasks run, then started again on the same port with its data. Tasks that end meanwhile
    wait to send what follows; the broker gives back the messages that were not acknowledged and
    the worker reconnects. Every run completes, every task ran once and is recorded once.

    On a Redis of its own: every worker and API on a run store sends what it keeps there (due
    retries, resumed bodies) through its own broker, so the session's, on the session's broker,
    must not share this one's run store."""
    del redis_url  # the session's settings (heartbeats, result storage), not its Redis
    marker = uuid.uuid4().hex[:8]
    queue = f"rel-amqp-{marker}"
    runs = 5
    logs = worker_logs / f"amqp-{how.name}-{marker}"
    broker = RabbitMQServer(tmp_path / "rabbitmq", free_port(), free_port(), logs.with_suffix(".rabbitmq.log"))
    env = SLOWER_BEATS | {"ORCHESTRATOR_BROKER_URL": broker.url}
    try:
        broker.start()
        with (
            redis_server() as redis_url,
            api_server(redis_url, f"sqlite:///{tmp_path / 'api.db'}", logs.with_suffix(".api.log"), env) as api,
            worker(redis_url, FLOW_MODULES, queues=queue, concurrency=2, log_path=logs.with_suffix(".worker.log"),
                   extra_env=env),
            httpx.Client(base_url=api.url, timeout=15) as http,
        ):  # fmt: skip
            client = redis.Redis.from_url(redis_url, decode_responses=True)
            run_ids = [
                submit(http, "reliable-diamond", queue, marker=f"{marker}-{i}", seconds=1.0) for i in range(runs)
            ]
            labels = [f"{marker}-{i}-{side}" for i in range(runs) for side in ("left", "right", "last")]
            eventually(lambda: sum(count(client, label) for label in labels) >= 3, 60, what="tasks under way")
            broker.stop(how)
            broker.start()
            finished = [wait_final(http, run_id, timeout=120) for run_id in run_ids]
            assert [run["state"] for run in finished] == ["Completed"] * runs, finished
            for run_id in run_ids:
                assert_completed_once(http, run_id, tasks=3)
            executions = {label: count(client, label) for label in labels}
            assert set(executions.values()) == {1}, executions  # 15 tasks, 15 executions
    finally:
        broker.close()


@pytest.mark.skipif(TEST_BROKER != "amqp", reason="RabbitMQ pass only (ORCHESTRATOR_TEST_BROKER=amqp)")
@pytest.mark.skipif(rabbitmq_binary() is None, reason="rabbitmq-server is not installed")
def test_a_task_running_through_a_rabbitmq_restart_is_not_run_again_by_its_redelivered_message(
    redis_url: str, tmp_path: Path, worker_logs: Path
) -> None:
    """RabbitMQ restarted while ``first`` runs (it waits for a gate the test opens, so it surely
    outlives the restart): the broker delivers its unacknowledged message again to the reconnected
    worker, which has a free pool process. That execution must see ``first`` still heartbeating and
    not run it a second time, nor give back the concurrency slot ``first`` holds (same task run id);
    ``first`` then completes once and ``second`` follows.

    A private rabbitmq-server and Redis, as the restart test above (the same reasons)."""
    from tests import reliability_flows

    del redis_url  # the session's settings (heartbeats, result storage), not its Redis
    marker = uuid.uuid4().hex[:8]
    queue = f"rel-redeliver-{marker}"
    logs = worker_logs / f"amqp-redeliver-{marker}"
    broker = RabbitMQServer(tmp_path / "rabbitmq", free_port(), free_port(), logs.with_suffix(".rabbitmq.log"))
    env = SLOWER_BEATS | {"ORCHESTRATOR_BROKER_URL": broker.url}
    worker_log = logs.with_suffix(".worker.log")
    try:
        broker.start()
        with (
            redis_server() as redis_url,
            api_server(redis_url, f"sqlite:///{tmp_path / 'api.db'}", logs.with_suffix(".api.log"), env) as api,
            worker(redis_url, FLOW_MODULES, queues=queue, concurrency=2, log_path=worker_log, extra_env=env),
            httpx.Client(base_url=api.url, timeout=15) as http,
        ):
            client = redis.Redis.from_url(redis_url, decode_responses=True)
            limit = {"tag": reliability_flows.GATED_TAG, "limit": 1}
            assert http.post("/concurrency-limits", json=limit).status_code == 200
            run_id = submit(http, "reliable-gated", queue, marker=marker)
            trid = str(eventually(lambda: client.get(f"test:trid:{marker}-first"), 60, what="first running"))
            eventually(lambda: client.zscore(keys.HEARTBEATS, trid), 30, interval=0.05, what="first heartbeating")
            broker.stop(signal.SIGTERM)
            broker.start()

            def redelivered() -> bool:  # refused (this fix), or run a second time (what it prevents)
                refused = f"task run {trid}: attempt 1 was delivered again" in worker_log.read_text()
                return refused or count(client, f"{marker}-first") > 1

            eventually(redelivered, 120, what="first's message delivered again to the reconnected worker")
            time.sleep(2.0)  # the refused copy has returned: a slot it gave back would be gone (one round trip)
            assert client.zscore(keys.slots(reliability_flows.GATED_TAG), trid) is not None, "first's slot"
            client.set(f"test:gate:{marker}-first", "1")
            run = wait_final(http, run_id, timeout=120)
            assert run["state"] == "Completed", (run["state"], run["state_message"])
            assert_completed_once(http, run_id, tasks=2)
            assert [count(client, f"{marker}-{k}") for k in ("first", "second")] == [1, 1]
    finally:
        broker.close()


@pytest.mark.skipif(TEST_BROKER != "redis", reason="flags a message in the Redis broker's list, as kombu restores it")
def test_retries_of_a_redelivered_message_are_sent_anew_not_flagged_redelivered(
    redis_url: str, http: httpx.Client, worker_logs: Path
) -> None:
    """The redelivery guard refuses a message flagged redelivered while its task run heartbeats; it
    rests on the messages the orchestrator builds from a request (a retry at once through
    ``task.retry``, a delayed retry kept in Redis) never carrying the flag, also when that request was
    a redelivery. The task's first message is flagged the way kombu's Redis transport restores one
    (``headers`` and ``delivery_info``), before a worker consumes its queue; the task fails twice
    (retry at once, then after a second) and completes: three executions, only the first flagged.
    A retry flagged and refused would leave the run unfinished."""
    marker = uuid.uuid4().hex[:8]
    queue, probe = f"rel-flags-{marker}", f"{marker}-probe"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    logs = worker_logs / f"flags-{marker}"
    with worker(redis_url, FLOW_MODULES, queues=queue, concurrency=1, log_path=logs.with_suffix(".flow.log")):
        run_id = submit(http, "reliable-redelivered-retries", queue, marker=marker)
        message = json.loads(eventually(lambda: client.lindex(probe, 0), 60, what="the task's message queued"))
        message["headers"]["redelivered"] = True  # what kombu's Redis transport does to what it restores
        message["properties"]["delivery_info"]["redelivered"] = True
        client.lset(probe, 0, json.dumps(message))
        with worker(redis_url, FLOW_MODULES, queues=probe, concurrency=1, log_path=logs.with_suffix(".task.log")):
            run = wait_final(http, run_id, timeout=90)
    assert run["state"] == "Completed", (run["state"], run["state_message"])
    assert client.lrange(f"test:flags:{marker}", 0, -1) == ["1", "0", "0"]  # redelivered once, retries sent anew


@pytest.mark.skipif(TEST_BROKER != "redis", reason="delivers a copied message again through the Redis broker's list")
def test_a_stale_message_leaves_the_slot_of_the_newer_attempt_running(
    redis_url: str, http: httpx.Client, worker_logs: Path
) -> None:
    """A task tagged with a limit of 1 fails once and runs again (attempt 2, holding the slot until
    the test opens its gate). Attempt 1's message, copied before a worker took it, is then delivered
    again: it is stale (a newer attempt was sent) and does not run, and the slot it found held by its
    task run id stays with attempt 2; given back, one more tagged task run would pass the limit."""
    from tests import reliability_flows

    marker = uuid.uuid4().hex[:8]
    queue, probe = f"rel-stale-{marker}", f"{marker}-probe"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    logs = worker_logs / f"stale-{marker}"
    task_log = logs.with_suffix(".task.log")
    tag = reliability_flows.STALE_TAG
    assert http.post("/concurrency-limits", json={"tag": tag, "limit": 1}).status_code == 200
    try:
        with worker(redis_url, FLOW_MODULES, queues=queue, concurrency=1, log_path=logs.with_suffix(".flow.log")):
            run_id = submit(http, "reliable-stale-slot", queue, marker=marker)
            attempt_one = json.loads(eventually(lambda: client.lindex(probe, 0), 60, what="attempt 1 queued"))
            with worker(redis_url, FLOW_MODULES, queues=probe, concurrency=2, log_path=task_log):
                eventually(lambda: count(client, f"{marker}-first") == 2, 60, what="attempt 2 running")
                trid = str(client.get(f"test:trid:{marker}-first"))
                eventually(lambda: client.zscore(keys.slots(tag), trid), 30, what="attempt 2 holding the slot")
                attempt_one["properties"]["delivery_tag"] = uuid.uuid4().hex  # a delivery of its own for kombu
                client.lpush(probe, json.dumps(attempt_one))
                eventually(
                    lambda: f"task run {trid}: attempt 1 is stale" in task_log.read_text(),
                    60,
                    what="attempt 1 delivered again, stale",
                )
                time.sleep(1.0)  # that execution has returned: a slot it gave back would be gone (one round trip)
                assert client.zscore(keys.slots(tag), trid) is not None, "attempt 2's slot given back by attempt 1"
                client.set(f"test:gate:{marker}-first", "1")
                run = wait_final(http, run_id, timeout=90)
        assert run["state"] == "Completed", (run["state"], run["state_message"])
        assert count(client, f"{marker}-first") == 2  # attempt 1 failed, attempt 2 ran; the stale copy did not
    finally:
        assert http.delete(f"/concurrency-limits/{tag}").status_code == 204


@pytest.mark.skipif(TEST_BROKER != "redis", reason="reads the order of the Redis broker's commands")
def test_a_retried_task_gives_its_slot_back_before_its_next_attempt_is_sent(
    redis_url: str, http: httpx.Client, worker_logs: Path
) -> None:
    """The task (a limit of 1 on its tag) fails once and is retried at once. Its slot must go back
    before attempt 2's message goes out: given back after, attempt 2 may already run on another
    process, find the slot held by its own task run id and keep it, and then lose it to attempt 1's
    late release, running with no slot while another task run takes it. Redis's MONITOR shows
    the order of the two commands (the race itself is rare: the stale-message test above met it)."""
    from tests import reliability_flows

    marker = uuid.uuid4().hex[:8]
    queue, probe = f"rel-order-{marker}", f"{marker}-probe"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    slots_key = keys.slots(reliability_flows.STALE_TAG)
    logs = worker_logs / f"order-{marker}"
    seen: list[str] = []  # "push" (a message to the task queue) and "release" (ZREM of a slot), in order
    watching = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            watching.set()
            for entry in monitor.listen():
                words = str(entry["command"]).split(" ")
                if words[0].upper() == "LPUSH" and words[1:2] == [probe]:
                    seen.append("push")
                elif words[0].upper() == "ZREM" and words[1:2] == [slots_key]:
                    seen.append("release")
                if stop.is_set():
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    assert watching.wait(10)
    assert http.post("/concurrency-limits", json={"tag": reliability_flows.STALE_TAG, "limit": 1}).status_code == 200
    try:
        with (
            worker(redis_url, FLOW_MODULES, queues=queue, concurrency=1, log_path=logs.with_suffix(".flow.log")),
            worker(redis_url, FLOW_MODULES, queues=probe, concurrency=2, log_path=logs.with_suffix(".task.log")),
        ):
            run_id = submit(http, "reliable-stale-slot", queue, marker=marker)
            eventually(lambda: count(client, f"{marker}-first") == 2, 60, what="attempt 2 running")
            client.set(f"test:gate:{marker}-first", "1")
            run = wait_final(http, run_id, timeout=90)
        assert run["state"] == "Completed", (run["state"], run["state_message"])
    finally:
        stop.set()
        client.ping()  # a command for the monitor to see, so it stops
        watcher.join(10)
        assert http.delete(f"/concurrency-limits/{reliability_flows.STALE_TAG}").status_code == 204
    # attempt 1 sent, its slot given back, attempt 2 sent, attempt 2's slot given back at its end
    assert seen[:4] == ["push", "release", "push", "release"], seen


def test_a_worker_killed_after_its_last_task_ended_but_before_the_flow_run_did_leaves_nothing_running(
    redis_url: str, http: httpx.Client, worker_logs: Path
) -> None:
    """The only task fails, and its failure hook kills its whole worker: the task run is final,
    the flow run not ended yet, and no worker will come back for it before the visibility
    timeout (5 min). The services end it as the worker would have: Failed, with the reason."""
    marker = uuid.uuid4().hex[:8]
    queue = f"rel-stall-{marker}"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with worker(redis_url, FLOW_MODULES, queues=queue, concurrency=1, log_path=worker_logs / f"stall-{marker}.log",
                extra_env=SLOWER_BEATS) as doomed:  # fmt: skip
        run_id = submit(http, "reliable-stall", queue, marker=marker)
        eventually(lambda: doomed.poll() is not None, 60, what="the worker killed by the failure hook")
    run = wait_final(http, run_id, timeout=60)
    assert run["state"] == "Failed", run
    assert f"planned failure {marker}" in run["state_message"]
    assert count(client, marker) == 1
    history = applied_history(http, run_id)
    assert history[run_id] == ["Pending", "Running", "Failed"], history[run_id]
    (task_run,) = http.get(f"/flow-runs/{run_id}/task-runs").json()
    assert history[task_run["id"]] == ["Running", "Failed"]


# -- 3. the API killed in the middle of flows: its log lines -----------------------------------------
def test_api_killed_mid_flow_loses_no_log_line_and_records_none_twice(
    redis_url: str, api: ApiProcess, http: httpx.Client, worker_logs: Path
) -> None:
    """2 runs of 2 tasks each logging 10 lines 0.3 s apart; the API is killed (SIGKILL) once the
    first lines are recorded, the runs end without it, and it is started again: every line of
    the 40 is in the database exactly once, and every state too."""
    from orchestrator.runs.handle import FlowRun

    marker = uuid.uuid4().hex[:8]
    queue = f"rel-api-{marker}"
    lines = 10
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    expected = {
        i: sorted(f"{marker}-{i}-{side} line {n} of {lines}" for side in ("a", "b") for n in range(1, lines + 1))
        for i in (0, 1)
    }

    def recorded(run_id: str) -> list[str]:
        got = http.get(f"/flow-runs/{run_id}/logs", params={"limit": 10_000}).json()
        assert all(line["task_run_id"] for line in got)
        return sorted(line["message"].split("] ", 1)[-1] for line in got)  # after the "[task name id] " prefix

    logs = worker_logs / f"api-{marker}.log"
    with worker(redis_url, FLOW_MODULES, queues=queue, concurrency=2, log_path=logs, extra_env=SLOWER_BEATS):
        run_ids = [submit(http, "reliable-talk", queue, marker=f"{marker}-{i}", lines=lines, pause=0.3) for i in (0, 1)]
        before = eventually(lambda: recorded(run_ids[0]), 60, interval=0.1, what="the first log lines recorded")
        api.kill()  # mid-flow, mid-logging: the recorder dies with whatever batch it held
        assert len(before) < len(expected[0])
        for run_id in run_ids:
            assert FlowRun(run_id).wait(60).value == "Completed"  # the runs go on without the API
        api.start()
        for i, run_id in enumerate(run_ids):
            assert wait_final(http, run_id)["state"] == "Completed"
            assert_completed_once(http, run_id, tasks=2)

            def all_lines(run_id: str = run_id) -> list[str] | None:
                got = recorded(run_id)
                return got if len(got) >= 2 * lines else None

            got = eventually(all_lines, 60, what=f"{2 * lines} log lines of {run_id}")
            assert got == expected[i]  # every line, none twice
            assert len(client.lrange(keys.flow_logs(run_id), 0, -1)) == 2 * lines  # what the workers shipped
    assert [count(client, f"{marker}-{i}-{side}") for i in (0, 1) for side in ("a", "b")] == [1, 1, 1, 1]


# -- the recorder killed between reading a batch and acknowledging it ----------------------------
RECORDER_BATCH = 7  # events per transaction: the runs' events fill several batches
CRASH_AT = 3  # the batch the crashing API dies in


def recorded_event_ids(database_url: str) -> list[str]:
    """The stream ids of every state event and log line the database holds (with repeats, if any)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT event_id FROM state_event UNION ALL SELECT event_id FROM log_line"))
            return [str(row[0]) for row in rows]
    finally:
        engine.dispose()


def recorder_settled(client: redis.Redis) -> bool:
    """The recorder has read every event in the stream and acknowledged each one."""
    groups = [g for g in client.xinfo_groups(keys.EVENTS_STREAM) if g["name"] == RECORDER_GROUP]
    last = client.xinfo_stream(keys.EVENTS_STREAM)["last-generated-id"]
    return bool(groups) and groups[0]["pending"] == 0 and groups[0]["last-delivered-id"] == last


@pytest.mark.parametrize("moment", ["after-commit", "before-commit"])
def test_the_recorder_killed_between_reading_a_batch_and_acknowledging_it_loses_no_event_and_records_none_twice(
    redis_url: str, tmp_path: Path, worker_logs: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """2 runs of 2 tasks each logging 10 lines end while no API runs: their events (states and
    log lines) wait in the stream. An API whose recorder applies them 7 at a time dies in batch 3
    (tests/crashing_api.py): once that batch is committed but not acknowledged, or once it is
    read and written but not committed. A new API replays what was left: every log line and every
    state in the database exactly once, the histories as if nothing had happened, no event
    refused as a duplicate.

    The crash is not a race with a kill: it happens at the same point of the recorder's loop
    every time (between the commit and the acknowledgement, or between the read and the commit),
    which a SIGKILL at some moment of a run almost never hits."""
    del redis_url  # the session's environment (result storage), not its Redis: the recorder has one of its own
    from tests import reliability_flows
    from tests.api_support import sdk_settings
    from tests.crashing_api import CRASH_EXIT

    marker = uuid.uuid4().hex[:8]
    queue = f"rel-rec-{marker}"
    lines = 10
    expected = {
        i: sorted(f"{marker}-{i}-{side} line {n} of {lines}" for side in ("a", "b") for n in range(1, lines + 1))
        for i in (0, 1)
    }
    logs = worker_logs / f"recorder-{moment}-{marker}"
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    with (
        redis_server() as own_url,
        api_database(tmp_path, admin_url) as database,
        sdk_settings(monkeypatch, ORCHESTRATOR_REDIS_URL=own_url),
    ):
        client = redis.Redis.from_url(own_url, decode_responses=True)
        with worker(
            own_url, FLOW_MODULES, queues=queue, concurrency=2, log_path=logs.with_suffix(".worker.log"),
            extra_env=SLOWER_BEATS,
        ):  # fmt: skip
            runs = [
                reliability_flows.reliable_talk.apply_async(
                    {"marker": f"{marker}-{i}", "lines": lines, "pause": 0.05}, queue=queue
                )
                for i in (0, 1)
            ]
            for run in runs:
                assert run.wait(60).value == "Completed"  # no API: every event waits in the stream
        stream = [(sid, json.loads(fields["event"])) for sid, fields in client.xrange(keys.EVENTS_STREAM)]
        assert len(stream) > RECORDER_BATCH * CRASH_AT, stream  # the doomed batch is full, events follow it
        log_ids = {sid for sid, event in stream if event.get("kind") == "log"}
        assert len(log_ids) == 4 * lines

        crashing = ApiProcess(
            own_url,
            database,
            extra_env=SLOWER_BEATS
            | {
                "ORCHESTRATOR_RECORDER_BATCH_SIZE": str(RECORDER_BATCH),
                "TEST_RECORDER_CRASH": moment,
                "TEST_RECORDER_CRASH_AT": str(CRASH_AT),
            },
        )
        with open(logs.with_suffix(".crashing-api.log"), "wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "tests.crashing_api", "--host", crashing.host, "--port", str(crashing.port),
                 "--log-level", "warning"],
                env=crashing.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            try:
                assert server.wait(90) == CRASH_EXIT  # it died where it was told to, not elsewhere
            finally:
                stop_process(server, timeout=5)
        # what the dead recorder left in the database: its batches before the doomed one, and the
        # doomed one too if it died after the commit
        committed_batches = CRASH_AT if moment == "after-commit" else CRASH_AT - 1
        head = {sid for sid, _ in stream[: RECORDER_BATCH * committed_batches]}
        left = recorded_event_ids(database)
        assert sorted(left) == sorted(head), moment  # each event of this flow is one row
        # the stream dropped the batches it acknowledged, and kept every event from the doomed batch on
        ours = {sid for sid, _ in stream}
        kept = [sid for sid, _ in client.xrange(keys.EVENTS_STREAM) if sid in ours]
        assert kept == [sid for sid, _ in stream[RECORDER_BATCH * (CRASH_AT - 1) :]], moment

        with (
            api_server(own_url, database, log_path=logs.with_suffix(".api.log"), extra_env=SLOWER_BEATS) as api,
            httpx.Client(base_url=api.url, timeout=15) as http,
        ):
            eventually(lambda: recorder_settled(client), 60, what="every event read and acknowledged again")
            for i, run in enumerate(runs):
                assert wait_final(http, run.id)["state"] == "Completed"
                assert_completed_once(http, run.id, tasks=2)  # each state once in each history
                got = http.get(f"/flow-runs/{run.id}/logs", params={"limit": 10_000}).json()
                assert sorted(line["message"].split("] ", 1)[-1] for line in got) == expected[i]  # each line once
        assert sorted(recorded_event_ids(database)) == sorted(sid for sid, _ in stream)  # every event, none twice
        assert not [sid for sid, _ in client.xrange(keys.EVENTS_STREAM) if sid in ours]  # recorded: out of Redis
        assert client.llen(DEAD_LETTERS) == 0, client.lrange(DEAD_LETTERS, 0, -1)  # no event refused on the way


# -- the API down while the fleet appends more events than the stream's old cap --------------------
OLD_CAP = 50  # ORCHESTRATOR_EVENTS_MAXLEN given to the worker: the stream trimmed itself to it at XADD


def test_events_past_the_old_stream_cap_wait_for_the_api_and_each_is_recorded_once(
    redis_url: str, tmp_path: Path, worker_logs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """6 runs of 2 tasks logging 20 lines each end while no API runs: about 280 events, over five
    times the cap the worker is given (ORCHESTRATOR_EVENTS_MAXLEN=50 trimmed the oldest entries at
    XADD, recorded or not; it is read no more). Every event waits in the stream. An API without its
    services reports the backlog (a health warning past ORCHESTRATOR_EVENTS_BACKLOG_WARN, the
    gauge); an API with its recorder then writes each event once: every state history complete,
    every log line once, no stream id twice, and the stream empty afterwards."""
    del redis_url  # the session's environment (result storage), not its Redis: the stream here starts empty
    from tests import reliability_flows
    from tests.api_support import sdk_settings

    marker = uuid.uuid4().hex[:8]
    queue = f"rel-cap-{marker}"
    lines, runs_count = 20, 6
    logs = worker_logs / f"backlog-{marker}"
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    with (
        redis_server() as own_url,
        api_database(tmp_path, admin_url) as database,
        sdk_settings(monkeypatch, ORCHESTRATOR_REDIS_URL=own_url),
    ):
        client = redis.Redis.from_url(own_url, decode_responses=True)
        with worker(
            own_url, FLOW_MODULES, queues=queue, concurrency=2, log_path=logs.with_suffix(".worker.log"),
            extra_env=SLOWER_BEATS | {"ORCHESTRATOR_EVENTS_MAXLEN": str(OLD_CAP)},
        ):  # fmt: skip
            runs = [
                reliability_flows.reliable_talk.apply_async(
                    {"marker": f"{marker}-{i}", "lines": lines, "pause": 0.0}, queue=queue
                )
                for i in range(runs_count)
            ]
            for run in runs:
                assert run.wait(60).value == "Completed"  # no API: every event waits in the stream
        stream = [(sid, json.loads(fields["event"])) for sid, fields in client.xrange(keys.EVENTS_STREAM)]
        log_events = [event for _, event in stream if event.get("kind") == "log"]
        assert len(log_events) == runs_count * 2 * lines  # not one trimmed, the oldest included
        assert (stream[0][1].get("kind"), stream[0][1].get("id")) == ("flow_run", runs[0].id)
        assert len(stream) > 5 * OLD_CAP

        warn = {"ORCHESTRATOR_EVENTS_BACKLOG_WARN": str(OLD_CAP)}
        with api_server(
            own_url, database, log_path=logs.with_suffix(".quiet-api.log"),
            extra_env=SLOWER_BEATS | warn | {"ORCHESTRATOR_API_SERVICES": "false"},
        ) as quiet:  # fmt: skip
            health = httpx.get(f"{quiet.url}/health", timeout=15).json()
            assert health["status"] == "ok" and health["events_backlog"] == len(stream), health
            assert len(health["warnings"]) == 1 and "ORCHESTRATOR_EVENTS_BACKLOG_WARN=50" in health["warnings"][0]
            scraped = httpx.get(quiet.url.removesuffix("/api") + "/metrics", timeout=15).text
            assert f"orchestrator_events_backlog {float(len(stream))}" in scraped.splitlines(), scraped

        with (
            api_server(own_url, database, log_path=logs.with_suffix(".api.log"), extra_env=SLOWER_BEATS | warn) as api,
            httpx.Client(base_url=api.url, timeout=15) as http,
        ):
            eventually(lambda: recorder_settled(client), 60, what="every event read and acknowledged")
            for i, run in enumerate(runs):
                assert wait_final(http, run.id)["state"] == "Completed"
                assert_completed_once(http, run.id, tasks=2)  # each state once in each history
                got = http.get(f"/flow-runs/{run.id}/logs", params={"limit": 10_000}).json()
                expected = sorted(f"{marker}-{i}-{s} line {n} of {lines}" for s in "ab" for n in range(1, lines + 1))
                assert sorted(line["message"].split("] ", 1)[-1] for line in got) == expected  # each line once
            health = http.get("/health").json()
            assert (health["events_backlog"], health["warnings"]) == (0, []), health
        assert sorted(recorded_event_ids(database)) == sorted(sid for sid, _ in stream)  # every event, none twice
        assert client.xlen(keys.EVENTS_STREAM) == 0  # recorded: out of Redis


def test_a_worker_killed_right_after_its_tasks_end_has_shipped_every_line_they_logged(
    redis_url: str, worker_logs: Path
) -> None:
    """Two tasks log 5 lines each with no pause, well inside the shipper's half-second timer,
    and end; the moment the run is Completed the whole worker is killed (SIGKILL to its process
    group: no shutdown, no atexit). Every line is in the run's logs: a task's lines are flushed
    when its function returns, before its end is recorded, not only by the timer."""
    from tests import reliability_flows

    marker = uuid.uuid4().hex[:8]
    queue = f"rel-flush-{marker}"
    lines = 5
    with worker(
        redis_url, FLOW_MODULES, queues=queue, concurrency=2, log_path=worker_logs / f"flush-{marker}.log"
    ) as proc:
        run = reliability_flows.reliable_talk.apply_async({"marker": marker, "lines": lines, "pause": 0.0}, queue=queue)
        assert run.wait(60).value == "Completed"
        os.killpg(proc.pid, signal.SIGKILL)
    expected = sorted(f"{marker}-{side} line {n} of {lines}" for side in ("a", "b") for n in range(1, lines + 1))
    assert sorted(line["message"].split("] ", 1)[-1] for line in run.logs()) == expected  # after "[task run] "


def test_a_task_run_shows_awaiting_retry_only_once_its_retry_is_kept_and_it_left_the_crash_detector(
    redis_url: str, worker_logs: Path
) -> None:
    """Between an attempt's failure and the keeping of its retry its on_retry hooks run (1.5 s
    here). Had the state shown AwaitingRetry during them, a worker killed then would have its task
    run declared Crashed though it showed an attempt over; the state is written in the round trip
    that keeps the retry and takes the execution off the crash detector's set."""
    from tests import reliability_flows

    marker = uuid.uuid4().hex[:8]
    queue = f"rel-retry-hook-{marker}"
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    with worker(
        redis_url, FLOW_MODULES, queues=queue, concurrency=1, log_path=worker_logs / f"retry-hook-{marker}.log"
    ):
        run = reliability_flows.reliable_retry_slow_hook.apply_async({"marker": marker}, queue=queue)
        seen_running_after_failure = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            rows = run.task_runs()
            if rows and rows[0].get("state") == "AwaitingRetry":
                trid = rows[0]["id"]
                assert store.zscore(keys.HEARTBEATS, trid) is None  # off the crash detector
                kept = [m for m in store.zrange(keys.DELAYED, 0, -1) if trid in m]
                assert kept, "AwaitingRetry shows, but its next attempt is not kept"
                break
            if rows and rows[0].get("state") == "Running" and store.get(f"test:count:{marker}") == "1":
                seen_running_after_failure = True  # the attempt failed; its hook runs, the state waits
            time.sleep(0.005)
        else:
            raise AssertionError(f"never AwaitingRetry: {run.task_runs()}")
        assert seen_running_after_failure
        assert run.wait(60).value == "Completed"


def test_a_worker_killed_while_its_task_waits_for_a_retry_does_not_crash_that_task_run(
    redis_url: str, http: httpx.Client, worker_logs: Path
) -> None:
    """A task fails its first attempt and waits 8 s for its retry (in Redis's delayed set); the
    moment it is AwaitingRetry its worker is SIGKILLed, well within one heartbeat (2 s here). The
    attempt was over, so the crash detector must not declare the task run Crashed (which used up
    its retry and counted a crash the kill never caused): a new worker runs attempt 2 as planned."""
    from tests import reliability_flows

    marker = uuid.uuid4().hex[:8]
    queue = f"rel-retry-{marker}"
    logs = worker_logs / f"retry-kill-{marker}"
    with worker(
        redis_url,
        FLOW_MODULES,
        queues=queue,
        concurrency=1,
        log_path=logs.with_suffix(".1.log"),
        extra_env=SLOWER_BEATS,
    ) as proc:
        run = reliability_flows.reliable_retry_later.apply_async({"marker": marker}, queue=queue)

        def waiting_for_retry() -> bool:
            return any(t.get("state") == "AwaitingRetry" for t in run.task_runs())

        eventually(waiting_for_retry, 30, interval=0.02, what="the task AwaitingRetry")
        os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(float(SLOWER_BEATS["ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS"]) * 4)  # past the crash window
    with worker(
        redis_url,
        FLOW_MODULES,
        queues=queue,
        concurrency=1,
        log_path=logs.with_suffix(".2.log"),
        extra_env=SLOWER_BEATS,
    ):
        assert run.wait(60).value == "Completed"
    [task_run] = run.task_runs()
    assert (task_run["state"], int(task_run["attempts"])) == ("Completed", 2)

    def recorded() -> list[str] | None:
        states = [e["state"] for e in http.get(f"/flow-runs/{run.id}/states").json()]
        return states if states[-1:] == ["Completed"] else None

    states = eventually(recorded, 30, what="the run's history recorded to its end")
    assert "Crashed" not in states, states
