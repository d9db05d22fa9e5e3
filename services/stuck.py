"""Stuck leads: responses their workflow accepted but never scored.

A response is marked delivered once its lead's workflow accepted the signal, and the
workflow scores it within seconds. One delivered minutes ago and still unscored means
the workflow is not making progress: typically its workflow task fails on every attempt
(a payload over Temporal's 2 MB limit, a bug, a non-deterministic deploy), which
Temporal retries quietly forever. The database alone says *which* leads; Temporal says
*why* (the pending workflow task's attempt and the last recorded failure).

Seen three ways: `nurture doctor`, a `stuck` line in `nurture status`, and every worker's
watch (`watch`): the gauge `nurture_stuck_leads` and a warning log line per lead.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from temporalio.api.enums.v1 import WorkflowTaskFailedCause
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.service import RPCError

from models.db import Lead, Response, as_utc, utcnow
from services import lead_client

log = logging.getLogger("services.stuck")

STUCK_AFTER = timedelta(minutes=5)  # far beyond a healthy workflow's seconds
WATCH_EVERY = 60.0  # seconds between a worker's checks
LOG_EVERY = timedelta(hours=1)  # a lead still stuck is logged again after this


@dataclass
class StuckLead:
    lead_id: str
    email: str
    unscored: int  # responses delivered and not scored
    since: datetime  # when the oldest of them was delivered
    workflow_task_attempt: int | None = None  # from Temporal, when it answers
    last_failure: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        text = (f"lead {self.lead_id} ({self.email}): {self.unscored} response(s) delivered "
                f"but not scored since {self.since:%Y-%m-%d %H:%M:%S} UTC")  # fmt: skip
        if self.workflow_task_attempt:
            text += f"; workflow task attempt {self.workflow_task_attempt}"
        if self.last_failure:
            text += f"; last failure: {self.last_failure}"
        return text


def stuck_leads(
    session: Session, now: datetime | None = None, older_than: timedelta | None = None,
    limit: int = 100, lead_id: str | None = None,
) -> list[StuckLead]:  # fmt: skip
    """Leads (or the one lead) with a response delivered more than `older_than` ago and
    still unscored, the longest stuck first."""
    cutoff = (now or utcnow()) - (STUCK_AFTER if older_than is None else older_than)
    query = (
        select(Response.lead_id, Lead.email, func.count(), func.min(Response.delivered_at))
        .join(Lead, Lead.id == Response.lead_id)
        .where(Response.delivered_at <= cutoff, Response.scored_in.is_(None))
    )
    if lead_id is not None:
        query = query.where(Response.lead_id == lead_id)
    rows = session.execute(
        query.group_by(Response.lead_id, Lead.email)
        .order_by(func.min(Response.delivered_at))
        .limit(limit)
    ).all()  # fmt: skip
    return [StuckLead(lead_id, email, count, as_utc(since))
            for lead_id, email, count, since in rows]  # fmt: skip


async def explain(client: Client, stuck: list[StuckLead]) -> list[StuckLead]:
    """Add what Temporal knows: the pending workflow task's attempt and the last failure
    in the history. A lead Temporal cannot describe keeps what the database said."""
    for lead in stuck:
        handle = lead_client.handle(client, lead.lead_id)
        try:
            description = await handle.describe()
            pending = description.raw_description.pending_workflow_task
            lead.workflow_task_attempt = pending.attempt if pending.attempt else None
            lead.last_failure = await _last_task_failure(handle)
        except RPCError as exc:
            lead.last_failure = f"Temporal: {exc.message}"
    return stuck


async def _last_task_failure(handle) -> str | None:
    """The newest WorkflowTaskFailed of the current run (later attempts of a failing
    task are not written to the history; the first one is)."""
    failure = None
    async for event in handle.fetch_history_events():
        if event.HasField("workflow_task_failed_event_attributes"):
            attributes = event.workflow_task_failed_event_attributes
            cause = WorkflowTaskFailedCause.Name(attributes.cause)
            failure = f"{cause.removeprefix('WORKFLOW_TASK_FAILED_CAUSE_')}: "
            failure += attributes.failure.message[:300]
    return failure


async def watch(
    sessions: sessionmaker, client: Client, meter: MetricMeter | None,
    every: float = WATCH_EVERY, older_than: timedelta | None = None,
) -> None:  # fmt: skip
    """A worker's background check: the gauge, and a warning per stuck lead (each lead
    again after LOG_EVERY while it stays stuck). Never raises; runs until cancelled."""
    gauge = None if meter is None else meter.create_gauge(
        "nurture_stuck_leads", "Leads with responses delivered but not scored for 5 minutes",
        "leads",
    )  # fmt: skip
    logged: dict[str, datetime] = {}
    while True:
        try:
            with sessions() as session:
                stuck = stuck_leads(session, older_than=older_than)
            if gauge is not None:
                gauge.set(len(stuck))
            now = utcnow()
            fresh = [lead for lead in stuck if now - logged.get(lead.lead_id, now - LOG_EVERY)
                     >= LOG_EVERY]  # fmt: skip
            for lead in await explain(client, fresh):
                log.warning("stuck: %s", lead.describe(), extra={"lead_id": lead.lead_id})
                logged[lead.lead_id] = now
        except Exception as exc:  # a check must never take the worker down
            log.warning("stuck-lead check failed: %s", exc)
        await asyncio.sleep(every)
