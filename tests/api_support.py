"""Helpers for the API tests: a database for the server (SQLite file, or a fresh PostgreSQL
database when ``ORCHESTRATOR_TEST_DATABASE_URL`` is set), and polling until something is true."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

T = TypeVar("T")


@contextlib.contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """Create an empty database next to ``admin_url``'s, yield its URL, drop it afterwards."""
    url = make_url(admin_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    name = f"orc_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextlib.contextmanager
def api_database(folder: Path, admin_url: str | None) -> Iterator[str]:
    """The URL the API under test uses: PostgreSQL when asked for, else an SQLite file."""
    if admin_url:
        with fresh_postgres_database(admin_url) as url:
            yield url
    else:
        yield f"sqlite:///{folder / 'api.db'}"


def eventually(check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not true after {timeout}s: {what} (last: {last!r})")
