"""Ship the log lines of flow and task runs to Redis while they run.

Lines written with ``get_run_logger()`` carry their run ids; this handler buffers
them and, every half second (or every 100 lines), appends them to the state/log
event stream (for the API recorder) and to a list per flow run (``FlowRun.logs()``).
A task killed mid-run has therefore shipped everything up to its last flush, and a task
that ended has shipped all its lines before its end was recorded (:func:`flush_run_logs`).
"""

from __future__ import annotations

import logging
import os
import threading

from orchestrator.runstate.events import LogLine
from orchestrator.runstate.store import get_store

RUN_LOGGER = "orchestrator.runs"


class RunLogShipper(logging.Handler):
    """A logging handler that batches run log lines into Redis; never raises into user code."""

    def __init__(self, interval: float = 0.5, capacity: int = 100) -> None:
        super().__init__(level=logging.INFO)
        self.interval = interval
        self.capacity = capacity
        self._buffer: list[LogLine] = []
        self._lock = threading.Lock()
        self._pid = 0

    def _ensure_timer(self) -> None:
        """One flushing thread per process (prefork children start their own)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            threading.Thread(target=self._run, name="orchestrator-logs", daemon=True).start()

    def _run(self) -> None:
        stop = threading.Event()
        while not stop.wait(self.interval):
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        flow_run_id = getattr(record, "flow_run_id", None)
        if not flow_run_id:
            return
        item = LogLine(
            flow_run_id=flow_run_id,
            task_run_id=getattr(record, "task_run_id", None),
            level=record.levelname,
            message=record.getMessage(),
            ts=record.created,
        )
        self._ensure_timer()
        with self._lock:
            self._buffer.append(item)
            full = len(self._buffer) >= self.capacity
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self._buffer = self._buffer, []
        if not batch:
            return
        try:
            get_store().events.ship_logs(batch)
        except Exception:  # Redis away: put the lines back for the next flush
            with self._lock:
                self._buffer = batch[-10_000:] + self._buffer


def flush_run_logs() -> None:
    """Ship the lines the run logger holds now; nothing to do (no Redis call) when it holds none.

    Called when a task's function returns or raises, before its end is recorded: a worker
    stopped (or killed) right after its last task must not take that task's last lines with it,
    as the half-second timer alone would.
    """
    for handler in logging.getLogger(RUN_LOGGER).handlers:
        if isinstance(handler, RunLogShipper):
            handler.flush()


def install() -> RunLogShipper:
    """Attach the shipper to the run logger (once) and return it."""
    logger = logging.getLogger(RUN_LOGGER)
    for handler in logger.handlers:
        if isinstance(handler, RunLogShipper):
            return handler
    shipper = RunLogShipper()
    logger.addHandler(shipper)
    logger.setLevel(logging.INFO)
    return shipper
