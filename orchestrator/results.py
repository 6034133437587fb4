"""Result storage for ``persist_result=True``: a local folder or any fsspec URL (s3://, gs://, ...).

Task results live in Redis for ``result_ttl_seconds``; a task that persists its
result also writes it here, as the same JSON text, under its task run id. Readers
fall back to this storage only when Redis no longer has a result, so the hot path
costs nothing extra.
"""

from __future__ import annotations

import fsspec

from .settings import get_settings


def _path(task_run_id: str) -> str:
    return f"{get_settings().result_storage.rstrip('/')}/{task_run_id}.json"


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
