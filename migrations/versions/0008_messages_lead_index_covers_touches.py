"""messages by lead: on PostgreSQL the index carries sent_at, enrollment_id and step_id

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 09:05:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INCLUDED = ["sent_at", "enrollment_id", "step_id"]


def upgrade() -> None:
    # Rebuilt, not added beside: the index it replaces is its own first column.
    op.drop_index("ix_messages_lead_id", table_name="messages")
    op.create_index("ix_messages_lead_id", "messages", ["lead_id"], postgresql_include=INCLUDED)


def downgrade() -> None:
    op.drop_index("ix_messages_lead_id", table_name="messages")
    op.create_index("ix_messages_lead_id", "messages", ["lead_id"])
