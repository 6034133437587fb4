"""Flow runs left Running with nothing left to run: end them as their task runs decide.

A task run's finishing script counts the run tree down; when a flow run did not simply
complete, the worker then decides its final state (Failed, with the reason) in a second
step. A worker killed between the two leaves every task run final and the flow run
Running, until Redis gives the dead worker's message back after the visibility timeout.
This service notices such a run (a static run whose tree counter is 0 while it is still
Running), waits one crash window to be sure no worker is ending it right now, and ends
it the way that worker would have. Flow hooks do not run here (the API has no flow code).
The API's services loop runs it with the runs its database has recorded Running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from orchestrator.config.settings import get_settings
from orchestrator.runs.lifecycle import finish_flow_run
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType

log = logging.getLogger("orchestrator.stalled")


class StalledRuns:
    """Remembers which runs looked stalled, so a run is ended only if it still is a while later."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.last_pass = 0.0
        self.first_seen: dict[str, float] = {}

    def __call__(self, store: RunStore, running_roots: Callable[[], list[str]]) -> int:
        """One pass (at most every ``every`` seconds); returns how many runs it ended.

        ``running_roots`` names the root flow runs the API has recorded Running, oldest
        update first (the candidates; the run store then says which of them are stalled).
        """
        now = time.time()
        if now - self.last_pass < self.every:
            return 0
        self.last_pass = now
        patience = get_settings().crash_window_seconds
        running = running_roots()
        if not running:
            self.first_seen.clear()
            return 0
        stalled = set()
        for run_id, (state, mode, left) in zip(running, store.flow_runs.progress(running), strict=True):
            if state == StateType.RUNNING.value and mode == "static" and left == 0:
                stalled.add(run_id)  # a dynamic run's body may still submit tasks
        seen = {r: self.first_seen.get(r, now) for r in stalled}
        due = [r for r, since in seen.items() if now - since >= patience]
        self.first_seen = {r: since for r, since in seen.items() if r not in due}
        for run_id in due:
            state = finish_flow_run(store, run_id)
            log.warning("flow run %s was left Running with every task run final; ended it %s", run_id, state.value)
        return len(due)
