"""Each step's figures for the console's sequence pages: sent, delivered, opened, clicked,
replied, unsubscribed, bounced and the SQLs attributed to it, for one sequence; and each
sequence's leads in flight, done and handed off, and its SQLs, for the list.

Counted as `nurture report` counts them (services/reports.py, whose pieces this reuses):
a send is a message with `sent_at`; a response counts for the message `response_links`
matches it to (its message, else the step its data names, else the lead's last send on
its channel), and a message's own delivery status counts too; delivered ... bounced count
leads, each once per step; an SQL is credited to the step of its first touch (the first
message the lead was sent) and of its last (the last one sent at or before its first SQL
entry). All time, every segment: the figures of a sequence's page are `nurture report`'s
step rows for that sequence.

One grouped query per page: the sequence's sends, each joined to its matched responses
and to its place among its lead's touches, grouped by step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from models.db import Enrollment, Message
from services.reports import EVENT_COLUMNS, EXTRA_KINDS, response_links, sql_touches

RESPONSE_FIGURES = tuple(EVENT_COLUMNS)  # delivered opened clicked replied unsubscribed bounced
FIGURES = ("sent", "recipients", *RESPONSE_FIGURES, "sql_first_touch", "sql_last_touch")
ENROLLMENT_STATUSES = ("active", "completed", "exited", "handed_off")


@dataclass(frozen=True)
class StepFigures:
    step: str
    channel: str
    sent: int = 0  # messages
    recipients: int = 0  # leads (a step visited twice sends a lead two)
    delivered: int = 0  # leads, from here on
    opened: int = 0
    clicked: int = 0
    replied: int = 0
    unsubscribed: int = 0
    bounced: int = 0
    sql_first_touch: int = 0
    sql_last_touch: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SequenceFigures:
    """A sequence's enrollments by status (any other status: `other`) and its SQLs (last
    touch: the leads whose last message before their first SQL entry was one of its)."""

    sequence: str
    active: int = 0
    completed: int = 0
    exited: int = 0
    handed_off: int = 0
    other: int = 0
    sqls: int = 0

    @property
    def enrolled(self) -> int:
        return self.active + self.completed + self.exited + self.handed_off + self.other


def step_figures(session: Session, sequence_id: str) -> dict[str, StepFigures]:
    """The figures of each step of `sequence_id` that sent something, by step id."""
    links = response_links(with_statuses=True)
    touches = sql_touches()
    kinds = {name: kinds + EXTRA_KINDS.get(name, ()) for name, kinds in EVENT_COLUMNS.items()}

    def leads_where(condition):
        return func.count(func.distinct(case((condition, Message.lead_id))))

    query = (
        select(
            Message.step_id,
            func.max(Message.channel).label("channel"),
            func.count(func.distinct(Message.id)).label("sent"),
            func.count(func.distinct(Message.lead_id)).label("recipients"),
            *(leads_where(links.c.type.in_(types)).label(name) for name, types in kinds.items()),
            leads_where(touches.c.first_rank == 1).label("sql_first_touch"),
            leads_where(touches.c.last_rank == 1).label("sql_last_touch"),
        )
        .join(Enrollment, Enrollment.id == Message.enrollment_id)
        .outerjoin(links, links.c.message_id == Message.id)
        .outerjoin(touches, touches.c.message_id == Message.id)
        .where(Enrollment.sequence_id == sequence_id, Message.sent_at.is_not(None))
        .group_by(Message.step_id)
    )
    return {
        row.step_id: StepFigures(row.step_id, **{k: v for k, v in row._asdict().items()
                                                 if k != "step_id"})
        for row in session.execute(query)
    }  # fmt: skip


def sequence_figures(session: Session) -> dict[str, SequenceFigures]:
    """Every sequence with enrollments or SQLs: enrollments by status, SQLs (last touch)."""
    counts: dict[str, dict[str, int]] = {}
    by_status = select(Enrollment.sequence_id, Enrollment.status, func.count()).group_by(
        Enrollment.sequence_id, Enrollment.status
    )
    for sequence, status, count in session.execute(by_status):
        column = status if status in ENROLLMENT_STATUSES else "other"
        row = counts.setdefault(sequence, {})
        row[column] = row.get(column, 0) + count
    touches = sql_touches()
    last_touches = (
        select(Enrollment.sequence_id, func.count(func.distinct(Message.lead_id)))
        .select_from(touches)
        .join(Message, Message.id == touches.c.message_id)
        .join(Enrollment, Enrollment.id == Message.enrollment_id)
        .where(touches.c.last_rank == 1)
        .group_by(Enrollment.sequence_id)
    )
    for sequence, sqls in session.execute(last_touches):
        counts.setdefault(sequence, {})["sqls"] = sqls
    return {sequence: SequenceFigures(sequence, **row) for sequence, row in counts.items()}
