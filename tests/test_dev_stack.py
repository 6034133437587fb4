"""``orchestrator dev`` tells the truth the first time: a child that cannot start (a port already
taken, a flow module that does not import, Flower or the API refusing to run) or that dies while
the stack runs stops ``dev`` with one line naming it, its reason and its log, and no child stays
behind; the stack has a Redis of its own unless ``--redis-url`` names one, and the banner prints
what another shell exports to reach it; Ctrl-C stops the whole stack.

Each test runs ``dev`` as a user does, on free ports and in a temporary data folder. Every process
``dev`` starts inherits a marker variable, so the test finds any that outlived it in /proc.
"""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from orchestrator.devstack.localstack import free_port, redis_server
from tests.api_support import eventually

ROOT = Path(__file__).resolve().parent.parent
MARK = "ORC_DEV_STACK_TEST"


@dataclass
class Dev:
    """One ``orchestrator dev`` started by a test: its process, its output file, its data folder."""

    proc: subprocess.Popen[bytes]
    out: Path
    data: Path
    mark: str

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"orchestrator dev still runs after {timeout}s:\n{self.text()}") from None

    def wait_ready(self) -> None:
        eventually(lambda: "Ctrl-C stops everything" in self.text() or self.proc.poll() is not None, 120, what="ready")
        assert self.proc.poll() is None, self.text()

    def left_behind(self) -> list[str]:
        """Command lines of the live processes that carry this start's marker (dev's children)."""
        found = []
        needle = f"{MARK}={self.mark}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or entry.name == str(self.proc.pid):
                continue
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
        return found

    def assert_nothing_left(self) -> None:
        eventually(lambda: not self.left_behind(), 20, what="no process of the dev stack left")


StartDev = Callable[..., Dev]


def dev_env(**extra: str) -> dict[str, str]:
    """The environment ``dev`` runs in: no Redis it could find by itself (nothing answers on the
    configured URL), wide lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRATOR_", "FLOWER_"))}
    return env | {"ORCHESTRATOR_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "COLUMNS": "250"} | extra


@pytest.fixture
def start_dev(tmp_path: Path) -> Iterator[StartDev]:
    """Start ``orchestrator dev ARGS`` (free ports, flows from tests.flows unless given); stopped after."""
    started: list[Dev] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Dev:
        data = tmp_path / f"dev{len(started)}"
        mark = uuid.uuid4().hex
        cmd = [sys.executable, "-m", "orchestrator.cli", "dev", "-c", "1", "--data-dir", str(data)]
        if "--flows" not in args:
            cmd += ["--flows", "tests.flows"]
        for option in ("--api-port", "--flower-port"):
            if option not in args:
                cmd += [option, str(free_port())]
        out = tmp_path / f"dev{len(started)}.out"
        with open(out, "wb") as sink:
            proc = subprocess.Popen(
                [*cmd, *args], cwd=ROOT, env=(env or dev_env()) | {MARK: mark}, stdout=sink, stderr=subprocess.STDOUT
            )
        started.append(Dev(proc, out, data, mark))
        return started[-1]

    yield start
    for dev in started:
        if dev.proc.poll() is None:  # TERM lets dev stop what it started
            dev.proc.terminate()
            try:
                dev.proc.wait(60)
            except subprocess.TimeoutExpired:
                dev.proc.kill()
                dev.proc.wait(10)


@pytest.fixture
def http_listener() -> Iterator[int]:
    """A port on which another HTTP server already answers (200 to every GET)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def assert_short_error(dev: Dev, *expected: str) -> str:
    """dev exited 1 with an error line saying ``expected`` and no traceback; returns its output."""
    code = dev.wait()
    text = dev.text()
    assert code == 1, text
    assert "Traceback" not in text and "Ctrl-C stops everything" not in text, text
    error = [line for line in text.splitlines() if line.startswith("error: ")]
    assert error, text
    for part in expected:
        assert part in text, f"{part!r} not in:\n{text}"
    return text


@pytest.mark.parametrize("option, name", [("--api-port", "the API"), ("--flower-port", "Flower")])
def test_a_port_already_taken_stops_dev_and_says_which(
    start_dev: StartDev, http_listener: int, option: str, name: str
) -> None:
    """Another server answering on the port must not pass for the child that could not bind it."""
    dev = start_dev(option, str(http_listener))
    assert_short_error(dev, f"{name} cannot listen on 127.0.0.1:{http_listener}", option)
    dev.assert_nothing_left()


def test_a_flow_module_that_does_not_import_is_named_with_the_worker_log(start_dev: StartDev) -> None:
    dev = start_dev("--flows", "myflowz")
    log = dev.data / "logs" / "worker.log"
    assert_short_error(dev, "the worker exited with code 2 before it was ready", "cannot import flow module 'myflowz'")
    assert f"(log: {log})" in dev.text()
    dev.assert_nothing_left()  # the Redis and the API started before it are stopped too


def test_flower_refusing_to_start_is_reported_with_its_own_words(start_dev: StartDev) -> None:
    dev = start_dev(env=dev_env(FLOWER_UNAUTHENTICATED_API="true"))
    log = dev.data / "logs" / "flower.log"
    assert_short_error(dev, "Flower exited with code 2 before it answered", "refusing FLOWER_UNAUTHENTICATED_API")
    assert f"(log: {log})" in dev.text()
    dev.assert_nothing_left()


