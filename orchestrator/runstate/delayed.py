"""The delayed-messages repository: retries and sensor pokes wait in Redis, not in the broker.

A message (a Celery signature as JSON) sits in a sorted set scored by when it is due;
each worker's sender (``workers.delayed``) claims due ones by pushing their score a
lease ahead, sends them, then forgets them, so a sender that dies before sending lets
them come due again, and none is sent twice by two senders.
"""

from __future__ import annotations

from typing import Any

from orchestrator.runstate import keys
from orchestrator.runstate.connection import now
from orchestrator.runstate.scripts import Scripts


class DelayedMessages:
    """Messages kept until they are due."""

    def __init__(self, redis: Any, scripts: Scripts) -> None:
        self._redis = redis
        self._scripts = scripts

    def schedule(self, message: str, due: float, pipe: Any = None) -> None:
        """Keep a message (a signature as JSON) in Redis until ``due``, instead of a broker ETA."""
        (pipe if pipe is not None else self._redis).zadd(keys.DELAYED, {message: due})

    def claim_due(self, limit: int = 100, lease: float = 30.0) -> tuple[float, list[str]]:
        """Due messages, claimed until the time returned; call :meth:`sent` once each is sent."""
        at = now()
        return at + lease, list(self._scripts["claim_due"](keys=[keys.DELAYED], args=[repr(at), limit, repr(lease)]))

    def sent(self, message: str, claimed_until: float) -> None:
        """Forget a delayed message that has been sent, unless it was scheduled again meanwhile.

        The task it sent may already have run and scheduled the very same message again (a
        task waiting for a concurrency slot asks again with the same message): that new entry
        has another due time and must stay.
        """
        self._scripts["forget_sent"](keys=[keys.DELAYED], args=[message, repr(claimed_until)])
