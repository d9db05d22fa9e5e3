"""console overview and operations: live feed and funnel indexes; webhook refusals

The overview's live feed reads the newest sends every second (messages by sent_at), its
charts the entries into SQL of a range (stage changes by stage and time), its funnel the
leads created in a range (leads by created_at). `webhook_refusals` counts the webhook
requests refused, per day, source and reason, for the Operations page.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_messages_sent_at", "messages", ["sent_at"])
    op.create_index(
        "ix_stage_changes_to_stage_created_at", "stage_changes", ["to_stage", "created_at"]
    )
    op.create_index("ix_leads_created_at", "leads", ["created_at"])
    op.create_table(
        "webhook_refusals",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("day", "source", "reason"),
    )


def downgrade() -> None:
    op.drop_table("webhook_refusals")
    op.drop_index("ix_leads_created_at", table_name="leads")
    op.drop_index("ix_stage_changes_to_stage_created_at", table_name="stage_changes")
    op.drop_index("ix_messages_sent_at", table_name="messages")
