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

The workflows keep running while this runs. A lead's row is written only if it is still
as it was read (stage, score, scored_at), checked under the row's write lock: if its
workflow scored it in the meantime, its workflow's card is the newer one and stays.

On PostgreSQL the leads are written with one UPDATE ... FROM unnest(arrays) per batch and
the score and stage changes with COPY; `workers` > 1 splits the leads into as many
disjoint id ranges, each walked by its own process (its own connection, a transaction
per batch), while this process calls `progress` and `on_sql` as their batches commit.
Memory is bounded by the batch: nothing is kept across batches but the report's counts.

With a predictive model active (loaded once per run, before the first batch) every lead
scored gets `predicted` before its stage is decided, a batch at once (features per lead,
one matrix product per batch), and every score change written records the model's
fingerprint. Its reasons are worked out only for the leads whose stage moves (they cost
half a millisecond a lead); `nurture score` shows any lead's.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Text, bindparam, cast, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from models import db
from models.db import Lead, Response, ScoreChange, StageChange, as_utc, utcnow
from models.definition_set import Definitions
from models.scoring_model import STAGE_LADDER, ScoringModel
from models.workflow_io import RescoreRequest
from scoring.engine import ResponseFact, ScoreCard, decide_stage, score
from scoring.features import features
from scoring.records import describe, stage_change_rows
from services import lead_client

if TYPE_CHECKING:  # scikit-learn: imported only when a run has a model
    from scoring.predictive import PredictiveModel

# (lead ids, event id, model fingerprint): ask these leads' workflows to score them again.
OnSql = Callable[[list[str], str, str], None]
Progress = Callable[[int, int], None]

_PROFILE_COLUMNS = [getattr(Lead, name) for name in Lead.PROFILE_FIELDS]
_LEAD_COLUMNS = [
    *_PROFILE_COLUMNS, Lead.id, Lead.segment, Lead.stage, Lead.score, Lead.scored_at,
    Lead.sql_hold_until, Lead.created_at,
]  # fmt: skip
_PROFILE_KEYS = [column.key for column in _LEAD_COLUMNS[:-3]]  # but scored_at, hold, created
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
    predictive_model: str | None = None  # the active predictive model's fingerprint
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
            "predictive_model": self.predictive_model, "seconds": round(self.seconds, 3),
            "leads_per_second": round(self.leads_per_second, 1),
        }  # fmt: skip


ACTIVE = object()  # rescore_all's default `predictive`: the model active when it starts


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
    workers: int = 1,
    predictive: PredictiveModel | None | object = ACTIVE,
) -> RescoreReport:
    """Score every lead at `now` and store what moved; see the module's docstring.

    `progress(done, total)` is called after each batch; `on_sql(lead_ids, event_id,
    model_fingerprint)` once per batch and model, after the batch is committed, with the
    leads that newly qualify as SQL. A dry run writes nothing and calls no `on_sql`.
    `workers` > 1 scores in that many processes (PostgreSQL only; SQLite has one writer).
    `predictive`: the predictive model to add `predicted` with; by default the active one.
    """
    started = time.perf_counter()
    report = RescoreReport(run_id=uuid.uuid4().hex[:12], at=now, dry_run=dry_run)
    with sessions() as session:
        report.total = session.scalar(select(func.count()).select_from(Lead)) or 0
        ranges = _key_ranges(session, report.total, workers, batch_size)
        if predictive is ACTIVE:
            predictive = _active_predictive_model(session)
    report.predictive_model = predictive.fingerprint if predictive else None
    done = 0

    def finished(leads: int, sql: dict[str, list[str]]) -> None:
        nonlocal done
        if on_sql is not None and not dry_run:
            for fingerprint, lead_ids in sql.items():
                on_sql(lead_ids, report.event_id, fingerprint)
        done += leads
        if progress is not None:
            progress(done, max(report.total, done))

    job = _Job(definitions, now, batch_size, dry_run, predictive)
    if len(ranges) == 1:
        _rescore_range(sessions, job, None, None, report, finished)
    else:
        url = sessions.kw["bind"].url.render_as_string(hide_password=False)
        _in_processes(url, job, ranges, report, finished)
    report.seconds = time.perf_counter() - started
    return report


def _active_predictive_model(session: Session) -> PredictiveModel | None:
    """Loaded once per run (scikit-learn imported only here, when rescoring)."""
    from scoring.model_store import active_fingerprint, load

    fingerprint = active_fingerprint(session)
    return load(session.get(db.PredictiveModelRecord, fingerprint)) if fingerprint else None


@dataclass(frozen=True)
class _Job:
    definitions: Definitions
    now: datetime
    batch_size: int
    dry_run: bool
    predictive: PredictiveModel | None = None  # pickled to the worker processes


