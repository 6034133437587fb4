"""Redis's MONITOR in a background thread, for the tests that check which client ran which command."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import redis


@contextlib.contextmanager
def monitoring(redis_url: str) -> Iterator[list[dict[str, Any]]]:
    """Yield the list the MONITOR lines go into (each with its ``command`` and ``client_type``:
    'lua' for a script's commands) while the block runs; monitoring has begun when it starts."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    lines: list[dict[str, Any]] = []
    ready, done = threading.Event(), threading.Event()

    def listen() -> None:
        with client.monitor() as monitor:
            ready.set()
            for line in monitor.listen():
                lines.append(line)
                if done.is_set():
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    ready.wait(5)
    try:
        yield lines
    finally:
        done.set()
        client.ping()  # one more line, so the monitor loop sees done
        listener.join(5)
