"""The databases a database benchmark measures: a fresh SQLite file, then a fresh PostgreSQL database.

``db_scale`` and ``ui_bench`` ran their measures on them in the same dozen lines: a private
Redis for the API and the recorder, ``--only`` picking one database, PostgreSQL a fresh database
created next to ``--postgres-url``'s and dropped at the end (even on error), and a PostgreSQL
that does not answer skipped with a message and a ``{"skipped": why}`` entry instead of failing
the run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from benchmarks.private_redis import private_redis
from orchestrator.devstack.databases import fresh_postgres_database

# (label, database URL, Redis URL, the command line, the folder for files and logs) -> what it measured
Bench = Callable[[str, str, str, argparse.Namespace, Path], dict[str, Any]]


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
    bench: Bench, args: argparse.Namespace, folder: Path, *, sqlite_file: str, prefix: str
) -> dict[str, dict[str, Any]]:
    """``bench`` on SQLite (``sqlite_file`` in ``folder``) and PostgreSQL, by label, with a private Redis.

    ``args.only`` picks one; the PostgreSQL database, named ``prefix...``, is made next to
    ``args.postgres_url``'s and dropped after.
    """
    databases: dict[str, dict[str, Any]] = {}
    with private_redis() as redis_url:
        if args.only in (None, "sqlite"):
            databases["sqlite"] = bench("sqlite", f"sqlite:///{folder / sqlite_file}", redis_url, args, folder)
        if args.only in (None, "postgresql"):
            problem = postgres_problem(args.postgres_url)
            if problem:
                print(f"postgresql: skipped, {args.postgres_url} does not answer ({problem})")
                databases["postgresql"] = {"skipped": problem}
            else:
                with fresh_postgres_database(args.postgres_url, prefix=prefix) as pg_url:
                    databases["postgresql"] = bench("postgresql", pg_url, redis_url, args, folder)
    return databases
