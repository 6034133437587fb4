"""Redis outages as the API's services see them: one line when Redis goes away, one when it is back.

The recorder and the periodic services each reach Redis several times a second. Logging
every failed call (with its traceback) buries the one thing an operator needs to read
under thousands of lines, so both threads report to one :class:`RedisOutage` per process:
it logs a WARNING naming the Redis (its password masked) and what to check the first time
a call fails, stays quiet while the services retry with a backoff, and logs an INFO line
when a call succeeds again. Meanwhile the routes that need Redis answer 503 on their own
(``api/app.py``), and ``GET /api/health`` says which part is down.
"""

from __future__ import annotations

import logging
import threading
import time

from orchestrator.guards.redaction import mask_urls_in, masked_url

log = logging.getLogger("orchestrator.services")

FIRST_WAIT = 0.5  # seconds before the first retry after a failed call
LONGEST_WAIT = 5.0  # ... doubling up to this: a Redis back after a restart is noticed within seconds


class RedisOutage:
    """Whether Redis is away for this process's services, told once per outage (thread-safe)."""

    def __init__(self, url: str) -> None:
        self.url = masked_url(url)
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current outage began (None: Redis answers)
        self.outages = 0  # how many outages this process has seen (for health and tests)

    @property
    def away(self) -> bool:
        return self._since is not None

    def lost(self, exc: BaseException) -> None:
        """A call failed because Redis does not answer: the first failure of an outage is logged, no later one."""
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
            self.outages += 1
        log.warning(
            "Redis at %s does not answer (%s): the recorder, scheduler, dispatcher and crash detection "
            "wait and retry every few seconds, and routes that need Redis answer 503 until it is back. "
            "Check that redis-server runs and is reachable from here, and that ORCHESTRATOR_REDIS_URL names it.",
            self.url,
            mask_urls_in(str(exc)) or type(exc).__name__,
        )

    def back(self) -> None:
        """A call succeeded: if Redis was away, say it is back (once) and for how long it was away."""
        with self._lock:
            if self._since is None:
                return
            away_for = time.monotonic() - self._since
            self._since = None
        log.info("Redis at %s answers again after %.0fs away; the services resume", self.url, away_for)


def next_wait(wait: float) -> float:
    """The pause after ``wait`` while Redis stays away: doubled, at most :data:`LONGEST_WAIT`."""
    return min(max(wait, FIRST_WAIT) * 2, LONGEST_WAIT)
