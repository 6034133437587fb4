"""Redis behind Sentinel: ``redis+sentinel://`` for the run store, the broker and the result backend.

The failover test runs everything for real: a master, a replica and three sentinels
(``redis-server --sentinel``) on free ports, a Celery prefork worker and the API process, all
given the one ``redis+sentinel://`` URL. The master is SIGKILLed while flows run; the sentinels
promote the replica, and every client finds it through them. Executions are counted in files
(tests/sentinel_flows.py), outside the Redis that fails over.
"""

from __future__ import annotations

import signal
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
from orchestrator.errors import ConfigurationError, ConnectionProblem
from orchestrator.runstate import keys
from orchestrator.runstate.connection import ScriptSafeRedis, outage_retry
from orchestrator.runstate.store import RunStore
from orchestrator.transport.celery_app import make_celery_app
from tests.api_support import eventually
from tests.sentinel_flows import executions, starts
from tests.sentinel_support import SentinelGroup, sentinel_group
from tests.test_reliability import SLOWER_BEATS, RestartableRedis, assert_completed_once, submit, wait_final

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


def test_a_password_in_the_url_reaches_the_run_store_the_broker_and_the_result_backend(tmp_path: Path) -> None:
    """Master and replica ask for a password (the sentinels know it): the one URL carries it to
    the three clients, and a wrong one is refused with the URL masked."""
    secret = f"s3cret-{uuid.uuid4().hex[:8]}"
    with sentinel_group(tmp_path, password=secret) as servers:
        RunStore(servers.url).ping()
        app = make_celery_app("sentinel-password", Settings(redis_url=servers.url))
        app.send_task("tests.sentinel.nothing", queue="test-password", ignore_result=True)  # kombu
        assert app.backend.client.incr("test:chord-part") == 1  # Celery's result backend
        with redis.Redis(port=servers.master_port, password=secret, decode_responses=True) as master:
            assert (master.llen("test-password"), master.get("test:chord-part")) == (1, "1")
        with pytest.raises(ConnectionProblem) as refused:
            RunStore(servers.url.replace(secret, "wrong-password")).ping()
        assert "redis+sentinel://:**@" in str(refused.value) and "wrong-password" not in str(refused.value)


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


# -- a message taken off its queue as Redis goes away --------------------------------------------
def test_a_message_taken_off_its_queue_as_redis_dies_goes_back_once_redis_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kombu pops a message, then records it as held in a second command. Redis killed between
    the two (as a master that dies, or fails over, while a worker takes a message) left the
    message in no queue and no unacked set: lost. The worker's channel keeps it and gives it back
    to its queue once Redis answers, once."""
    from kombu import Connection
    from kombu.transport import redis as kombu_redis

    from workers import redis_transport

    monkeypatch.setattr(kombu_redis.Transport, "Channel", redis_transport.Channel)  # as a worker does at start
    server = RestartableRedis(tmp_path / "redis", "always")  # what Redis acknowledged survives the kill
    try:
        server.start()
        with Connection(server.url) as connection:
            queue = connection.SimpleQueue("test-taken")
            queue.put({"n": 1})
            channel = queue.channel
            take = channel._get

            def take_then_die(name: str) -> object:
                taken = take(name)  # RPOP: off the queue, and written to the append-only file
                server.stop(signal.SIGKILL)  # before kombu records it as held
                return taken

            monkeypatch.setattr(channel, "_get", take_then_die)
            with pytest.raises(channel.connection_errors):
                queue.get_nowait()
            monkeypatch.setattr(channel, "_get", take)
            assert len(redis_transport.UNSETTLED) == 1
            server.start()
            client = redis.Redis.from_url(server.url)
            assert (client.llen("test-taken"), client.hlen("unacked")) == (0, 0)  # nowhere in Redis
            assert redis_transport.settle_taken(channel) == 1
            assert redis_transport.settle_taken(channel) == 0  # given back once
            assert client.llen("test-taken") == 1
            message = queue.get(timeout=5)
            assert message.payload == {"n": 1}
            message.ack()
    finally:
        redis_transport.UNSETTLED.clear()
        server.close()


def test_a_held_message_whose_record_the_failover_lost_goes_back_to_its_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker holds a message (not started) whose unacked record was written on the old master
    and not replicated: kombu gave messages back from that record, and without it dropped the
    message as its channel closed. The worker's channel gives it back from its own copy."""
    from kombu import Connection
    from kombu.transport import redis as kombu_redis

    from workers import redis_transport

    monkeypatch.setattr(kombu_redis.Transport, "Channel", redis_transport.Channel)
    with redis_server() as url, Connection(url) as connection:
        client = redis.Redis.from_url(url)
        queue = connection.SimpleQueue("test-held")
        queue.put({"n": 2})
        held = queue.get(timeout=5)
        assert (client.llen("test-held"), client.hlen("unacked")) == (0, 1)
        client.delete("unacked", "unacked_index")  # the new master never saw the record
        queue.channel.close()  # the worker reconnecting: it gives back what it holds
        assert client.llen("test-held") == 1 and not redis_transport.UNSETTLED
        with Connection(url) as again:
            assert again.SimpleQueue("test-held").get(timeout=5).payload == held.payload


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
    concurrency 3; the master is SIGKILLed just as the first three tasks end and the worker takes
    the next messages off its queue (the instant kombu's channel used to lose or strand them).
    The sentinels promote the replica; the tasks running meanwhile end during the failover and
    record their ends and send what follows on the new master; the API's next calls find it too.
    Every run completes, each of its 18 task runs ran exactly once (counted in files) and is
    recorded Running then Completed, once."""
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

    first = eventually(lambda: started() if len(started()) >= 3 else None, 60, interval=0.01, what="three tasks")
    assert len(first) == 3, first  # one worker, concurrency 3: the fourth waits for a free process
    time.sleep(max(0.0, first[0] + seconds + 0.05 - time.time()))  # the first ends, the next are taken
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
