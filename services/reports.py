"""`nurture report`: the funnel, each sequence and step, and each segment, aggregated in SQL.

Everything is counted by the database (GROUP BY, COUNT DISTINCT, a window function for
attribution); Python only receives aggregated rows, plus the per-lead durations the
median times are taken from (SQLite has no percentile function).

Definitions (also in the README, "Reports"):

- A lead *reached* a funnel stage if it ever entered it or a later one (stage_changes):
  MQL = mql, pql, sql or accepted; SQL = sql or accepted. A jump from lead to SQL
  records the MQL it passed, and a lead sales turned down keeps the stages it reached.
- Past accepted, the CRM's outcomes: *opportunity* at the lead's first opportunity
  opened (its `opened_at`) or first stage change to opportunity, customer or
  closed_lost; *won* at its first won opportunity's close or first stage change to
  customer. A lead the CRM opened an opportunity for counts whether or not sales
  accepted it in Nurture first, so opportunity's rate from accepted may pass 100%.
- Median times: lead -> MQL from the lead's creation to its first MQL; MQL -> SQL from
  the first MQL to the first SQL; SQL -> accepted from the last SQL entry at or before
  the first acceptance (the cycle sales accepted) to that acceptance; accepted ->
  opportunity from the first acceptance to the first opportunity; opportunity -> won
  from the first won opportunity's opening to its close (its own sales cycle).
- Won revenue (per segment): the amounts of the won opportunities of the report's
  leads, summed per currency, never across.
- A send is a message with status `sent` (it has `sent_at`), in the date range by its
  `sent_at`; skipped, deferred, failed and unknown messages are not sends.
- A response counts for the message it answers: the one named by its `message_id`
  (provider webhooks, reply-to tokens, Twilio status callbacks); else, if its data names
  a `step` (and maybe a `sequence`), the lead's latest send of that step; else the lead's
  last send on the response's channel (email.* / sms.*) at or before it occurred (how an
  unsubscribe link or an SMS STOP, which name no message, are counted). A message's own
  `delivery_status` (delivered; bounce, dropped, undelivered, failed) counts as well.
- Per step, delivered ... bounced count leads (each lead once, however many opens or
  clicks); per sequence they count distinct leads over all its steps. `open_events` and
  `click_events` count every open and click.
- SQL attribution: for each lead that became an SQL, its first touch is the first
  message it was sent and its last touch the last message sent at or before its first SQL
  entry. A step is credited if that message is one of its sends in the date range.
- Goal conversion (per sequence): `enrolled` counts the leads whose enrollment in it
  started in the date range, `goals_met` those of them whose enrollment ended by meeting
  one of the sequence's goals, `goal_rate` the share.

On 100,000 leads (300,000 sends, 450,000 responses) a full report takes about 5 s on
SQLite and 9 s on PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, String, case, func, literal, or_, select, text, union_all
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql import ColumnElement

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
from models.definitions import GOAL_REASON_PREFIX, parse_duration
from services.json_output import iso

FUNNEL = ("lead", "mql", "sql", "accepted", "opportunity", "won")
# The stage_changes.to_stage values that mean a lead reached each funnel stage. An
# opportunity's opening counts as "opportunity" and its win as "customer" too.
REACHED = {
    "mql": ("mql", "pql", "sql", "accepted"),
    "sql": ("sql", "accepted"),
    "accepted": ("accepted",),
    "opportunity": ("opportunity", "customer", "closed_lost"),
    "won": ("customer",),
}
MILESTONES = FUNNEL[1:]  # the stages past `lead`, each timed by its first `<stage>_at`
# Response types about a message, and what each step column counts.
EVENT_COLUMNS: dict[str, tuple[str, ...]] = {
    "delivered": ("email.delivered", "sms.delivered"),
    "opened": ("email.open",),
    "clicked": ("email.click",),
    "replied": ("email.reply", "sms.reply"),
    "unsubscribed": ("email.unsubscribe", "email.spamreport", "sms.stop"),
    "bounced": ("email.bounce", "email.dropped", "sms.undelivered"),
}
MESSAGE_EVENTS = tuple(sorted({kind for kinds in EVENT_COLUMNS.values() for kind in kinds}))
# What a provider set on the message row itself (Message.delivery_status: the Twilio status
# callback, intake's delivery events) counts too, as a link row of these types.
DELIVERED_STATUSES = ("delivered",)
BOUNCED_STATUSES = ("bounce", "dropped", "undelivered", "failed")
STATUS_DELIVERED, STATUS_BOUNCED = "status.delivered", "status.bounced"
EXTRA_KINDS = {"delivered": (STATUS_DELIVERED,), "bounced": (STATUS_BOUNCED,)}
NO_SEGMENT = "(none)"  # leads without a segment; also what --segment takes for them
NO_SEQUENCE = "(none)"  # a message without an enrollment

FUNNEL_COLUMNS = ("stage", "reached", "rate_from_previous", "rate_from_leads",
                  "median_seconds_from_previous", "timed_leads")  # fmt: skip
SEND_COLUMNS = ("sent", "recipients", "delivered", "opened", "clicked", "replied",
                "unsubscribed", "bounced", "open_events", "click_events",
                "sql_first_touch", "sql_last_touch")  # fmt: skip
SEQUENCE_COLUMNS = ("sequence", *SEND_COLUMNS, "enrolled", "goals_met", "goal_rate")
STEP_COLUMNS = ("sequence", "step", "channel", *SEND_COLUMNS)
# overall_rate stays lead -> accepted; the stages past it were added after it.
SEGMENT_COLUMNS = ("segment", "leads", "mql", "sql", "accepted", "mql_rate", "sql_rate",
                   "accepted_rate", "overall_rate", "opportunity", "won", "opportunity_rate",
                   "won_rate", "won_revenue")  # fmt: skip
KEY_COLUMNS = ("stage", "segment", "sequence", "step", "channel")  # first in a CSV
SECTIONS = {
    "funnel": FUNNEL_COLUMNS,
    "sequences": SEQUENCE_COLUMNS,
    "steps": STEP_COLUMNS,
    "segments": SEGMENT_COLUMNS,
}


@dataclass(frozen=True)
class ReportFilter:
    """`since` inclusive, `until` exclusive (UTC): lead creation for the funnel and the
    segments, `sent_at` for sends. `segments`: only leads of these (none: all)."""

    since: datetime | None = None
    until: datetime | None = None
    segments: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": iso(self.since),
            "until": iso(self.until),
            "segments": list(self.segments),
        }

    def leads(self, query: Select) -> Select:
        """`query` (which has Lead in its FROM) narrowed to the leads of the report."""
        if self.since is not None:
            query = query.where(Lead.created_at >= _utc(self.since))
        if self.until is not None:
            query = query.where(Lead.created_at < _utc(self.until))
        return self._segment(query)

    def sends(self, query: Select) -> Select:
        """`query` (Message and Lead in its FROM) narrowed to the sends of the report."""
        query = query.where(_sent(Message))
        if self.since is not None:
            query = query.where(Message.sent_at >= _utc(self.since))
        if self.until is not None:
            query = query.where(Message.sent_at < _utc(self.until))
        return self._segment(query)

    def in_segments(self, query: Select) -> Select:
        """`query` (Lead in its FROM) narrowed to the report's segments alone."""
        return self._segment(query)

    def _segment(self, query: Select) -> Select:
        if not self.segments:
            return query
        named = [s for s in self.segments if s != NO_SEGMENT]
        conditions = [Lead.segment.in_(named)] if named else []
        if NO_SEGMENT in self.segments:
            conditions.append(Lead.segment.is_(None))
        return query.where(or_(*conditions))


