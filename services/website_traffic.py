"""The console's Website page (docs/tracking.md): the web tracking's traffic over the last
days. A page view is either still anonymous (a `visitor_views` row, waiting for its
visitor to become a lead) or a lead's (a `page.view` response whose event ID is
`view:<id>`, as services/tracking.py writes it); the figures count both.

Every figure is one SQL aggregate (a count, or GROUP BY with LIMIT): no view is loaded
into Python, however many the window holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Integer, Text, case, func, literal, select, union_all
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from models.db import Lead, Response, Visitor, VisitorView, as_utc, utcnow

DEFAULT_DAYS = 30
MAX_DAYS = 365
TOP = 10  # pages and sources listed
LATEST = 20  # visitors joined to leads listed
VIEW_EVENTS = "view:%"  # a tracked view's event ID (services/tracking.py)


@dataclass(frozen=True)
class Totals:
    anonymous_views: int  # waiting for their visitor to become a lead
    lead_views: int  # leads' tracked page.view responses
    anonymous_visitors: int  # distinct visitors of the anonymous views
    joined_by_form: int  # visitors joined to a lead in the window, by a form post
    joined_by_link: int  # ... by a tracked email link

    @property
    def views(self) -> int:
        return self.anonymous_views + self.lead_views

    @property
    def joined(self) -> int:
        return self.joined_by_form + self.joined_by_link


@dataclass(frozen=True)
class Counted:
    """A page (its address without query string or fragment) or a campaign source
    (None: no utm_source, direct or unknown), with its views and how many were leads'."""

    name: str | None
    views: int
    lead_views: int


@dataclass(frozen=True)
class Joined:
    lead_id: str
    email: str
    joined_by: str  # "link" | "form:<form id>"
    joined_at: datetime

    @property
    def form(self) -> str | None:
        """The form's ID when a form post joined the visitor."""
        return self.joined_by.removeprefix("form:") if self.joined_by.startswith("form:") else None


@dataclass(frozen=True)
class Traffic:
    days: int
    since: datetime
    totals: Totals
    pages: list[Counted]  # the TOP pages by views
    sources: list[Counted]  # the TOP sources by views
    joined: list[Joined]  # the LATEST visitors joined to leads in the window, newest first


def website_traffic(session: Session, days: int = DEFAULT_DAYS,
                    now: datetime | None = None) -> Traffic:  # fmt: skip
    """The tracked traffic of the last `days` days (up to `now`)."""
    since = (now or utcnow()) - timedelta(days=days)
    views = _views(session, since)
    return Traffic(
        days=days,
        since=since,
        totals=_totals(session, since),
        pages=_top(session, views.c.page, views),
        sources=_top(session, views.c.source, views),
        joined=_joined(session, since),
    )


def _totals(session: Session, since: datetime) -> Totals:
    anonymous, visitors = session.execute(
        select(func.count(), func.count(VisitorView.visitor_id.distinct()))
        .where(VisitorView.occurred_at >= since)
    ).one()  # fmt: skip
    lead_views = session.scalar(select(func.count()).where(*_lead_views(since)))
    by_form, by_link = session.execute(
        select(_how_many(Visitor.joined_by.like("form:%")),
               _how_many(Visitor.joined_by == "link"))
        .where(Visitor.joined_at >= since)
    ).one()  # fmt: skip
    return Totals(anonymous_views=anonymous, lead_views=lead_views or 0,
                  anonymous_visitors=visitors, joined_by_form=by_form or 0,
                  joined_by_link=by_link or 0)  # fmt: skip


def _lead_views(since: datetime) -> tuple[ColumnElement[bool], ...]:
    """A lead's tracked views in the window (other `page.view`s, posted to the API by
    the caller's own code, are not the snippet's)."""
    return (Response.type == "page.view", Response.event_id.like(VIEW_EVENTS),
            Response.occurred_at >= since)  # fmt: skip


def _how_many(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return func.sum(case((condition, 1), else_=0))


def _views(session: Session, since: datetime):
    """Every view of the window, anonymous and leads': its page, its source, and 1 for a
    lead's. The page is computed here, in each part, so that the outer query groups by a
    column (PostgreSQL refuses to match a GROUP BY expression whose parameters differ)."""
    dialect = session.get_bind().dialect.name
    anonymous = select(
        _page(VisitorView.url, dialect).label("page"),
        VisitorView.utm["utm_source"].as_string().label("source"),
        literal(0).label("lead"),
    ).where(VisitorView.occurred_at >= since)
    of_leads = select(
        _page(Response.data["url"].as_string(), dialect),
        Response.utm["utm_source"].as_string(),
        literal(1),
    ).where(*_lead_views(since))
    return union_all(anonymous, of_leads).subquery("views")


def _page(url: ColumnElement[str], dialect: str) -> ColumnElement[str]:
    """The address without its fragment and query string: one page however many campaigns
    (utm_*) link to it. SQLite finds a character with instr, PostgreSQL with strpos."""
    find = func.strpos if dialect == "postgresql" else func.instr
    for mark in ("#", "?"):
        ends = find(url.concat(mark), mark, type_=Integer)
        url = func.substr(url, 1, ends - 1, type_=Text)
    return url


def _top(session: Session, column, views) -> list[Counted]:
    count = func.count()
    rows = session.execute(
        select(column, count, func.sum(views.c.lead)).group_by(column)
        .order_by(count.desc(), column.nulls_last()).limit(TOP)  # the same order on both
    )  # fmt: skip
    return [Counted(name, total, leads or 0) for name, total, leads in rows]


def _joined(session: Session, since: datetime) -> list[Joined]:
    rows = session.execute(
        select(Visitor.lead_id, Lead.email, Visitor.joined_by, Visitor.joined_at)
        .join(Lead, Lead.id == Visitor.lead_id).where(Visitor.joined_at >= since)
        .order_by(Visitor.joined_at.desc(), Visitor.id).limit(LATEST)
    )  # fmt: skip
    return [Joined(lead_id, email, joined_by, as_utc(at)) for lead_id, email, joined_by, at in rows]
