"""A rep's inbox of handoffs (the console's "My leads"), or every rep's for a manager.

Each open handoff with its lead, when it was handed off, the SLA's due time and the time
left, and why the lead is hot (the reasons its notification gave); beside them, the ones
answered lately. Two queries, each bounded by a LIMIT: the page never loads every handoff.

The due time is the handoff row's `due_at`: the assignment (`activities/sales.py`) sets it
from the rep's `sla` or the team's `answer_within`, in the rep's working time, and a
reminder or a reassignment sets it again. None: no SLA, or every rep who could take the
lead has had it and the chase stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from models.db import Handoff, Lead, as_utc
from models.definitions import SalesRep, SalesTeam

OPEN_LIMIT = 50  # a page of a queue: a rep's capacity is 20 by default
ANSWERED_LIMIT = 20
ANSWERED_SINCE = timedelta(days=7)
# The assignment stores the notification's reasons joined by this (activities/sales.py).
REASON_SEPARATOR = "; "

COLUMNS = (
    Handoff.id, Handoff.lead_id, Handoff.rep_id, Handoff.status, Handoff.score, Handoff.grade,
    Handoff.reason, Handoff.created_at, Handoff.due_at, Handoff.reminders,
    Handoff.reassignments, Handoff.answered_at, Handoff.answered_by, Handoff.answer_reason,
    Lead.email, Lead.first_name, Lead.last_name, Lead.company,
)  # fmt: skip


@dataclass(frozen=True)
class InboxItem:
    handoff_id: str
    lead_id: str
    email: str
    name: str
    company: str | None
    rep_id: str
    rep_name: str
    status: str  # pending | accepted | rejected | disqualified
    score: float
    grade: str | None
    reasons: tuple[str, ...]  # why the lead is hot, the biggest first
    handed_off_at: datetime
    due_at: datetime | None  # when the SLA lapses; None: no deadline
    sla_seconds: int | None  # the rep's answer time, in working seconds
    reminders: int
    reassignments: int
    answered_at: datetime | None
    answered_by: str | None
    answer_reason: str | None

    def time_left(self, now: datetime) -> timedelta | None:
        return None if self.due_at is None else self.due_at - now

    def countdown(self, now: datetime) -> str:
        return countdown(self.due_at, now)

    def overdue(self, now: datetime) -> bool:
        return self.due_at is not None and self.due_at <= now


@dataclass(frozen=True)
class Inbox:
    rep_id: str | None  # whose queue; None: every rep's
    open: list[InboxItem]  # the soonest due first
    answered: list[InboxItem]  # the latest answer first
    truncated: bool  # more open handoffs after these: the next page
    offset: int = 0  # open handoffs before these (the earlier pages)


def inbox(
    sessions: sessionmaker,
    team: SalesTeam,
    rep_id: str | None,
    now: datetime,
    *,
    answered_since: timedelta = ANSWERED_SINCE,
    limit: int = OPEN_LIMIT,
    offset: int = 0,
) -> Inbox:
    """`rep_id`'s open handoffs (`limit` of them after the first `offset`) and the ones
    answered since `now - answered_since`; every rep's when `rep_id` is None."""
    mine = [] if rep_id is None else [Handoff.rep_id == rep_id]
    pending = (
        select(*COLUMNS).join(Lead, Lead.id == Handoff.lead_id)
        .where(Handoff.status == "pending", *mine)
        .order_by(Handoff.due_at.asc().nulls_last(), Handoff.created_at, Handoff.id)
        .offset(offset).limit(limit + 1)
    )  # fmt: skip
    answered = (
        select(*COLUMNS).join(Lead, Lead.id == Handoff.lead_id)
        .where(Handoff.status != "pending", Handoff.answered_at >= now - answered_since, *mine)
        .order_by(Handoff.answered_at.desc(), Handoff.id)
        .limit(ANSWERED_LIMIT)
    )  # fmt: skip
    with sessions() as session:
        open_rows = session.execute(pending).all()
        answered_rows = session.execute(answered).all()
    return Inbox(
        rep_id=rep_id,
        open=[_item(row, team) for row in open_rows[:limit]],
        answered=[_item(row, team) for row in answered_rows],
        truncated=len(open_rows) > limit,
        offset=offset,
    )


def inbox_item(sessions: sessionmaker, team: SalesTeam, handoff_id: str) -> InboxItem | None:
    """One handoff as the inbox shows it (the row a page redraws after an answer)."""
    query = select(*COLUMNS).join(Lead, Lead.id == Handoff.lead_id).where(Handoff.id == handoff_id)
    with sessions() as session:
        row = session.execute(query).first()
    return None if row is None else _item(row, team)


def open_counts(sessions: sessionmaker) -> dict[str, int]:
    """Each rep's open handoffs: what a manager's rep filter shows beside each name."""
    query = (
        select(Handoff.rep_id, func.count()).where(Handoff.status == "pending")
        .group_by(Handoff.rep_id)
    )  # fmt: skip
    with sessions() as session:
        return dict(session.execute(query).all())


def countdown(due_at: datetime | None, now: datetime) -> str:
    """The SLA as a rep reads it: "due in 1 h 20 min", "overdue by 5 min"."""
    if due_at is None:
        return "no deadline"
    left = due_at - now
    if abs(left) < timedelta(minutes=1):
        return "due now"
    if left > timedelta(0):
        return f"due in {duration(left)}"
    return f"overdue by {duration(-left)}"


def duration(span: timedelta) -> str:
    """Whole minutes, hours and days, the two largest units: "2 d 3 h", "1 h 20 min"."""
    minutes = int(span.total_seconds() // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min")]
    while parts and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{count} {unit}" for count, unit in parts[:2] if count) or "0 min"


def _item(row, team: SalesTeam) -> InboxItem:
    name = " ".join(part for part in (row.first_name, row.last_name) if part)
    rep = _rep(team, row.rep_id)
    return InboxItem(
        handoff_id=row.id, lead_id=row.lead_id, email=row.email, name=name or row.email,
        company=row.company, rep_id=row.rep_id, rep_name=rep.name if rep else row.rep_id,
        status=row.status, score=row.score, grade=row.grade, reasons=_reasons(row.reason),
        handed_off_at=as_utc(row.created_at), due_at=_utc(row.due_at),
        sla_seconds=(rep.sla or team.sla.answer_within or None) if rep else None,
        reminders=row.reminders, reassignments=row.reassignments,
        answered_at=_utc(row.answered_at), answered_by=row.answered_by,
        answer_reason=row.answer_reason,
    )  # fmt: skip


def _rep(team: SalesTeam, rep_id: str) -> SalesRep | None:
    try:
        return team.rep(rep_id)
    except KeyError:  # a rep since removed from sales.yaml keeps their history
        return None


def _reasons(stored: str | None) -> tuple[str, ...]:
    return tuple(part for part in (stored or "").split(REASON_SEPARATOR) if part.strip())


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else as_utc(moment)
