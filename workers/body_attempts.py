"""Which attempt of a dynamic flow body a worker drives, and why.

A run's body may be driven several times: its first start, a flow retry (the body from the
start, journal cleared), and resumes after its worker died or handed it over (replaying the
journal). Each has a number; only the live one (``body_attempt`` in the run's record) goes on.
"""

from __future__ import annotations

from dataclasses import dataclass

BODY_HEARTBEAT_PREFIX = "@"


@dataclass(frozen=True)
class BodyAttempt:
    """Which attempt of a dynamic body a worker takes, and why: ``start`` (the run's first),
    ``retry`` (a flow retry: the body from the start) or ``resume`` (replay after its worker died
    or handed it over)."""

    attempt: int = 1
    kind: str = "start"
    worker: str = ""
    why: str = ""  # a resumed attempt: what the crash detector or the worker that handed it over said

    @property
    def heartbeat_id(self) -> str:
        """What this attempt heartbeats as (one per attempt: a superseded attempt that stops forgets
        its own heartbeat, never the live attempt's)."""
        return f"{BODY_HEARTBEAT_PREFIX}{self.attempt}"
