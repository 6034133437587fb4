"""The flow runs this API process's submitter has just created, for its recorder.

Each run the submitter creates has its row and its Pending state committed before the
worker can hear of it; the run's first stream event, Pending with the same record, then
changes nothing in the database. Loading the row to find that out was about a fifth of
the API's CPU per created run (issue 18). The submitter notes here the runs it committed;
the recorder finds a run's Pending event on this list and, once a cheap query confirms
the row is still as created (Pending, no message: not cancelled or marked late since),
applies nothing for it. A run not on the list (created elsewhere, or the API restarted,
or the list overflowed) takes the full path, so the list only saves work, never decides
what is written.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

MAX_KEPT = 100_000  # runs remembered at most (about 10 MB); the oldest are forgotten first


class CreatedRuns:
    """A bounded, thread-safe set of run ids, oldest forgotten first."""

    def __init__(self, max_kept: int = MAX_KEPT) -> None:
        self.max_kept = max_kept
        self._ids: dict[str, None] = {}  # insertion-ordered: the oldest first
        self._lock = threading.Lock()

    def add_all(self, run_ids: Iterable[str]) -> None:
        """Note runs whose rows are committed (called by the submitter after its commit)."""
        with self._lock:
            for run_id in run_ids:
                self._ids[run_id] = None
            while len(self._ids) > self.max_kept:
                del self._ids[next(iter(self._ids))]

    def listed(self, run_ids: Iterable[str]) -> set[str]:
        """Those of ``run_ids`` on the list."""
        with self._lock:
            return {run_id for run_id in run_ids if run_id in self._ids}

    def forget(self, run_ids: Iterable[str]) -> None:
        """Take runs off the list once their Pending event is recorded (it comes once)."""
        with self._lock:
            for run_id in run_ids:
                self._ids.pop(run_id, None)

    def __len__(self) -> int:
        return len(self._ids)


created_runs = CreatedRuns()  # the API process's one list: its submitter adds, its recorder takes
