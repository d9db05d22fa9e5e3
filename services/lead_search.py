"""Finding leads for the console: by email (prefix or contains, any case), stage,
segment, score range and current sequence, a page at a time, the latest activity or the
highest score first.

Fast at 100,000 leads: one query for the page (LIMIT/OFFSET on an indexed order), one
for the page's sequences, and a count that stops at COUNT_CAP (shown "1,000+"), so no
search reads more than the leads it shows and a bounded count. A lead's last activity
is `leads.updated_at`: the last time the lead changed (a response scored, a stage
moved, its profile or consent updated); the sends we make do not count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, exists, func, select
from sqlalchemy.orm import Session, aliased

from models.db import Enrollment, Handoff, Lead, as_utc

# Every stage a lead can be at (scoring, sales' answers, the CRM's outcomes).
STAGES = ("lead", "mql", "pql", "sql", "accepted", "disqualified", "opportunity", "customer",
          "closed_lost")  # fmt: skip
SORTS = {"activity": "last activity first", "score": "highest score first"}
MATCHES = ("contains", "prefix")
COUNT_CAP = 1000  # counted up to here, then "1,000+"
MAX_LIMIT = 200
MAX_OFFSET = 10_000  # deeper pages: narrow the search instead


class SearchError(ValueError):
    """A search that cannot run as asked; `field` names the input to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class LeadSearch:
    """What to look for. Empty strings and None mean "any"; `rep_id` limits the search to
    the leads handed off to that rep (a rep sees only theirs)."""

    email: str = ""
    match: str = "contains"
    stage: str = ""
    segment: str = ""
    score_min: float | None = None
    score_max: float | None = None
    sequence: str = ""
    rep_id: str | None = None
    sort: str = "activity"
    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        _check_choice("match", self.match, MATCHES)
        _check_choice("sort", self.sort, tuple(SORTS))
        if self.stage and self.stage not in STAGES:
            raise SearchError("stage", f"unknown stage {self.stage!r}; one of {', '.join(STAGES)}")
        for name in ("score_min", "score_max"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 <= value <= 100):
                raise SearchError(name, f"{value:g} is not a score: scores run from 0 to 100")
        low, high = self.score_min, self.score_max
        if low is not None and high is not None and low > high:
            raise SearchError("score_min", f"minimum {low:g} is above the maximum {high:g}")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise SearchError("limit", f"{self.limit} is not between 1 and {MAX_LIMIT}")
        if not 0 <= self.offset <= MAX_OFFSET:
            raise SearchError("offset", f"{self.offset} is not between 0 and {MAX_OFFSET}: "
                              "narrow the search instead")  # fmt: skip


def _check_choice(field: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SearchError(field, f"{value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class LeadRow:
    id: str
    email: str
    name: str
    stage: str
    score: float
    grade: str | None
    segment: str | None
    sequence: str | None  # of the current (latest) enrollment
    last_activity: datetime


@dataclass(frozen=True)
class SearchResult:
    rows: list[LeadRow]
    total: int  # matching leads, counted up to COUNT_CAP + 1
    search: LeadSearch

    @property
    def capped(self) -> bool:
        return self.total > COUNT_CAP

    @property
    def total_text(self) -> str:
        return f"{COUNT_CAP:,}+" if self.capped else f"{self.total:,}"

    @property
    def has_older(self) -> bool:
        """Another page after this one (within MAX_OFFSET)."""
        following = self.search.offset + self.search.limit
        return following <= MAX_OFFSET and (self.capped or following < self.total)


def search_leads(session: Session, search: LeadSearch) -> SearchResult:
    """The page of leads `search` selects, and how many match (capped)."""
    matching = _filtered(select(Lead.id), search)
    total = session.scalar(
        select(func.count()).select_from(matching.limit(COUNT_CAP + 1).subquery())
    )
    if total == 0 or (total <= COUNT_CAP and search.offset >= total):
        return SearchResult([], total, search)
    columns = (Lead.id, Lead.email, Lead.first_name, Lead.last_name, Lead.stage, Lead.score,
               Lead.grade, Lead.segment, Lead.updated_at)  # fmt: skip
    page = session.execute(
        _filtered(select(*columns), search)
        .order_by(*_order(search.sort))
        .limit(search.limit)
        .offset(search.offset)
    ).all()
    sequences = current_sequences(session, [row.id for row in page])
    rows = [
        LeadRow(row.id, row.email, " ".join(filter(None, (row.first_name, row.last_name))),
                row.stage, row.score, row.grade, row.segment, sequences.get(row.id),
                as_utc(row.updated_at))
        for row in page
    ]  # fmt: skip
    return SearchResult(rows, total, search)


def _order(sort: str) -> tuple:
    # The ID breaks ties, so a page boundary never shows a lead twice or skips one.
    if sort == "score":
        return (Lead.score.desc(), Lead.id.desc())
    return (Lead.updated_at.desc(), Lead.id.desc())


def _filtered(query: Select, search: LeadSearch) -> Select:
    email = search.email.strip().lower()
    if email:
        how = Lead.email.startswith if search.match == "prefix" else Lead.email.contains
        query = query.where(how(email, autoescape=True))  # % and _ are themselves
    if search.stage:
        query = query.where(Lead.stage == search.stage)
    if search.segment:
        query = query.where(Lead.segment == search.segment)
    if search.score_min is not None:
        query = query.where(Lead.score >= search.score_min)
    if search.score_max is not None:
        query = query.where(Lead.score <= search.score_max)
    if search.sequence:
        query = query.where(_currently_in(search.sequence))
    if search.rep_id is not None:
        query = query.where(handed_off_to(search.rep_id))
    return query


def handed_off_to(rep_id: str):
    """The condition: the lead has a handoff assigned to `rep_id` (now: a reassigned
    handoff belongs to its new rep)."""
    return exists().where(Handoff.lead_id == Lead.id, Handoff.rep_id == rep_id)


def _currently_in(sequence: str):
    """The condition: the lead's latest enrollment is in `sequence` (none started later).
    As a semi-join the planner walks a page's index and probes the enrollments per lead;
    a correlated "latest" subquery, estimated badly, made it sort every candidate."""
    later = aliased(Enrollment)
    newer = exists().where(
        later.lead_id == Enrollment.lead_id, later.started_at > Enrollment.started_at
    )
    latest_in = select(Enrollment.lead_id).where(Enrollment.sequence_id == sequence, ~newer)
    return Lead.id.in_(latest_in)


def current_sequences(session: Session, lead_ids: list[str]) -> dict[str, str]:
    """Each lead's latest enrollment's sequence (leads never enrolled are left out)."""
    if not lead_ids:
        return {}
    rows = session.execute(
        select(Enrollment.lead_id, Enrollment.sequence_id)
        .where(Enrollment.lead_id.in_(lead_ids))
        .order_by(Enrollment.started_at, Enrollment.id)
    ).all()
    return {lead_id: sequence for lead_id, sequence in rows}  # the latest wins
