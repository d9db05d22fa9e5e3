"""What an operator looks at (the console's Operations page): sends recorded `unknown`,
stuck leads, webhook refusals, events waiting for their lead, the inbox backlog and
whether workers poll the task queues.

- A send is `unknown` when a retry found it `sending`: the worker stopped during the
  provider call, so it may or may not have gone out, and it is never repeated (the
  provider has no idempotency key). Someone has to look in the provider's log.
- A rep's notification is `unknown` the same way (`handoff_events`): the rep may not
  know about the lead.
- Stuck leads as services/stuck.py finds them (responses delivered to a workflow and not
  scored for 5 minutes), looked for among the STUCK_SAMPLE oldest such responses.
- Webhook refusals: a refused request stores nothing, so each is counted in
  `webhook_refusals`, per UTC day, source and reason (`count_refusal`, by the API).
- Events waiting for a lead: provider events and API events for an address or number no
  lead has yet (`responses` without a lead), kept until one arrives or
  NURTURE_PENDING_EVENT_RETENTION_DAYS pass; and status callbacks waiting for their
  message (`early_statuses`).
- Worker health: Temporal's DescribeTaskQueue of each queue the workers poll (the lead
  workflows, every activity, each channel's sends): who polled and when.

Every database read is a count (up to COUNT_CAP) or a short page off an index.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, literal, select, union_all
from sqlalchemy.dialects.postgresql import insert as postgres_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

from models.db import (
    EarlyStatus,
    Handoff,
    HandoffEvent,
    Lead,
    Message,
    Response,
    WebhookRefusal,
    as_utc,
    utcnow,
)
from models.workflow_io import send_queue
from services.intake import UNVERIFIED_REPLY
from services.stuck import STUCK_AFTER, StuckLead

log = logging.getLogger("services.operations")

PAGE = 20  # rows listed per section
REFUSAL_DAYS = 7  # refusals shown: this many days, today included
REASON_LENGTH = 200
POLLING_WITHIN = timedelta(minutes=2)  # a poll is a long poll (about a minute): then gone
DESCRIBE_TIMEOUT = 2.0  # seconds Temporal gets to describe a queue
# Counts stop here ("10,000 or more"), and stuck leads are found among this many of the
# oldest unscored responses: the page must load fast during the incident it is for (a
# million responses waiting while the workers are down).
COUNT_CAP = 10_000
STUCK_SAMPLE = 2_000


@dataclass(frozen=True)
class UnknownSend:
    message_id: str
    lead_id: str
    email: str
    channel: str
    what: str  # the subject, else the template
    provider: str | None
    at: datetime  # claimed
    reason: str | None


@dataclass(frozen=True)
class UnknownNotice:
    lead_id: str
    email: str
    rep_id: str | None
    channel: str | None
    at: datetime  # last attempt
    detail: str | None


@dataclass(frozen=True)
class Refusal:
    source: str
    reason: str
    status: int
    count: int
    last_at: datetime


@dataclass(frozen=True)
class WaitingEvent:
    type: str
    source: str
    waiting_for: str  # the address or number
    received_at: datetime


@dataclass(frozen=True)
class Waiting:
    count: int
    oldest: datetime | None
    newest: list[WaitingEvent]
    statuses: int  # status callbacks waiting for their message


@dataclass(frozen=True)
class BacklogPart:
    count: int  # up to COUNT_CAP + 1
    oldest_seconds: float  # 0 when there are none


@dataclass(frozen=True)
class Backlog:
    """services/backlog.py's parts: stored, not yet given to the workflow; given, not
    yet scored."""

    undelivered: BacklogPart
    unscored: BacklogPart


@dataclass(frozen=True)
class Poller:
    identity: str
    last_access: datetime | None
    rate_per_second: float


@dataclass(frozen=True)
class QueueHealth:
    name: str
    kind: str  # workflow | activity
    what: str  # what its workers do
    pollers: list[Poller]
    error: str | None = None  # Temporal did not answer

    def polling(self, now: datetime) -> bool:
        return any(p.last_access and now - p.last_access <= POLLING_WITHIN for p in self.pollers)


# --- sends recorded unknown ----------------------------------------------------------------------


def unknown_sends(session: Session, limit: int = PAGE) -> tuple[int, list[UnknownSend]]:
    """How many sends are `unknown`, and the newest `limit` of them."""
    m = Message
    count = session.scalar(select(func.count()).where(m.status == "unknown"))
    rows = session.execute(
        select(m.id, m.lead_id, Lead.email, m.channel, m.subject, m.template, m.provider,
               m.created_at, m.status_reason)
        .join(Lead, Lead.id == m.lead_id)
        .where(m.status == "unknown")
        .order_by(m.created_at.desc(), m.id).limit(limit)
    ).all()  # fmt: skip
    return count or 0, [
        UnknownSend(r.id, r.lead_id, r.email, r.channel, r.subject or r.template, r.provider,
                    as_utc(r.created_at), r.status_reason)
        for r in rows
    ]  # fmt: skip


def unknown_notices(session: Session, limit: int = PAGE) -> tuple[int, list[UnknownNotice]]:
    """How many notifications to reps are `unknown`, and the newest `limit` of them."""
    e = HandoffEvent
    count = session.scalar(select(func.count()).where(e.status == "unknown"))
    rows = session.execute(
        select(Handoff.lead_id, Lead.email, e.rep_id, e.channel, e.updated_at, e.detail)
        .join(Handoff, Handoff.id == e.handoff_id)
        .join(Lead, Lead.id == Handoff.lead_id)
        .where(e.status == "unknown")
        .order_by(e.updated_at.desc(), e.id.desc()).limit(limit)
    ).all()  # fmt: skip
    return count or 0, [UnknownNotice(lead_id, email, rep, channel, as_utc(at), detail)
                        for lead_id, email, rep, channel, at, detail in rows]  # fmt: skip


# --- webhook refusals ----------------------------------------------------------------------------


def record_refusal(session: Session, source: str, status: int, reason: str,
                   at: datetime | None = None) -> None:  # fmt: skip
    """Count one refused request in `session` (one upsert: concurrent refusals add up)."""
    at = as_utc(at or utcnow())
    values = {"day": at.date(), "source": source[:20], "reason": reason[:REASON_LENGTH],
              "status": status, "count": 1, "last_at": at}  # fmt: skip
    postgres = session.get_bind().dialect.name == "postgresql"
    insert = (postgres_insert if postgres else sqlite_insert)(WebhookRefusal).values(**values)
    session.execute(insert.on_conflict_do_update(
        index_elements=["day", "source", "reason"],
        set_={"count": WebhookRefusal.count + 1, "last_at": insert.excluded.last_at,
              "status": insert.excluded.status},
    ))  # fmt: skip


def count_refusal(sessions: sessionmaker, source: str, status: int, reason: str) -> None:
    """`record_refusal` in a transaction of its own, for the API: never raises (counting
    must not change the answer a refused request gets)."""
    try:
        with sessions.begin() as session:
            record_refusal(session, source, status, reason)
    except Exception as exc:
        log.warning("a %s webhook refusal was not counted: %s", source, exc)


def refusals(session: Session, now: datetime | None = None,
             days: int = REFUSAL_DAYS) -> list[Refusal]:  # fmt: skip
    """The refusals of the last `days` days per source and reason, the most first."""
    today = as_utc(now or utcnow()).date()
    since = today - timedelta(days=days - 1)
    r = WebhookRefusal
    total = func.sum(r.count)
    rows = session.execute(
        select(r.source, r.reason, func.max(r.status), total, func.max(r.last_at))
        .where(r.day >= since, r.day <= today)
        .group_by(r.source, r.reason)
        .order_by(total.desc(), r.source, r.reason)
    ).all()  # fmt: skip
    return [Refusal(source, reason, status, int(count), as_utc(last))
            for source, reason, status, count, last in rows]  # fmt: skip


# --- events waiting ------------------------------------------------------------------------------


def waiting_events(session: Session, limit: int = PAGE) -> Waiting:
    """Events stored for a lead that does not exist yet (not the unverified replies, which
    wait for no one), and status callbacks waiting for their message."""
    r = Response
    waiting = (r.lead_id.is_(None), r.type != UNVERIFIED_REPLY)
    count, oldest = session.execute(
        select(func.count(), func.min(r.received_at)).where(*waiting)
    ).one()
    rows = session.execute(
        select(r.type, r.source, func.coalesce(r.lead_email, r.lead_phone, ""), r.received_at)
        .where(*waiting)
        .order_by(r.received_at.desc()).limit(limit)
    ).all()  # fmt: skip
    statuses = session.scalar(select(func.count()).select_from(EarlyStatus))
    newest = [WaitingEvent(kind, source, who, as_utc(at)) for kind, source, who, at in rows]
    return Waiting(count or 0, as_utc(oldest) if oldest else None, newest, statuses or 0)


def backlog(session: Session, now: datetime | None = None) -> Backlog:
    """services/backlog.py's two parts, counted up to COUNT_CAP; the oldest of each off
    its index (delivered_at; ix_responses_unscored)."""
    now = as_utc(now or utcnow())
    r = Response
    undelivered = (r.delivered_at.is_(None), r.lead_id.is_not(None))
    unscored = (r.scored_in.is_(None), r.delivered_at.is_not(None))
    return Backlog(
        _part(session, undelivered, r.received_at, now),
        _part(session, unscored, r.delivered_at, now),
    )


def _part(session: Session, where, since_column, now: datetime) -> BacklogPart:
    oldest = session.scalar(select(func.min(since_column)).where(*where))
    age = 0.0 if oldest is None else max((now - as_utc(oldest)).total_seconds(), 0.0)
    return BacklogPart(_count_upto(session, where), age)


def _count_upto(session: Session, where) -> int:
    """How many rows match, counted no further than COUNT_CAP + 1."""
    found = select(literal(1)).select_from(Response).where(*where).limit(COUNT_CAP + 1)
    return session.scalar(select(func.count()).select_from(found.subquery())) or 0


# --- stuck leads ---------------------------------------------------------------------------------


def stuck_leads(session: Session, now: datetime | None = None,
                limit: int = PAGE) -> tuple[int, list[StuckLead]]:  # fmt: skip
    """(Responses delivered over 5 minutes ago and not scored, up to COUNT_CAP + 1; the
    leads stuck longest, as services/stuck.py lists them, from the STUCK_SAMPLE oldest
    such responses.)"""
    r = Response
    stuck = (r.scored_in.is_(None), r.delivered_at <= as_utc(now or utcnow()) - STUCK_AFTER)
    oldest = (
        select(r.lead_id, r.delivered_at).where(*stuck)
        .order_by(r.delivered_at).limit(STUCK_SAMPLE).subquery("oldest")
    )  # fmt: skip
    since = func.min(oldest.c.delivered_at)
    longest = (
        select(oldest.c.lead_id, since.label("since")).group_by(oldest.c.lead_id)
        .order_by(since, oldest.c.lead_id).limit(limit).subquery("longest")
    )  # fmt: skip
    rows = session.execute(
        select(longest.c.lead_id, Lead.email, longest.c.since)
        .join(Lead, Lead.id == longest.c.lead_id)
        .order_by(longest.c.since, longest.c.lead_id)
    ).all()  # fmt: skip
    counts = _counts_upto(session, stuck, [lead_id for lead_id, _, _ in rows])
    leads = [StuckLead(lead_id, email, counts[lead_id], as_utc(since))
             for lead_id, email, since in rows]  # fmt: skip
    return _count_upto(session, stuck), leads


def _counts_upto(session: Session, where, lead_ids: list[str]) -> dict[str, int]:
    """Each lead's rows that match, counted no further than COUNT_CAP + 1 (one statement)."""
    if not lead_ids:
        return {}
    r = Response
    parts = [
        select(literal(lead_id).label("lead_id"), func.count().label("n")).select_from(
            select(literal(1)).select_from(r).where(*where, r.lead_id == lead_id)
            .limit(COUNT_CAP + 1).subquery()
        )
        for lead_id in lead_ids
    ]  # fmt: skip
    return {lead_id: n for lead_id, n in session.execute(union_all(*parts))}