Finished = Callable[[int, dict[str, list[str]]], None]  # (leads done, SQL-crossers by model)


def _rescore_range(
    sessions: sessionmaker,
    job: _Job,
    after: str | None,
    upto: str | None,
    report: RescoreReport,
    finished: Finished,
) -> None:
    """Walk the leads with an id in (after, upto] (None: no bound) batch by batch."""
    model_of: dict[str | None, tuple[ScoringModel, str]] = {}  # segment -> model, fingerprint
    last_id = after
    while True:
        with sessions() as session:
            connection = session.connection()
            if connection.dialect.name == "postgresql":  # psycopg reads 'UTC' times faster
                connection.exec_driver_sql("SET LOCAL TIME ZONE 'UTC'")
            leads = connection.execute(_lead_query(last_id, upto, job.batch_size)).all()
            if not leads:
                break
            responses = _responses(connection, last_id, leads[-1].id)
        batch = _score_batch(leads, responses, job, model_of, report)
        del responses
        if batch.leads and not job.dry_run:
            with sessions.begin() as session:
                _write(session, batch, report)
        report.transitions.update(batch.transitions.values())
        finished(len(leads), dict(batch.sql))
        last_id = leads[-1].id
    report.models |= {model.name: fingerprint for model, fingerprint in model_of.values()}


