"""Flower's doors, against real processes (redis-server, a Celery worker, Flower, ``orchestrator dev``).

- Flower's task API (apply, async-apply, send-task and the task and worker controls) is off
  unless asked for (``--task-api`` / ORCHESTRATOR_FLOWER_TASK_API=true), and then only with
  credentials; its read API needs credentials too.
- A non-GET request from another site (a text/plain "simple" POST a page can send without a
  preflight), with the browser's cached basic-auth credentials or none, is refused and no task
  runs. Proof: a task that writes a marker file, and a sentinel task sent after the refused
  request that does run.
- ``orchestrator flower`` listens on 127.0.0.1; another address without credentials, the task
  API without credentials and FLOWER_UNAUTHENTICATED_API are refused before anything listens.
- Without credentials, Flower answers only loopback host names (a DNS-rebinding page cannot
  read it).
- ``orchestrator dev`` starts Flower with a generated secret it prints, its task API off, and
  masks the Redis password in its banner.
- docker-compose.yml has no default Flower credentials and publishes nothing on all interfaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from orchestrator.config.settings import Settings
from orchestrator.devstack.localstack import flower, free_port, redis_server, stop_process, wait_for_http, worker
from orchestrator.guards.redaction import masked_url
from orchestrator.transport.celery_app import make_celery_app
from tests.api_support import eventually
from tests.flower_flows import MARKER_TASK

ROOT = Path(__file__).resolve().parent.parent
USER = "ops"
PASSWORD = secrets.token_urlsafe(16)
CREDENTIALS = (USER, PASSWORD)
FOREIGN = "https://attacker.example"
# Every route of Flower's API that runs or sends a task, or changes a task or a worker.
CONTROL_ROUTES = [
    f"/api/task/async-apply/{MARKER_TASK}",
    f"/api/task/apply/{MARKER_TASK}",
    f"/api/task/send-task/{MARKER_TASK}",
    f"/api/task/timeout/{MARKER_TASK}",
    f"/api/task/rate-limit/{MARKER_TASK}",
    "/api/task/abort/00000000-0000-0000-0000-000000000000",
    "/api/task/revoke/00000000-0000-0000-0000-000000000000",
    "/api/worker/shutdown/nobody@nowhere",
    "/api/worker/pool/restart/nobody@nowhere",
    "/api/worker/pool/grow/nobody@nowhere",
    "/api/worker/pool/shrink/nobody@nowhere",
    "/api/worker/pool/autoscale/nobody@nowhere",
    "/api/worker/queue/add-consumer/nobody@nowhere",
    "/api/worker/queue/cancel-consumer/nobody@nowhere",
]


@dataclass
class Stack:
    """The module's processes: Redis and one worker importing tests.flower_flows."""

    redis_url: str

    def nothing_ran(self, marker: Path, folder: Path) -> None:
        """Prove no task wrote ``marker``: a sentinel sent to the broker after it has run.

        Flower publishes a task before it answers, so a message a refused request had sent
        would sit in the queue before the sentinel, and the one worker process (prefetch 1)
        would have run it first.
        """
        sentinel = folder / f"sentinel-{uuid.uuid4().hex}"
        app = make_celery_app("flower-doors-client", Settings(redis_url=self.redis_url), send_only=True)
        app.send_task(MARKER_TASK, args=[str(sentinel)])
        eventually(sentinel.exists, 60, what="the sentinel task ran on the worker")
        assert not marker.exists(), "a task sent through Flower ran on the worker"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("flower-doors")
    with (
        redis_server() as url,
        worker(url, ["tests.flower_flows"], concurrency=1, name=f"fd{free_port()}@%h", log_path=folder / "worker.log"),
    ):
        yield Stack(url)


