"""Celery events received as Flower receives them, in a background thread, for the tests that watch them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery

READY = "test-receiver-ready"  # the probe event: the subscription is in place once one arrives


@contextlib.contextmanager
def receiving(broker_url: str, handlers: dict[str, Callable[[dict[str, Any]], None]]) -> Iterator[int]:
    """Call ``handlers`` (by event type, ``"*"`` for all but the probe) for every event the broker
    carries while the block runs; the receiver's subscription is in place when the block starts:
    probe events are sent until one comes back (a fixed wait missed a test's first events on a
    slow machine). Yields how many probes were published (a test counting PUBLISH calls adds them)."""
    app = Celery("event-reader", broker=broker_url)
    stop, ready = threading.Event(), threading.Event()
    catch_all = handlers.get("*")

    def any_event(event: dict[str, Any]) -> None:
        if event.get("type") == READY:
            ready.set()
        elif catch_all is not None:
            catch_all(event)

    def receive() -> None:
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers={**handlers, "*": any_event})
            while not stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.2, wakeup=False)
                except TimeoutError:
                    continue

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        probes = 0
        with app.events.default_dispatcher() as dispatcher:
            deadline = time.monotonic() + 30
            while not ready.wait(0.1 if probes else 0.0):
                if time.monotonic() > deadline:
                    raise TimeoutError("the event receiver never subscribed")
                dispatcher.send(READY)
                probes += 1
        yield probes
    finally:
        stop.set()
        thread.join(timeout=5)
