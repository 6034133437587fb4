"""Result storage for ``persist_result=True``: a local folder or any fsspec URL (s3://, gs://, ...).

Task results live in Redis for ``result_ttl_seconds``; a task that persists its
result also writes it here, as the same JSON text, under its task run id. Readers
fall back to this storage only when Redis no longer has a result, so the hot path
costs nothing extra.
"""

from __future__ import annotations

import os
import re

import fsspec

from orchestrator.config.settings import get_settings
from orchestrator.errors import RunError

# A task run id as the SDK makes them: a UUID, with "-<n>" per map level for mapped runs
# (letters, digits, '-' and '_' leave room for ids given by hand). No '/', '.' or backslash: an id
# is a file name inside the storage, never a path, whoever chose it (a crafted message
# chooses its own task id).
_TASK_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")


def _path(task_run_id: str) -> str:
    """Where a task run's result is kept; refuses an id that could leave the storage folder."""
    if not _TASK_RUN_ID.fullmatch(task_run_id):
        raise RunError(
            f"result storage: task run id {task_run_id[:80]!r} is not well formed (letters, digits, '-' and '_', "
            "at most 200); its result is neither written nor read. Task run ids come from the orchestrator: "
            "send runs through it rather than crafting Celery task ids."
        )
    root = get_settings().result_storage.rstrip("/")
    path = f"{root}/{task_run_id}.json"
    if "://" not in root or root.startswith("file://"):  # a local folder: the resolved path stays inside it
        folder = os.path.realpath(root.removeprefix("file://"))
        if os.path.commonpath([folder, os.path.realpath(path.removeprefix("file://"))]) != folder:
            raise RunError(f"result storage: the result of task run {task_run_id!r} would be written outside {root}.")
    return path


def persist(task_run_id: str, text: str) -> None:
    """Write a task run's serialized result to the result storage."""
    fs, path = fsspec.core.url_to_fs(_path(task_run_id))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as handle:
        handle.write(text)


def read_persisted(task_run_ids: list[str]) -> dict[str, str | None]:
    """Persisted results of these task runs (None where none was kept)."""
    out: dict[str, str | None] = {}
    for task_run_id in task_run_ids:
        fs, path = fsspec.core.url_to_fs(_path(task_run_id))
        try:
            with fs.open(path, "r") as handle:
                out[task_run_id] = handle.read()
        except FileNotFoundError:
            out[task_run_id] = None
    return out


def forget_persisted(task_run_ids: list[str]) -> int:
    """Remove these task runs' persisted results from the result storage; returns how many there were.

    ``DELETE /api/flow-runs/{id}?results=true`` calls it. An id that is not well formed names no
    file of the storage (nothing was ever written under it) and is skipped."""
    removed = 0
    for task_run_id in task_run_ids:
        try:
            fs, path = fsspec.core.url_to_fs(_path(task_run_id))
        except RunError:
            continue
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            continue
        removed += 1
    return removed