def flower_env(redis_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a Flower of these tests runs in (it imports tests.flower_flows)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWER_")}
    return (
        env
        | {
            "ORCHESTRATOR_REDIS_URL": redis_url,
            "ORCHESTRATOR_FLOW_MODULES": "tests.flower_flows",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
        }
        | (extra or {})
    )


def flower_cli_command(port: int, *args: str) -> list[str]:
    """``orchestrator flower`` as a person types it."""
    return [sys.executable, "-m", "orchestrator.cli", "flower", "--port", str(port), *args]


@contextlib.contextmanager
def flower_cli(redis_url: str, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``orchestrator flower --port <free> *args`` until the block ends; yield its loopback URL."""
    port = free_port()
    proc = subprocess.Popen(
        flower_cli_command(port, *args),
        cwd=ROOT,
        env=flower_env(redis_url, env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthcheck", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


def apply_marker(url: str, marker: Path, headers: dict[str, str], auth: tuple[str, str] | None) -> httpx.Response:
    """What a hostile page's form sends: a text/plain POST (no preflight) whose body is JSON."""
    body = json.dumps({"args": [str(marker)]})
    return httpx.post(
        f"{url}/api/task/async-apply/{MARKER_TASK}",
        content=body,
        headers={"Content-Type": "text/plain"} | headers,
        auth=auth,
        timeout=30,
    )


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found: set[str] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)  # each 32-bit word in little-endian order
                packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(family, packed))
    return found