def _sent(message):
    """A send: a message with `sent_at`, which is set with status `sent` and only then.

    Never `status = 'sent'`: a planner without statistics (a table not analyzed yet)
    takes that for a handful of rows, and PostgreSQL then loops over every send for
    every response while SQLite searches the status index, not the lead's messages."""
    return message.sent_at.is_not(None)


def _utc(moment: datetime) -> datetime:
    return as_utc(moment).astimezone(UTC)


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


# --- the funnel and the segments -----------------------------------------------------------------


def _reached_events():
    """(lead_id, stage, at) for each time a lead entered a stage the funnel counts: its
    stage changes, and its opportunities' openings and wins as the stages they move it
    to, at the CRM's times (the stage change comes when the news is delivered)."""
    sc, o = StageChange, Opportunity
    counted = sorted({stage for stages in REACHED.values() for stage in stages})
    changes = select(sc.lead_id.label("lead_id"), sc.to_stage.label("stage"),
                     sc.created_at.label("at")).where(sc.to_stage.in_(counted))  # fmt: skip
    known = o.lead_id.is_not(None)
    opened = select(o.lead_id, literal("opportunity", String), o.opened_at).where(
        known, o.opened_at.is_not(None)
    )
    won = select(o.lead_id, literal("customer", String), o.closed_at).where(
        known, o.status == "won", o.closed_at.is_not(None)
    )
    return union_all(changes, opened, won).subquery("reached")