def test_the_api_failing_to_start_is_reported_with_its_own_words(start_dev: StartDev, tmp_path: Path) -> None:
    (tmp_path / "dev0" / "dev.db").mkdir(parents=True)  # SQLite cannot open a folder
    dev = start_dev()
    assert_short_error(dev, "the API exited with code 2 before it answered", "cannot prepare the database")
    assert f"(log: {dev.data / 'logs' / 'api.log'})" in dev.text()
    dev.assert_nothing_left()


def test_a_worker_dying_while_dev_runs_stops_dev(start_dev: StartDev) -> None:
    dev = start_dev()
    dev.wait_ready()
    workers = [pid for pid in children_of(dev.proc.pid) if b"celery" in cmdline(pid)]
    assert len(workers) == 1, dev.text()
    os.kill(workers[0], signal.SIGKILL)
    code = dev.wait()
    text = dev.text()
    assert code == 1, text
    assert "error: the worker was killed by signal 9 while dev was running" in text, text
    assert f"(log: {dev.data / 'logs' / 'worker.log'})" in text and "Traceback" not in text
    dev.assert_nothing_left()  # its pool processes too, and the Redis, the API and Flower


def test_dev_brings_up_a_stack_with_its_own_redis_prints_what_another_shell_exports_and_ctrl_c_leaves_nothing(
    start_dev: StartDev,
) -> None:
    """One start of the whole stack for every check that needs it ready (each start costs seconds)."""
    api_port, flower_port = free_port(), free_port()
    with redis_server() as configured:
        every = {f"ORCHESTRATOR_{name}_URL": configured for name in ("REDIS", "BROKER", "RESULT_BACKEND")}
        dev = start_dev("--api-port", str(api_port), "--flower-port", str(flower_port), env=dev_env(**every))
        dev.wait_ready()
        assert f"http://127.0.0.1:{api_port}/api" in dev.text() and f"http://127.0.0.1:{flower_port}" in dev.text()
        assert httpx.get(f"http://127.0.0.1:{api_port}/api/health").json()["redis"] == "ok"
        assert httpx.get(f"http://127.0.0.1:{flower_port}/healthcheck").status_code == 200
        workers = httpx.get(f"http://127.0.0.1:{api_port}/api/workers").json()
        assert workers and "chain-flow" in workers[0]["flows"], workers
        assert len(dev.left_behind()) >= 4  # redis-server, the API, the worker (and its pool), Flower
        exports = dict(re.findall(r"^\s*export (ORCHESTRATOR_\w+)=(\S+)$", dev.text(), re.MULTILINE))
        assert set(exports) == {"ORCHESTRATOR_REDIS_URL", "ORCHESTRATOR_API_URL"}, dev.text()
        assert "unset ORCHESTRATOR_BROKER_URL ORCHESTRATOR_RESULT_BACKEND_URL" in dev.text()
        assert exports["ORCHESTRATOR_REDIS_URL"] != configured
        shell = dev_env(**exports)  # another shell with only these exports reaches the stack
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "run", "chain-flow", "-p", "x=2", "--watch", "--timeout", "90"],
            cwd=ROOT,
            env=shell,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr + dev.text()
        assert redis.Redis.from_url(exports["ORCHESTRATOR_REDIS_URL"]).dbsize() > 0
        # the web UI links task runs to the Flower dev started (ORCHESTRATOR_FLOWER_URL in the API's environment)
        flower_url = re.search(r"^flower: (http://127\.0\.0\.1:\d+)", dev.text(), re.MULTILINE)
        assert flower_url, dev.text()
        api_url = exports["ORCHESTRATOR_API_URL"]
        run_id = httpx.get(f"{api_url}/flow-runs").json()["items"][0]["id"]
        page = httpx.get(f"{api_url.removesuffix('/api')}/ui/runs/{run_id}").text
        assert f'data-flower="{flower_url.group(1)}"' in page, page[:800]
        dev.proc.send_signal(signal.SIGINT)
        assert dev.wait() == 0, dev.text()
        assert redis.Redis.from_url(configured).info("keyspace") == {}, "dev wrote to the configured Redis"
    dev.assert_nothing_left()
    assert (dev.data / "redis").is_dir()  # its own Redis kept its data in the project folder


def test_redis_url_names_the_redis_dev_uses(start_dev: StartDev) -> None:
    with redis_server() as given:
        dev = start_dev("--redis-url", given, "--run", "chain-flow", "-p", "x=2", "--exit")
        assert dev.wait() == 0, dev.text()
        assert f"export ORCHESTRATOR_REDIS_URL={given}" in dev.text()
        assert redis.Redis.from_url(given).dbsize() > 0
        assert not (dev.data / "redis").exists()  # no Redis of its own was started
    dev.assert_nothing_left()
    nobody = f"redis://127.0.0.1:{free_port()}/0"
    dev = start_dev("--redis-url", nobody)
    assert_short_error(dev, f"no Redis answers at {nobody} (--redis-url)")
    dev.assert_nothing_left()


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return out


def cmdline(pid: int) -> bytes:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes()
    except OSError:
        return b""
