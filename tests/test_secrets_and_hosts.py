"""Secrets never shown, foreign pages kept out, and the key checked before any body is read.

Against real processes (redis-server with ``--requirepass``, the API as ``python -m api.server``,
a Celery worker, the CLI run as a subprocess):

- Redis's password never appears in ``/api/health``, a 503 body, the SDK's or the CLI's
  connection errors or a worker's banner; they show the masked URL ``redis://:**@host:port/0``.
  ``Settings`` never shows the API key (repr, dumps) nor a URL's password (repr).
- An API without a key (loopback only) answers only requests whose Host is a loopback name, so
  a web page cannot reach it through a DNS name it controls (DNS rebinding), and refuses a
  state-changing request a browser sent from another site (its Origin): nothing changes.
- With a key, a request without it gets 401 before its body is read (an invalid 1 MB body is
  not parsed; the answer comes while the body is still being sent), and ``/api/health`` tells
  it states only ("ok", "unavailable"): no error text, no URL.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from orchestrator.config.settings import Settings
from orchestrator.devstack.localstack import ApiProcess, api_server, free_port, redis_server, worker
from orchestrator.errors import ConnectionProblem
from orchestrator.guards.redaction import mask_urls_in, masked_url
from orchestrator.runstate.store import RunStore
from tests.api_support import api_database, cli

MARK = uuid.uuid4().hex[:10]  # in every secret below: its absence is what the tests check
PASSWORD = f"Pa55-w0rd!{MARK}"  # '!' is sent %-encoded in a URL (%21), as in the issue
API_KEY = f"key-{MARK}"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ONE_MB = 1_000_000
STATE_WORDS = {"ok", "unavailable", "failing", "not running"}


def password_url(port: int, password: str = PASSWORD) -> str:
    """A Redis URL carrying ``password`` the way a user writes it (percent-encoded)."""
    return f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0"


def masked(port: int) -> str:
    return f"redis://:**@127.0.0.1:{port}/0"


def assert_no_secret(text: str) -> None:
    assert MARK not in text, text


# -- redaction and settings, in this process ------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:Pa55-w0rd%21xyz@127.0.0.1:6379/0", "redis://:**@127.0.0.1:6379/0"),
        ("rediss://default:s3cret@redis.example:6380/2", "rediss://default:**@redis.example:6380/2"),
        ("redis://token@10.0.0.5:6379", "redis://**@10.0.0.5:6379"),
        ("postgresql+psycopg://orc:pw@db:5432/orc", "postgresql+psycopg://orc:**@db:5432/orc"),
        ("postgresql://db/orc?user=orc&password=pw", "postgresql://db/orc?user=orc&password=**"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("sqlite:////home/me/.orchestrator/orchestrator.db", "sqlite:////home/me/.orchestrator/orchestrator.db"),
        ("", ""),
    ],
)
def test_masked_url_hides_the_password_and_keeps_where_the_server_is(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_mask_urls_in_masks_every_url_of_a_message() -> None:
    text = "cannot reach redis://:pw1@a:1/0 (or rediss://u:pw2@b:2); db postgresql://x:pw3@c/d?password=pw4 too"
    assert mask_urls_in(text) == (
        "cannot reach redis://:**@a:1/0 (or rediss://u:**@b:2); db postgresql://x:**@c/d?password=** too"
    )


def test_settings_never_show_the_api_key_nor_a_password() -> None:
    settings = Settings(
        api_key=API_KEY,
        redis_url=password_url(6379),
        broker_url=password_url(6380),
        database_url=f"postgresql+psycopg://orc:{MARK}@db:5432/orc",
    )
    assert settings.api_key is not None and settings.api_key.get_secret_value() == API_KEY
    for shown in (repr(settings), str(settings), repr(settings.model_dump()), settings.model_dump_json()):
        assert API_KEY not in shown, shown
    assert_no_secret(repr(settings))
    assert masked(6379) in repr(settings) and "postgresql+psycopg://orc:**@db:5432/orc" in repr(settings)
    assert Settings(api_key="").api_key is None  # ORCHESTRATOR_API_KEY= (empty) means no key


# -- the stack -------------------------------------------------------------------------------
@dataclass
class Away:
    """An API whose Redis (with a password) does not answer."""

    api: ApiProcess
    redis_port: int


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[str]:
    """A redis-server that needs PASSWORD (its URL carries it)."""
    with redis_server(password=PASSWORD) as url:
        yield url


@pytest.fixture(scope="module")
def keyless_away(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Away]:
    """An API without a key (loopback) pointed at a password-protected Redis that is down."""
    folder = tmp_path_factory.mktemp("keyless-away")
    port = free_port()
    with (
        api_database(folder, None) as database,
        api_server(
            password_url(port), database, log_path=folder / "api.log", extra_env={"ORCHESTRATOR_API_KEY": ""}
        ) as api,
    ):
        yield Away(api, port)


@pytest.fixture(scope="module")
def keyed_away(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Away]:
    """An API with a key (and one more allowed host name), its password-protected Redis down."""
    folder = tmp_path_factory.mktemp("keyed-away")
    port = free_port()
    env = {"ORCHESTRATOR_API_KEY": API_KEY, "ORCHESTRATOR_API_ALLOWED_HOSTS": "orchestrator.example"}
    with (
        api_database(folder, None) as database,
        api_server(password_url(port), database, log_path=folder / "api.log", extra_env=env) as api,
    ):
        yield Away(api, port)


@pytest.fixture(scope="module")
def keyless(locked_redis: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """An API without a key on loopback, its Redis up."""
    folder = tmp_path_factory.mktemp("keyless")
    with (
        api_database(folder, None) as database,
        api_server(locked_redis, database, log_path=folder / "api.log", extra_env={"ORCHESTRATOR_API_KEY": ""}) as api,
    ):
        yield api


# -- 1. the Redis password is never shown ----------------------------------------------------
def test_health_and_a_503_show_the_masked_redis_url_never_the_password(keyless_away: Away) -> None:
    api, port = keyless_away.api, keyless_away.redis_port
    health = httpx.get(f"{api.url}/health", timeout=30)
    assert health.status_code == 503
    assert_no_secret(health.text)
    body = health.json()
    assert body["status"] == "unavailable" and body["redis"] == "unavailable" and body["database"] == "ok"
    assert masked(port) in body["details"]["redis"]  # a caller allowed to use this API sees where to look

    refused = httpx.post(f"{api.url}/flows/anything/runs", json={"parameters": {}}, timeout=30)
    assert refused.status_code == 503
    assert_no_secret(refused.text)
    assert masked(port) in refused.json()["detail"] and "Nothing was created" in refused.json()["detail"]
    print(f"\n503 detail: {refused.json()['detail']}")


def test_the_sdk_connection_error_shows_the_masked_url(locked_redis: str) -> None:
    down = free_port()
    with pytest.raises(ConnectionProblem) as away:
        RunStore(password_url(down)).ping()
    assert_no_secret(str(away.value))
    assert masked(down) in str(away.value)

    live = int(locked_redis.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ConnectionProblem) as refused:  # the live Redis, a wrong password of ours
        RunStore(password_url(live, password=f"wrong-{MARK}")).ping()
    assert_no_secret(str(refused.value))
    assert masked(live) in str(refused.value)


def test_the_cli_prints_the_masked_url_never_the_password(keyless_away: Away) -> None:
    port = keyless_away.redis_port
    done = cli(keyless_away.api, "run", "anything", "-p", "n=1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert_no_secret(done.stdout + done.stderr)
    assert masked(port) in done.stdout

    api_port = free_port()  # nothing listens there: the CLI's own connection error
    env = os.environ.copy() | {"ORCHESTRATOR_API_URL": f"http://me:{MARK}@127.0.0.1:{api_port}/api", "COLUMNS": "200"}
    dead = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "flow-run", "ls"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dead.returncode == 2, dead.stdout + dead.stderr
    assert_no_secret(dead.stdout + dead.stderr)
    assert f"http://me:**@127.0.0.1:{api_port}/api" in dead.stdout


def test_a_worker_shows_the_masked_broker_url(locked_redis: str, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    port = int(locked_redis.rsplit(":", 1)[1].split("/")[0])
    with worker(locked_redis, ["tests.flows"], concurrency=1, name=f"secrets{free_port()}@%h", log_path=log):
        pass
    text = log.read_text()
    assert_no_secret(text)
    assert f"transport:   {masked(port)}" in text and f"Connected to {masked(port)}" in text


def test_the_server_names_a_database_it_cannot_migrate_by_its_masked_url(tmp_path: Path) -> None:
    url = f"postgresql+psycopg://orc:{MARK}@127.0.0.1:{free_port()}/orc"
    env = os.environ.copy() | {"ORCHESTRATOR_DATABASE_URL": url, "ORCHESTRATOR_API_KEY": ""}
    done = subprocess.run(
        [sys.executable, "-m", "api.server", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert_no_secret(done.stdout + done.stderr)
    assert masked_url(url) in done.stderr and "ORCHESTRATOR_DATABASE_URL" in done.stderr


# -- 2. health without the key: states, not messages ------------------------------------------
def test_health_without_the_key_tells_states_only(keyed_away: Away) -> None:
    api, port = keyed_away.api, keyed_away.redis_port
    bare = httpx.get(f"{api.url}/health", timeout=30)
    assert bare.status_code == 503
    body = bare.json()
    assert body == {"status": "unavailable", "database": "ok", "redis": "unavailable", "recorder": body["recorder"]} | {
        "events_backlog": None,  # Redis away: not read (a backlog warning is words, never an error's text)
        "warnings": [],
        "details": None,
    }
    assert body["recorder"] in STATE_WORDS
    for word in ("redis://", "127.0.0.1", str(port), "Error", "cannot"):
        assert word not in bare.text, bare.text

    told = httpx.get(f"{api.url}/health", headers=AUTH, timeout=30)
    assert told.status_code == 503
    assert_no_secret(told.text)
    assert masked(port) in told.json()["details"]["redis"]


# -- 3. the key before the body ----------------------------------------------------------------
def test_a_request_without_the_key_is_refused_before_its_body_is_read(keyed_away: Away) -> None:
    api = keyed_away.api
    not_json = b"{" + b"x" * (ONE_MB - 1)
    headers = {"Content-Type": "application/json"}
    refused = httpx.post(f"{api.url}/flows/anything/runs", content=not_json, headers=headers, timeout=30)
    assert refused.status_code == 401, refused.text  # not 422: the body was never parsed
    assert "ORCHESTRATOR_API_KEY" in refused.json()["detail"]
    over = httpx.post(f"{api.url}/flows/anything/runs", content=b"{" * 2 * ONE_MB, headers=headers, timeout=30)
    assert over.status_code == 401  # not 413: nothing about the body is looked at before the key
    parsed = httpx.post(f"{api.url}/flows/anything/runs", content=b"{oops", headers=headers | AUTH, timeout=30)
    assert parsed.status_code == 422  # with the key, the same kind of body is read (and refused)

    # The answer comes while the body is still on its way: 1 MB declared, 9 bytes sent.
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        head = (
            f"POST /api/flows/anything/runs HTTP/1.1\r\nHost: 127.0.0.1:{api.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {ONE_MB}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"{not json")
        answer = b""
        while b"\r\n\r\n" not in answer:  # a server waiting for the rest would time this read out
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401"), answer


# -- 4. foreign hosts and cross-site requests ---------------------------------------------------
def deployment(api: ApiProcess) -> str:
    """A new running (not paused) deployment of a flow no worker knows; its name."""
    name = f"secrets-{uuid.uuid4().hex[:8]}"
    made = httpx.post(f"{api.url}/deployments", json={"name": name, "flow_name": "anything"}, timeout=30)
    assert made.status_code == 201, made.text
    assert made.json()["paused"] is False
    return name


def paused(api: ApiProcess, name: str) -> bool:
    return bool(httpx.get(f"{api.url}/deployments/{name}", timeout=30).json()["paused"])


def test_a_keyless_api_refuses_a_foreign_host_and_changes_nothing(keyless: ApiProcess) -> None:
    name = deployment(keyless)
    pause = f"{keyless.url}/deployments/{name}/pause"
    for host in ("evil.example", f"rebind.attacker.example:{keyless.port}", f"127.0.0.1.evil.example:{keyless.port}"):
        refused = httpx.post(pause, headers={"Host": host}, timeout=30)
        assert refused.status_code == 400, (host, refused.text)
        assert "ORCHESTRATOR_API_ALLOWED_HOSTS" in refused.json()["detail"]
        read = httpx.get(f"{keyless.url}/flow-runs", headers={"Host": host}, timeout=30)
        assert read.status_code == 400, (host, read.text)  # a rebound page reads nothing either
    print(f"\nforeign host: {refused.json()['detail']}")
    assert not paused(keyless, name)
    for host in (f"localhost:{keyless.port}", f"[::1]:{keyless.port}", "127.0.0.1"):
        assert httpx.get(f"{keyless.url}/health", headers={"Host": host}, timeout=30).status_code == 200, host


def test_a_keyless_api_refuses_a_cross_site_post_and_changes_nothing(keyless: ApiProcess) -> None:
    name = deployment(keyless)
    pause = f"{keyless.url}/deployments/{name}/pause"
    for origin in ("http://evil.example", "null", f"http://localhost:{free_port()}"):
        refused = httpx.post(pause, headers={"Origin": origin}, timeout=30)  # a browser's simple POST, no body
        assert refused.status_code == 403, (origin, refused.text)
        assert "ORCHESTRATOR_API_KEY" in refused.json()["detail"]
    print(f"\ncross-site: {refused.json()['detail']}")
    assert not paused(keyless, name)
    same_site = httpx.post(pause, headers={"Origin": f"http://127.0.0.1:{keyless.port}"}, timeout=30)
    assert same_site.status_code == 200, same_site.text  # the API's own page (/docs) still works
    assert paused(keyless, name)


def test_allowed_hosts_extends_the_names_an_api_answers_to(keyed_away: Away) -> None:
    api = keyed_away.api
    health = f"{api.url}/health"
    assert httpx.get(health, headers={"Host": "orchestrator.example"}, timeout=30).status_code == 503  # answered
    assert httpx.get(health, headers={"Host": f"localhost:{api.port}"}, timeout=30).status_code == 503
    refused = httpx.get(health, headers={"Host": "evil.example"} | AUTH, timeout=30)
    assert refused.status_code == 400 and json.loads(refused.text)["detail"].count("orchestrator.example") == 1
