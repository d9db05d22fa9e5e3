"""consent at intake: each consent change's status, source, time and legal basis; double opt-in

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 11:00:00

Only columns are added, all nullable: every lead keeps the consent flags it has (no lead
that was opted in is opted out), and the changes recorded before keep their rows, with no
status, source or basis (nothing was told then). docs/consent.md says so too.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("email_confirmation", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("email_confirmation_id", sa.String(length=32), nullable=True))
    with op.batch_alter_table("consent_changes") as batch:
        batch.add_column(sa.Column("status", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("source", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("given_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("basis", sa.String(length=30), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("consent_changes") as batch:
        for name in ("basis", "given_at", "source", "status"):
            batch.drop_column(name)
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("email_confirmation_id")
        batch.drop_column("email_confirmation")
