"""web tracking: website visitors joined to leads, and the views of those not joined yet

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "visitors",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("lead_id", sa.String(32), sa.ForeignKey("leads.id"), nullable=False),
        sa.Column("joined_by", sa.String(120), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_visitors_lead_id", "visitors", ["lead_id"])
    # Anonymous views: found by visitor at a join, by time when they expire.
    op.create_table(
        "visitor_views",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("visitor_id", sa.String(64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("referrer", sa.Text(), nullable=True),
        sa.Column("utm", sa.JSON(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_visitor_views_visitor_id", "visitor_views", ["visitor_id"])
    op.create_index("ix_visitor_views_occurred_at", "visitor_views", ["occurred_at"])


def downgrade() -> None:
    op.drop_index("ix_visitor_views_occurred_at", "visitor_views")
    op.drop_index("ix_visitor_views_visitor_id", "visitor_views")
    op.drop_table("visitor_views")
    op.drop_index("ix_visitors_lead_id", "visitors")
    op.drop_table("visitors")
