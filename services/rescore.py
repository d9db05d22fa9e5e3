"""Rescore every lead with the current scoring models: `nurture rescore`, after a model change.

Leads are walked in batches by id (keyset, so a batch costs the same at the end as at
the start). Each batch reads plain columns, not ORM objects: the leads' profiles and
all their delivered responses (one range query on `responses.lead_id`). Every lead is
scored with its segment's model at one moment, and its stage decided from the stage
stored on it. Only leads whose score (to 0.1) or stage moved are written, with the same
rows the scoring activity writes (the lead's figures, a score change with the card, a
stage change per stage entered or left), by bulk statements in one transaction per
batch: a crash keeps the batches already done, and running again skips the leads they
fixed.

Two kinds of lead are not written here:
- a lead the new model makes an SQL goes to `on_sql`: its workflow must score it and hand
  it to sales (stop nurturing, pick a rep), which a bulk UPDATE cannot do;
- a lead past SQL (accepted, won...) belongs to sales and is left as it is.

The workflows keep running while this runs. A lead's row is re-read under a write lock
just before it is written and left alone if its workflow scored it in the meantime.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, cast, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from models.db import Lead, Response, ScoreChange, StageChange, as_utc
from models.definition_set import Definitions
from models.scoring_model import STAGE_LADDER, ScoringModel
from models.workflow_io import RescoreRequest
from scoring.engine import ResponseFact, decide_stage, score
from scoring.records import describe, stage_change_rows
from services import lead_client

# (lead ids, event id, model fingerprint): ask these leads' workflows to score them again.
OnSql = Callable[[list[str], str, str], None]
Progress = Callable[[int, int], None]

_PROFILE_COLUMNS = [getattr(Lead, name) for name in Lead.PROFILE_FIELDS]
_LEAD_COLUMNS = [
    *_PROFILE_COLUMNS, Lead.id, Lead.segment, Lead.stage, Lead.score, Lead.scored_at,
    Lead.sql_hold_until,
]  # fmt: skip
_MAX_PROBLEMS = 20  # distinct rule problems kept in the report
_FIGURES = (
    "score", "fit_score", "engagement_score", "grade", "scoring_model", "scored_at", "stage",
)  # fmt: skip
# Core executemany: the ORM's bulk UPDATE by primary key costs twice as much per row.
_UPDATE_LEAD = (
    update(Lead)
    .where(Lead.id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}") for name in _FIGURES})
)


@dataclass
class RescoreReport:
    run_id: str
    at: datetime  # the moment every card is for
    dry_run: bool
    total: int = 0  # leads when the run started
    scored: int = 0
    sales_owned: int = 0  # past SQL: not scored, not touched
    changed: int = 0  # score (to 0.1) or stage moved: written (or would be, in a dry run)
    unchanged: int = 0
    to_sql: int = 0  # newly SQL: passed to `on_sql` for their workflows, not written here
    concurrent: int = 0  # scored by their workflow during the run: left to it
    transitions: Counter[str] = field(default_factory=Counter)  # "lead->mql": leads
    problems: Counter[str] = field(default_factory=Counter)  # rules that could not be evaluated
    models: dict[str, str] = field(default_factory=dict)  # name -> fingerprint used
    seconds: float = 0.0

    @property
    def event_id(self) -> str:
        return f"rescore:{self.run_id}"

    @property
    def leads_per_second(self) -> float:
        return (self.scored + self.sales_owned) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "event_id": self.event_id, "at": self.at.isoformat(),
            "dry_run": self.dry_run, "leads": self.total, "scored": self.scored,
            "sales_owned": self.sales_owned, "changed": self.changed,
            "unchanged": self.unchanged, "to_sql": self.to_sql,
            "concurrent": self.concurrent, "transitions": dict(self.transitions),
            "problems": dict(self.problems), "models": self.models,
            "seconds": round(self.seconds, 3),
            "leads_per_second": round(self.leads_per_second, 1),
        }  # fmt: skip


@dataclass
class _Batch:
    """What one batch will write: lead updates, score and stage changes, and the
    (stage, score, scored_at) each lead had when it was read."""

    leads: list[dict[str, Any]] = field(default_factory=list)
    score_changes: list[dict[str, Any]] = field(default_factory=list)
    stage_changes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    transitions: dict[str, str] = field(default_factory=dict)  # lead id -> transition
    read: dict[str, tuple] = field(default_factory=dict)
    sql: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def rescore_all(
    sessions: sessionmaker,
    definitions: Definitions,
    now: datetime,
    *,
    batch_size: int = 2000,
    dry_run: bool = False,
    progress: Progress | None = None,
    on_sql: OnSql | None = None,
) -> RescoreReport:
    """Score every lead at `now` and store what moved; see the module's docstring.

    `progress(done, total)` is called after each batch; `on_sql(lead_ids, event_id,
    model_fingerprint)` once per batch and model, after the batch is committed, with the
    leads that newly qualify as SQL. A dry run writes nothing and calls no `on_sql`.
    """
    started = time.perf_counter()
    report = RescoreReport(run_id=uuid.uuid4().hex[:12], at=now, dry_run=dry_run)
    model_of: dict[str | None, tuple[ScoringModel, str]] = {}  # segment -> model, fingerprint
    with sessions() as session:
        report.total = session.scalar(select(func.count()).select_from(Lead)) or 0
    done, last_id = 0, None
    while True:
        with sessions() as session:
            leads = session.connection().execute(_lead_query(last_id, batch_size)).all()
            if not leads:
                break
            responses = _responses(session, last_id, leads[-1].id)
        batch = _score_batch(leads, responses, definitions, model_of, now, report)
        if batch.leads and not dry_run:
            with sessions.begin() as session:
                _write(session, batch, report)
        report.transitions.update(batch.transitions.values())
        if on_sql is not None and not dry_run:
            for fingerprint, lead_ids in batch.sql.items():
                on_sql(lead_ids, report.event_id, fingerprint)
        last_id = leads[-1].id
        done += len(leads)
        if progress is not None:
            progress(done, max(report.total, done))
    report.models = {model.name: fingerprint for model, fingerprint in model_of.values()}
    report.seconds = time.perf_counter() - started
    return report


def _lead_query(after: str | None, limit: int):
    query = select(*_LEAD_COLUMNS).order_by(Lead.id).limit(limit)
    return query if after is None else query.where(Lead.id > after)


def _responses(session: Session, after: str | None, upto: str) -> dict[str, list[ResponseFact]]:
    """The delivered responses of every lead with an id in (after, upto]: exactly the
    batch's leads, found by a range on the `lead_id` index rather than a long IN list.

    `data` is read as text and parsed once per distinct value: most responses carry the
    same few payloads ({}, a page URL...), and parsing was a fifth of the run."""
    query = select(
        Response.lead_id, Response.type, Response.occurred_at, cast(Response.data, Text)
    ).where(Response.lead_id <= upto, Response.delivered_at.is_not(None))
    if after is not None:
        query = query.where(Response.lead_id > after)
    facts: dict[str, list[ResponseFact]] = defaultdict(list)
    parsed: dict[str | None, dict[str, Any]] = {None: {}, "null": {}, "{}": {}}
    for lead_id, kind, at, text in session.connection().execute(query).all():
        data = parsed.get(text)
        if data is None:
            data = parsed[text] = json.loads(text) or {}
        facts[lead_id].append(ResponseFact(kind, as_utc(at), data))
    return facts


def _score_batch(
    leads: list,
    responses: dict[str, list[ResponseFact]],
    definitions: Definitions,
    model_of: dict[str | None, tuple[ScoringModel, str]],
    now: datetime,
    report: RescoreReport,
) -> _Batch:
    batch = _Batch()
    event_id = report.event_id
    for row in leads:
        profile = row._asdict()
        del profile["scored_at"], profile["sql_hold_until"]  # as Lead.profile(), no more
        lead_id, stage, old_score = row.id, row.stage, row.score or 0.0
        if stage not in STAGE_LADDER:
            report.sales_owned += 1
            continue
        known = model_of.get(row.segment)
        if known is None:
            model = definitions.scoring_model(row.segment)
            known = model_of[row.segment] = (model, model.fingerprint)  # a hash: once
        model, fingerprint = known
        card = score(model, profile, responses.get(lead_id, ()), now)
        # Turned down by sales, in its cool-down: may reach MQL or PQL, not SQL.
        held = row.sql_hold_until is not None and as_utc(row.sql_hold_until) > now
        decision = decide_stage(model, stage, card, profile, hold_sql=held)
        report.scored += 1
        for problem in card.problems:
            if problem in report.problems or len(report.problems) < _MAX_PROBLEMS:
                report.problems[problem] += 1
        if "sql" in decision.entered:
            # Handed off by its workflow, which scores it again and stores it all.
            batch.sql[fingerprint].append(lead_id)
            batch.transitions[lead_id] = f"{stage}->sql (to its workflow)"
            report.to_sql += 1
            continue
        # Compared as stored (to 0.01, then to 0.1): rounding the raw total straight to
        # 0.1 would call 12.2501 (stored as 12.25, read back as 12.2) a move every run.
        if round(round(card.total, 2), 1) == round(old_score, 1) and not decision.changed:
            report.unchanged += 1
            continue
        report.changed += 1
        if decision.changed:
            recycled = " (recycled)" if decision.recycled else ""
            batch.transitions[lead_id] = f"{decision.old}->{decision.new}{recycled}"
        batch.read[lead_id] = (stage, row.score, row.scored_at)
        batch.leads.append({
            "b_id": lead_id, "b_score": round(card.total, 2), "b_fit_score": round(card.fit, 2),
            "b_engagement_score": round(card.engagement, 2), "b_grade": card.grade,
            "b_scoring_model": model.name, "b_scored_at": card.at, "b_stage": decision.new,
        })  # fmt: skip
        batch.score_changes.append({
            "lead_id": lead_id, "event_id": event_id, "cause": "rescore",
            "old_score": round(old_score, 2), "new_score": round(card.total, 2),
            "reason": describe(card, decision, "rescore"), "model": fingerprint,
            "breakdown": card.to_dict(), "scored_at": card.at,
        })  # fmt: skip
        if decision.changed:
            batch.stage_changes[lead_id] = stage_change_rows(
                lead_id, decision, event_id, card.total
            )
    return batch


def _write(session: Session, batch: _Batch, report: RescoreReport) -> None:
    """Store the batch; a lead whose row moved since it was read (its workflow scored
    it meanwhile) is dropped from the batch: its workflow's card is the newer one."""
    _lock_for_writing(session)
    ids = [row["b_id"] for row in batch.leads]
    now_stored = {
        lead_id: (stage, score_, scored_at)
        for lead_id, stage, score_, scored_at in session.connection().execute(
            select(Lead.id, Lead.stage, Lead.score, Lead.scored_at)
            .where(Lead.id.in_(ids))
            .with_for_update()
        )
    }
    moved = {lead_id for lead_id in ids if now_stored.get(lead_id) != batch.read[lead_id]}
    if moved:
        report.concurrent += len(moved)
        report.changed -= len(moved)
        for lead_id in moved:
            batch.transitions.pop(lead_id, None)
        batch.leads = [row for row in batch.leads if row["b_id"] not in moved]
        batch.score_changes = [row for row in batch.score_changes if row["lead_id"] not in moved]
    stage_changes = [
        row for lead_id, rows in batch.stage_changes.items() if lead_id not in moved for row in rows
    ]
    connection = session.connection()
    if batch.leads:
        connection.execute(_UPDATE_LEAD, batch.leads)
        connection.execute(insert(ScoreChange), batch.score_changes)
    if stage_changes:
        connection.execute(insert(StageChange), stage_changes)