def _key_ranges(
    session: Session, total: int, workers: int, batch_size: int
) -> list[tuple[str | None, str | None]]:
    """`workers` id ranges (after, upto] of about as many leads each; one range on SQLite,
    for a single worker, or when there is less than a batch per worker."""
    workers = min(workers, total // batch_size)
    if workers <= 1 or session.connection().dialect.name != "postgresql":
        return [(None, None)]
    ids = select(Lead.id).order_by(Lead.id).limit(1)
    cuts = [session.scalar(ids.offset(total * n // workers - 1)) for n in range(1, workers)]
    bounds = [None, *cuts, None]
    return list(zip(bounds, bounds[1:], strict=False))


def _in_processes(
    url: str,
    job: _Job,
    ranges: list[tuple[str | None, str | None]],
    report: RescoreReport,
    finished: Finished,
) -> None:
    """Score each range in a process of its own (spawned: nothing of this process's
    threads or connections is inherited) and pass on their batches as they commit."""
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    processes = [
        context.Process(target=_worker, args=(messages, url, job, report.run_id, after, upto),
                        name=f"rescore-{n}", daemon=True)
        for n, (after, upto) in enumerate(ranges)
    ]  # fmt: skip
    running = len(processes)
    try:
        for process in processes:
            process.start()
        while running:
            try:
                kind, payload = messages.get(timeout=1.0)
            except queue.Empty:
                dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a rescore worker died (exit code {dead[0]})") from None
                continue
            if kind == "batch":
                finished(*payload)
            elif kind == "done":
                _merge(report, payload)
                running -= 1
            else:
                raise RuntimeError(f"a rescore worker failed:\n{payload}")
    finally:  # on an error the others stop too; their committed batches stay
        for process in processes:
            if process.is_alive() and running:
                process.terminate()
            if process.pid is not None:
                process.join()


def _worker(messages, url: str, job: _Job, run_id: str, after, upto) -> None:
    try:
        engine = db.make_engine(url, pool_size=1)
        report = RescoreReport(run_id=run_id, at=job.now, dry_run=job.dry_run)
        _rescore_range(db.session_factory(engine), job, after, upto, report,
                       lambda leads, sql: messages.put(("batch", (leads, sql))))  # fmt: skip
        engine.dispose()
        messages.put(("done", report))
    except BaseException:
        messages.put(("error", traceback.format_exc()))


def _merge(report: RescoreReport, part: RescoreReport) -> None:
    for name in ("scored", "sales_owned", "changed", "unchanged", "to_sql", "concurrent"):
        setattr(report, name, getattr(report, name) + getattr(part, name))
    report.transitions.update(part.transitions)
    for problem, count in part.problems.items():
        if problem in report.problems or len(report.problems) < _MAX_PROBLEMS:
            report.problems[problem] += count
    report.models |= part.models


def _lead_query(after: str | None, upto: str | None, limit: int):
    query = select(*_LEAD_COLUMNS).order_by(Lead.id).limit(limit)
    if after is not None:
        query = query.where(Lead.id > after)
    return query if upto is None else query.where(Lead.id <= upto)


def _responses(
    connection: Connection, after: str | None, upto: str
) -> dict[str, list[ResponseFact]]:
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
    for lead_id, kind, at, text in connection.execute(query).all():
        data = parsed.get(text)
        if data is None:
            data = parsed[text] = json.loads(text) or {}
        facts[lead_id].append(ResponseFact(kind, at if at.tzinfo else as_utc(at), data))
    return facts


def _score_batch(
    leads: list,
    responses: dict[str, list[ResponseFact]],
    job: _Job,
    model_of: dict[str | None, tuple[ScoringModel, str]],
    report: RescoreReport,
) -> _Batch:
    batch = _Batch()
    scored = _cards(leads, responses, job, model_of, report)
    raws = _predict(job.predictive, scored, responses, job.now) if job.predictive else {}
    for lead in scored:
        _decide(batch, lead, raws.get(lead[0].id), job, report)
    return batch


_Scored = tuple[Any, dict[str, Any], ScoringModel, str, ScoreCard]  # row, profile, model...


def _cards(
    leads: list,
    responses: dict[str, list[ResponseFact]],
    job: _Job,
    model_of: dict[str | None, tuple[ScoringModel, str]],
    report: RescoreReport,
) -> list[_Scored]:
    """The score card of every lead the rules score (those past SQL belong to sales)."""
    scored = []
    for row in leads:
        if row.stage not in STAGE_LADDER:
            report.sales_owned += 1
            continue
        profile = dict(zip(_PROFILE_KEYS, row, strict=False))  # as Lead.profile(), no more
        known = model_of.get(row.segment)
        if known is None:
            model = job.definitions.scoring_model(row.segment)
            known = model_of[row.segment] = (model, model.fingerprint)  # a hash: once
        model, fingerprint = known
        card = score(model, profile, responses.get(row.id, ()), job.now)
        scored.append((row, profile, model, fingerprint, card))
    return scored


def _predict(
    predictive: PredictiveModel,
    scored: list[_Scored],
    responses: dict[str, list[ResponseFact]],
    now: datetime,
) -> dict[str, dict[str, float]]:
    """`predicted` on every card, the batch in one product; the leads' features (by lead
    id), for the reasons of those whose stage moves (`_explain_prediction`)."""
    raws = [
        features(profile, responses.get(row.id, ()), now, as_utc(row.created_at))
        for row, profile, *_ in scored
    ]  # fmt: skip
    probabilities = predictive.predict_many(raws) if raws else []
    for (*_, card), probability in zip(scored, probabilities, strict=True):
        card.add_prediction(round(float(probability), 6), [], predictive.fingerprint,
                            predictive.horizon_days)  # fmt: skip
    return {row.id: raw for (row, *_), raw in zip(scored, raws, strict=True)}


def _explain_prediction(job: _Job, card: ScoreCard, raw: dict[str, float] | None) -> None:
    """The predicted reasons of a card written with a stage change: worth their half a
    millisecond there (the reason a lead became an MQL), not on every lead."""
    if job.predictive is None or raw is None:
        return
    limit = job.definitions.scoring.predictive.reasons
    card.predicted_reasons = job.predictive.explain(raw).reason_lines(limit)


def _decide(
    batch: _Batch,
    lead: _Scored,
    raw: dict[str, float] | None,
    job: _Job,
    report: RescoreReport,
) -> None:
    """The lead's stage from its card, and what to write for it (nothing if it did not
    move; an SQL-crosser goes to its workflow). `raw`: its predictive features."""
    row, profile, model, fingerprint, card = lead
    lead_id, stage, old_score = row.id, row.stage, row.score or 0.0
    # Turned down by sales, in its cool-down: may reach MQL or PQL, not SQL.
    held = row.sql_hold_until is not None and as_utc(row.sql_hold_until) > job.now
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
        return
    # Compared as stored (to 0.01, then to 0.1): rounding the raw total straight to
    # 0.1 would call 12.2501 (stored as 12.25, read back as 12.2) a move every run.
    if round(round(card.total, 2), 1) == round(old_score, 1) and not decision.changed:
        report.unchanged += 1
        return
    report.changed += 1
    if decision.changed:
        recycled = " (recycled)" if decision.recycled else ""
        batch.transitions[lead_id] = f"{decision.old}->{decision.new}{recycled}"
        _explain_prediction(job, card, raw)
    batch.read[lead_id] = (stage, row.score, row.scored_at)
    batch.leads.append({
        "b_id": lead_id, "b_score": round(card.total, 2), "b_fit_score": round(card.fit, 2),
        "b_engagement_score": round(card.engagement, 2), "b_grade": card.grade,
        "b_scoring_model": model.name, "b_scored_at": card.at, "b_stage": decision.new,
    })  # fmt: skip
    batch.score_changes.append({
        "lead_id": lead_id, "event_id": report.event_id, "cause": "rescore",
        "old_score": round(old_score, 2), "new_score": round(card.total, 2),
        "reason": describe(card, decision, "rescore"), "model": fingerprint,
        "predictive_model": card.predictive_model, "breakdown": card.to_dict(),
        "scored_at": card.at,
    })  # fmt: skip
    if decision.changed:
        batch.stage_changes[lead_id] = stage_change_rows(
            lead_id, decision, report.event_id, card.total
        )


def _write(session: Session, batch: _Batch, report: RescoreReport) -> None:
    """Store the batch; a lead whose row moved since it was read (its workflow scored
    it meanwhile) is dropped from the batch: its workflow's card is the newer one."""
    connection = session.connection()
    postgres = connection.dialect.name == "postgresql"
    written = (_update_leads_postgres if postgres else _update_leads)(connection, batch)
    moved = {row["b_id"] for row in batch.leads} - written
    if moved:
        report.concurrent += len(moved)
        report.changed -= len(moved)
        for lead_id in moved:
            batch.transitions.pop(lead_id, None)
        batch.score_changes = [row for row in batch.score_changes if row["lead_id"] not in moved]
    stage_changes = [
        row for lead_id, rows in batch.stage_changes.items() if lead_id not in moved for row in rows
    ]
    if postgres:
        created = {"created_at": utcnow()}  # as the models' default, once a batch
        _copy(connection, ScoreChange, [
            row | created | {"breakdown": json.dumps(row["breakdown"])}
            for row in batch.score_changes
        ])  # fmt: skip
        _copy(connection, StageChange, [row | created for row in stage_changes])
        return
    if batch.score_changes:
        connection.execute(insert(ScoreChange), batch.score_changes)
    if stage_changes:
        connection.execute(insert(StageChange), stage_changes)


def _update_leads(connection: Connection, batch: _Batch) -> set[str]:
    """SQLite: take the write lock, re-read the leads and update those still as they
    were read; returns their ids."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")
    ids = [row["b_id"] for row in batch.leads]
    stored = select(Lead.id, Lead.stage, Lead.score, Lead.scored_at).where(Lead.id.in_(ids))
    now_stored = {lead_id: tuple(rest) for lead_id, *rest in connection.execute(stored)}
    rows = [row for row in batch.leads if now_stored.get(row["b_id"]) == batch.read[row["b_id"]]]
    if rows:
        connection.execute(_UPDATE_LEAD, rows)
    return {row["b_id"] for row in rows}


# The leads still as they were read (under the row lock the UPDATE takes: a workflow's
# write in between makes the row fail the test), all in one statement.
_UPDATE_LEADS_POSTGRES = f"""
UPDATE {Lead.__tablename__} AS lead SET score = v.score, fit_score = v.fit_score,
    engagement_score = v.engagement_score, grade = v.grade, scoring_model = v.scoring_model,
    scored_at = v.scored_at, stage = v.stage, updated_at = %(updated_at)s
FROM unnest(%(id)s::text[], %(old_stage)s::text[], %(old_score)s::float8[],
    %(old_scored_at)s::timestamptz[], %(score)s::float8[], %(fit_score)s::float8[],
    %(engagement_score)s::float8[], %(grade)s::text[], %(scoring_model)s::text[],
    %(scored_at)s::timestamptz[], %(stage)s::text[])
    AS v(id, old_stage, old_score, old_scored_at, score, fit_score, engagement_score, grade,
         scoring_model, scored_at, stage)
WHERE lead.id = v.id AND lead.stage = v.old_stage AND lead.score IS NOT DISTINCT FROM
    v.old_score AND lead.scored_at IS NOT DISTINCT FROM v.old_scored_at
RETURNING lead.id
"""


def _update_leads_postgres(connection: Connection, batch: _Batch) -> set[str]:
    """PostgreSQL: one UPDATE ... FROM unnest(arrays) for the batch; returns the ids
    written."""
    read = [batch.read[row["b_id"]] for row in batch.leads]
    params: dict[str, Any] = {
        name: [row[f"b_{name}"] for row in batch.leads] for name in ("id", *_FIGURES)
    }
    params |= {"old_stage": [r[0] for r in read], "old_score": [r[1] for r in read],
               "old_scored_at": [r[2] for r in read], "updated_at": utcnow()}  # fmt: skip
    return {lead_id for (lead_id,) in connection.exec_driver_sql(_UPDATE_LEADS_POSTGRES, params)}


def _copy(connection: Connection, model: type, rows: list[dict[str, Any]]) -> None:
    """COPY `rows` (dicts with the same keys) into the model's table."""
    if not rows:
        return
    columns = list(rows[0])
    cursor = connection.connection.driver_connection.cursor()
    statement = f"COPY {model.__tablename__} ({', '.join(columns)}) FROM STDIN"
    with cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row([row[column] for column in columns])


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
