"""console queues: indexes for the reps' inbox, leads' enrollments and email prefixes

The reps' inbox reads a rep's open handoffs soonest due first and the ones answered
lately; the lead search filters on a lead's latest enrollment (and a sequence's leads)
and on the start of an email, which PostgreSQL serves from a `text_pattern_ops` index
only (its default collation cannot serve LIKE 'ab%' from a plain one).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 12:10:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = [
    ("ix_handoffs_status_rep_id_due_at", "handoffs", ["status", "rep_id", "due_at"]),
    ("ix_handoffs_rep_id_answered_at", "handoffs", ["rep_id", "answered_at"]),
    ("ix_handoffs_answered_at", "handoffs", ["answered_at"]),
    ("ix_enrollments_lead_id_started_at", "enrollments", ["lead_id", "started_at"]),
    ("ix_enrollments_sequence_id_lead_id_started_at", "enrollments",
     ["sequence_id", "lead_id", "started_at"]),
]  # fmt: skip


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)
    op.create_index("ix_leads_email_prefix", "leads", ["email"],
                    postgresql_ops={"email": "text_pattern_ops"})  # fmt: skip


def downgrade() -> None:
    op.drop_index("ix_leads_email_prefix", table_name="leads")
    for name, table, _columns in reversed(INDEXES):
        op.drop_index(name, table_name=table)
