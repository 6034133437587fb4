"""Keep a late soft time limit from interrupting a task run's bookkeeping.

Celery's soft time limit is a signal (SIGUSR1) its pool sends the process running the task;
billiard's handler raises SoftTimeLimitExceeded wherever the process is. A task that ends
right at its limit (an async task's own timeout fires at the same moment, or a function
returns just in time) can get the signal after its function is done, while the executor
records the end in Redis: the reply is lost, the task run stays Running and its flow run
never ends. Once the function has ended, the executor holds the signal off, and restores
Celery's handler when the attempt is over.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)
SOFT_LIMIT_SIGNAL = getattr(signal, "SIGUSR1", None)


def _late(signum: int, frame: FrameType | None) -> None:
    log.info("a soft time limit arrived after the task's function had ended; ignored")


def hold_off_soft_limit() -> Callable[[], None] | None:
    """Ignore a soft time limit from now on; returns what restores the previous handler (None: nothing to do).

    Only in a pool process's main thread (where Celery installs the handler and runs tasks).
    """
    if SOFT_LIMIT_SIGNAL is None or threading.current_thread() is not threading.main_thread():
        return None
    signal_number = SOFT_LIMIT_SIGNAL
    previous = signal.getsignal(signal_number)
    if not callable(previous):
        return None
    signal.signal(signal_number, _late)

    def restore() -> None:
        signal.signal(signal_number, previous)

    return restore