# -- cross-site requests ------------------------------------------------------------------
def test_a_cross_site_text_plain_post_runs_nothing_on_the_flower_dev_starts(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Flower ``orchestrator dev`` and the tests start (localstack.flower, no credentials):
    any page the developer visits posting to async-apply is refused."""
    monkeypatch.setenv("ORCHESTRATOR_FLOW_MODULES", "tests.flower_flows")
    marker = tmp_path / "marker"
    with flower(stack.redis_url, log_path=tmp_path / "flower.log") as url:
        response = apply_marker(url, marker, {"Origin": FOREIGN, "Sec-Fetch-Site": "cross-site"}, None)
        assert response.status_code == 403, response.text
        response = apply_marker(url, marker, {"Origin": FOREIGN}, None)  # a browser without fetch metadata
        assert response.status_code == 403, response.text
    stack.nothing_ran(marker, tmp_path)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Origin": FOREIGN, "Sec-Fetch-Site": "cross-site"}, id="foreign-origin"),
        pytest.param({"Origin": "null"}, id="null-origin"),
        pytest.param({"Origin": "http://127.0.0.1:1", "Sec-Fetch-Site": "same-site"}, id="other-port"),
        pytest.param({"Referer": f"{FOREIGN}/page.html"}, id="foreign-referer-without-origin"),
    ],
)
def test_a_cross_site_post_carrying_cached_credentials_runs_nothing(
    stack: Stack, tmp_path: Path, headers: dict[str, str]
) -> None:
    """Even with the task API opted in: the browser attaches the basic-auth credentials it
    cached for Flower to a cross-site form post, so credentials alone prove nothing."""
    marker = tmp_path / "marker"
    with flower_cli(stack.redis_url, f"--basic-auth={USER}:{PASSWORD}", "--task-api") as url:
        response = apply_marker(url, marker, headers, CREDENTIALS)
        assert response.status_code == 403, response.text
    stack.nothing_ran(marker, tmp_path)


def test_flower_pages_post_from_their_own_origin_also_behind_a_proxy(stack: Stack) -> None:
    """The tasks page posts to /tasks/datatable: from Flower's own origin, also the public one
    of a reverse proxy that passes the Host header on; not from another origin."""
    form = {"draw": "1", "start": "0", "length": "10", "order[0][column]": "0", "columns[0][data]": "name"}
    with flower_cli(stack.redis_url, f"--basic-auth={USER}:{PASSWORD}") as url:
        for headers in ({"Origin": url}, {"Origin": "https://flower.example", "Host": "flower.example"}):
            answer = httpx.post(f"{url}/tasks/datatable", data=form, auth=CREDENTIALS, headers=headers)
            assert answer.status_code == 200 and answer.json()["draw"] == 1, (headers, answer.text)
        answer = httpx.post(f"{url}/tasks/datatable", data=form, auth=CREDENTIALS, headers={"Origin": FOREIGN})
        assert answer.status_code == 403


# -- the task API -------------------------------------------------------------------------
def test_the_task_api_is_off_by_default_even_with_credentials(stack: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with flower_cli(stack.redis_url, f"--basic-auth={USER}:{PASSWORD}") as url:
        response = apply_marker(url, marker, {}, CREDENTIALS)
        assert response.status_code == 404, response.text
        assert "--task-api" in response.text and "ORCHESTRATOR_FLOWER_TASK_API" in response.text
        for route in CONTROL_ROUTES:
            answer = httpx.post(f"{url}{route}", json={"args": [str(marker)]}, auth=CREDENTIALS, timeout=30)
            assert answer.status_code == 404 and "task API is off" in answer.text, (route, answer.text)
        # Reading stays available, with the credentials only.
        assert httpx.get(f"{url}/api/tasks", auth=CREDENTIALS).status_code == 200
        assert httpx.get(f"{url}/api/queues/length", auth=CREDENTIALS).status_code == 200
        assert httpx.get(f"{url}/api/tasks").status_code == 401
    stack.nothing_ran(marker, tmp_path)


def test_the_task_api_runs_a_task_only_when_opted_in_and_only_with_credentials(stack: Stack, tmp_path: Path) -> None:
    """The control: the opened door does run a task, so the refusals above are real."""
    anonymous, sent = tmp_path / "anonymous", tmp_path / "sent"
    env = {"ORCHESTRATOR_FLOWER_TASK_API": "true"}
    with flower_cli(stack.redis_url, f"--basic-auth={USER}:{PASSWORD}", env=env) as url:
        assert apply_marker(url, anonymous, {"Origin": url}, None).status_code == 401
        assert apply_marker(url, anonymous, {"Origin": url}, ("ops", "wrong")).status_code == 401
        response = apply_marker(url, sent, {"Origin": url, "Sec-Fetch-Site": "same-origin"}, CREDENTIALS)
        assert response.status_code == 200, response.text
        eventually(sent.exists, 60, what="the task sent through Flower's opted-in API ran")
    stack.nothing_ran(anonymous, tmp_path)


# -- where Flower listens -----------------------------------------------------------------
def test_orchestrator_flower_listens_on_loopback_by_default(stack: Stack) -> None:
    with flower_cli(stack.redis_url) as url:
        port = int(url.rsplit(":", 1)[1])
        assert listening_addresses(port) == {"127.0.0.1"}
        assert httpx.get(f"{url}/").status_code == 200  # the read-only pages, on this machine
        assert httpx.get(f"{url}/api/tasks").status_code == 401  # no API without credentials


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        pytest.param(["--address", "0.0.0.0"], {}, ["--basic-auth", "FLOWER_BASIC_AUTH"], id="all-interfaces"),
        pytest.param([], {"FLOWER_ADDRESS": "0.0.0.0"}, ["--basic-auth", "FLOWER_BASIC_AUTH"], id="address-from-env"),
        pytest.param(
            ["--address=0.0.0.0"],
            {"FLOWER_UNAUTHENTICATED_API": "true"},
            ["FLOWER_UNAUTHENTICATED_API"],
            id="unauthenticated-api-beyond-loopback",
        ),
        pytest.param([], {"FLOWER_UNAUTHENTICATED_API": "true"}, ["FLOWER_UNAUTHENTICATED_API"], id="unauth-api"),
        pytest.param(["--task-api"], {}, ["--task-api", "--basic-auth"], id="task-api-without-credentials"),
    ],
)
def test_orchestrator_flower_refuses_an_open_door_before_listening(
    stack: Stack, args: list[str], env: dict[str, str], names: list[str]
) -> None:
    port = free_port()
    done = subprocess.run(
        flower_cli_command(port, *args),
        cwd=ROOT,
        env=flower_env(stack.redis_url, env),
        capture_output=True,
        text=True,
        timeout=30,  # refused at once; a Flower that starts is still running then
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "refusing" in output and all(name in output for name in names), output
    assert "Visit me" not in output and not listening_addresses(port)


def test_another_address_with_credentials_is_served_and_asks_for_them(stack: Stack) -> None:
    """The contrast: the same address with credentials starts (and every page needs them)."""
    with flower_cli(stack.redis_url, "--address", "0.0.0.0", f"--basic-auth={USER}:{PASSWORD}") as url:
        assert httpx.get(f"{url}/").status_code == 401
        assert httpx.get(f"{url}/", auth=CREDENTIALS).status_code == 200


def test_flower_without_credentials_answers_only_loopback_host_names(stack: Stack) -> None:
    """A page whose name is rebound to 127.0.0.1 would read Flower as its own origin; its
    Host header gives it away."""
    with flower_cli(stack.redis_url) as url:
        port = url.rsplit(":", 1)[1]
        assert httpx.get(f"{url}/", headers={"Host": f"attacker.example:{port}"}).status_code == 403
        assert httpx.get(f"{url}/", headers={"Host": f"localhost:{port}"}).status_code == 200


# -- orchestrator dev ---------------------------------------------------------------------
def dev_output(folder: Path) -> str:
    """What ``orchestrator dev`` printed and the end of each of its logs (for a failure message)."""
    parts = [(folder / "dev.out").read_text()]
    for path in sorted((folder / "dev" / "logs").glob("*.log")):
        parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(parts)


def test_dev_flower_asks_for_a_generated_secret_and_keeps_its_task_api_off(tmp_path: Path) -> None:
    api_port, flower_port = free_port(), free_port()
    password = secrets.token_urlsafe(12)
    log = tmp_path / "dev.out"
    marker = tmp_path / "marker"
    with redis_server(password=password) as redis_url:
        env = flower_env(redis_url)
        cmd = [sys.executable, "-m", "orchestrator.cli", "dev", "--flows", "tests.flower_flows", "-c", "1"]
        cmd += ["--api-port", str(api_port), "--flower-port", str(flower_port), "--data-dir", str(tmp_path / "dev")]
        cmd += ["--redis-url", redis_url]
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:

            def ready_or_gone() -> bool:
                return "Ctrl-C stops everything" in log.read_text() or proc.poll() is not None

            eventually(ready_or_gone, 120, what="orchestrator dev is ready")
            assert proc.poll() is None, dev_output(tmp_path)
            text = log.read_text()
            assert password not in text and masked_url(redis_url) in text  # the Redis password stays hidden
            assert f"ui:     http://127.0.0.1:{api_port}/ui" in text  # where to open the web UI
            found = re.search(rf"flower: http://127\.0\.0\.1:{flower_port}\s.*?login (\S+?):(\S+?)[,\s)]", text)
            assert found, dev_output(tmp_path)
            user, secret = found.groups()
            assert len(secret) >= 20
            url = f"http://127.0.0.1:{flower_port}"
            assert httpx.get(f"{url}/").status_code == 401
            assert httpx.get(f"{url}/api/workers").status_code == 401
            assert httpx.get(f"{url}/", auth=(user, secret)).status_code == 200
            response = apply_marker(url, marker, {"Origin": url}, (user, secret))
            assert response.status_code == 404 and "task API is off" in response.text, response.text
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0, dev_output(tmp_path)
        finally:
            if proc.poll() is None:  # TERM lets dev stop the API, worker and Flower it started
                proc.terminate()
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
    assert not marker.exists()


# -- docker compose -----------------------------------------------------------------------
def test_compose_has_no_default_flower_credentials_and_publishes_on_loopback_only() -> None:
    raw = (ROOT / "docker-compose.yml").read_text()
    assert "admin:admin" not in raw
    services = yaml.safe_load(raw)["services"]
    flower_service = services["flower"]
    assert flower_service["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert not any("basic-auth" in part for part in flower_service["command"])  # not visible in ps
    assert flower_service["command"][:2] == ["orchestrator", "flower"]  # the launcher, not celery flower
    for variant in ("docker-compose.rabbitmq.yml", "docker-compose.prometheus.yml"):
        services |= {f"{variant}: {k}": v for k, v in yaml.safe_load((ROOT / variant).read_text())["services"].items()}
    for name, service in services.items():
        for published in service.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), f"{name} publishes {published} on every interface"
