"""Ship the log lines of flow and task runs to Redis while they run.

One handler, attached to every logger whose lines belong with a run:

- the run logger (``get_run_logger()``, ``log_prints``), whose records carry their run ids;
- each task's own module logger (``logging.getLogger(__name__)`` in the module that defines
  the task), followed as tasks are registered;
- the loggers named in ``ORCHESTRATOR_EXTRA_LOGGERS`` (``sqlalchemy``, ``requests``), as
  Prefect's ``PREFECT_LOGGING_EXTRA_LOGGERS``;
- ``py.warnings``: a Celery worker routes Python warnings there (it calls
  ``logging.captureWarnings(True)`` when it sets up logging).

A record of any but the run logger belongs to the run current where it was logged (the run
context is a context variable: per thread, per prefork process, per asyncio task), and is
dropped when no run is current, so a worker's own lines, an import-time line or a line of a
thread the task started is never given to a run. A record reaching the handler twice (a
child logger of a followed one) is shipped once.

Lines are buffered and, every half second (or every 100 lines), appended to the state/log
event stream (for the API recorder) and to a list per flow run (``FlowRun.logs()``). A task
killed mid-run has therefore shipped everything up to its last flush, and a task that ended
has shipped all its lines before its end was recorded (:func:`flush_run_logs`). Nothing is
paid while nothing is logged: a logger with no record calls no handler, and a flush with an
empty buffer makes no Redis call.
"""

from __future__ import annotations

import logging
import os
import threading

from orchestrator.config.settings import get_settings
from orchestrator.runstate.events import LogLine
from orchestrator.runstate.store import get_store
from orchestrator.runtime.context import current_run

RUN_LOGGER = "orchestrator.runs"
WARNINGS_LOGGER = "py.warnings"  # where logging.captureWarnings sends warnings.warn(...)
_SHIPPED = "_orchestrator_shipped"  # set on a record once it is in the buffer
_TRACEBACKS = logging.Formatter()  # formats the exc_info of logger.exception(...) lines


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

    def follow(self, name: str) -> None:
        """Ship the lines of logger ``name`` (and its children) that are logged inside a run.

        A logger with no level of its own gets INFO, as Prefect does for its extra loggers: it
        would otherwise inherit the worker's level (WARNING under ``celery worker`` by default)
        and drop its INFO lines before any handler sees them.
        """
        logger = logging.getLogger(name)
        if self not in logger.handlers:
            logger.addHandler(self)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, _SHIPPED, False):
            return  # came up again through a followed parent logger
        flow_run_id = getattr(record, "flow_run_id", None)
        task_run_id = getattr(record, "task_run_id", None)
        if not flow_run_id:  # not the run logger's adapter: the run current where it was logged, if any
            run = current_run()
            if run is None:
                return
            flow_run_id, task_run_id = run.flow_run_id, run.task_run_id
        setattr(record, _SHIPPED, True)
        message = record.getMessage()
        if record.name == WARNINGS_LOGGER:  # "file:line: Category: text\n  source line": its first line
            message = message.strip().split("\n", 1)[0]
        elif record.exc_info or record.exc_text:  # logger.exception(...): the traceback goes with its line
            message = f"{message}\n{record.exc_text or _TRACEBACKS.formatException(record.exc_info)}"  # type: ignore[arg-type]
        self.add(LogLine(flow_run_id, task_run_id, record.levelname, message, ts=record.created, logger=record.name))

    def add(self, line: LogLine) -> None:
        """Buffer one line (shipped by the timer, at the task's end, or now when the buffer is full)."""
        self._ensure_timer()
        with self._lock:
            self._buffer.append(line)
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


_shipper: RunLogShipper | None = None


def flush_run_logs() -> None:
    """Ship the lines the shipper holds now; nothing to do (no Redis call) when it holds none.

    Called when a task's function returns or raises, before its end is recorded: a worker
    stopped (or killed) right after its last task must not take that task's last lines with it,
    as the half-second timer alone would.
    """
    if _shipper is not None:
        _shipper.flush()


def install() -> RunLogShipper:
    """Attach the shipper (once) to the run logger, ``py.warnings`` and the extra loggers; return it.

    Each task's module logger is followed as the task is registered (``workers/app.py``).
    """
    global _shipper
    if _shipper is None:
        _shipper = RunLogShipper()
    for name in (RUN_LOGGER, WARNINGS_LOGGER, *get_settings().extra_loggers):
        _shipper.follow(name)
    return _shipper
