"""deployments, and the deployment a flow run was scheduled for

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("flow_name", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=200), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("cron", sa.String(length=200), nullable=True),
        sa.Column("interval_seconds", sa.Float(), nullable=True),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("late_policy", sa.String(length=32), nullable=False),
        sa.Column("late_max_age_seconds", sa.Float(), nullable=True),
        sa.Column("created", sa.Float(), nullable=False),
        sa.Column("updated", sa.Float(), nullable=False),
        sa.Column("scheduled_until", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("flow_run") as batch_op:
        batch_op.add_column(sa.Column("deployment_id", sa.String(length=64), nullable=True))
        batch_op.create_index("ux_flow_run_deployment_start", ["deployment_id", "scheduled_start"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("flow_run") as batch_op:
        batch_op.drop_index("ux_flow_run_deployment_start")
        batch_op.drop_column("deployment_id")
    op.drop_table("deployment")
