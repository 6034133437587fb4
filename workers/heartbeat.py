"""Heartbeats of running task runs, so a worker that dies mid-task is noticed.

A task run is under the crash detector from its first moment: the start script, in the
round trip that records the start, puts its score in the ``orc:heartbeats`` sorted set
with what is needed to run it again (its message, when retries are left). Each worker
process keeps the task runs it is running in memory, and a thread beats for them every
``heartbeat_interval_seconds`` with one pipelined round trip: their scores, the leases
on concurrency-limit slots they hold, and taking the ones that ended since the last beat
off the set. Short tasks add no round trip of their own: their entries leave in the next
beat, batched. The API's crash detector (``orchestrator/supervision/crashes.py``) reads the set.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from orchestrator.config.settings import get_settings
from orchestrator.runstate import slots as concurrency
from orchestrator.runstate.store import get_store

log = logging.getLogger(__name__)


class Heartbeats:
    """The task runs this process is running, and the thread that beats for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, dict[str, Any]] = {}  # task run id -> its crash record
        self._announced: set[str] = set()  # records already written to Redis
        self._finished: set[str] = set()  # beaten once, now done: to remove on the next beat
        self._pid = 0

    def begin(self, task_run_id: str, record: dict[str, Any], *, announced: bool = False) -> None:
        """A task run starts in this process (costs no round trip). ``announced``: its crash record
        is in Redis already (a dynamic body writes it when it takes the body: see ``claim_body``)."""
        self._ensure_thread()
        with self._lock:
            self._running[task_run_id] = record  # serialized only if it lives to its first beat
            self._finished.discard(task_run_id)
            if announced:
                self._announced.add(task_run_id)

    def end(self, task_run_id: str) -> None:
        """The task run ended here, one way or another."""
        with self._lock:
            self._running.pop(task_run_id, None)
            if task_run_id in self._announced:
                self._announced.discard(task_run_id)
                self._finished.add(task_run_id)

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():  # one thread per process (prefork children start their own)
            self._pid = os.getpid()
            self._announced.clear()
            threading.Thread(target=self._loop, name="orchestrator-heartbeats", daemon=True).start()

    def _loop(self) -> None:
        interval = get_settings().heartbeat_interval_seconds
        stop = threading.Event()
        while not stop.wait(interval):
            began = time.monotonic()
            try:
                self.beat()
                if time.monotonic() - began > interval:
                    self.beat()  # that one waited for Redis to come back: its time stamp went out late
            except Exception:  # Redis away for longer than the worker waits: the next beat tries again
                log.warning("heartbeat failed; retrying in %ss", interval, exc_info=True)

    def beat(self) -> None:
        """One round trip: refresh every running task run, announce new ones, forget finished ones."""
        with self._lock:
            running = dict(self._running)
            new = {t: r for t, r in running.items() if t not in self._announced}
            finished, self._finished = self._finished, set()
        if not running and not finished:
            return
        held = {t: r["slots"] for t, r in running.items() if r.get("slots")}
        get_store().leases.beat(running, new, finished, lambda pipe: concurrency.renew(pipe, held))
        with self._lock:
            self._announced |= {t for t in new if t in self._running}


HEARTBEATS = Heartbeats()
