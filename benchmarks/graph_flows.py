"""The flow ``benchmarks/graph_scale.py`` runs: a static map over n items and one fan-in.

The list is built inside the flow body, so tracing sees n literal items: the plan holds
n task nodes and one node with n upstream edges, the shape that made ``GET
/flow-runs/{id}/graph`` quadratic. Its own module, so the worker imports it under the
same name as the benchmark (a flow defined in ``__main__`` would get other task names).
"""

from __future__ import annotations

from orchestrator import flow, task


@task
def double(x: int) -> int:
    """One mapped item (trivial: the benchmark measures the API, not the work)."""
    return x * 2


@task
def total(parts: list[int]) -> int:
    """The fan-in: one node whose upstream is every mapped node."""
    return sum(parts)


@flow(name="bench-graph-map")
def graph_map(n: int) -> int:
    """n mapped task runs and their sum."""
    doubled = double.map(list(range(n)))
    return total.submit(doubled)  # type: ignore[no-any-return]
