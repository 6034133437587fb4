"""A Redis Sentinel group for tests: a master, a replica and three sentinels on free ports.

Every server is a real ``redis-server`` (the sentinels with ``--sentinel``), each in its own
temporary folder, and all of them are stopped and their folders removed when the block ends,
also when the test fails.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from orchestrator.devstack.children import Child, spawn
from orchestrator.devstack.localstack import free_port, redis_process
from tests.api_support import eventually

MASTER_NAME = "mymaster"


@dataclass
class SentinelGroup:
    """The servers of one group and the ``redis+sentinel://`` URL that reaches its master."""

    master: Child
    replica: Child
    sentinels: list[Child]
    sentinel_ports: list[int]
    master_port: int
    replica_port: int
    name: str = MASTER_NAME
    down_after_ms: int = 1500
    folders: list[str] = field(default_factory=list)
    password: str | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        userinfo = f":{self.password}@" if self.password else ""
        return f"redis+sentinel://{userinfo}{hosts}/{self.name}/0"

    def sentinel(self, i: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[i], decode_responses=True, socket_timeout=2)

    def master_port_named(self, i: int = 0) -> int | None:
        """The master's port as sentinel ``i`` names it now (None when it does not answer)."""
        try:
            with self.sentinel(i) as client:
                address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
        except redis.RedisError:
            return None
        return int(address[1]) if address else None

    def wait_ready(self, timeout: float = 30) -> None:
        """Until every sentinel knows the replica and the two other sentinels (a failover needs both)."""

        def ready() -> bool:
            for i in range(len(self.sentinel_ports)):
                try:
                    with self.sentinel(i) as client:
                        replicas = client.execute_command("SENTINEL", "REPLICAS", self.name)
                        others = client.execute_command("SENTINEL", "SENTINELS", self.name)
                except redis.RedisError:
                    return False
                if len(replicas) < 1 or len(others) < len(self.sentinel_ports) - 1:
                    return False
            return True

        eventually(ready, timeout, interval=0.1, what="the sentinels know the replica and each other")

    def kill_master(self) -> None:
        """SIGKILL the master: it is gone, as a host that died."""
        self.master.proc.send_signal(signal.SIGKILL)
        self.master.proc.wait(10)

    def wait_failover(self, timeout: float = 30) -> float:
        """Until every sentinel names the replica as master and it answers as one; returns the seconds it took."""
        started = time.monotonic()

        def promoted() -> bool:
            if any(self.master_port_named(i) != self.replica_port for i in range(len(self.sentinel_ports))):
                return False
            with redis.Redis(
                port=self.replica_port, password=self.password, decode_responses=True, socket_timeout=2
            ) as client:
                return str(client.role()[0]) == "master"

        eventually(promoted, timeout, interval=0.1, what=f"the replica on {self.replica_port} promoted")
        return time.monotonic() - started


def _replica_linked(port: int, password: str | None) -> bool:
    with redis.Redis(port=port, password=password, decode_responses=True, socket_timeout=2) as client:
        return client.info("replication").get("master_link_status") == "up"


@contextlib.contextmanager
def sentinel_group(logs: Path, down_after_ms: int = 1500, password: str | None = None) -> Iterator[SentinelGroup]:
    """Start a master, a replica (linked) and three sentinels monitoring the master (quorum 2).

    With ``password`` both servers ask for it (and the replica gives it to the master), and the
    sentinels know it; the sentinels themselves ask for none.
    """
    auth = ["--masterauth", password] if password else []
    with contextlib.ExitStack() as stack:
        master = stack.enter_context(redis_process(log_path=logs / "master.log", password=password, extra_args=auth))
        master_port = int(master.url.rsplit(":", 1)[1].split("/")[0])
        replica = stack.enter_context(
            redis_process(
                log_path=logs / "replica.log",
                password=password,
                extra_args=[*auth, "--replicaof", "127.0.0.1", str(master_port)],
            )
        )
        replica_port = int(replica.url.rsplit(":", 1)[1].split("/")[0])
        eventually(
            lambda: _replica_linked(replica_port, password), 20, interval=0.05, what="the replica linked to the master"
        )
        ports = [free_port() for _ in range(3)]
        sentinels: list[Child] = []
        folders: list[str] = []
        for i, port in enumerate(ports):
            folder = tempfile.mkdtemp(prefix="orc-sentinel-")
            folders.append(folder)
            stack.callback(shutil.rmtree, folder, True)
            conf = Path(folder) / "sentinel.conf"  # a sentinel rewrites its file: one each, writable
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
                + (f"sentinel auth-pass {MASTER_NAME} {password}\n" if password else "")
            )
            server = shutil.which("redis-server") or "redis-server"
            child = spawn(f"sentinel {i}", [server, str(conf), "--sentinel"], log_path=logs / f"sentinel-{i}.log")
            stack.callback(child.stop)
            sentinels.append(child)
        group = SentinelGroup(
            master,
            replica,
            sentinels,
            ports,
            master_port,
            replica_port,
            down_after_ms=down_after_ms,
            folders=folders,
            password=password,
        )
        group.wait_ready()
        yield group
