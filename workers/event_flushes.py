"""Task events sent by the worker's main process in batches a few milliseconds wide, not one by one.

Celery's worker buffers its task events (received, started, succeeded...) and asks its event
loop to flush the buffer on its next turn (``Consumer.on_send_event_buffered``). The main process
is the worker's one serial part, and it sends three task events per task: flushed on the next
turn, nearly each goes out as a publish of its own, a fifth of the main process's time in a
worker running many short tasks (py-spy, ``benchmarks/README.md``). Here the first event buffered
schedules one flush :data:`FLUSH_SECONDS` later and the events buffered meanwhile go with it, as
one ``task.multi`` message; Celery still flushes at once when the buffer holds ``buffer_limit``
(24) events. Flower and every event receiver read ``task.multi`` as they always did; an event
reaches them at most :data:`FLUSH_SECONDS` later. Events still buffered when the consumer stops
are flushed then.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery import bootsteps
from celery.worker.consumer.events import Events

FLUSH_SECONDS = 0.02
"""How long the first buffered task event waits for others to go with it."""


class BatchedEventFlushes(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: one flush per :data:`FLUSH_SECONDS` of buffered task events."""

    requires = (Events,)  # stopped before Events closes the dispatcher: what is buffered goes out first

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._scheduled = False

        def flush() -> None:
            self._scheduled = False
            c._flush_events()

        def on_send_event_buffered() -> None:
            hub = c.hub
            if hub is None:  # no event loop (Celery buffers nothing then; kept for safety)
                c._flush_events()
            elif not self._scheduled:
                self._scheduled = True
                hub.call_later(FLUSH_SECONDS, flush)

        # read by Events.start when it builds the dispatcher (also after a reconnection)
        c.on_send_event_buffered = on_send_event_buffered

    def stop(self, c: Any) -> None:
        with contextlib.suppress(Exception):  # never in the way of stopping; the broker may be gone
            c._flush_events()

    shutdown = stop


def batch_event_flushes(app: Any) -> None:
    """Add :class:`BatchedEventFlushes` to ``app``'s worker consumer (the worker app calls it once)."""
    app.steps["consumer"].add(BatchedEventFlushes)
