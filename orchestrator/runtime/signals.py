"""Signals a task raises to end an attempt a particular way (Prefect 1 style).

``raise RETRY("not ready", delay=30)`` asks to run the task again later without
using up its retries (a sensor poke); ``raise FAIL("bad input")`` fails now, with no
retries; ``raise SKIP("nothing to do")`` ends the task Skipped.
"""

from __future__ import annotations

import datetime as dt


class Signal(Exception):
    """Base class: the task ended the attempt on purpose."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class FAIL(Signal):
    """Fail the task run now, without retries."""


class SKIP(Signal):
    """End the task run Skipped."""


class RETRY(Signal):
    """Run the task again at ``start_time`` or after ``delay`` seconds, retries untouched."""

    def __init__(
        self,
        message: str = "",
        *,
        start_time: dt.datetime | None = None,
        delay: float | None = None,
    ) -> None:
        super().__init__(message)
        if start_time is not None and delay is not None:
            raise ValueError("RETRY takes start_time or delay, not both.")
        self.start_time = start_time
        self.delay = delay

    def seconds_to_wait(self, now: dt.datetime | None = None) -> float:
        """How long to wait before the next poke (never negative)."""
        if self.start_time is not None:
            start = self.start_time
            now = now or dt.datetime.now(start.tzinfo or dt.UTC)
            if start.tzinfo is None:
                now = now.replace(tzinfo=None)
            return max(0.0, (start - now).total_seconds())
        return max(0.0, float(self.delay or 0.0))
