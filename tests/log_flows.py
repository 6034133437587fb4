"""Flows of tests/test_log_lines.py: tasks that log through every kind of logger a worker ships.

``log`` is the module's own logger (``tests.log_flows``); ``library`` stands for a library's
logger, shipped because the test's worker names ``testlib`` in ORCHESTRATOR_EXTRA_LOGGERS;
``other`` is a library nobody named (never shipped).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings

from orchestrator import flow, get_run_logger, task
from orchestrator.runstate.store import get_store

log = logging.getLogger(__name__)
library = logging.getLogger("testlib.client")
other = logging.getLogger("otherlib")

log.warning("tests.log_flows imported (outside any run: never shipped)")


@task
def chatty(marker: str, pause: float) -> str:
    """One line of each kind, ``pause`` seconds apart (tasks running at once interleave their lines)."""
    log.info("%s module line", marker)
    time.sleep(pause)
    library.info("%s library line", marker)
    library.debug("%s library debug line (below INFO: not shipped)", marker)
    other.warning("%s line of a logger nobody named (not shipped)", marker)
    time.sleep(pause)
    warnings.warn(f"{marker} careful", UserWarning, stacklevel=1)
    time.sleep(pause)
    get_run_logger().info("%s run logger line", marker)
    try:
        raise KeyError(marker)
    except KeyError:
        log.exception("%s handled error", marker)  # shipped with its traceback
    thread = threading.Thread(target=log.info, args=("%s line of a thread the task started (not shipped)", marker))
    thread.start()
    thread.join()
    return marker


@task(retries=1, retry_delay_seconds=0)
def fails_once(marker: str) -> str:
    """Raises on its first attempt (counted in Redis), returns on the second."""
    if int(get_store().redis.incr(f"test:count:{marker}")) == 1:
        raise ValueError(f"{marker} first attempt fails")
    return marker


@flow(name="log-kinds")
def log_kinds(marker: str, width: int = 4, pause: float = 0.1) -> list[str]:
    """``width`` chatty tasks at once, and one that fails once before it completes."""
    return [chatty.submit(f"{marker}-{i}", pause) for i in range(width)] + [fails_once.submit(f"{marker}-f")]
