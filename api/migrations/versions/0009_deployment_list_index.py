"""the run list filtered by deployment, in the list's order

``GET /api/flow-runs?deployment=`` (and the web UI's deployment filter) walks this index
newest first and stops after a page, as the state and flow filters do (migration 0005);
without it a deployment's runs were found on ``ux_flow_run_deployment_start`` and sorted.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_flow_run_deployment_created", "flow_run", ["deployment_id", sa.text("created DESC"), "id"])


def downgrade() -> None:
    op.drop_index("ix_flow_run_deployment_created", table_name="flow_run")
