"""utm and crm sync: campaign fields on leads and responses; each CRM connector's cursor

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 07:55:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content")


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        for name in UTM_FIELDS:
            batch.add_column(sa.Column(name, sa.String(length=200), nullable=True))
    with op.batch_alter_table("responses") as batch:
        batch.add_column(sa.Column("utm", sa.JSON(), nullable=True))
    op.create_table(
        "crm_sync_state",
        sa.Column("connector", sa.String(length=40), nullable=False),
        sa.Column("cursor", sa.String(length=200), nullable=True),
        sa.Column("pulled", sa.Integer(), nullable=False),
        sa.Column("last_run_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_ok_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("connector"),
    )


def downgrade() -> None:
    op.drop_table("crm_sync_state")
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("utm")
    with op.batch_alter_table("leads") as batch:
        for name in reversed(UTM_FIELDS):
            batch.drop_column(name)
