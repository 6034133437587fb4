"""Start and stop the local pieces a laptop (or a test) needs: redis-server and workers.

Used by ``orchestrator demo`` and by the test suite. Every process gets a free port
and is stopped (its whole process group) even when the caller fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from orchestrator.devstack.children import Child, spawn, stop_process
from orchestrator.errors import ConnectionProblem
from orchestrator.runstate import connection
from orchestrator.runstate.store import RunStore

_GIVEN_PORTS: set[int] = set()
_GIVEN_LOCK = threading.Lock()


def port_share() -> tuple[int, int]:
    """``(index, count)``: this process hands out only ports with ``port // 2 % count == index``.

    Parallel test processes (pytest-xdist's workers gw0..gwN-1, and every server or ``orchestrator
    dev`` they start, which inherit its variables) pick ports on their own: the kernel may offer
    one of them a port another picked a moment ago and has not bound yet. The second server would
    then fail to bind, or worse, find the first one answering on its port and use it. Worker gwK
    of N keeps to its share K of N, so no two workers ever hand out the same port. The share goes
    by ``port // 2``: Linux gives ``bind(port 0)`` ports of one parity only (odd here; the other
    parity is left to outgoing connections), so ``port % N`` would leave some workers none.
    Outside xdist the whole range is ours: ``(0, 1)``.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1:
        return int(worker[2:]) % int(count), int(count)
    return 0, 1


def free_port() -> int:
    """A TCP port nobody listens on right now, and that this process has not handed out before.

    A server is often started a while after its port was picked (Redis, then the API that
    waits for it): the kernel may offer the same free port again meanwhile, and two servers
    would race for it. Remembering what was given closes that race inside one process;
    :func:`port_share` closes it between parallel test processes.
    """
    index, count = port_share()
    for _ in range(100 * count):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        with _GIVEN_LOCK:
            if port // 2 % count == index and port not in _GIVEN_PORTS:
                _GIVEN_PORTS.add(port)
                return port
    raise RuntimeError("no free TCP port that was not handed out already")


def redis_answers(url: str) -> bool:
    """Whether a Redis at ``url`` answers a PING within a second."""
    return connection.answers(url)


@contextlib.contextmanager
def redis_server(
    port: int | None = None,
    appendonly: bool = False,
    data_dir: Path | None = None,
    bind: Sequence[str] = ("127.0.0.1",),
    password: str | None = None,
    log_path: Path | None = None,
) -> Iterator[str]:
    """Run a private redis-server on a free port; yield its URL (on the first ``bind`` address).

    With ``data_dir`` its files (append-only log) are kept there across restarts;
    otherwise they live in a temporary folder removed at the end. ``bind`` lists the
    local addresses it listens on (loopback only by default; tests add the address of
    a private test network so workers in network namespaces reach it). Redis answers
    other addresses than loopback only with a ``password`` (its protected mode); the URL
    then carries it.
    """
    with redis_process(port, appendonly, data_dir, bind, password, log_path) as child:
        yield child.url


@contextlib.contextmanager
def redis_process(
    port: int | None = None,
    appendonly: bool = False,
    data_dir: Path | None = None,
    bind: Sequence[str] = ("127.0.0.1",),
    password: str | None = None,
    log_path: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Child]:
    """:func:`redis_server`, yielding the process (to watch it) with its URL in ``url``.

    ``extra_args`` are more ``redis-server`` options (``--replicaof host port`` for a replica).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConnectionProblem(
            "redis-server is not installed; run scripts/setup.sh (it installs it with apt-get) "
            "or install Redis yourself."
        )
    port = port or free_port()
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
    workdir = str(data_dir) if data_dir is not None else tempfile.mkdtemp(prefix="orc-redis-")
    args = [
        binary,
        "--port",
        str(port),
        "--bind",
        *bind,
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly or data_dir is not None else "no",
        "--dir",
        workdir,
        *(["--requirepass", password] if password else []),
        *extra_args,
    ]
    child = spawn("redis-server", args, log_path=log_path)
    child.url = f"redis://{f':{password}@' if password else ''}{bind[0]}:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while not connection.answers(child.url, timeout=0.5):
            failed = child.exited("before it answered")
            if failed is not None:
                raise failed
            if time.monotonic() > deadline:
                raise ConnectionProblem(f"redis-server on port {port} did not start") from None
            time.sleep(0.05)
        yield child
    finally:
        child.stop()
        if data_dir is None:
            shutil.rmtree(workdir, ignore_errors=True)


def worker_command(
    queues: str = "default", concurrency: int = 2, name: str | None = None, pool: str = "prefork"
) -> list[str]:
    """The celery worker command line the orchestrator uses."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.app",
        "worker",
        "-Q",
        queues,
        "-c",
        str(concurrency),
        "-P",
        pool,
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if name:
        cmd += ["-n", name]
    return cmd


