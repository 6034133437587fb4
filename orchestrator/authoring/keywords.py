"""Prefect keywords ``@task`` and ``@flow`` do not take, each refused with why and what to do instead.

Code brought from Prefect passes keywords this product has no use for or does not do yet; a
bare ``TypeError: unexpected keyword argument`` says neither which one nor what to do. Every
keyword is checked before the decorator runs: an option of ours goes through, a Prefect one
we do not support gets its own reason, anything else the list of valid options.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from orchestrator.errors import DefinitionError

# Prefect 3 keywords this product does not take, with what to do instead.
NOT_SUPPORTED: dict[str, str] = {
    "result_storage": "results go to ORCHESTRATOR_RESULT_STORAGE (a folder or an fsspec URL) with persist_result=True",
    "result_storage_key": "a persisted result is stored under its task run's id; a key of your own is not supported",
    "cache_result_in_memory": "results live in Redis, not in the flow's memory; there is nothing to turn off",
    "on_running": "there is no on_running hook yet; log from the task itself (get_run_logger()) when it starts",
    "task_runner": "tasks run on the Celery fleet (in threads in-process); there is no task runner to choose",
    "retry_condition": "the keyword is retry_condition_fn=",
    "asset_deps": "assets are not supported",
    "assets": "assets are not supported",
}


def check_keywords(kind: str, target: str, given: Iterable[str], valid: Iterable[str]) -> None:
    """Refuse ``given`` keywords that ``@task`` / ``@flow`` (``kind``) do not take, naming each and the fix."""
    known = set(valid)
    unknown = [k for k in given if k not in known]
    if not unknown:
        return
    lines = []
    for keyword in unknown:
        if keyword in NOT_SUPPORTED:
            lines.append(f"{keyword}=: {NOT_SUPPORTED[keyword]}")
        else:
            close = difflib.get_close_matches(keyword, sorted(known), n=1)
            hint = f" (did you mean {close[0]}=?)" if close else ""
            lines.append(f"{keyword}= is not an option of @{kind}{hint}")
    raise DefinitionError(
        f"@{kind} on {target}: " + "; ".join(lines) + f". Its options are: {', '.join(sorted(known))}."
    )


def target_name(fn: Any) -> str:
    """How an error names the decorated function."""
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