# --- worker health -------------------------------------------------------------------------------


def polled_queues(task_queue: str) -> list[tuple[str, str, str]]:
    """(queue, kind, what) of every queue Nurture's workers poll (services/runtime.py)."""
    return [
        (task_queue, "workflow", "lead workflows and the CRM sync"),
        (task_queue, "activity", "every activity"),
        *((send_queue(task_queue, channel), "activity", f"{channel} sends")
          for channel in ("email", "sms")),
    ]  # fmt: skip


async def worker_health(client: Client, namespace: str, task_queue: str,
                        timeout: float = DESCRIBE_TIMEOUT) -> list[QueueHealth]:  # fmt: skip
    """Each polled queue's pollers, as Temporal saw them; a queue Temporal does not
    describe within `timeout` seconds has the error instead."""
    queues = polled_queues(task_queue)
    return list(await asyncio.gather(*(
        _describe(client, namespace, name, kind, what, timeout) for name, kind, what in queues
    )))  # fmt: skip


async def _describe(client: Client, namespace: str, name: str, kind: str, what: str,
                    timeout: float) -> QueueHealth:  # fmt: skip
    queue_type = (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW if kind == "workflow"
                  else TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)  # fmt: skip
    request = DescribeTaskQueueRequest(
        namespace=namespace,
        task_queue=TaskQueue(name=name, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
        task_queue_type=queue_type,
    )
    try:
        answer = await asyncio.wait_for(
            client.workflow_service.describe_task_queue(
                request, timeout=timedelta(seconds=timeout)
            ),
            timeout + 0.5,
        )
    except (RPCError, TimeoutError) as exc:
        why = exc.message if isinstance(exc, RPCError) else f"no answer in {timeout:g} s"
        return QueueHealth(name, kind, what, [], error=why)
    pollers = [
        Poller(p.identity, p.last_access_time.ToDatetime(tzinfo=UTC)
               if p.HasField("last_access_time") else None, p.rate_per_second)
        for p in answer.pollers
    ]  # fmt: skip
    return QueueHealth(name, kind, what, pollers)
