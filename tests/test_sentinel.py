"""Redis behind Sentinel: ``redis+sentinel://`` for the run store, the broker and the result backend.

The failover test runs everything for real: a master, a replica and three sentinels
(``redis-server --sentinel``) on free ports, a Celery prefork worker and the API process, all
given the one ``redis+sentinel://`` URL. The master is SIGKILLed while flows run; the sentinels
promote the replica, and every client finds it through them. Executions are counted in files
(tests/sentinel_flows.py), outside the Redis that fails over.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from pydantic import ValidationError

from orchestrator.config.redis_urls import parse_sentinel_url
from orchestrator.config.settings import Settings
from orchestrator.devstack.localstack import api_server, redis_server, worker
from orchestrator.errors import ConfigurationError
from orchestrator.runstate import keys
from orchestrator.runstate.connection import ScriptSafeRedis, outage_retry
from orchestrator.transport.celery_app import make_celery_app
from tests.api_support import eventually
from tests.sentinel_flows import executions, starts
from tests.sentinel_support import SentinelGroup, sentinel_group
from tests.test_reliability import SLOWER_BEATS, assert_completed_once, submit, wait_final

FLOW_MODULES = ["tests.sentinel_flows"]
QUEUE = "sentinel"


# -- the URL form: no servers needed ------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://h1:26379;sentinel://h2:26379", "cannot name the master"),
        ("redis+sentinel://h1:26379,h2:26379", "the master's name is missing"),
        ("redis+sentinel://h1:port/mymaster", "port that is not a number"),
        ("redis+sentinel:///mymaster/0", "no sentinel host"),
        ("redis+sentinel://h1/mymaster/zero", "'zero' is not a number"),
        ("redis+sentinel://h1/mymaster/0?master=x", "unknown option master"),
        ("rediss+sentinel://:pw@h1/mymaster", "TLS through Sentinel is not supported"),
    ],
)
def test_a_sentinel_url_the_product_cannot_use_is_refused_with_the_form_to_write(url: str, says: str) -> None:
    for setting in ("redis_url", "broker_url", "result_backend_url"):
        with pytest.raises(ValidationError) as caught:
            Settings(**{setting: url})
        text = str(caught.value)
        assert says in text and f"ORCHESTRATOR_{setting.upper()}" in text, text
        assert "redis+sentinel://[:password@]host1:26379,host2:26379/<master name>/<db>" in text
        assert ":pw@" not in text  # the input is not echoed: it may carry a password


def test_one_sentinel_url_is_translated_for_kombu_and_celerys_result_backend() -> None:
    url = "redis+sentinel://:s%40cret@10.0.0.1:26379,10.0.0.2,[::1]:26380/prod/3?sentinel_password=sp"
    where = parse_sentinel_url(url)
    assert where.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("::1", 26380))
    assert (where.master, where.db, where.password, where.sentinel_password) == ("prod", 3, "s@cret", "sp")
    app = make_celery_app("sentinel-translation", Settings(redis_url=url))
    kombu_form = ":s%40cret@10.0.0.1:26379/3;sentinel://:s%40cret@10.0.0.2:26379/3;sentinel://:s%40cret@[::1]:26380/3"
    assert app.conf.broker_url == "sentinel://" + kombu_form
    for options in (app.conf.broker_transport_options, app.conf.result_backend_transport_options):
        assert options["master_name"] == "prod"
        assert options["sentinel_kwargs"]["password"] == "sp"
    assert type(app.backend).__name__ == "OutageTolerantSentinelBackend"
    assert type(make_celery_app("sentinel-send", Settings(redis_url=url), send_only=True).backend).__name__ == (
        "SendOnlySentinelBackend"
    )
    with pytest.raises(ConfigurationError, match="the master's name is missing"):
        parse_sentinel_url("redis+sentinel://h1")
    assert "s%40cret" not in repr(Settings(redis_url=url)) and "sp" not in repr(Settings(redis_url=url)).split("?")[1]


# -- scripts on a server that lost them between the load and the send ----------------------------
def test_a_pipeline_sent_again_on_a_server_without_its_scripts_loads_them_first() -> None:
    """What a failover (or a restart) does to a pipeline in flight: redis-py loaded its scripts,
    the connection is lost, and the retry lands on a server with no script cache. Without
    ScriptSafeRedis every EVALSHA of the batch answers NOSCRIPT and its steps are lost."""
    with redis_server() as url:
        admin = redis.Redis.from_url(url, decode_responses=True)

        def run_pipeline(client: redis.Redis) -> list[object]:
            script = client.register_script("return redis.call('INCR', KEYS[1])")
            pipe = client.pipeline(transaction=False)
            script(keys=["test:step"], client=pipe)
            load = pipe.load_scripts

            def load_then_lose_them() -> None:  # the failover, between the load and the send
                load()
                if pipe.load_scripts is not load:  # the first load only
                    pipe.load_scripts = load  # type: ignore[method-assign]
                    admin.script_flush()
                    admin.client_kill_filter(_type="normal", skipme=True)

            pipe.load_scripts = load_then_lose_them  # type: ignore[method-assign]
            return pipe.execute(raise_on_error=False)

        plain = redis.Redis.from_url(url, decode_responses=True, **outage_retry(5))
        (lost,) = run_pipeline(plain)
        assert isinstance(lost, redis.exceptions.NoScriptError), lost  # redis-py's own pipeline
        safe = ScriptSafeRedis.from_url(url, decode_responses=True, **outage_retry(5))
        assert run_pipeline(safe) == [1]
        assert admin.get("test:step") == "1"


# -- the failover, end to end --------------------------------------------------------------------
@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    with sentinel_group(tmp_path_factory.mktemp("sentinel-logs")) as servers:
        yield servers


@pytest.fixture(scope="module")
def http(redis_url: str, group: SentinelGroup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """The API and one worker (concurrency 3), both given only the group's ``redis+sentinel://`` URL."""
    del redis_url  # requested for the session's environment (result storage)
    logs = tmp_path_factory.mktemp("sentinel-stack")
    with (
        api_server(group.url, f"sqlite:///{logs / 'api.db'}", log_path=logs / "api.log", extra_env=SLOWER_BEATS) as api,
        worker(
            group.url, FLOW_MODULES, queues=QUEUE, concurrency=3, log_path=logs / "worker.log", extra_env=SLOWER_BEATS
        ),
        httpx.Client(base_url=api.url, timeout=15) as client,
    ):
        yield client


