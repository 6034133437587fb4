"""``get_run_logger()``: a logger that says which flow and task run wrote each line;
``log_prints``: print() inside a run goes to that logger."""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import sys
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any, TextIO

from orchestrator.runtime.context import current_run

_kept: contextvars.ContextVar[list[logging.LogRecord] | None] = contextvars.ContextVar(
    "orchestrator_run_logs_kept", default=None
)


class RunLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes messages with the run's names and ids and adds them as record fields."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        """Log as usual; inside :func:`run_logs_kept`, also keep an INFO-or-above line there."""
        super().log(level, msg, *args, **kwargs)
        kept = _kept.get()
        if kept is not None and level >= logging.INFO:
            text, options = self.process(msg, dict(kwargs))
            record = self.logger.makeRecord(
                self.logger.name, level, "(flow body)", 0, text, args, None, extra=options.get("extra")
            )
            kept.append(record)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        label = extra.get("task_name") or extra.get("flow_name") or ""
        run_id = extra.get("task_run_id") or extra.get("flow_run_id") or ""
        return f"[{label} {run_id}] {msg}", kwargs


def get_run_logger(name: str = "orchestrator.runs") -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """A logger bound to the current flow or task run (a plain logger outside any run)."""
    run = current_run()
    extra: dict[str, Any] = {}
    if run is not None:
        extra = {
            "flow_run_id": run.flow_run_id,
            "flow_name": run.flow_name,
            "task_run_id": run.task_run_id,
            "task_name": run.task_name,
            "attempt": run.attempt,
        }
    return RunLoggerAdapter(logging.getLogger(name), extra)


_capturing: contextvars.ContextVar[bool] = contextvars.ContextVar("orchestrator_log_prints", default=False)
_install_lock = threading.Lock()


class _PrintRouter(io.TextIOBase):
    """Stands in for sys.stdout: lines printed where ``log_prints`` is on go to the run log.

    Which code captures is decided per thread and task by a context variable, so a
    task that prints in one thread never captures another's output; everything else
    goes to the real stdout unchanged.
    """

    def __init__(self, original: TextIO) -> None:
        self.original = original
        self._pending = threading.local()

    def write(self, text: str) -> int:
        if not _capturing.get() or getattr(self._pending, "inside", False):
            return self.original.write(text)  # not captured, or a log handler writing to stdout
        buffered = getattr(self._pending, "text", "") + text
        *lines, rest = buffered.split("\n")
        self._pending.text = rest
        self._log(lines)
        return len(text)

    def _log(self, lines: list[str]) -> None:
        self._pending.inside = True
        try:
            logger = get_run_logger()
            for line in lines:
                logger.info("%s", line)
        finally:
            self._pending.inside = False

    def flush(self) -> None:
        rest = getattr(self._pending, "text", "")
        if _capturing.get() and rest and not getattr(self._pending, "inside", False):
            self._pending.text = ""
            self._log([rest])
        self.original.flush()

    def fileno(self) -> int:
        return self.original.fileno()

    def isatty(self) -> bool:
        return self.original.isatty()


@contextlib.contextmanager
def prints_logged(enabled: bool | None) -> Iterator[None]:
    """Within the block, print() of this thread goes to the current run's log (if ``enabled``)."""
    if not enabled:
        yield
        return
    with _install_lock:
        if not isinstance(sys.stdout, _PrintRouter):
            sys.stdout = _PrintRouter(sys.stdout)
    router = sys.stdout
    token = _capturing.set(True)
    try:
        yield
    finally:
        router.flush()
        _capturing.reset(token)


_terminal_lock = threading.Lock()
_terminal_handler: logging.Handler | None = None


def show_run_logs_on_terminal() -> None:
    """Show run-logger lines (and ``log_prints`` output) on stderr for a flow called in-process,
    unless the program configured logging itself.

    Python drops INFO lines of an unconfigured program; Prefect shows its run logs anyway, and
    a script that calls a flow expects to see them. Nothing is added when any handler exists on
    the run logger or above it (a program's own ``logging.basicConfig``, pytest's capture), or
    when this was done already. Workers configure logging through Celery and never get here.
    """
    global _terminal_handler
    logger = logging.getLogger("orchestrator.runs")
    with _terminal_lock:
        if _terminal_handler is not None or logger.hasHandlers():
            return
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d | %(levelname)-7s | %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
        _terminal_handler = handler


@contextlib.contextmanager
def run_logs_kept(into: list[logging.LogRecord]) -> Iterator[None]:
    """Within the block, keep the run-logger lines this context writes (with their run ids) in ``into``.

    ``.delay()`` plans a flow body in the caller's process; what the body logs there belongs to
    the run's logs like what it logs on a worker. The lines are kept whatever the program's
    logging levels (an unconfigured program drops INFO), and without touching its loggers: a
    context variable, so nothing is paid on ``.delay()`` beyond setting it.
    """
    token = _kept.set(into)
    try:
        yield
    finally:
        _kept.reset(token)