def _milestones(flt: ReportFilter):
    """Per lead of the report: when it first reached each stage of MILESTONES (`mql_at`...)."""
    events = _reached_events()

    def first(stage: str):
        return func.min(case((events.c.stage.in_(REACHED[stage]), events.c.at))).label(
            f"{stage}_at"
        )

    query = (
        select(events.c.lead_id.label("lead_id"), *(first(stage) for stage in MILESTONES))
        .join(Lead, Lead.id == events.c.lead_id)
        .group_by(events.c.lead_id)
    )
    return flt.leads(query).subquery("milestones")


def lead_milestones(flt: ReportFilter) -> Select:
    """Per lead of the report: when it first reached each stage past `lead` (`lead_id`,
    `mql_at` ... `won_at`), for callers that aggregate over it in SQL."""
    return _milestones(flt).element


def won_revenue(session: Session, flt: ReportFilter) -> dict[str | None, dict[str, Decimal]]:
    """Per segment (None: none), the amounts of the report's leads' won opportunities,
    summed per currency in SQL (exact: amount_units are integers)."""
    o = Opportunity
    query = (
        select(Lead.segment, o.currency, func.sum(o.amount_units))
        .join(Lead, Lead.id == o.lead_id)
        .where(o.status == "won", o.amount_units.is_not(None))
        .group_by(Lead.segment, o.currency)
        .order_by(o.currency)
    )
    found: dict[str | None, dict[str, Decimal]] = defaultdict(dict)
    for segment, currency, units in session.execute(flt.leads(query)):
        found[segment][currency] = Decimal(int(units)) / AMOUNT_SCALE
    return found


def segment_counts(session: Session, flt: ReportFilter) -> list[dict[str, Any]]:
    """Leads created in the range per segment, how many reached each stage, and their won
    revenue per currency."""
    m = _milestones(flt)
    query = (
        select(Lead.segment, func.count(Lead.id),
               *(func.count(m.c[f"{stage}_at"]) for stage in MILESTONES))
        .outerjoin(m, m.c.lead_id == Lead.id)
        .group_by(Lead.segment)
    )  # fmt: skip
    revenue = won_revenue(session, flt)
    rows = []
    for segment, leads, *counts in session.execute(flt.leads(query)):
        row = _segment_row(segment or NO_SEGMENT, leads, dict(zip(MILESTONES, counts, strict=True)))
        rows.append(row | {"won_revenue": revenue.get(segment, {})})
    return sorted(rows, key=lambda row: (-row["leads"], row["segment"]))


def _segment_row(segment: str, leads: int, n: dict[str, int]) -> dict[str, Any]:
    return {
        "segment": segment, "leads": leads, "mql": n["mql"], "sql": n["sql"],
        "accepted": n["accepted"], "mql_rate": _rate(n["mql"], leads),
        "sql_rate": _rate(n["sql"], n["mql"]), "accepted_rate": _rate(n["accepted"], n["sql"]),
        "overall_rate": _rate(n["accepted"], leads), "opportunity": n["opportunity"],
        "won": n["won"], "opportunity_rate": _rate(n["opportunity"], n["accepted"]),
        "won_rate": _rate(n["won"], n["opportunity"]),
    }  # fmt: skip


def _seconds(pairs: Iterable[tuple[datetime | None, datetime | None]]) -> list[float]:
    out = []
    for start, end in pairs:
        if start is not None and end is not None:
            out.append(max((as_utc(end) - as_utc(start)).total_seconds(), 0.0))
    return out


# Each funnel step timed between two of a lead's milestones (`created_at` for the lead).
TIMED_BETWEEN = {"mql": ("created_at", "mql_at"), "sql": ("mql_at", "sql_at"),
                 "opportunity": ("accepted_at", "opportunity_at")}  # fmt: skip


