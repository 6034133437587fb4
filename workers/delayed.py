"""Send retries and sensor pokes when they are due, from a Redis sorted set.

A broker ETA would keep the message unacknowledged inside a worker for the whole
delay; with Redis as broker, a delay longer than ``visibility_timeout`` then gets the
message redelivered and the task run twice. Instead the message waits in Redis (see
``store.delayed.schedule``) and every worker runs this small sender thread; claiming
is atomic, so each message is sent once however many workers there are.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence

from celery import Celery

from orchestrator.runstate.store import get_store

log = logging.getLogger(__name__)
BEAT_SECONDS = 5.0


class DelayedSender:
    """A daemon thread that sends due messages every ``interval`` seconds.

    It also runs the worker's other small periodic jobs (``periodic``: seconds, job), each
    on its own period: the alive key, stamping the messages the worker holds.
    """

    def __init__(
        self, app: Celery, interval: float = 0.2, periodic: Sequence[tuple[float, Callable[[], object]]] = ()
    ) -> None:
        self.app = app
        self.interval = interval
        self.periodic = list(periodic)
        self._last_run = [0.0] * len(self.periodic)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orchestrator-delayed", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def send_due(self) -> int:
        """Send every message that is due now; return how many were sent."""
        store = get_store()
        sent = 0
        claimed_until, due = store.delayed.claim_due()
        for message in due:
            try:
                self.app.signature(json.loads(message)).apply_async()
            except Exception:  # stays claimed; comes due again when its lease ends
                log.exception("could not send a delayed message; it will be retried")
                continue
            store.delayed.sent(message, claimed_until)
            sent += 1
        return sent

    def run_periodic(self) -> None:
        """Run each periodic job whose period has passed; one that fails is tried on its next period."""
        for i, (seconds, job) in enumerate(self.periodic):
            if time.monotonic() - self._last_run[i] >= seconds:
                self._last_run[i] = time.monotonic()
                try:
                    job()
                except Exception:  # Redis away, say: the next period tries again
                    log.warning("periodic worker job %s failed", getattr(job, "__name__", job), exc_info=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_periodic()
            try:
                busy = self.send_due() > 0
            except Exception:  # Redis away: keep trying, never die
                log.exception("delayed-message dispatcher: Redis error")
                busy = False
            if not busy:
                self._stop.wait(self.interval)