def _lock_for_writing(session: Session) -> None:
    """SQLite: take the write lock now, so the re-read and the writes see the same rows
    (PostgreSQL locks the rows themselves, with FOR UPDATE)."""
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


SIGNALS_IN_FLIGHT = 50  # `rescore` signals sent at once


class Handed:
    """What became of the `rescore` signals to SQL-crossing leads' workflows."""

    def __init__(self) -> None:
        self.signalled = 0
        self.not_running: list[str] = []  # no open workflow: not handed off, not written
        self.failed: dict[str, str] = {}  # lead id -> error

    def to_dict(self) -> dict:
        return {"signalled": self.signalled, "not_running": self.not_running,
                "failed": self.failed}  # fmt: skip


async def signal_sql_crossers(client: Client, run) -> tuple[RescoreReport, Handed]:
    """Run `run(on_sql)` in a thread while this loop signals each batch's SQL-crossers
    (committed by then) to their workflows, at most SIGNALS_IN_FLIGHT at once."""
    loop = asyncio.get_running_loop()
    in_flight = asyncio.Semaphore(SIGNALS_IN_FLIGHT)
    handed = Handed()
    sent = []

    async def signal(lead_id: str, request: RescoreRequest) -> None:
        async with in_flight:
            try:
                await lead_client.rescore(client, lead_id, request)
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    handed.not_running.append(lead_id)
                else:
                    handed.failed[lead_id] = f"{exc.status.name}: {exc.message}"
            except Exception as exc:
                handed.failed[lead_id] = f"{type(exc).__name__}: {exc}"
            else:
                handed.signalled += 1

    async def signal_all(lead_ids: list[str], event_id: str, fingerprint: str) -> None:
        request = RescoreRequest(event_id=event_id, model_fingerprint=fingerprint)
        await asyncio.gather(*(signal(lead_id, request) for lead_id in lead_ids))

    def on_sql(lead_ids: list[str], event_id: str, fingerprint: str) -> None:
        # Called in the scoring thread after each batch's commit: signal while it goes on.
        sent.append(asyncio.run_coroutine_threadsafe(signal_all(lead_ids, event_id, fingerprint),
                                                     loop))  # fmt: skip

    try:
        report = await asyncio.to_thread(run, on_sql)
    finally:  # batches already committed still get their handoffs
        await asyncio.gather(*(asyncio.wrap_future(future) for future in sent))
    return report, handed