def stage_durations(session: Session, flt: ReportFilter) -> dict[str, list[float]]:
    """Seconds each lead of the report took between consecutive funnel stages."""
    m = _milestones(flt)
    # One query for the steps timed between milestones: each use of `m` computes it anew.
    reached = session.execute(
        select(Lead.created_at, *(m.c[f"{stage}_at"] for stage in MILESTONES))
        .join(m, m.c.lead_id == Lead.id)
    ).all()  # fmt: skip
    durations = {
        stage: _seconds((getattr(row, start), getattr(row, end)) for row in reached)
        for stage, (start, end) in TIMED_BETWEEN.items()
    }
    # The SQL entry sales accepted: the last one at or before the first acceptance.
    sc = StageChange
    accepted_sql = (
        select(sc.lead_id.label("lead_id"), func.max(sc.created_at).label("sql_at"))
        .join(m, m.c.lead_id == sc.lead_id)
        .where(sc.to_stage == "sql", m.c.accepted_at.is_not(None),
               sc.created_at <= m.c.accepted_at)
        .group_by(sc.lead_id)
        .subquery("accepted_sql")
    )  # fmt: skip
    to_accepted = session.execute(
        select(accepted_sql.c.sql_at, m.c.accepted_at).join(
            accepted_sql, accepted_sql.c.lead_id == m.c.lead_id
        )
    )
    return durations | {"accepted": _seconds(to_accepted),
                        "won": _seconds(_won_cycles(session, flt))}  # fmt: skip


def _won_cycles(session: Session, flt: ReportFilter) -> list[tuple[datetime, datetime]]:
    """(opened_at, closed_at) of each report lead's first won opportunity: the sales
    cycle that won it, not the time since an earlier lost one opened."""
    o = Opportunity
    query = (
        select(o.lead_id, o.opened_at, o.closed_at)
        .join(Lead, Lead.id == o.lead_id)
        .where(o.status == "won", o.closed_at.is_not(None))
        .order_by(o.lead_id, o.closed_at)
    )
    first: dict[str, tuple[datetime, datetime]] = {}
    for lead_id, opened, closed in session.execute(flt.leads(query)):
        first.setdefault(lead_id, (opened, closed))
    return list(first.values())


def funnel(session: Session, flt: ReportFilter, by_segment: list[dict[str, Any]] | None = None):
    """lead -> MQL -> SQL -> accepted -> opportunity -> won: how many reached each stage,
    the conversion from the stage before and from all leads, and the median time from
    the stage before. `overall_rate` is lead -> accepted (as before the CRM's stages)."""
    by_segment = segment_counts(session, flt) if by_segment is None else by_segment
    columns = {"lead": "leads"} | {stage: stage for stage in MILESTONES}
    reached = {stage: sum(row[name] for row in by_segment) for stage, name in columns.items()}
    durations = stage_durations(session, flt)
    stages, previous = [], None
    for stage in FUNNEL:
        seconds = durations.get(stage, [])
        stages.append({
            "stage": stage,
            "reached": reached[stage],
            "rate_from_previous": _rate(reached[stage], reached[previous]) if previous else None,
            "rate_from_leads": _rate(reached[stage], reached["lead"]),
            "median_seconds_from_previous": (round(statistics.median(seconds), 3)
                                             if seconds else None),
            "timed_leads": len(seconds) if previous else None,
        })  # fmt: skip
        previous = stage
    return {"stages": stages, "overall_rate": _rate(reached["accepted"], reached["lead"])}


# --- sequences and steps -------------------------------------------------------------------------


