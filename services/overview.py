"""The console's overview: the funnel with its conversion rates and median times, SQLs per
sequence and per segment over time, and speed to lead, each aggregated by the database.

- The funnel is `nurture report`'s (services/reports.py: the same stages, counts and
  definitions of each median time), over the leads created in the window. Its medians
  are taken in SQL here, where the report takes them in Python from a row per lead.
- SQLs over time: each entry into SQL (a stage change to `sql`) in the window, per day or
  week (UTC; weeks start on Monday), by the lead's segment or by the sequence the lead
  was in when it crossed (its latest enrollment started at or before; `(none)` if none).
  A lead that qualifies again in a later cycle counts again.
- Speed to lead, per handoff made in the window: from the lead's crossing into SQL to the
  first notification of the handoff the rep was sent (`handoff_events`, kind `notified`,
  a `new:` key, status `sent`: its `updated_at`, written when the channel answered); the
  crossing is the lead's last stage change to `sql` before that. p50 and p99.

Percentiles are PostgreSQL's `percentile_cont`; on SQLite, which has none, the same
interpolation from the two ranks around the position, read by a window query that
returns at most four rows: no per-lead rows reach Python on either.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import (
    Date,
    Float,
    Integer,
    Select,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from models.db import Enrollment, Handoff, HandoffEvent, Lead, Opportunity, StageChange
from services import reports
from services.reports import FUNNEL, NO_SEGMENT, NO_SEQUENCE, ReportFilter

BUCKETS = ("day", "week")
RANGES = {"7d": 7, "30d": 30, "90d": 90, "365d": 365}  # days back, today included
DEFAULT_RANGE = "30d"
MOST_SERIES = 8  # lines on a chart; the rest are summed as OTHERS
OTHERS = "(others)"


@dataclass(frozen=True)
class Window:
    """[since, until) in UTC, counted per `bucket`."""

    since: datetime
    until: datetime
    bucket: str = "day"

    @classmethod
    def last(cls, days: int, now: datetime, bucket: str | None = None) -> Window:
        """The `days` days up to and including today (UTC); by day up to a month."""
        tomorrow = datetime.combine(now.astimezone(UTC).date(), datetime.min.time(), UTC)
        tomorrow += timedelta(days=1)
        bucket = bucket if bucket in BUCKETS else ("day" if days <= 31 else "week")
        return cls(tomorrow - timedelta(days=days), tomorrow, bucket)

    def starts(self) -> list[date]:
        """The first day of each bucket that overlaps the window."""
        day, step = self.since.date(), timedelta(days=1 if self.bucket == "day" else 7)
        if self.bucket == "week":
            day -= timedelta(days=day.weekday())
        out = []
        while datetime.combine(day, datetime.min.time(), UTC) < self.until:
            out.append(day)
            day += step
        return out


@dataclass(frozen=True)
class FunnelStep:
    stage: str
    reached: int
    rate_from_previous: float | None
    median_seconds_from_previous: float | None
    timed_leads: int | None  # how many leads the median is taken over


@dataclass(frozen=True)
class Series:
    """How many per bucket (`starts`: each bucket's first day), per key."""

    starts: list[date]
    counts: dict[str, list[int]]

    def total(self) -> int:
        return sum(sum(values) for values in self.counts.values())


@dataclass(frozen=True)
class SpeedToLead:
    handoffs: int  # made in the window
    timed: int  # of which crossed into SQL and had a notification sent
    p50_seconds: float | None
    p99_seconds: float | None


@dataclass(frozen=True)
class Overview:
    window: Window
    funnel: list[FunnelStep]
    revenue: dict[str, Decimal]  # won, per currency
    sqls_by_sequence: Series
    sqls_by_segment: Series
    speed_to_lead: SpeedToLead

    def reached(self, stage: str) -> int:
        return next(step.reached for step in self.funnel if step.stage == stage)


def overview(session: Session, window: Window) -> Overview:
    flt = ReportFilter(since=window.since, until=window.until)
    steps, revenue = funnel(session, flt)
    by_sequence, by_segment = sqls_over_time(session, window)
    return Overview(
        window=window,
        funnel=steps,
        revenue=revenue,
        sqls_by_sequence=by_sequence,
        sqls_by_segment=by_segment,
        speed_to_lead=speed_to_lead(session, window),
    )


def any_leads(session: Session) -> bool:
    return session.scalar(select(Lead.id).limit(1)) is not None


# --- the funnel ----------------------------------------------------------------------------------


def funnel(session: Session, flt: ReportFilter) -> tuple[list[FunnelStep], dict[str, Decimal]]:
    """The report's funnel (counts, rates, median times) and the won revenue per currency.

    One statement on PostgreSQL: the milestones per lead are computed once (a materialized
    CTE) and every count and median read from them."""
    postgres = _dialect(session) == "postgresql"
    # With each lead's creation: the lead -> MQL time then needs no join back to leads.
    created = func.min(Lead.created_at).label("created_at")
    m = reports.lead_milestones(flt).add_columns(created).cte("m")
    if postgres:
        m = m.prefix_with("MATERIALIZED")
    counts = [
        select(func.count().label("lead")).select_from(flt.leads(select(Lead.id)).subquery()),
        select(*(func.count(m.c[f"{stage}_at"]).label(stage) for stage in FUNNEL[1:])),
    ]
    durations = _durations(session, flt, m)
    if postgres:
        row = _one_row(session, counts + [_percentile_aggregate(d, (0.5,)) for d in durations])
        names = [c.name for d in durations for c in d.selected_columns]
        timings = {name: (row[f"{name}_n"], _round(row[f"{name}_p0"])) for name in names}
    else:
        row = _one_row(session, counts)
        timings = {
            name: (count, values[0])
            for d in durations
            for name, (count, values) in percentiles(session, d, (0.5,)).items()
        }
    steps, previous = [], None
    for stage in FUNNEL:
        count, median = timings.get(stage, (0, None))
        steps.append(FunnelStep(
            stage=stage, reached=row[stage],
            rate_from_previous=_rate(row[stage], row[previous]) if previous else None,
            median_seconds_from_previous=median, timed_leads=count if previous else None,
        ))  # fmt: skip
        previous = stage
    return steps, _revenue(session, flt)


def _durations(session: Session, flt: ReportFilter, m) -> list[Select]:
    """Per funnel stage past `lead`, a column of the seconds each lead took to reach it
    from the stage before, as the report defines each (services/reports.py)."""
    seconds = _seconds_between(session)
    from_milestones = (
        select(seconds(m.c.created_at, m.c.mql_at).label("mql"),
               seconds(m.c.mql_at, m.c.sql_at).label("sql"),
               seconds(m.c.accepted_at, m.c.opportunity_at).label("opportunity"))
    )  # fmt: skip
    # SQL -> accepted: from the SQL entry sales accepted, the last at or before acceptance.
    sc = StageChange
    accepted_sql = (
        select(func.max(sc.created_at).label("sql_at"), func.min(m.c.accepted_at).label("at"))
        .join(m, m.c.lead_id == sc.lead_id)
        .where(sc.to_stage == "sql", m.c.accepted_at.is_not(None),
               sc.created_at <= m.c.accepted_at)
        .group_by(sc.lead_id)
        .subquery("accepted_sql")
    )  # fmt: skip
    to_accepted = select(seconds(accepted_sql.c.sql_at, accepted_sql.c.at).label("accepted"))
    return [from_milestones, to_accepted, _won_cycles(flt, seconds)]


def _revenue(session: Session, flt: ReportFilter) -> dict[str, Decimal]:
    revenue: dict[str, Decimal] = defaultdict(Decimal)
    for amounts in reports.won_revenue(session, flt).values():
        for currency, amount in amounts.items():
            revenue[currency] += amount
    return dict(sorted(revenue.items()))


def _won_cycles(flt: ReportFilter, seconds) -> Select:
    """Each report lead's first won opportunity, opened -> closed: its own sales cycle."""
    o = Opportunity
    first = func.row_number().over(partition_by=o.lead_id, order_by=o.closed_at)
    ranked = flt.leads(
        select(o.opened_at, o.closed_at, first.label("n"))
        .join(Lead, Lead.id == o.lead_id)
        .where(o.status == "won", o.closed_at.is_not(None))
    ).subquery("won_cycles")
    return select(seconds(ranked.c.opened_at, ranked.c.closed_at).label("won")).where(
        ranked.c.n == 1
    )


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


# --- SQLs over time ------------------------------------------------------------------------------


def sqls_over_time(session: Session, window: Window) -> tuple[Series, Series]:
    """Entries into SQL in the window per bucket: (by sequence, by segment), counted in
    one grouped query."""
    sc = StageChange
    entries = (
        select(sc.id, sc.lead_id, sc.created_at, Lead.segment)
        .join(Lead, Lead.id == sc.lead_id)
        .where(sc.to_stage == "sql", sc.created_at >= window.since,
               sc.created_at < window.until)
        .subquery("entries")
    )  # fmt: skip
    keyed = _sequence_at_entry(entries)
    start = _bucket(session, keyed.c.created_at, window.bucket).label("start")
    sequence = func.coalesce(keyed.c.sequence, literal(NO_SEQUENCE)).label("sequence")
    segment = func.coalesce(keyed.c.segment, literal(NO_SEGMENT)).label("segment")
    rows = session.execute(
        select(start, sequence, segment, func.count()).group_by(start, sequence, segment)
    ).all()
    found = [(_as_date(day), sequence, segment, count) for day, sequence, segment, count in rows]
    return (_series(window, [(day, sequence, n) for day, sequence, _, n in found]),
            _series(window, [(day, segment, n) for day, _, segment, n in found]))  # fmt: skip


def _sequence_at_entry(entries):
    """`entries` with `sequence`: that of the lead's latest enrollment started at or
    before each entry (joined and ranked: one pass, not a lookup per entry)."""
    e = Enrollment
    latest = func.row_number().over(
        partition_by=entries.c.id, order_by=(e.started_at.desc(), e.id.desc())
    )
    ranked = (
        select(entries.c.created_at, entries.c.segment, e.sequence_id.label("sequence"),
               latest.label("n"))
        .select_from(entries)
        .outerjoin(e, and_(e.lead_id == entries.c.lead_id, e.started_at <= entries.c.created_at))
        .subquery("ranked")
    )  # fmt: skip
    return (
        select(ranked.c.created_at, ranked.c.segment, ranked.c.sequence)
        .where(ranked.c.n == 1)
        .subquery("keyed")
    )


def _series(window: Window, rows: list[tuple[date, str, int]]) -> Series:
    """Counts per key and bucket; the keys with the most first, past MOST_SERIES summed."""
    starts = window.starts()
    index = {start: n for n, start in enumerate(starts)}
    counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(starts))
    for start, key, count in rows:
        counts[key][index[start]] += count
    ranked = sorted(counts.items(), key=lambda item: (-sum(item[1]), item[0]))
    kept = dict(ranked[:MOST_SERIES])
    if len(ranked) > MOST_SERIES:
        rest = [values for _, values in ranked[MOST_SERIES:]]
        kept[OTHERS] = [sum(column) for column in zip(*rest, strict=True)]
    return Series(starts, kept)


