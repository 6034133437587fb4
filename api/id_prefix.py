"""Ids by any unique prefix: ``d9d8e642`` finds flow run ``d9d8e642-0b1c-...`` when no other starts so.

People copy ids from a terminal, where tables cut them, or type the first few characters
shown. :func:`ids_starting` reads the ids that start with what was given, at most a few, with
a range on the primary key (``id >= p AND id < p'``, where ``p'`` is ``p`` with its last
character's successor): both SQLite and PostgreSQL walk the key's index for it. A
``LIKE 'p%'`` would not use the index on PostgreSQL unless the database's collation is C (or
the index has ``text_pattern_ops``), which would make every lookup a full scan of the runs.
The ``LIKE`` kept beside the range is only checked on the rows the range found: under a
collation that orders text by language rules (``en_US``) a range may hold an id that does not
start with ``p``, never one that matches and is missing.
"""

from __future__ import annotations

from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from api.models import FlowRun, TaskRun

Keyed = type[FlowRun] | type[TaskRun]  # tables whose primary key is a text id

MIN_PREFIX = 4  # shorter than this is no id anyone means: 4 hex characters tell 65,536 ids apart
SHOWN = 5  # candidates an ambiguous prefix names


def successor(prefix: str) -> str:
    """The least string greater than every string that starts with ``prefix`` (the range's end)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def prefix_query(table: Keyed, prefix: str, limit: int) -> SelectOfScalar[str]:
    """The first ``limit`` ids of ``table`` that start with ``prefix``, in order: a range on the key's index."""
    key = col(table.id)
    return (
        select(key)
        .where(key >= prefix, key < successor(prefix), key.startswith(prefix, autoescape=True))
        .order_by(key)
        .limit(limit)
    )


def ids_starting(session: Session, table: Keyed, prefix: str, limit: int) -> list[str]:
    """Up to ``limit`` ids of ``table`` that start with ``prefix``, in order (through the key's index)."""
    return list(session.exec(prefix_query(table, prefix, limit)).all())


def resolve(session: Session, table: Keyed, given: str) -> list[str]:
    """The id ``given`` names: ``[given]`` when it is a whole id, else up to ``SHOWN + 1`` ids it starts.

    A prefix with capitals that matches nothing is tried again in lower case (ids are lower-case
    hex; a terminal or a document may show them otherwise). An empty list: nothing matches, or
    ``given`` is shorter than :data:`MIN_PREFIX`.
    """
    key = col(table.id)
    if session.exec(select(key).where(key == given)).first() is not None:
        return [given]
    if len(given) < MIN_PREFIX:
        return []
    found = ids_starting(session, table, given, SHOWN + 1)
    if not found and given != given.lower():
        found = ids_starting(session, table, given.lower(), SHOWN + 1)
    return found