def response_links(lead_id: str | None = None, with_statuses: bool = False):
    """(message_id, response_id, type) for each response about a message we sent: by its
    message_id, else by the step its data names, else the lead's last send on its channel
    before it occurred. Responses no send matches get no row. `with_statuses`: also a row
    (no response_id, type `status.delivered` or `status.bounced`) for each message whose
    `delivery_status` the provider set to one of those."""
    r = Response
    message_type = r.type.in_(MESSAGE_EVENTS)
    mine = [r.lead_id == lead_id] if lead_id is not None else []
    direct = select(
        r.message_id.label("message_id"), r.id.label("response_id"), r.type.label("type")
    ).where(r.message_id.is_not(None), message_type, *mine)

    step, sequence = r.data["step"].as_string(), r.data["sequence"].as_string()
    m, e = aliased(Message), aliased(Enrollment)
    of_step = (
        select(m.id).outerjoin(e, e.id == m.enrollment_id)
        .where(m.lead_id == r.lead_id, m.step_id == step, _sent(m),
               or_(sequence.is_(None), e.sequence_id == sequence))
        .order_by(m.sent_at.desc(), m.id.desc()).limit(1)
        .correlate(r).scalar_subquery()
    )  # fmt: skip
    unlinked = [r.message_id.is_(None), r.lead_id.is_not(None), message_type, *mine]
    by_step = select(of_step.label("message_id"), r.id, r.type).where(*unlinked, step.is_not(None))
    channel = case((r.type.like("sms.%"), literal("sms")), else_=literal("email"))
    m2 = aliased(Message)
    last_send = (
        select(m2.id)
        .where(m2.lead_id == r.lead_id, m2.channel == channel, m2.sent_at <= r.occurred_at)
        .order_by(m2.sent_at.desc(), m2.id.desc()).limit(1)
        .correlate(r).scalar_subquery()
    )  # fmt: skip
    by_channel = select(last_send.label("message_id"), r.id, r.type).where(
        *unlinked, step.is_(None)
    )
    parts = [direct, by_step, by_channel]
    if with_statuses:
        m3 = aliased(Message)
        kind = case((m3.delivery_status.in_(DELIVERED_STATUSES), literal(STATUS_DELIVERED)),
                    else_=literal(STATUS_BOUNCED))  # fmt: skip
        parts.append(
            select(m3.id, literal(None, String), kind).where(
                m3.delivery_status.in_(DELIVERED_STATUSES + BOUNCED_STATUSES),
                *([m3.lead_id == lead_id] if lead_id is not None else []),
            )
        )
    return union_all(*parts).subquery("links")


def sql_touches():
    """Each SQL lead's sends up to its first SQL entry (`message_id`, `first_rank`,
    `last_rank`), as a subquery for callers that aggregate in SQL (the console's step
    figures)."""
    return _touches()


def _touches():
    """Each SQL lead's sends up to its first SQL entry, ranked from first and from last."""
    sc = StageChange
    sql = (
        select(sc.lead_id.label("lead_id"), func.min(sc.created_at).label("sql_at"))
        .where(sc.to_stage.in_(REACHED["sql"]))
        .group_by(sc.lead_id)
        .subquery("first_sql")
    )
    m = aliased(Message)
    return (
        select(
            m.id.label("message_id"),
            func.row_number()
            .over(partition_by=m.lead_id, order_by=(m.sent_at.asc(), m.id.asc()))
            .label("first_rank"),
            func.row_number()
            .over(partition_by=m.lead_id, order_by=(m.sent_at.desc(), m.id.desc()))
            .label("last_rank"),
        )
        .join(sql, sql.c.lead_id == m.lead_id)
        .where(_sent(m), m.sent_at <= sql.c.sql_at)
        .subquery("touches")
    )


