"""log lines name the logger that wrote them: the run logger, a task's module, an extra logger, py.warnings

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("log_line") as batch_op:
        batch_op.add_column(
            sa.Column("logger", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("log_line") as batch_op:
        batch_op.drop_column("logger")
