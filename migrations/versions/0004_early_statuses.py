"""early_statuses: provider status callbacks that arrived before their message's ID

Twilio can call back about a message before the send activity has written the SID
Twilio answered with. The callback is kept here and applied to the message once it
has the SID (the API's relay); one that never finds its message is deleted after
NURTURE_PENDING_EVENT_RETENTION_DAYS.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "early_statuses",
        sa.Column("provider_message_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=30), nullable=False),
        sa.Column("error_code", sa.String(length=20), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider_message_id", "status"),
    )


def downgrade() -> None:
    op.drop_table("early_statuses")