@contextlib.contextmanager
def worker(
    redis_url: str,
    flow_modules: list[str],
    queues: str = "default",
    concurrency: int = 2,
    name: str | None = None,
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
    pool: str = "prefork",
    command_prefix: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a Celery worker for ``flow_modules``; wait until it consumes, stop it after.

    ``command_prefix`` runs the worker through another command, e.g.
    ``["ip", "netns", "exec", "host-a"]`` to start it inside a network namespace.
    """
    env = (
        os.environ.copy()
        | {
            "ORCHESTRATOR_REDIS_URL": redis_url,
            "ORCHESTRATOR_FLOW_MODULES": ",".join(flow_modules),
            "PYTHONUNBUFFERED": "1",
        }
        | (extra_env or {})
    )
    name = name or f"w{free_port()}@%h"
    if log_path:
        log_path.write_bytes(b"")  # one log per worker start
    child = spawn("the worker", [*command_prefix, *worker_command(queues, concurrency, name, pool)], env, log_path)
    try:
        wait_for_worker(redis_url, child, queues.split(",")[0])
        yield child.proc
    finally:
        child.stop(timeout=15)


def wait_for_worker(redis_url: str, proc: subprocess.Popen[bytes] | Child, queue: str, timeout: float = 60) -> None:
    """Block until the worker ``proc`` has started consuming ``queue``, on any broker.

    The worker announces itself in the run store once Celery has declared its queues and
    consumes them (``worker_ready``), with its pid and queues: that record is what is waited
    for, not a trace of the broker (kombu's binding key exists only with Redis as broker).
    The pid tells this worker from an earlier one of the same name whose record is still live.
    A worker that exits first raises :class:`ChildExited` with the end of its log when ``proc``
    is a :class:`Child` (it knows its log).
    """
    child = proc if isinstance(proc, Child) else Child("worker", proc)
    fleet = RunStore(redis_url).fleet
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = child.exited("before it was ready")
        if failed is not None:
            raise failed
        if any(w.get("pid") == child.proc.pid and queue in w.get("queues", []) for w in fleet.live_workers()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"worker did not start consuming {queue!r} within {timeout}s")


class ApiProcess:
    """The API run as a user runs it (``python -m api.server``), startable and killable (tests, dev).

    Started as a separate process, so the SDK never imports api/.
    """

    def __init__(
        self,
        redis_url: str,
        database_url: str,
        port: int | None = None,
        log_path: Path | None = None,
        extra_env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        log_level: str = "warning",
    ) -> None:
        self.port = port or free_port()
        self.log_level = log_level  # "info" to see the services' INFO lines (Redis back, say) in the log
        self.host = host
        self.log_path = log_path
        self.env = (
            os.environ.copy()
            | {
                "ORCHESTRATOR_REDIS_URL": redis_url,
                "ORCHESTRATOR_DATABASE_URL": database_url,
                "PYTHONUNBUFFERED": "1",
            }
            | (extra_env or {})
        )
        root = self.env.get("ORCHESTRATOR_API_ROOT_PATH", "")
        self.url = f"http://{host}:{self.port}{root}/api"
        self.proc: subprocess.Popen[bytes] | None = None
        self.child: Child | None = None

    def start(self) -> str:
        """Start the server and wait until it answers; returns its base URL (with /api).

        Raises :class:`ChildExited` (with the end of its log) if it exits before it answers.
        """
        cmd = [sys.executable, "-m", "api.server", "--host", self.host, "--port", str(self.port)]
        self.child = spawn("the API", [*cmd, "--log-level", self.log_level], self.env, self.log_path)
        self.proc = self.child.proc
        wait_for_http(f"http://{self.host}:{self.port}/api/health", self.child)
        return self.url

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown code runs)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop the server cleanly (SIGTERM, then SIGKILL if it lingers)."""
        if self.proc is not None:
            stop_process(self.proc, timeout=15)


@contextlib.contextmanager
def api_server(
    redis_url: str,
    database_url: str,
    log_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[ApiProcess]:
    """Run the API on a free port for the length of the block."""
    server = ApiProcess(redis_url, database_url, log_path=log_path, extra_env=extra_env)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def wait_for_http(url: str, proc: subprocess.Popen[bytes] | Child, timeout: float = 60) -> None:
    """Block until ``url`` answers (any status below 500 or a 503 from a health check).

    A server that exits first raises :class:`ChildExited` (with the end of its log when
    ``proc`` is a :class:`Child`).
    """
    import httpx

    child = proc if isinstance(proc, Child) else Child("server", proc)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        failed = child.exited(f"before it answered {url}")
        if failed is not None:
            raise failed
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


@contextlib.contextmanager
def flower(
    redis_url: str,
    port: int | None = None,
    log_path: Path | None = None,
    basic_auth: str | None = None,
    task_api: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run Flower (``python -m workers.flower``) on the broker, on 127.0.0.1; yield its URL.

    Without ``basic_auth`` (``user:password``) it shows its pages to this machine only and
    has no HTTP API: a web page open in a browser here must not be able to use it. Scripts
    and tests that read the API pass credentials, and ``task_api=True`` besides to run tasks
    through it. The credentials go in FLOWER_BASIC_AUTH, not on the command line.
    """
    with flower_process(redis_url, port, log_path, basic_auth, task_api, extra_env) as child:
        yield child.url


@contextlib.contextmanager
def flower_process(
    redis_url: str,
    port: int | None = None,
    log_path: Path | None = None,
    basic_auth: str | None = None,
    task_api: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Child]:
    """:func:`flower`, yielding the process (to watch it) with its URL in ``url``."""
    port = port or free_port()
    env = (
        os.environ.copy()
        | {"ORCHESTRATOR_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
        | ({"FLOWER_BASIC_AUTH": basic_auth} if basic_auth else {})
        | (extra_env or {})
    )
    cmd = [sys.executable, "-m", "workers.flower", f"--port={port}", "--address=127.0.0.1"]
    cmd += ["--task-api"] if task_api else []
    child = spawn("Flower", cmd, env, log_path)
    child.url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{child.url}/healthcheck", child)
        yield child
    finally:
        child.stop()
