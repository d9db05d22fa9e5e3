"""What the console's Website page reads (services/website_traffic.py), on SQLite and
PostgreSQL: anonymous views waiting in `visitor_views` and leads' tracked `page.view`
responses (`view:` event IDs), as services/tracking.py writes them, with older ones
outside the window; the totals, the top pages and campaign sources of both, and the
visitors joined to leads, over the last days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from models.db import Lead, Response, Visitor, VisitorView
from services import website_traffic
from services.website_traffic import Counted, Joined

NOW = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)
SITE = "https://www.example.com"


def ago(hours: float) -> datetime:
    return NOW - timedelta(hours=hours)


def anonymous(session, visitor: str, path: str, hours: float, **utm) -> None:
    session.add(VisitorView(visitor_id=visitor * 16, url=SITE + path, title="A page",
                            utm=utm or None, occurred_at=ago(hours)))  # fmt: skip


def lead_view(session, event_id: str, lead_id: str, path: str, hours: float,
              kind: str = "page.view", **utm) -> None:  # fmt: skip
    session.add(Response(event_id=event_id, lead_id=lead_id, type=kind, source="web",
                         data={"url": SITE + path, "title": "A page"}, utm=utm or None,
                         occurred_at=ago(hours)))  # fmt: skip


def joined(session, visitor: str, lead_id: str, how: str, hours: float) -> None:
    session.add(Visitor(id=visitor * 16, lead_id=lead_id, joined_by=how, joined_at=ago(hours)))


def plant(database) -> None:
    with database.sessions.begin() as session:
        session.add_all([Lead(id="ada", email="ada@example.com"),
                         Lead(id="grace", email="grace@example.com")])  # fmt: skip
        session.flush()
        anonymous(session, "aa", "/pricing?utm_source=google&utm_medium=cpc", 12,
                  utm_source="google", utm_medium="cpc")  # fmt: skip
        anonymous(session, "aa", "/", 48)
        anonymous(session, "bb", "/pricing#plans", 72)
        anonymous(session, "cc", "/blog/post?utm_source=newsletter", 20 * 24,
                  utm_source="newsletter")  # fmt: skip
        anonymous(session, "dd", "/pricing", 40 * 24)  # outside 30 days
        lead_view(session, "view:1", "ada", "/pricing?utm_source=newsletter", 20,
                  utm_source="newsletter")  # fmt: skip
        lead_view(session, "view:2", "ada", "/pricing", 5 * 24)
        lead_view(session, "view:3", "grace", "/docs", 6 * 24, utm_source="google")
        lead_view(session, "view:4", "grace", "/pricing", 45 * 24)  # outside 30 days
        # Not the snippet's: a page.view the caller posted itself, and another response.
        lead_view(session, "api-1", "ada", "/pricing", 1)
        lead_view(session, "click-1", "ada", "/pricing", 1, kind="email.click")
        joined(session, "aa", "ada", "form:demo-request", 48)
        joined(session, "ee", "grace", "link", 10)
        joined(session, "gg", "grace", "form:newsletter", 72)
        joined(session, "ff", "ada", "link", 40 * 24)  # outside 30 days


def test_the_last_30_days_of_both_kinds_of_views(database):
    plant(database)
    with database.sessions() as session:
        traffic = website_traffic.website_traffic(session, now=NOW)
    assert traffic.days == 30 and traffic.since == NOW - timedelta(days=30)
    totals = traffic.totals
    assert (totals.anonymous_views, totals.lead_views, totals.views) == (4, 3, 7)
    assert totals.anonymous_visitors == 3
    assert (totals.joined_by_form, totals.joined_by_link, totals.joined) == (2, 1, 3)
    # One page however many campaigns link to it, or anchors in it.
    assert traffic.pages == [
        Counted(f"{SITE}/pricing", 4, 2),
        Counted(f"{SITE}/", 1, 0),
        Counted(f"{SITE}/blog/post", 1, 0),
        Counted(f"{SITE}/docs", 1, 1),
    ]
    assert traffic.sources == [
        Counted(None, 3, 1),  # no utm_source: direct, or a referrer's
        Counted("google", 2, 1),
        Counted("newsletter", 2, 1),
    ]
    assert traffic.joined == [
        Joined("grace", "grace@example.com", "link", ago(10)),
        Joined("ada", "ada@example.com", "form:demo-request", ago(48)),
        Joined("grace", "grace@example.com", "form:newsletter", ago(72)),
    ]
    assert [j.form for j in traffic.joined] == [None, "demo-request", "newsletter"]


def test_the_window_is_the_days_asked(database):
    plant(database)
    with database.sessions() as session:
        day = website_traffic.website_traffic(session, days=1, now=NOW)
        year = website_traffic.website_traffic(session, days=365, now=NOW)
    assert (day.totals.anonymous_views, day.totals.lead_views) == (1, 1)
    assert day.totals.anonymous_visitors == 1 and day.totals.joined == 1
    assert day.pages == [Counted(f"{SITE}/pricing", 2, 1)]
    assert day.sources == [Counted("google", 1, 0), Counted("newsletter", 1, 1)]
    assert [(j.lead_id, j.joined_by) for j in day.joined] == [("grace", "link")]
    assert (year.totals.anonymous_views, year.totals.lead_views) == (5, 4)
    assert year.totals.anonymous_visitors == 4
    assert (year.totals.joined_by_form, year.totals.joined_by_link) == (2, 2)
    assert year.pages[0] == Counted(f"{SITE}/pricing", 6, 3)


def test_nothing_tracked_yet(database):
    with database.sessions() as session:
        traffic = website_traffic.website_traffic(session, now=NOW)
    assert traffic.totals == website_traffic.Totals(0, 0, 0, 0, 0)
    assert traffic.pages == traffic.sources == traffic.joined == []


def test_the_lists_are_the_top_and_the_latest_only(database):
    with database.sessions.begin() as session:
        session.add(Lead(id="ada", email="ada@example.com"))
        session.flush()
        for n in range(12):  # page n viewed n + 1 times, from source n
            for view in range(n + 1):
                anonymous(session, f"{n:02d}", f"/p{n}", view + 1, utm_source=f"s{n}")
        for n in range(25):
            joined(session, f"{n:02d}", "ada", "link", n + 1)
    with database.sessions() as session:
        traffic = website_traffic.website_traffic(session, now=NOW)
    assert [(p.name, p.views) for p in traffic.pages] == [
        (f"{SITE}/p{n}", n + 1) for n in range(11, 1, -1)
    ]
    assert [s.name for s in traffic.sources] == [f"s{n}" for n in range(11, 1, -1)]
    assert len(traffic.joined) == 20 and traffic.joined[0].joined_at == ago(1)
    assert traffic.totals.anonymous_views == 78 and traffic.totals.joined_by_link == 25
