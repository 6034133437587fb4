"""RabbitMQ for tests and a laptop: a private ``rabbitmq-server`` on free ports, or a vhost of
one's own on a RabbitMQ that already runs.

Either way nothing is left behind: the private server's files live in a folder removed at the
end, and a borrowed server's vhost (with every queue and exchange Celery declared in it) is
deleted with ``rabbitmqctl delete_vhost``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from orchestrator.devstack.children import Child, spawn
from orchestrator.errors import ConnectionProblem

# Debian's /usr/sbin/rabbitmq-server re-runs itself as the rabbitmq user when started by root, and
# that user cannot write a test's temporary folder: the script it wraps runs as whoever calls it.
_UNWRAPPED = Path("/usr/lib/rabbitmq/bin")
START_SECONDS = 90.0  # about 5 s on an idle laptop; 20 s seen on a loaded 2-core test machine
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def rabbitmq_binary(name: str = "rabbitmq-server") -> str | None:
    """The path of a RabbitMQ script (the unwrapped one where Debian wraps it), or None."""
    unwrapped = _UNWRAPPED / name
    if unwrapped.exists():
        return str(unwrapped)
    return shutil.which(name)


def amqp_answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether an AMQP 0-9-1 broker answers on ``host:port`` (it sends ``connection.start``)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(AMQP_HEADER)
            return sock.recv(1) == b"\x01"  # a method frame
    except OSError:
        return False


class RabbitMQServer:
    """A private ``rabbitmq-server`` keeping its data in ``data_dir``, on ports that stay the same
    across restarts (a test stops and starts it under running workers)."""

    def __init__(self, data_dir: Path, port: int, dist_port: int, log_path: Path | None = None) -> None:
        binary = rabbitmq_binary()
        if binary is None:
            raise ConnectionProblem("rabbitmq-server is not installed; install it (apt-get install rabbitmq-server)")
        self.binary = binary
        self.port = port
        self.url = f"amqp://guest:guest@127.0.0.1:{port}//"
        self.data_dir = data_dir
        self.log_path = log_path or data_dir / "rabbitmq.log"
        self.child: Child | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        (data_dir / "enabled_plugins").write_text("[].\n")  # no management plugin: starts faster
        (data_dir / "rabbitmq-env.conf").write_text("")  # not the system's NODENAME and listeners
        (data_dir / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\n")
        self.env = os.environ.copy() | {
            "HOME": str(data_dir),  # its own Erlang cookie
            "RABBITMQ_NODENAME": f"orc-test-{port}@localhost",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_CONF_ENV_FILE": str(data_dir / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(data_dir / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(data_dir / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(data_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(data_dir / "log"),
            "RABBITMQ_PID_FILE": str(data_dir / "rabbitmq.pid"),
        }

    def start(self) -> None:
        """Start it and wait until it answers AMQP (raises ChildExited if it exits first)."""
        self.child = spawn("rabbitmq-server", [self.binary], self.env, self.log_path)
        deadline = time.monotonic() + START_SECONDS
        while not amqp_answers("127.0.0.1", self.port, timeout=0.5):
            failed = self.child.exited("before it answered")
            if failed is not None:
                raise failed
            if time.monotonic() > deadline:
                raise ConnectionProblem(f"rabbitmq-server on port {self.port} did not start; see {self.log_path}")
            time.sleep(0.2)

    def stop(self, how: signal.Signals = signal.SIGTERM) -> None:
        """SIGTERM (a clean stop: it writes its queues and leaves) or SIGKILL (a crash)."""
        if self.child is not None and self.child.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.proc.pid, how)
            self.child.proc.wait(60)

    def close(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=30)


@contextlib.contextmanager
def rabbitmq_server(port: int, dist_port: int, log_path: Path | None = None) -> Iterator[RabbitMQServer]:
    """Run a private rabbitmq-server on ``port`` (Erlang distribution on ``dist_port``); yield it
    started. Its files live in a temporary folder removed at the end."""
    data_dir = Path(tempfile.mkdtemp(prefix="orc-rabbitmq-"))
    server = RabbitMQServer(data_dir, port, dist_port, log_path)
    try:
        server.start()
        yield server
    finally:
        server.close()
        shutil.rmtree(data_dir, ignore_errors=True)


def _rabbitmqctl(*args: str) -> None:
    ctl = shutil.which("rabbitmqctl") or rabbitmq_binary("rabbitmqctl")
    if ctl is None:
        raise ConnectionProblem("rabbitmqctl is not installed")
    done = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ConnectionProblem(f"rabbitmqctl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-500:]}")


@contextlib.contextmanager
def fresh_vhost(
    host: str = "127.0.0.1", port: int = 5672, user: str = "guest", password: str = "guest"
) -> Iterator[str]:
    """A vhost of one's own on the local RabbitMQ node (made with ``rabbitmqctl``, which must be
    allowed to talk to it: root, or the rabbitmq user); yields its AMQP URL and deletes it, with
    whatever was declared in it, at the end (also on error or Ctrl-C)."""
    name = f"orc-test-{uuid.uuid4().hex[:12]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
        yield f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{host}:{port}/{quote(name, safe='')}"
    finally:
        with contextlib.suppress(ConnectionProblem, subprocess.TimeoutExpired):
            _rabbitmqctl("delete_vhost", name)
