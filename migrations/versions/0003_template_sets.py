"""template_sets: the message templates each enrollment was made with

A lead keeps the templates its sequence version was enrolled with: enrolling stores the
email/ and sms/ templates once per version (keyed by the digest of their contents) and
the send renders from that version, not from whatever the files hold by then.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "template_sets",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )


def downgrade() -> None:
    op.drop_table("template_sets")
