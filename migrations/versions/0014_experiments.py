"""experiments: each experiment as first run, and the arm each lead is in

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 17:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPENS_CLICKS = "type IN ('email.open', 'email.click')"


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("sequence_id", sa.String(100), nullable=False),
        sa.Column("step_id", sa.String(100), nullable=True),
        sa.Column("segment", sa.String(100), nullable=True),
        sa.Column("control", sa.String(100), nullable=False),
        sa.Column("metric", sa.String(20), nullable=False),
        sa.Column("arms", sa.JSON(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "experiment_assignments",
        sa.Column("experiment", sa.String(200), primary_key=True),
        sa.Column("lead_id", sa.String(32), sa.ForeignKey("leads.id"), primary_key=True),
        sa.Column("arm", sa.String(100), nullable=False),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.Column("enrollment_id", sa.String(64), nullable=True),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_experiment_assignments_lead_id", "experiment_assignments", ["lead_id"])
    # The experiments' results read each lead's latest open and click off this index.
    op.create_index(
        "ix_responses_opens_clicks", "responses", ["lead_id", "type", "occurred_at"],
        sqlite_where=sa.text(OPENS_CLICKS), postgresql_where=sa.text(OPENS_CLICKS),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_responses_opens_clicks", "responses")
    op.drop_index("ix_experiment_assignments_lead_id", "experiment_assignments")
    op.drop_table("experiment_assignments")
    op.drop_table("experiments")
