"""Turn call arguments into JSON templates where futures become references.

Shared by the tracer (planned futures) and the dynamic driver (remote futures):
both send the same message format to the executor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from orchestrator.data.serialization import PICKLE_TAG, dumps, to_jsonable
from orchestrator.errors import PlanError
from orchestrator.planning.plan import REF, iter_refs, make_ref
from orchestrator.runtime.engine import walk_futures
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
    if isinstance(value, (list, tuple)) and any(True for _ in walk_futures(value)):
        items = [to_template(v, where, serializer, owns) for v in value]
        return items if isinstance(value, list) else {"__orc__": "tuple", "v": items}
    if isinstance(value, dict) and any(True for _ in walk_futures(value)):
        return {k: to_template(v, where, serializer, owns) for k, v in value.items()}
    if serializer == "pickle":
        return json.loads(dumps(value, "pickle", where))
    data = to_jsonable(value, where)
    if isinstance(data, dict) and (REF in data or PICKLE_TAG in data):
        raise PlanError(f"{where}: dict keys {REF!r} and {PICKLE_TAG!r} are reserved.")
    return data


def allowed_failures(template: Any) -> frozenset[str]:
    """Ids referenced with allow_failure in a template."""
    return frozenset(ref[REF] for ref in iter_refs(template) if ref.get("allow_failure"))
