"""The databases a database benchmark measures: a fresh SQLite file, then a fresh PostgreSQL database.

``db_scale`` and ``ui_bench`` chose and skipped them in the same dozen lines: ``--only`` picks
one, PostgreSQL is a fresh database created next to ``--postgres-url``'s and dropped at the end
(even on error), and a PostgreSQL that does not answer is skipped with a message and a
``{"skipped": why}`` entry instead of failing the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, text

from orchestrator.devstack.databases import fresh_postgres_database

# (label, database URL) -> what the benchmark measured on it
Bench = Callable[[str, str], dict[str, Any]]


def postgres_problem(admin_url: str) -> str | None:
    """Why PostgreSQL cannot be used (None when it answers)."""
    try:
        engine = create_engine(admin_url, connect_args={"connect_timeout": 5})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


def on_each_database(
    bench: Bench, *, only: str | None, sqlite_url: str, postgres_url: str, prefix: str
) -> dict[str, dict[str, Any]]:
    """``bench`` on SQLite and PostgreSQL (``only`` one of them), by label; a fresh PostgreSQL
    database named ``prefix...`` is made next to ``postgres_url``'s for it and dropped after."""
    databases: dict[str, dict[str, Any]] = {}
    if only in (None, "sqlite"):
        databases["sqlite"] = bench("sqlite", sqlite_url)
    if only in (None, "postgresql"):
        problem = postgres_problem(postgres_url)
        if problem:
            print(f"postgresql: skipped, {postgres_url} does not answer ({problem})")
            databases["postgresql"] = {"skipped": problem}
        else:
            with fresh_postgres_database(postgres_url, prefix=prefix) as pg_url:
                databases["postgresql"] = bench("postgresql", pg_url)
    return databases