def send_counts(session: Session, flt: ReportFilter) -> tuple[list[dict], list[dict]]:
    """(per sequence, per step) counts of the sends in the range and their responses.

    Three grouped queries, each driven by a table or derived table joined to messages by
    its primary key (no join of two large derived tables, which a planner without
    statistics can turn into a nested loop): the sends, the responses matched to them,
    the SQL touches. Their rows are merged by (sequence, step)."""
    sequence = func.coalesce(Enrollment.sequence_id, literal(NO_SEQUENCE)).label("sequence")
    step = func.coalesce(Message.step_id, literal("")).label("step")

    def leads_with(condition):
        return func.count(func.distinct(case((condition, Message.lead_id))))

    def grouped(query: Select, per_step: bool) -> dict[tuple, Any]:
        keys = (sequence, step) if per_step else (sequence,)
        query = flt.sends(
            query.join(Lead, Lead.id == Message.lead_id)
            .outerjoin(Enrollment, Enrollment.id == Message.enrollment_id)
            .add_columns(*keys).group_by(*keys)
        )  # fmt: skip
        return {tuple(getattr(r, k.name) for k in keys): r for r in session.execute(query)}

    sends = select(
        func.count(Message.id).label("sent"),
        func.count(func.distinct(Message.lead_id)).label("recipients"),
        func.max(Message.channel).label("channel"),
        func.min(Message.sent_at).label("first_sent"),
    ).select_from(Message)
    links = response_links(with_statuses=True)
    kinds = {name: kinds + EXTRA_KINDS.get(name, ()) for name, kinds in EVENT_COLUMNS.items()}
    responses = (
        select(
            *[leads_with(links.c.type.in_(types)).label(name) for name, types in kinds.items()],
            func.sum(case((links.c.type == "email.open", 1), else_=0)).label("open_events"),
            func.sum(case((links.c.type == "email.click", 1), else_=0)).label("click_events"),
        )
        .select_from(links)
        .join(Message, Message.id == links.c.message_id)
    )  # fmt: skip
    touches = _touches()
    attributed = (
        select(leads_with(touches.c.first_rank == 1).label("sql_first_touch"),
               leads_with(touches.c.last_rank == 1).label("sql_last_touch"))
        .select_from(touches)
        .join(Message, Message.id == touches.c.message_id)
        .where(or_(touches.c.first_rank == 1, touches.c.last_rank == 1))
    )  # fmt: skip
    counted = (*EVENT_COLUMNS, "open_events", "click_events")
    credited = ("sql_first_touch", "sql_last_touch")

    def rows(per_step: bool) -> list[dict[str, Any]]:
        answered, touched = grouped(responses, per_step), grouped(attributed, per_step)
        out = []
        for key, row in grouped(sends, per_step).items():
            got, credit = answered.get(key), touched.get(key)
            out.append(
                {"sequence": row.sequence}
                | ({"step": row.step, "channel": row.channel} if per_step else {})
                | {"sent": row.sent, "recipients": row.recipients}
                | {name: int(getattr(got, name) or 0) if got else 0 for name in counted}
                | {name: int(getattr(credit, name)) if credit else 0 for name in credited}
                | {"_first": row.first_sent}
            )  # fmt: skip
        return out

    per_sequence, per_step = rows(per_step=False), rows(per_step=True)
    goals = goal_counts(session, flt)
    for row in per_sequence:
        enrolled, met = goals.get(row["sequence"], (0, 0))
        row |= {"enrolled": enrolled, "goals_met": met, "goal_rate": _rate(met, enrolled)}
    # Sequences by name; steps in the order they were first sent (the sequence's order).
    per_sequence.sort(key=lambda row: row["sequence"])
    per_step.sort(key=lambda row: (row["sequence"], as_utc(row["_first"]), row["step"]))
    for row in per_sequence + per_step:
        del row["_first"]
    return per_sequence, per_step


def goal_counts(session: Session, flt: ReportFilter) -> dict[str, tuple[int, int]]:
    """Per sequence: (leads enrolled in the range, those of them whose enrollment ended by a
    goal met), by the enrollment's start."""
    return {sequence: (enrolled, met) for sequence, enrolled, met
            in session.execute(_goal_query(flt, goal_met()))}  # fmt: skip


def goal_met(goal_id: str | None = None) -> ColumnElement[bool]:
    """An enrollment ended by a goal met (Goal.exit_reason): any goal, or `goal_id`."""
    if goal_id is None:
        return Enrollment.exit_reason.like(f"{GOAL_REASON_PREFIX}% met: %")
    # autoescape: an id's `_` is no LIKE wildcard.
    return Enrollment.exit_reason.startswith(f"{GOAL_REASON_PREFIX}{goal_id} met: ",
                                             autoescape=True)  # fmt: skip


def _goal_query(flt: ReportFilter, *met: ColumnElement[bool]) -> Select:
    """Per sequence: its leads enrolled in the range, then for each of `met` the leads of
    theirs it holds for, each lead counted once; by the enrollment's start."""
    query = (
        select(Enrollment.sequence_id, func.count(func.distinct(Enrollment.lead_id)),
               *(func.count(func.distinct(case((m, Enrollment.lead_id)))) for m in met))
        .join(Lead, Lead.id == Enrollment.lead_id)
        .group_by(Enrollment.sequence_id)
    )  # fmt: skip
    if flt.since is not None:
        query = query.where(Enrollment.started_at >= _utc(flt.since))
    if flt.until is not None:
        query = query.where(Enrollment.started_at < _utc(flt.until))
    return flt.in_segments(query)


@dataclass(frozen=True)
class GoalFigures:
    """A sequence's goal conversion, as `goal_counts` counts it: its leads enrolled, those
    a goal ended (any goal: the report's goals_met) and those each goal ended, by id."""

    enrolled: int = 0
    met: int = 0
    by_goal: dict[str, int] = field(default_factory=dict)

    def rate(self, met: int) -> float | None:
        return _rate(met, self.enrolled)


