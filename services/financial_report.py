"""`nurture financial`: the financial model and the pipeline forecast from the database
(the arithmetic, and the rules, are sales/financial.py).

A few queries whatever the number of leads: the leads per group and month are counted by
the database; only the leads that went past `lead` (an MQL, or an opportunity) are
streamed, each with its first MQL and SQL (one grouped query over stage_changes) and, for
the forecast, its stage at the moment (a window over the stage changes of SQLs only);
the opportunities come in one query. A lead's sequence is that of its first enrollment.

As of a past moment D, nothing from D on is read: stage changes and leads before D, and
each opportunity folded again from its CRM events before D (so its amount is the one
known then), by the fold that made it (sales/outcomes.py `converge`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, case, func, literal_column, or_, select
from sqlalchemy.orm import Session

from models.costs import CostEntry
from models.db import (
    AMOUNT_SCALE,
    Enrollment,
    Lead,
    Opportunity,
    OutcomeEvent,
    StageChange,
    as_utc,
    utcnow,
)
from sales.financial import (
    NONE,
    Cost,
    Deal,
    LeadCount,
    LeadPath,
    backtest,
    forecast,
    model,
)
from sales.outcomes import OutcomeEventIn, converge
from services.reports import REACHED, ReportFilter

DIMENSIONS = ("segment", "source", "sequence", "campaign")
STREAM_ROWS = 10_000


def financial_model(
    session: Session, flt: ReportFilter, by: str, costs: Iterable[CostEntry] = ()
) -> dict[str, Any]:
    """The model per `by` and per monthly cohort, for the leads created in `flt`'s range
    (and segments), with the costs of the months the range covers."""
    _check_dimension(by)
    counts = _lead_counts(session, flt, by)
    deals = list(_deals_now(session, by, flt))
    spent = [_cost(entry) for entry in costs if _month_in(entry.month, flt)]
    result = model(counts, _paths(session, by, flt), deals, spent, by)
    return {"filter": flt.to_dict()} | result


def pipeline_forecast(session: Session, by: str, as_of: datetime | None = None) -> dict[str, Any]:
    """The open pipeline and its expected won revenue, now or as of a past moment."""
    _check_dimension(by)
    moment = _utc(as_of) if as_of else utcnow()
    deals = _deals_now(session, by) if as_of is None else _deals_as_of(session, by, moment)
    return forecast(_paths(session, by, ReportFilter(), before=moment), deals, moment)


def forecast_backtest(session: Session, by: str, as_of: datetime) -> dict[str, Any]:
    """The forecast as of `as_of`, from what was known then, beside what its pipeline won
    after it."""
    _check_dimension(by)
    moment = _utc(as_of)
    paths = _paths(session, by, ReportFilter(), before=moment)
    then = _deals_as_of(session, by, moment)
    return backtest(paths, then, _deals_now(session, by), moment)


def _check_dimension(by: str) -> None:
    if by not in DIMENSIONS:
        raise ValueError(f"no dimension {by!r}: one of {', '.join(DIMENSIONS)}")


def _utc(moment: datetime) -> datetime:
    return as_utc(moment).astimezone(UTC)


# --- the queries ---------------------------------------------------------------------------------


def _grouped(query: Select, by: str) -> tuple[Select, Any]:
    """`query` (Lead in its FROM) joined to what gives the lead's group, and the group."""
    if by != "sequence":
        return query, {"segment": Lead.segment, "source": Lead.source,
                       "campaign": Lead.utm_campaign}[by]  # fmt: skip
    e = Enrollment
    order = func.row_number().over(partition_by=e.lead_id, order_by=(e.started_at, e.id))
    ranked = select(e.lead_id, e.sequence_id, order.label("n")).subquery("ranked_enrollments")
    first = (select(ranked.c.lead_id, ranked.c.sequence_id).where(ranked.c.n == 1)
             .subquery("first_enrollment"))  # fmt: skip
    return query.outerjoin(first, first.c.lead_id == Lead.id), first.c.sequence_id


def _month(session: Session, column):
    """The month of a stored moment (UTC) as text, 2026-10, in the database's own words.
    The constants are literal SQL, so GROUP BY repeats exactly the selected expression."""
    if session.get_bind().dialect.name == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), column)
        return func.to_char(utc, literal_column("'YYYY-MM'"))
    return func.strftime(literal_column("'%Y-%m'"), column)


def _lead_counts(session: Session, flt: ReportFilter, by: str) -> list[LeadCount]:
    query, key = _grouped(select(Lead.id).select_from(Lead), by)
    month = _month(session, Lead.created_at)
    query = query.with_only_columns(key, month, func.count(Lead.id)).group_by(key, month)
    return [LeadCount(group or NONE, cohort, leads)
            for group, cohort, leads in session.execute(flt.leads(query))]  # fmt: skip