def _bucket(session: Session, moment, bucket: str):
    """The UTC day, or the Monday of the week, of `moment`, as a date."""
    if _dialect(session) == "postgresql":
        return cast(func.date_trunc(bucket, func.timezone("UTC", moment)), Date)
    if bucket == "week":  # back six days, then on to the next Monday (or stay on it)
        return func.date(moment, "-6 days", "weekday 1")
    return func.date(moment)


def _as_date(value: date | str) -> date:
    return date.fromisoformat(value) if isinstance(value, str) else value


# --- speed to lead -------------------------------------------------------------------------------


def speed_to_lead(session: Session, window: Window) -> SpeedToLead:
    h, sc, he = Handoff, StageChange, HandoffEvent
    made = select(h.id, h.lead_id).where(h.created_at >= window.since, h.created_at < window.until)
    count = session.scalar(select(func.count()).select_from(made.subquery()))
    made = made.subquery("made")
    notified = (
        select(made.c.id, made.c.lead_id, func.min(he.updated_at).label("at"))
        .join(he, he.handoff_id == made.c.id)
        .where(he.kind == "notified", he.status == "sent", he.key.startswith("new:"))
        .group_by(made.c.id, made.c.lead_id)
        .subquery("notified")
    )
    # The crossing: the lead's last SQL entry before the rep was told. Not "before the
    # handoff": its created_at is the workflow task's time, which precedes the scoring
    # (a local activity in the same task) that wrote the stage change.
    crossed = (
        select(func.max(sc.created_at).label("crossed"), func.min(notified.c.at).label("told"))
        .select_from(notified)
        .join(sc, and_(sc.lead_id == notified.c.lead_id, sc.to_stage == "sql",
                       sc.created_at <= notified.c.at))
        .group_by(notified.c.id)
        .subquery("crossed")
    )  # fmt: skip
    seconds = _seconds_between(session)(crossed.c.crossed, crossed.c.told)
    (timed, (p50, p99)) = percentiles(session, select(seconds.label("s")), (0.5, 0.99))["s"]
    return SpeedToLead(count or 0, timed, p50, p99)