def sequence_goal_figures(
    session: Session, sequence_id: str, goal_ids: Iterable[str], flt: ReportFilter | None = None
) -> GoalFigures:
    """The goal conversion of one sequence, of each of its goals (`goal_ids`) and of any."""
    ids = list(goal_ids)
    query = _goal_query(flt or ReportFilter(), goal_met(), *(goal_met(g) for g in ids))
    row = session.execute(query.where(Enrollment.sequence_id == sequence_id)).first()
    if row is None:
        return GoalFigures(by_goal=dict.fromkeys(ids, 0))
    _sequence, enrolled, met, *each = row
    return GoalFigures(enrolled, met, dict(zip(ids, each, strict=True)))


# --- statistics ------------------------------------------------------------------------------

REPORT_TABLES = ("leads", "stage_changes", "enrollments", "messages", "responses")


def analyze_never_analyzed(engine) -> tuple[list[str], str | None]:
    """PostgreSQL only: ANALYZE the report's tables that have never been analyzed.

    Autovacuum analyzes tables as they grow; where it is off (or right after a bulk
    load) the planner has no statistics, takes a big table for a few rows and may join
    a filtered table to the response matching in a nested loop that runs for hours.
    ANALYZE only samples the table and writes statistics. Returns (tables analyzed,
    the error if it was not allowed)."""
    if engine.dialect.name != "postgresql":
        return [], None
    query = text(
        "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r' AND c.reltuples < 0"
        " AND c.relname = ANY(:names) AND pg_table_is_visible(c.oid) ORDER BY c.relname"
    )
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            names = list(connection.execute(query, {"names": list(REPORT_TABLES)}).scalars())
            if names:
                connection.execute(text("ANALYZE " + ", ".join(f'"{n}"' for n in names)))
    except Exception as exc:  # not the tables' owner: report anyway, maybe slowly
        return [], f"{type(exc).__name__}: {exc}".splitlines()[0]
    return names, None


# --- the whole report ----------------------------------------------------------------------------


def build_report(
    session: Session, flt: ReportFilter, sections: Iterable[str] = tuple(SECTIONS)
) -> dict[str, Any]:
    """The report's `sections` (all by default): only what they need is queried."""
    sections = set(sections)
    out: dict[str, Any] = {"filter": flt.to_dict()}
    if sections & {"funnel", "segments"}:
        segments = segment_counts(session, flt)
        if "funnel" in sections:
            out["funnel"] = funnel(session, flt, segments)
        if "segments" in sections:
            out["segments"] = segments
    if sections & {"sequences", "steps"}:
        sequences, steps = send_counts(session, flt)
        if "sequences" in sections:
            out["sequences"] = sequences
        if "steps" in sections:
            out["steps"] = steps
    return {k: out[k] for k in ("filter", *SECTIONS) if k in out}


def section_rows(report: dict[str, Any], section: str) -> list[dict[str, Any]]:
    if section == "funnel":
        return report["funnel"]["stages"]
    return report[section]


def to_csv(report: dict[str, Any], sections: Iterable[str] = tuple(SECTIONS)) -> str:
    """One CSV: a `section` column, then the columns of every section asked for (empty
    where a column is not one of the row's section)."""
    sections = list(sections)
    header = ["section"]
    for name in sections:
        header += [c for c in SECTIONS[name] if c in KEY_COLUMNS and c not in header]
    for name in sections:
        header += [c for c in SECTIONS[name] if c not in header]
    out = io.StringIO()
    writer = csv.DictWriter(out, header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for name in sections:
        for row in section_rows(report, name):
            writer.writerow({"section": name} | {k: _cell(v) for k, v in row.items()})
    return out.getvalue()


def _cell(value: Any) -> Any:
    """A CSV cell: amounts per currency as `USD 24000.5; EUR 900` (one column, whatever
    the currencies), nothing as empty."""
    if isinstance(value, dict):
        return "; ".join(f"{currency} {amount}" for currency, amount in value.items())
    return "" if value is None else value


def parse_moment(text: str, now: datetime, end: bool = False) -> datetime:
    """`2024-05-01`, `2024-05-01T09:30` (UTC unless it has an offset), or a duration ago
    (`30d`, `12h`, `2w`). A bare date as an end (`--until`) includes that whole day."""
    text = text.strip()
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not a date: use 2024-05-01, 2024-05-01T09:30 or a time ago "
            "such as 30d, 12h or 2w"
        ) from None
    bare_date = len(text) == 10
    moment = _utc(moment)
    if end and bare_date:
        moment += timedelta(days=1)
    return moment
