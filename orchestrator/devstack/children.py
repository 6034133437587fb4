"""A process ``orchestrator dev`` (or a test) starts, with its name and its log, and why it stopped.

A child that dies is reported by name, with the end of its own log (where the cause is: a flow
module that does not import, a port already taken) and the log's path: not with a traceback of
the code that was waiting for it, nor by a stack that goes on saying "ready" around it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ChildExited

REASON_LINES = 3
REASON_WIDTH = 1000


@dataclass
class Child:
    """A started process (leading its own process group) and the part of its log it wrote."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None = None
    log_start: int = 0  # the log is appended to: only what follows is this start's
    url: str = ""  # where a server answers, once known

    def exited(self, when: str) -> ChildExited | None:
        """The error to raise if the process has exited (``when``: "before it was ready"...), else None."""
        code = self.proc.poll()
        if code is None:
            return None
        return ChildExited(self.name, code, when, self.reason(), self.log_path)

    def reason(self) -> list[str]:
        """The last meaningful lines this start wrote to its log (none without a log)."""
        if self.log_path is None:
            return []
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_start)
                text = log.read().decode(errors="replace")
        except OSError:
            return []
        return log_reason(text)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process and everything left in its group (see :func:`stop_process`)."""
        stop_process(self.proc, timeout)


def spawn(name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None, log_path: Path | None = None) -> Child:
    """Start ``cmd`` in a new session (so its whole group can be stopped), output appended to ``log_path``."""
    if log_path is None:
        proc = subprocess.Popen(
            list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        return Child(name, proc)
    with open(log_path, "ab") as log:
        start = log.tell()
        proc = subprocess.Popen(list(cmd), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Child(name, proc, log_path, start)


def log_reason(text: str) -> list[str]:
    """The lines of a log that say why its process stopped.

    After a Python traceback, its exception lines (the frames and source lines, indented, say
    where, not why); otherwise the last few non-blank lines. Long lines are cut.
    """
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        lines = [line for line in lines[starts[-1] + 1 :] if not line[0].isspace()] or lines
    lines = [line.strip() for line in lines[-REASON_LINES:]]
    return [line if len(line) <= REASON_WIDTH else line[:REASON_WIDTH] + "..." for line in lines]


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on ``host:port`` (binding it as a server would fails).

    SO_REUSEADDR as servers set it: a port a stopped server left in TIME_WAIT is not taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """TERM the process group, then KILL it if it does not leave in time.

    Also when the leader has died already: a Celery worker killed by a signal leaves its pool
    processes behind in its group, and they must not outlive the stack.
    """
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(5)
    deadline = time.monotonic() + timeout
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _group_alive(proc.pid):
        _signal_group(proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies waiting for a reaper do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # no procfs: ask the kernel, zombies included
        return _signal_group(pgid, 0)
    for entry in proc.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
    return False


def _signal_group(pgid: int, signum: int) -> bool:
    """Send ``signum`` to the group; whether any process was left in it to receive it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # the id went to another user's group meanwhile: not ours
        return False
    return True
