"""A task the test workers never import: its messages reach a worker that does not know it."""

from __future__ import annotations

from orchestrator import flow, task


@task
def nobody_imports_me() -> int:
    return 1


@flow
def unknown_task_flow() -> int:
    return nobody_imports_me.submit()  # type: ignore[no-any-return]
