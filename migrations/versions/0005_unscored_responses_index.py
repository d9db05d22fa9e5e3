"""unscored responses: a partial index on the responses not scored yet

The inbox backlog (`nurture_inbox_backlog`, services/backlog.py) and the stuck-lead check
count the responses delivered to a workflow and not yet scored, every few seconds; with
this index they read only those, not the whole table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 23:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_responses_unscored", "responses", ["delivered_at"], unique=False,
        sqlite_where=sa.text("scored_in IS NULL"), postgresql_where=sa.text("scored_in IS NULL"),
    )  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_responses_unscored", table_name="responses")
