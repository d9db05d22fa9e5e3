"""responses.scored_in: the score change that counted each response

A burst of responses is scored once, by one score change keyed by the burst's last
event; each response now points at the change that counted it, so every response shows
it was scored, and by which change (and a response delivered again after its workflow
continued as new is recognised as scored). Nullable: responses stored before this
revision, and those not delivered yet, have none.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 10:12:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The foreign key as create_all makes it: PostgreSQL's default name; on SQLite
    # unnamed, in the column (SQLite can add a column with a reference, not a constraint).
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE responses ADD COLUMN scored_in INTEGER REFERENCES score_changes (id)"
        )
        return
    op.add_column("responses", sa.Column("scored_in", sa.Integer(), nullable=True))
    op.create_foreign_key(
        "responses_scored_in_fkey", "responses", "score_changes", ["scored_in"], ["id"]
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table("responses") as batch:  # SQLite copies the table
            batch.drop_column("scored_in")
        return
    op.drop_constraint("responses_scored_in_fkey", "responses", type_="foreignkey")
    op.drop_column("responses", "scored_in")
