"""The flow run list (``GET /api/flow-runs``): its filters, its count and its pages, shaped for the indexes.

A database of 100,000 flow runs and 1,000,000 task runs answers the first page and a
filtered page in a few milliseconds because of three things (``benchmarks/db_scale.py``
measures them; ``tests/test_list_scale.py`` keeps them):

- The order (newest first, ties by id) is the order of the indexes of migrations 0005 and 0009:
  ``(created DESC, id)``, and the same after ``state``, ``flow_name`` or ``deployment_id``. A page walks
  one of them and stops after ``limit`` entries, instead of sorting every match.
- A page is found on the index alone (ids only), and only its ``limit`` rows are read
  from the table: a deep ``offset`` skips index entries, not whole rows. The newest-first
  index also holds the name, so a search in names (a substring: no index can seek it)
  reads that index rather than every row.
- The rows are read without ``plan``, the graph a static run keeps for ``/graph`` (up to
  megabytes each), which a list never shows.

``total`` stays exact: it is counted on the same indexes (a count of ids, no row read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Select, func
from sqlalchemy import select as select_columns
from sqlalchemy.orm import defer
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.models import FlowRun


@dataclass(frozen=True)
class RunFilters:
    """What the list is narrowed to (every field optional; all that are given must hold)."""

    flow: str | None = None
    states: Sequence[str] = ()
    name: str | None = None  # contained in the run's name
    parent: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    deployment_id: str | None = None  # runs of this deployment (its id: the route resolves the name)

    def conditions(self) -> list[ColumnElement[bool]]:
        found: list[ColumnElement[bool]] = []
        if self.flow:
            found.append(col(FlowRun.flow_name) == self.flow)
        if self.states:
            found.append(col(FlowRun.state).in_(list(self.states)))
        if self.name:
            found.append(col(FlowRun.name).contains(self.name, autoescape=True))
        if self.parent:
            found.append(col(FlowRun.parent_id) == self.parent)
        if self.since:
            found.append(col(FlowRun.created) >= self.since.timestamp())
        if self.until:
            found.append(col(FlowRun.created) < self.until.timestamp())
        if self.deployment_id:
            found.append(col(FlowRun.deployment_id) == self.deployment_id)
        return found


def count_query(filters: RunFilters) -> SelectOfScalar[int]:
    """How many runs match: ``count(*)``, so that any index holding the filtered columns answers it."""
    return select(func.count()).select_from(FlowRun).where(*filters.conditions())


def page_ids_query(filters: RunFilters, limit: int, offset: int) -> Select:
    """The ids (and creation times) of one page, newest first: found on an index, no row read."""
    return (
        select_columns(col(FlowRun.id).label("id"), col(FlowRun.created).label("created"))
        .where(*filters.conditions())
        .order_by(col(FlowRun.created).desc(), col(FlowRun.id))
        .offset(offset)
        .limit(limit)
    )


def page_query(filters: RunFilters, limit: int, offset: int) -> SelectOfScalar[FlowRun]:
    """The rows of one page, newest first: only the page's rows are read, without their plan."""
    ids = page_ids_query(filters, limit, offset).subquery("page")
    return (
        select(FlowRun)
        .join(ids, col(FlowRun.id) == ids.c.id)
        .options(defer(FlowRun.plan))  # type: ignore[arg-type]
        .order_by(ids.c.created.desc(), ids.c.id)
    )


def list_runs(session: Session, filters: RunFilters, limit: int, offset: int) -> tuple[list[FlowRun], int]:
    """One page of runs and how many match in all."""
    total = session.exec(count_query(filters)).one()
    rows = session.exec(page_query(filters, limit, offset)).all()
    return list(rows), int(total)
