"""Celery events received as Flower receives them, in a background thread, for the tests that watch them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from celery import Celery


@contextlib.contextmanager
def receiving(broker_url: str, handlers: dict[str, Callable[[dict[str, Any]], None]]) -> Iterator[None]:
    """Call ``handlers`` (by event type, ``"*"`` for all) for every event the broker carries while
    the block runs; the receiver's subscription is in place when the block starts."""
    app = Celery("event-reader", broker=broker_url)
    stop = threading.Event()

    def receive() -> None:
        with app.connection() as connection:
            receiver = app.events.Receiver(connection, handlers=handlers)
            while not stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.2, wakeup=False)
                except TimeoutError:
                    continue

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    time.sleep(1.0)  # the receiver's queue must be bound before events are sent
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
