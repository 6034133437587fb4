"""A soft time limit that arrives after a task's function has ended must not cut its bookkeeping.

Celery's soft limit is SIGUSR1 from the pool; billiard's handler raises wherever the process
is. The executor holds it off from the end of the function to the end of the attempt
(``workers/time_limits.py``); here a real signal is sent to this process.
"""

from __future__ import annotations

import os
import signal
import time
from types import FrameType

import pytest

from workers.time_limits import hold_off_soft_limit


class SoftLimit(Exception):
    pass


def _raise(signum: int, frame: FrameType | None) -> None:
    raise SoftLimit("soft time limit")


def test_a_late_soft_limit_is_ignored_until_restored() -> None:
    previous = signal.signal(signal.SIGUSR1, _raise)
    try:
        restore = hold_off_soft_limit()
        assert restore is not None
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)  # delivered: ignored
        restore()
        with pytest.raises(SoftLimit):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_without_a_handler_there_is_nothing_to_hold_off() -> None:
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        assert hold_off_soft_limit() is None
    finally:
        signal.signal(signal.SIGUSR1, previous)
