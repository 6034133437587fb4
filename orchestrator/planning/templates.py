"""Turn call arguments into JSON templates where futures become references.

Shared by the tracer (planned futures) and the dynamic driver (remote futures):
both send the same message format to the executor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from orchestrator.data.serialization import PICKLE_TAG, dumps, to_jsonable
from orchestrator.errors import PlanError, SerializationError
from orchestrator.planning.plan import REF, iter_refs, make_ref
from orchestrator.runtime.annotations import BoundInstance, Opaque, Quote
from orchestrator.runtime.futures import AllowFailure, Future, Unmapped


def to_template(value: Any, where: str, serializer: str, owns: Callable[[Future[Any]], bool]) -> Any:
    """Encode ``value``; a future accepted by ``owns`` becomes a reference."""
    if isinstance(value, Future):
        if not owns(value):
            raise PlanError(
                f"{where}: a future from another flow run was passed in; pass futures only "
                "within the flow run that created them."
            )
        return make_ref(value.task_run_id, list(getattr(value, "path", ())))
    if isinstance(value, AllowFailure):
        return to_template(value.future, where, serializer, owns) | {"allow_failure": True}
    if isinstance(value, Unmapped):
        return to_template(value.value, where, serializer, owns)
    if isinstance(value, Quote):
        if isinstance(value, Opaque) and isinstance(value.value, (Future, AllowFailure)):
            return to_template(value.value, where, serializer, owns)
        return _quoted(value, where, serializer)
    if isinstance(value, (list, tuple)) and _marked(value):
        items = [to_template(v, where, serializer, owns) for v in value]
        return items if isinstance(value, list) else {"__orc__": "tuple", "v": items}
    if isinstance(value, dict) and _marked(value):
        return {k: to_template(v, where, serializer, owns) for k, v in value.items()}
    return _encoded(value, where, serializer)


def _marked(value: Any) -> bool:
    """Whether a list, tuple or dict holds a future or a marker (``quote``, ``opaque``, ``unmapped``)."""
    if isinstance(value, (Future, AllowFailure, Quote, Unmapped)):
        return True
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_marked(v) for v in value)
    if isinstance(value, dict):
        return any(_marked(v) for v in value.values())
    return False


def _quoted(marked: Quote[Any], where: str, serializer: str) -> Any:
    """A quoted value (or a method's instance) encoded whole: it is not searched for futures, so a
    future inside it, or an instance JSON cannot carry, fails here with what to do instead."""
    try:
        return _encoded(marked.value, where, serializer)
    except SerializationError as exc:
        if isinstance(marked, BoundInstance):
            kind = type(marked.value).__qualname__
            how = "pickled" if serializer == "pickle" else "sent as JSON"
            raise SerializationError(
                f"{where}: this is a method bound to a {kind} instance; on the fleet the instance travels to the "
                f"worker as the first argument, and a {kind} cannot be {how}. A task declared with "
                'result_serializer="pickle" takes a picklable instance; otherwise make it a @staticmethod or a '
                "module-level function taking plain data, or run the flow in-process."
            ) from exc
        if _holds_a_future(marked.value):
            raise SerializationError(
                f"{where}: {type(marked).__name__.lower()}(...) passes its value without resolving the futures "
                "inside it, and a future cannot be sent to a worker. Pass the value unquoted (its futures "
                "are then resolved and waited for), or call .result() in the body."
            ) from exc
        raise


def _holds_a_future(value: Any) -> bool:
    """Whether a future sits anywhere in ``value`` (walked only to explain an error)."""
    if isinstance(value, (Future, AllowFailure)):
        return True
    if isinstance(value, Quote):
        return _holds_a_future(value.value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_a_future(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_a_future(v) for v in value.values())
    return False


def _encoded(value: Any, where: str, serializer: str) -> Any:
    """A value with no future in it, as JSON data (or a pickle payload for a pickle task)."""
    if serializer == "pickle":
        return json.loads(dumps(value, "pickle", where))
    data = to_jsonable(value, where)
    if isinstance(data, dict) and (REF in data or PICKLE_TAG in data):
        raise PlanError(f"{where}: dict keys {REF!r} and {PICKLE_TAG!r} are reserved.")
    return data


def allowed_failures(template: Any) -> frozenset[str]:
    """Ids referenced with allow_failure in a template."""
    return frozenset(ref[REF] for ref in iter_refs(template) if ref.get("allow_failure"))
