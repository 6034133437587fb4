"""deployments may keep their finished runs for a number of days of their own (retention)

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployment") as batch_op:
        batch_op.add_column(sa.Column("retention_days", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployment") as batch_op:
        batch_op.drop_column("retention_days")
