"""`nurture report --attribution MODEL`: SQLs, pipeline and won revenue credited to the
sequences, steps, segments or sources whose messages came before them, or to the
campaigns and mediums (UTM) that brought the leads (the models: sales/attribution.py).

The outcomes: each lead's first SQL (worth 1), each opportunity's amount as pipeline at
its opening, each won opportunity's amount as revenue at its close, in the report's
range and segments. Their touches, read for those leads only (so the work grows with the
outcomes, not with all leads): by sequence, step, segment or source, the messages sent
to them; by campaign or medium, the lead's intake (at its creation, when it came with
that UTM field) and each of its events that carried the field. Nurture's own sends carry
no campaign. Amounts are summed per currency, never across.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, String, any_, bindparam, func, select
from sqlalchemy.orm import Session

from models.db import (
    AMOUNT_SCALE,
    Enrollment,
    Lead,
    Message,
    Opportunity,
    Response,
    StageChange,
    as_utc,
)
from sales.attribution import NONE, Credit, Outcome, Touch, attribute
from services.reports import REACHED, ReportFilter

# The dimensions credited by UTM touches, and the field each is keyed by.
CAMPAIGN_DIMENSIONS = {"campaign": "utm_campaign", "medium": "utm_medium"}
DIMENSIONS = ("sequence", "step", "segment", "source", *CAMPAIGN_DIMENSIONS)
SQLS = "sqls"
IN_LIST = 1000  # lead IDs per query: bounded IN lists


def attribution(session: Session, flt: ReportFilter, model: str, by: str) -> dict[str, Any]:
    """Per value of `by`: SQLs, and pipeline and revenue per currency, with the leads."""
    if by not in DIMENSIONS:
        raise ValueError(f"no dimension {by!r} to attribute by: one of {', '.join(DIMENSIONS)}")
    outcomes = _outcomes(session, flt)  # measure -> [(lead_id, at, value)]
    last: dict[str, datetime] = {}  # each lead's latest outcome: later touches earn nothing
    for rows in outcomes.values():
        for lead_id, at, _ in rows:
            last[lead_id] = max(at, last.get(lead_id, at))
    touches = (_campaign_touches(session, set(last), by) if by in CAMPAIGN_DIMENSIONS
               else _touches(session, last))  # fmt: skip
    credited: dict[str, dict[str, Credit]] = {
        measure: attribute(model, (Outcome(lead, at, value, touches.get(lead, ()))
                                   for lead, at, value in rows), by)
        for measure, rows in outcomes.items()
    }  # fmt: skip
    return {"model": model, "by": by, "rows": _rows(credited)}


def _outcomes(session: Session, flt: ReportFilter) -> dict[str, list[tuple[str, datetime, float]]]:
    first_sql = (
        select(StageChange.lead_id, func.min(StageChange.created_at))
        .join(Lead, Lead.id == StageChange.lead_id)
        .where(StageChange.to_stage.in_(REACHED["sql"]))
        .group_by(StageChange.lead_id)
    )
    found: dict[str, list[tuple[str, datetime, float]]] = defaultdict(list)
    for lead_id, at in session.execute(flt.in_segments(first_sql)):
        if _in_range(flt, at):
            found[SQLS].append((lead_id, as_utc(at), 1.0))
    opportunities = (
        select(Opportunity.lead_id, Opportunity.amount_units, Opportunity.currency,
               Opportunity.opened_at, Opportunity.status, Opportunity.closed_at)
        .join(Lead, Lead.id == Opportunity.lead_id)
        .where(Opportunity.amount_units.is_not(None))
    )  # fmt: skip
    for lead_id, units, currency, opened, status, closed in session.execute(
        flt.in_segments(opportunities)
    ):
        amount = units / AMOUNT_SCALE
        if opened and _in_range(flt, opened):
            found[f"pipeline {currency}"].append((lead_id, as_utc(opened), amount))
        if status == "won" and _in_range(flt, closed):
            found[f"revenue {currency}"].append((lead_id, as_utc(closed), amount))
    return dict(found)


def _in_range(flt: ReportFilter, at: datetime | None) -> bool:
    if at is None:
        return False
    at = as_utc(at)
    return (flt.since is None or at >= as_utc(flt.since)) and (
        flt.until is None or at < as_utc(flt.until))  # fmt: skip


def _touches(session: Session, last: dict[str, datetime]) -> dict[str, tuple[Touch, ...]]:
    """The sends to these leads up to their `last` outcome, with the keys they are
    credited by. The leads' and enrollments' fields are read once each, not joined onto
    every send."""
    lead_ids = set(last)
    profiles = _by_id(session, select(Lead.id, Lead.segment, Lead.source), Lead.id, lead_ids)
    sequences = _by_id(session, select(Enrollment.id, Enrollment.sequence_id),
                       Enrollment.lead_id, lead_ids)  # fmt: skip
    found: dict[str, list[Touch]] = defaultdict(list)
    shared: dict[tuple, dict[str, str]] = {}  # one dict per distinct set of keys
    for among in _among(session, Message.lead_id, lead_ids):
        sends = select(Message.lead_id, Message.sent_at, Message.enrollment_id,
                       Message.step_id).where(among, Message.sent_at.is_not(None))  # fmt: skip
        for lead_id, sent_at, enrollment_id, step in session.execute(sends):
            if (at := as_utc(sent_at)) > last[lead_id]:
                continue
            segment, source = profiles[lead_id]
            values = (sequences.get(enrollment_id, (None,))[0], step, segment, source)
            keys = shared.get(values) or shared.setdefault(values, _keys(*values))
            found[lead_id].append(Touch(at, keys))
    return {lead_id: tuple(touches) for lead_id, touches in found.items()}


def _by_id(session: Session, query, column, lead_ids: set[str]) -> dict[str, tuple]:
    """The rows of `query` for these leads, by their first column."""
    found = {}
    for among in _among(session, column, lead_ids):
        found.update((row[0], tuple(row[1:])) for row in session.execute(query.where(among)))
    return found


def _campaign_touches(
    session: Session, lead_ids: set[str], by: str
) -> dict[str, tuple[Touch, ...]]:
    """The touches that carried `by`'s UTM field: the lead's intake (its first touch) and
    its events. A lead with none before an outcome is credited to (none)."""
    name = CAMPAIGN_DIMENSIONS[by]
    column, carried = getattr(Lead, name), Response.utm[name].as_string()
    found: dict[str, list[Touch]] = defaultdict(list)
    leads_in = _among(session, Lead.id, lead_ids)
    events_in = _among(session, Response.lead_id, lead_ids)
    for among_leads, among_events in zip(leads_in, events_in, strict=True):
        intakes = select(Lead.id, Lead.created_at, column).where(
            among_leads, column.is_not(None))  # fmt: skip
        events = select(Response.lead_id, Response.occurred_at, carried).where(
            among_events, carried.is_not(None))  # fmt: skip
        for lead_id, at, value in [*session.execute(intakes), *session.execute(events)]:
            found[lead_id].append(Touch(as_utc(at), {by: value}))
    return {lead_id: tuple(touches) for lead_id, touches in found.items()}


def _keys(sequence: str | None, step: str | None, segment: str | None, source: str | None):
    return {"sequence": sequence or NONE, "step": f"{sequence or NONE}/{step or ''}",
            "segment": segment or NONE, "source": source or NONE}  # fmt: skip


def _among(session: Session, column, lead_ids: set[str]) -> Iterable[ColumnElement[bool]]:
    """`column` among these leads, as conditions to query with in turn: on PostgreSQL one
    array parameter (one join over the table: lists of 1,000 IDs had it scanned once a
    list, 75 scans of 10,000,000 sends); elsewhere bounded IN lists."""
    ids = sorted(lead_ids)
    if session.get_bind().dialect.name == "postgresql":
        yield column == any_(bindparam("lead_ids", ids, type_=ARRAY(String)))
        return
    for start in range(0, len(ids), IN_LIST):
        yield column.in_(ids[start : start + IN_LIST])


def _rows(credited: dict[str, dict[str, Credit]]) -> list[dict[str, Any]]:
    keys = sorted({key for credits in credited.values() for key in credits})
    rows = []
    for key in keys:
        row: dict[str, Any] = {"key": key}
        leads: set[str] = set()
        for measure in sorted(credited):
            credit = credited[measure].get(key)
            row[measure] = round(credit.value, 4) if credit else 0.0
            leads |= credit.leads if credit else set()
        row[SQLS] = row.get(SQLS, 0.0)
        row["leads"] = sorted(leads)
        rows.append(row)
    return sorted(rows, key=lambda r: (-r[SQLS], r["key"]))


def explain(report: dict[str, Any], key: str) -> list[str]:
    """The leads behind `key`'s credit (raises KeyError naming the keys there are)."""
    for row in report["rows"]:
        if row["key"] == key:
            return row["leads"]
    known: Iterable[str] = (row["key"] for row in report["rows"])
    raise KeyError(f"no {report['by']} {key!r} in the report: {', '.join(known) or 'none'}")