# --- percentiles, in the database ----------------------------------------------------------------


def percentiles(
    session: Session, query: Select, fractions: tuple[float, ...]
) -> dict[str, tuple[int, tuple[float | None, ...]]]:
    """Per column of `query` (labelled): (how many values are not null, each fraction's
    continuous percentile, as PostgreSQL's percentile_cont: interpolated between ranks)."""
    names = [c.name for c in query.selected_columns]
    if _dialect(session) == "postgresql":
        row = _one_row(session, [_percentile_aggregate(query, fractions)])
        return {
            name: (row[f"{name}_n"],
                   tuple(_round(row[f"{name}_p{k}"]) for k in range(len(fractions))))
            for name in names
        }  # fmt: skip
    values = query.subquery("vals")
    return {name: _ranked_percentiles(session, values.c[name], fractions) for name in names}


def _percentile_aggregate(query: Select, fractions: tuple[float, ...]) -> Select:
    """PostgreSQL: one row, `<column>_n` (values not null) and `<column>_p<k>` per fraction."""
    values = query.subquery()
    columns = []
    for c in values.c:
        columns.append(func.count(c).label(f"{c.name}_n"))
        columns += [func.percentile_cont(p).within_group(cast(c, Float)).label(f"{c.name}_p{k}")
                    for k, p in enumerate(fractions)]  # fmt: skip
    return select(*columns)


