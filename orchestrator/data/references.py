"""Resolve input templates: references to upstream task runs become their results.

Data passes by reference: a message names upstream task runs, and the receiving
side fetches their results from Redis here, in one round trip.
"""

from __future__ import annotations

from typing import Any

from orchestrator.data.results import read_persisted
from orchestrator.data.serialization import PICKLE_TAG, dumps, from_jsonable, loads, unpickle
from orchestrator.errors import RunError
from orchestrator.planning.plan import REF, refs_in
from orchestrator.runstate.store import RunStore


class _Ref:
    """Placeholder for a referenced result while a template is decoded."""

    def __init__(self, node_id: str, path: list[Any]) -> None:
        self.node_id = node_id
        self.path = path


def _substitute(value: Any, results: dict[str, Any]) -> Any:
    if isinstance(value, _Ref):
        out = results[value.node_id]
        for key in value.path:
            out = out[key]
        return out
    if isinstance(value, list):
        return [_substitute(v, results) for v in value]
    if isinstance(value, tuple):
        return tuple(_substitute(v, results) for v in value)
    if isinstance(value, dict):
        return {k: _substitute(v, results) for k, v in value.items()}
    return value


def resolve(
    template: Any,
    store: RunStore,
    *,
    allow_pickle: bool,
    where: str,
    inline_pickle: bool = False,
    failed_as_none: frozenset[str] = frozenset(),
    prefetched: dict[str, str | None] | None = None,
) -> Any:
    """Decode ``template`` and replace every reference by the stored result.

    ``allow_pickle`` lets referenced results stored pickled be loaded: only a task that opted
    into pickle writes them, and only such a task (or the SDK reading a run's own outcome) may
    read them. ``inline_pickle`` lets a pickle payload written in ``template`` itself be loaded;
    pass True only for a template read from the run store, never for one a broker message
    carried: anyone who can post a message (the broker, Flower's task API) chooses its content,
    while the compiler always keeps pickled inputs in the run store (see ``inline_or_stored``).
    ``failed_as_none`` lists upstreams whose failure was allowed: they resolve to None.
    ``prefetched`` holds results already read (by the start script); the rest are read here.
    """

    def hook(data: dict[str, Any]) -> Any:
        if REF in data:
            return _Ref(data[REF], list(data.get("path", [])))
        if PICKLE_TAG in data:
            return unpickle(data, allow_pickle and inline_pickle, where)
        return data

    decoded = from_jsonable(template, hook)
    ids = [i for i in refs_in(template) if i not in failed_as_none]
    texts = {i: t for i, t in (prefetched or {}).items() if i in ids}
    texts |= store.task_runs.results([i for i in ids if i not in texts])
    missing = [i for i, t in texts.items() if t is None]
    if missing:  # gone from Redis: a result kept with persist_result=True is read from storage
        texts |= {i: t for i, t in read_persisted(missing).items() if t is not None}
    results: dict[str, Any] = {i: None for i in failed_as_none}
    for node_id, text in texts.items():
        if text is None:
            raise RunError(
                f"{where}: the result of task run {node_id} is no longer in Redis (results stay there for "
                "ORCHESTRATOR_RESULT_TTL_SECONDS) and was not persisted; declare the task with "
                "persist_result=True to keep its results in ORCHESTRATOR_RESULT_STORAGE, then re-run the flow."
            )
        results[node_id] = loads(text, allow_pickle=allow_pickle, where=where)
    return _substitute(decoded, results)


def any_pickled(store: RunStore, template: Any) -> bool:
    """Whether any referenced result was stored with pickle."""
    texts = store.task_runs.results(refs_in(template))
    return any(t is not None and t.startswith('{"' + PICKLE_TAG) for t in texts.values())


def returns_text(store: RunStore, returns: Any, where: str, prefetched: dict[str, str | None] | None = None) -> str:
    """A flow's return template as one stored result text: what a node standing for the flow
    (a subflow's end, a run of its own waited for) ends with.

    The template is JSON with references: a pickled value comes only from a referenced result a
    pickle task stored, never from a message; the text is pickled only when such a result is in it.
    """
    value = resolve(returns, store, allow_pickle=True, inline_pickle=False, where=where, prefetched=prefetched)
    return dumps(value, "pickle" if any_pickled(store, returns) else "json", where)