def test_the_master_killed_mid_flows_every_run_completes_once_on_the_promoted_replica(
    group: SentinelGroup, http: httpx.Client, tmp_path: Path
) -> None:
    """6 runs of a diamond (two 2 s tasks, then one after both: a chord) on one worker of
    concurrency 3; the master is SIGKILLed while the worker's three processes are each in the
    middle of a task. The sentinels promote the replica; the tasks end during the failover and
    record their ends and send what follows on the new master; the API's next calls find it too.
    Every run completes, each of its 18 task runs ran exactly once (counted in files) and is
    recorded Running then Completed, once.

    The kill lands while every process is busy on purpose: the worker then holds as many messages
    as it may (prefetch) and takes none off its queue. A message taken in the instant the master
    dies can be lost (docs/reliability.md, "Redis behind Sentinel"), which no client can prevent.
    """
    marker = uuid.uuid4().hex[:8]
    folder = str(tmp_path)
    runs, seconds = 6, 2.0
    run_ids = [
        submit(http, "sentinel-diamond", QUEUE, folder=folder, marker=f"{marker}-{i}", seconds=seconds)
        for i in range(runs)
    ]
    labels = [f"{marker}-{i}-{side}" for i in range(runs) for side in ("left", "right", "last")]

    def started() -> list[float]:
        return sorted(t for label in labels for t in starts(folder, label))

    first_batch = eventually(lambda: started() if len(started()) >= 3 else None, 60, what="three tasks under way")
    assert len(first_batch) == 3, first_batch  # one worker, concurrency 3: the fourth waits for a free process
    time.sleep(max(0.0, first_batch[-1] + seconds / 3 - time.time()))
    assert len(started()) == 3, "a task of the first batch ended early: the kill would not land mid-task"
    assert group.master_port_named() == group.master_port
    group.kill_master()
    took = group.wait_failover()
    finished = [wait_final(http, run_id, timeout=90) for run_id in run_ids]
    assert [run["state"] for run in finished] == ["Completed"] * runs, finished
    for run_id in run_ids:
        assert_completed_once(http, run_id, tasks=3)
    counted = {label: executions(folder, label) for label in labels}
    assert set(counted.values()) == {1}, counted
    assert took < 30
    with redis.Redis(port=group.replica_port, decode_responses=True) as promoted:  # the records live there now
        assert promoted.exists(*(keys.flow_run(run_id) for run_id in run_ids)) == runs
