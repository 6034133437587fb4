"""Alembic environment: runs migrations on the URL set in code by ``api.db.alembic_config``."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from api import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from api.db import engine_for

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    """Apply migrations on a live connection (SQLite files and PostgreSQL alike)."""
    engine = engine_for(config.get_main_option("sqlalchemy.url", "").replace("%%", "%"))
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
