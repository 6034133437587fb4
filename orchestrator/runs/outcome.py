"""A flow run's result as plain JSON, for the API and the CLI (``GET /api/flow-runs/{id}/result``).

:meth:`FlowRun.result <orchestrator.runs.handle.FlowRun.result>` rebuilds the flow's
return value with its Python types (dataclasses, pickled values): it needs the flow's
code. The API has none, and must never unpickle what a worker stored, so here the
value is shown as plain JSON instead (:func:`~orchestrator.data.serialization.to_plain`:
a date as its ISO text, a tuple as a list, a dataclass as the object of its fields, a
pickled value as the text ``"<pickled>"``).

Results live in Redis for ``ORCHESTRATOR_RESULT_TTL_SECONDS`` (and in the result
storage when a task has ``persist_result=True``); past that, :class:`ShownResult` says
which task runs' results are gone instead of failing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from orchestrator.data.results import read_persisted
from orchestrator.data.serialization import to_plain
from orchestrator.planning.plan import REF, refs_in
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShownResult:
    """What the run store says of a run's result.

    ``state`` is None when Redis no longer holds the run's record (expired, or never written:
    a run still Scheduled lives only in the API's database). ``value`` is meaningful only when
    the run completed and ``expired`` is empty; ``expired`` lists the task runs whose results
    are gone from Redis and were not persisted.
    """

    state: StateType | None
    message: str = ""
    value: Any = None
    expired: list[str] = field(default_factory=list)


def shown_result(store: RunStore, run_id: str) -> ShownResult:
    """The run's state and, when it completed, its return value as plain JSON."""
    outcome = store.flow_runs.read_outcome(run_id)
    try:
        state = outcome.state_type
    except ValueError:
        state = None
    message = outcome.message or ""
    if state is not StateType.COMPLETED:
        return ShownResult(state, message)
    returns = json.loads(outcome.returns or "null")
    refs = refs_in(returns)
    texts = {ref: outcome.results.get(ref) for ref in refs}
    missing = [ref for ref, text in texts.items() if text is None]
    if missing:  # gone from Redis: a result kept with persist_result=True is still on storage
        texts |= {ref: text for ref, text in _persisted(missing).items() if text is not None}
    expired = [ref for ref, text in texts.items() if text is None]
    if expired:
        return ShownResult(state, message, expired=expired)
    results = {ref: to_plain(json.loads(text)) for ref, text in texts.items() if text is not None}
    return ShownResult(state, message, value=to_plain(_substitute(returns, results)))


def _persisted(task_run_ids: list[str]) -> dict[str, str | None]:
    """Results kept in the result storage; none where the storage cannot be read (the run's result
    is then reported expired, with the storage's error in this process's log)."""
    try:
        return read_persisted(task_run_ids)
    except Exception as exc:  # a storage outage or a bad URL: say "expired", never a 500
        log.warning("result storage unreadable for %s: %s", task_run_ids[:3], exc)
        return {}


def _substitute(template: Any, results: dict[str, Any]) -> Any:
    """The return template with each reference replaced by its (plain) result, indexed by its path."""
    if isinstance(template, list):
        return [_substitute(item, results) for item in template]
    if not isinstance(template, dict):
        return template
    if REF not in template:
        return {key: _substitute(item, results) for key, item in template.items()}
    value = results[template[REF]]
    for key in template.get("path", []):
        value = value[key]
    return value