def _paths(
    session: Session, by: str, flt: ReportFilter, before: datetime | None = None
) -> Iterator[LeadPath]:
    """Streamed: the leads with an MQL or an opportunity, their first MQL and SQL. With
    `before` (the forecast's moment): those with an SQL or an opportunity before it, and
    their stage then."""
    sc = StageChange
    until = [sc.created_at < before] if before else []

    def first(stages: tuple[str, ...]):
        return func.min(case((sc.to_stage.in_(stages), sc.created_at)))

    reached = (
        select(sc.lead_id, first(REACHED["mql"]).label("mql_at"),
               first(REACHED["sql"]).label("sql_at"))
        .where(sc.to_stage.in_(REACHED["mql"]), *until)
        .group_by(sc.lead_id)
        .subquery("reached")
    )  # fmt: skip
    opened = [Opportunity.opened_at < before] if before else []
    with_deal = select(Opportunity.lead_id).where(Opportunity.lead_id.is_not(None), *opened)
    columns = [Lead.id, Lead.created_at, reached.c.mql_at, reached.c.sql_at]
    query = select(*columns).select_from(Lead).outerjoin(reached, reached.c.lead_id == Lead.id)
    if before:
        stage = _stage_then(before)
        query = query.outerjoin(stage, stage.c.lead_id == Lead.id).add_columns(stage.c.to_stage)
        query = query.where(Lead.created_at < before)
    query, key = _grouped(query, by)
    query = flt.leads(query.add_columns(key.label("group_key")))
    past = reached.c.sql_at if before else reached.c.mql_at
    query = query.where(or_(past.is_not(None), Lead.id.in_(with_deal)))
    for row in session.execute(query.execution_options(yield_per=STREAM_ROWS)):
        lead_id, created_at, mql_at, sql_at, *stage, group = row
        yield LeadPath(lead_id, group or NONE, as_utc(created_at), mql_at and as_utc(mql_at),
                       sql_at and as_utc(sql_at), stage[0] if stage else None)  # fmt: skip


def _stage_then(before: datetime):
    """Each SQL's stage just before `before`: its last stage change then."""
    sc = StageChange
    sqls = select(sc.lead_id).where(sc.to_stage.in_(REACHED["sql"]), sc.created_at < before)
    order = func.row_number().over(partition_by=sc.lead_id,
                                   order_by=(sc.created_at.desc(), sc.id.desc()))  # fmt: skip
    ranked = (select(sc.lead_id, sc.to_stage, order.label("n"))
              .where(sc.lead_id.in_(sqls), sc.created_at < before)
              .subquery("ranked_stages"))  # fmt: skip
    return select(ranked.c.lead_id, ranked.c.to_stage).where(ranked.c.n == 1).subquery("stage")


def _maybe_utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else _utc(moment)


def _opportunities(by: str, flt: ReportFilter | None = None) -> Select:
    o = Opportunity
    query = (select(o.crm_id, o.lead_id, Lead.created_at, o.opened_at, o.status, o.closed_at,
                    o.amount_units, o.currency, o.events)
             .select_from(o).join(Lead, Lead.id == o.lead_id))  # fmt: skip
    query, key = _grouped(query, by)
    query = query.add_columns(key.label("group_key"))
    return flt.leads(query) if flt else query


def _deals_now(session: Session, by: str, flt: ReportFilter | None = None) -> list[Deal]:
    """Every opportunity of a known lead, as it stands."""
    deals = []
    for row in session.execute(_opportunities(by, flt)).mappings():
        amount = _amount(row["amount_units"])
        opened = row["opened_at"] or row["closed_at"]
        if opened is not None:
            deals.append(Deal(row["crm_id"], row["lead_id"], row["group_key"] or NONE,
                              _utc(row["created_at"]), _utc(opened), row["status"],
                              _maybe_utc(row["closed_at"]), amount, row["currency"]))  # fmt: skip
    return deals


def _deals_as_of(session: Session, by: str, moment: datetime) -> list[Deal]:
    """The opportunities opened before `moment`, as their events before it made them
    (one without events, written by hand, is read back from its dates)."""
    rows = list(session.execute(
        _opportunities(by).where(Opportunity.opened_at < moment)
    ).mappings())  # fmt: skip
    payloads: dict[str, list[dict]] = defaultdict(list)
    events = select(OutcomeEvent.opportunity_crm_id, OutcomeEvent.payload).where(
        OutcomeEvent.occurred_at < moment
    )
    for crm_id, payload in session.execute(events.execution_options(yield_per=STREAM_ROWS)):
        payloads[crm_id].append(payload)
    deals = []
    for row in rows:
        then = payloads.get(row["crm_id"])
        if then:
            state = converge(OutcomeEventIn.model_validate(p) for p in then)
            status, closed, amount, currency = (state.status, state.closed_at, state.amount,
                                                state.currency)  # fmt: skip
        else:
            closed = _maybe_utc(row["closed_at"])
            closed = closed if closed is not None and closed < moment else None
            status = row["status"] if closed else "open"
            amount, currency = _amount(row["amount_units"]), row["currency"]
        deals.append(Deal(row["crm_id"], row["lead_id"], row["group_key"] or NONE,
                          _utc(row["created_at"]), _utc(row["opened_at"]), status,
                          _maybe_utc(closed), amount, currency))  # fmt: skip
    return deals


def _amount(units: int | None) -> Decimal | None:
    return None if units is None else Decimal(units) / AMOUNT_SCALE


# --- costs ---------------------------------------------------------------------------------------


def _cost(entry: CostEntry) -> Cost:
    return Cost(entry.month, entry.amount, entry.currency or "", entry.dimension, entry.value)


def _month_in(month: str, flt: ReportFilter) -> bool:
    """Whether the range covers any of the month (use whole months for exact costs)."""
    year, number = map(int, month.split("-"))
    start = datetime(year, number, 1, tzinfo=UTC)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=UTC)
    return (flt.since is None or end > _utc(flt.since)) and (
        flt.until is None or start < _utc(flt.until))  # fmt: skip
