"""finished runs by their end time, for the retention service

The retention service (``api/services/retention.py``) asks for the oldest final root runs that
ended before a cutoff, a batch at a time. Without an index on ``ended`` each pass read every
flow run; with it, the pass walks the oldest ends first and stops after a batch.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_flow_run_ended", "flow_run", ["ended"])


def downgrade() -> None:
    op.drop_index("ix_flow_run_ended", table_name="flow_run")