def _one_row(session: Session, parts: list[Select]) -> dict:
    """One-row aggregates read in one statement (joined side by side), as one mapping."""
    subqueries = [part.subquery(f"part{n}") for n, part in enumerate(parts)]
    query = select(*(c for sub in subqueries for c in sub.c)).select_from(subqueries[0])
    for sub in subqueries[1:]:
        query = query.join(sub, true())
    return dict(session.execute(query).one()._mapping)


def _ranked_percentiles(session: Session, column, fractions: tuple[float, ...]):
    """SQLite: the rows ranked around each fraction's position, at most four each."""
    ranked = (
        select(column.label("v"), func.row_number().over(order_by=column).label("rank"),
               func.count().over().label("n"))
        .where(column.is_not(None))
        .subquery("ranked")
    )  # fmt: skip
    near = []
    for p in fractions:  # ranks from floor((n - 1) * p), computed in SQL, to 3 past it
        low = cast((ranked.c.n - 1) * literal(p, Float), Integer)
        near.append(ranked.c.rank.between(low, low + 3))
    rows = session.execute(select(ranked.c.v, ranked.c.rank, ranked.c.n).where(or_(*near))).all()
    if not rows:
        return 0, tuple(None for _ in fractions)
    count, by_rank = rows[0].n, {row.rank: row.v for row in rows}
    out = []
    for p in fractions:
        position = p * (count - 1)
        low = math.floor(position)
        below = by_rank[low + 1]
        above = by_rank.get(low + 2, below)
        out.append(_round(below + (position - low) * (above - below)))
    return count, tuple(out)


def _seconds_between(session: Session):
    """A function of two datetime columns: the seconds from the first to the second,
    never below 0 (null if either is)."""
    postgres = _dialect(session) == "postgresql"

    def seconds(start, end):
        if postgres:
            raw = cast(extract("epoch", end - start), Float)
        else:
            raw = (func.julianday(end) - func.julianday(start)) * 86400.0
        return case((raw < 0, 0.0), else_=raw)

    return seconds


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name
