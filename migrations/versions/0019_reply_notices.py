"""reply notices: a lead's reply forwarded to its owner, once per reply and channel

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | Sequence[str] | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "reply_notices",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("lead_id", sa.String(length=32), sa.ForeignKey("leads.id"), nullable=False),
        sa.Column("event_id", sa.String(length=200), nullable=False),
        sa.Column("sequence_id", sa.String(length=100), nullable=True),
        sa.Column("rep_id", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("lead_id", "event_id", "channel"),
    )
    op.create_index("ix_reply_notices_lead_id", "reply_notices", ["lead_id"])


def downgrade() -> None:
    op.drop_index("ix_reply_notices_lead_id", table_name="reply_notices")
    op.drop_table("reply_notices")
