"""The console overview's figures (services/overview.py), on SQLite and PostgreSQL: rows
written with the ORM as the activities write them, answers computed by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Float, literal, select, union_all

from models.db import (
    AMOUNT_SCALE,
    Enrollment,
    Handoff,
    HandoffEvent,
    Lead,
    Opportunity,
    StageChange,
)
from services import overview as ov
from services.reports import ReportFilter, funnel

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)  # a Monday
HOUR = 3600
WEEK = ov.Window(datetime(2024, 5, 6, tzinfo=UTC), datetime(2024, 5, 13, tzinfo=UTC), "day")


def at(hours: float, seconds: float = 0) -> datetime:
    return T0 + timedelta(hours=hours, seconds=seconds)


class Rows:
    def __init__(self, database):
        self.sessions = database.sessions

    def lead(self, key: str, segment: str | None, created: datetime) -> None:
        with self.sessions.begin() as session:
            session.add(Lead(id=key, email=f"{key}@example.com", segment=segment,
                             created_at=created))  # fmt: skip

    def stages(self, lead_id: str, *changes: tuple[str, str, datetime]) -> None:
        with self.sessions.begin() as session:
            for n, (old, new, moment) in enumerate(changes):
                session.add(StageChange(lead_id=lead_id, change_key=f"{n}:{new}",
                                        from_stage=old, to_stage=new, reason="setup",
                                        created_at=moment))  # fmt: skip

    def enroll(self, lead_id: str, sequence: str, started: datetime) -> None:
        with self.sessions.begin() as session:
            session.add(Enrollment(id=f"{lead_id}:{sequence}", lead_id=lead_id,
                                   sequence_id=sequence, sequence_version=1,
                                   workflow_id=f"lead-{lead_id}", started_at=started))  # fmt: skip

    def opportunity(self, lead_id: str, status: str, opened: datetime, closed=None,
                    amount: int | None = None, currency: str = "USD") -> None:  # fmt: skip
        with self.sessions.begin() as session:
            session.add(Opportunity(
                crm_id=f"{lead_id}-{status}", lead_id=lead_id, status=status,
                amount_units=None if amount is None else amount * AMOUNT_SCALE,
                currency=currency, opened_at=opened, closed_at=closed,
            ))  # fmt: skip

    def handoff(self, lead_id: str, cycle: int, created: datetime,
                *notices: tuple[str, str, datetime]) -> None:  # fmt: skip
        """`notices`: (key, status, updated_at) of each notification."""
        with self.sessions.begin() as session:
            handoff = Handoff(id=f"{lead_id}-{cycle}", lead_id=lead_id, cycle=cycle,
                              rep_id="alice", score=80, reason="setup",
                              created_at=created)  # fmt: skip
            session.add(handoff)
            session.flush()
            session.add(HandoffEvent(handoff_id=handoff.id, key="assigned:0", kind="assigned",
                                     rep_id="alice", created_at=created))  # fmt: skip
            for key, status, moment in notices:
                session.add(HandoffEvent(handoff_id=handoff.id, key=key, kind="notified",
                                         rep_id="alice", channel=key.rsplit(":", 1)[1],
                                         status=status, created_at=created,
                                         updated_at=moment))  # fmt: skip


@pytest.fixture
def history(database):
    rows = Rows(database)
    # a1: one stage at a time; accepted 2h after SQL; an opportunity a day later, won.
    rows.lead("a1", "alpha", at(0))
    rows.enroll("a1", "quick", at(0))
    rows.stages("a1", ("lead", "mql", at(1)), ("mql", "sql", at(3)), ("sql", "accepted", at(5)))
    rows.opportunity("a1", "won", at(29), at(77), amount=1000)
    # a2: jumps to SQL in `quick`, is turned down, is moved to `month`, qualifies again and
    # that SQL is accepted an hour later; the CRM's opportunity is lost.
    rows.lead("a2", "alpha", at(0))
    rows.enroll("a2", "quick", at(0))
    rows.enroll("a2", "month", at(6))
    rows.stages("a2", ("lead", "mql", at(2)), ("mql", "sql", at(2)), ("sql", "lead", at(3)),
                ("lead", "mql", at(4)), ("mql", "sql", at(10)),
                ("sql", "accepted", at(11)))  # fmt: skip
    rows.opportunity("a2", "lost", at(35), at(40))
    rows.lead("b1", "beta", at(0))
    rows.stages("b1", ("lead", "mql", at(4)))
    rows.lead("b2", "beta", at(0))
    rows.lead("b3", "beta", at(0))  # a PQL passes MQL on its way
    rows.stages("b3", ("lead", "mql", at(8)), ("mql", "pql", at(8)))
    # c1: no enrollment; SQL the next day.
    rows.lead("c1", "beta", at(0))
    rows.stages("c1", ("lead", "mql", at(25)), ("mql", "sql", at(26)))
    rows.lead("n1", None, at(0))
    # Before the window: its SQL, handoff and won revenue (EUR) are not the window's.
    rows.lead("old", None, at(-48))
    rows.stages("old", ("lead", "mql", at(-47)), ("mql", "sql", at(-47)))
    rows.opportunity("old", "won", at(-40), at(-30), amount=500, currency="EUR")
    rows.handoff("old", 0, at(-47, 1), ("new:0:alice:email", "sent", at(-47, 9)))
    return rows


def test_the_funnel_counts_rates_and_median_times(database, history):
    with database.sessions() as session:
        steps, revenue = ov.funnel(session, ReportFilter(since=WEEK.since, until=WEEK.until))
    by_stage = {step.stage: step for step in steps}
    assert [step.stage for step in steps] == ["lead", "mql", "sql", "accepted", "opportunity",
                                              "won"]  # fmt: skip
    assert [step.reached for step in steps] == [7, 5, 3, 2, 2, 1]
    assert [step.rate_from_previous for step in steps] == [None, 0.7143, 0.6, 0.6667, 1.0, 0.5]
    # lead -> MQL: 1, 2, 4, 8, 25 h; MQL -> SQL: 2 h, 0 (a2's jump), 1 h; SQL -> accepted:
    # 2 h, and 1 h for a2 (from the SQL accepted, not its first); accepted -> opportunity:
    # 24 h each; opportunity -> won: a1's 48 h.
    medians = {s: (by_stage[s].median_seconds_from_previous, by_stage[s].timed_leads)
               for s in ("mql", "sql", "accepted", "opportunity", "won")}  # fmt: skip
    assert medians == {"mql": (4 * HOUR, 5), "sql": (1 * HOUR, 3), "accepted": (1.5 * HOUR, 2),
                       "opportunity": (24 * HOUR, 2), "won": (48 * HOUR, 1)}  # fmt: skip
    assert by_stage["lead"].median_seconds_from_previous is None
    assert revenue == {"USD": Decimal(1000)}


def test_the_funnel_is_the_reports_funnel(database, history):
    """Same counts, rates and medians as `nurture report`, over every lead and a range."""
    for flt in (ReportFilter(), ReportFilter(until=T0), ReportFilter(since=at(-1))):
        with database.sessions() as session:
            steps, _ = ov.funnel(session, flt)
            report = funnel(session, flt)["stages"]
        mine = [(s.stage, s.reached, s.rate_from_previous, s.median_seconds_from_previous,
                 s.timed_leads) for s in steps]  # fmt: skip
        theirs = [(r["stage"], r["reached"], r["rate_from_previous"],
                   r["median_seconds_from_previous"], r["timed_leads"])
                  for r in report]  # fmt: skip
        assert mine == theirs


def test_sqls_by_sequence_and_segment_per_day(database, history):
    with database.sessions() as session:
        by_sequence, by_segment = ov.sqls_over_time(session, WEEK)
    days = [date(2024, 5, 6) + timedelta(days=n) for n in range(7)]
    assert by_sequence.starts == days and by_segment.starts == days
    # a1 and a2's first SQL in `quick`, a2's second in `month` (its enrollment then), c1's
    # with no enrollment the next day; old's, before the window, not at all.
    assert by_sequence.counts == {
        "quick": [2, 0, 0, 0, 0, 0, 0],
        "(none)": [0, 1, 0, 0, 0, 0, 0],
        "month": [1, 0, 0, 0, 0, 0, 0],
    }
    assert list(by_sequence.counts) == ["quick", "(none)", "month"]  # most first, then by name
    assert by_segment.counts == {"alpha": [3, 0, 0, 0, 0, 0, 0], "beta": [0, 1, 0, 0, 0, 0, 0]}
    assert by_segment.total() == 4


def test_sqls_per_week_start_on_monday(database, history):
    window = ov.Window(datetime(2024, 5, 4, tzinfo=UTC), datetime(2024, 5, 15, tzinfo=UTC), "week")
    with database.sessions() as session:
        by_sequence, by_segment = ov.sqls_over_time(session, window)
    assert by_sequence.starts == [date(2024, 4, 29), date(2024, 5, 6), date(2024, 5, 13)]
    # old's SQL on Saturday 4 May is in the week of Monday 29 April.
    assert by_sequence.counts == {"quick": [0, 2, 0], "(none)": [1, 1, 0], "month": [0, 1, 0]}
    assert by_segment.counts == {"alpha": [0, 3, 0], "beta": [0, 1, 0], "(none)": [1, 0, 0]}


def test_speed_to_lead_from_the_crossing_to_the_first_notification_sent(database, history):
    rows = history
    # a1: webhook answered after 3 s, email after 5: 3 s. The reminder does not count.
    rows.handoff("a1", 0, at(3, 1), ("new:0:alice:email", "sent", at(3, 5)),
                 ("new:0:alice:webhook", "sent", at(3, 3)),
                 ("lapse1:alice:email", "sent", at(5)))  # fmt: skip
    # a2's first cycle: 21 s. Its second: from its second SQL (10 h), not its first; the
    # failed SMS does not count: 10 s.
    rows.handoff("a2", 0, at(2, 1), ("new:0:alice:email", "sent", at(2, 21)))
    rows.handoff("a2", 1, at(10, 1), ("new:0:alice:sms", "failed", at(10, 2)),
                 ("new:0:alice:email", "sent", at(10, 10)))  # fmt: skip
    # c1's handoff row has the workflow task's time, a moment before the scoring in that
    # task wrote the crossing: 100 s from the crossing all the same.
    rows.handoff("c1", 0, at(26, -0.5), ("new:0:alice:email", "sent", at(26, 100)))
    # Handed off, the notification still being sent (a reminder went, later): counted as
    # made, not timed.
    rows.handoff("a1", 1, at(40), ("new:0:alice:email", "sending", at(40)),
                 ("lapse1:alice:email", "sent", at(42)))  # fmt: skip
    with database.sessions() as session:
        speed = ov.speed_to_lead(session, WEEK)
    # 3, 10, 21, 100 s: p50 halfway between 10 and 21; p99 at 2.97 of 0..3: 21 + 0.97 x 79.
    assert speed == ov.SpeedToLead(handoffs=5, timed=4, p50_seconds=15.5, p99_seconds=97.63)


def test_an_empty_database(database):
    with database.sessions() as session:
        assert not ov.any_leads(session)
        result = ov.overview(session, WEEK)
    assert [step.reached for step in result.funnel] == [0] * 6
    assert all(step.median_seconds_from_previous is None for step in result.funnel)
    assert result.revenue == {}
    assert result.sqls_by_segment.counts == {} and result.sqls_by_sequence.total() == 0
    assert result.speed_to_lead == ov.SpeedToLead(0, 0, None, None)


@pytest.mark.parametrize(
    ("values", "expected"),
    [([7], (7.0, 7.0)), ([1, 2], (1.5, 1.99)), ([5, 1, 3, None, 2, 4], (3.0, 4.96)), ([], None)],
)
def test_percentiles_interpolate_between_ranks_as_percentile_cont(database, values, expected):
    """Nulls are left out; the same answers on both databases."""
    rows = [select(literal(v, Float).label("v")) for v in values] or [
        select(literal(None, Float).label("v"))
    ]
    query = select(union_all(*rows).subquery("given").c.v)
    with database.sessions() as session:
        got = ov.percentiles(session, query, (0.5, 0.99))["v"]
    present = [v for v in values if v is not None]
    assert got == (len(present), expected or (None, None))


def test_the_window_of_the_last_days():
    now = datetime(2024, 5, 8, 15, 30, tzinfo=UTC)  # a Wednesday
    week = ov.Window.last(7, now)
    assert (week.since, week.until, week.bucket) == (
        datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 9, tzinfo=UTC), "day")  # fmt: skip
    assert len(week.starts()) == 7
    quarter = ov.Window.last(90, now)
    assert quarter.bucket == "week" and quarter.starts()[0] == date(2024, 2, 5)
    assert ov.Window.last(90, now, "day").bucket == "day"
