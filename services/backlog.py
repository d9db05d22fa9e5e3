"""The inbox backlog: responses stored but not yet scored, and how old the oldest is.

A burst (a campaign's opens and clicks) is taken by the inbox first: each response is
committed before the request is answered, then signalled to its lead's workflow, which
scores it. Under a burst both steps queue up; these figures say how far behind
processing is. Two parts:
- undelivered: stored for a known lead, not yet signalled (the API's relay retries them);
- unscored: signalled, not yet scored by the workflow.

Every worker records them as gauges (`watch`): `nurture_inbox_backlog{state}` and
`nurture_inbox_oldest_seconds{state}`, a few seconds apart.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from temporalio.common import MetricMeter

from models.db import Response, as_utc, utcnow

log = logging.getLogger("services.backlog")

WATCH_EVERY = 5.0  # seconds between a worker's readings


@dataclass(frozen=True)
class Part:
    count: int
    oldest_seconds: float  # 0 when there are none


@dataclass(frozen=True)
class Backlog:
    undelivered: Part
    unscored: Part


def inbox_backlog(session: Session, now: datetime | None = None) -> Backlog:
    """Count both parts; each query reads an index (delivered_at, ix_responses_unscored)."""
    now = now or utcnow()
    undelivered = session.execute(
        select(func.count(), func.min(Response.received_at))
        .where(Response.delivered_at.is_(None), Response.lead_id.is_not(None))
    ).one()  # fmt: skip
    unscored = session.execute(
        select(func.count(), func.min(Response.delivered_at))
        .where(Response.scored_in.is_(None), Response.delivered_at.is_not(None))
    ).one()  # fmt: skip
    return Backlog(_part(*undelivered, now), _part(*unscored, now))


def _part(count: int, oldest: datetime | None, now: datetime) -> Part:
    age = 0.0 if oldest is None else max((now - as_utc(oldest)).total_seconds(), 0.0)
    return Part(count, age)


async def watch(sessions: sessionmaker, meter: MetricMeter, every: float = WATCH_EVERY) -> None:
    """Record the backlog as gauges until cancelled; a failed reading is logged, never
    raised (it must not take the worker down)."""
    count = meter.create_gauge(
        "nurture_inbox_backlog", "Responses stored and not yet scored, by state", "responses"
    )
    age = meter.create_gauge_float(
        "nurture_inbox_oldest_seconds", "Age of the oldest response in the backlog, by state", "s"
    )
    while True:
        try:
            backlog = await asyncio.to_thread(_read, sessions)
            for state in ("undelivered", "unscored"):
                part: Part = getattr(backlog, state)
                count.set(part.count, {"state": state})
                age.set(part.oldest_seconds, {"state": state})
        except Exception as exc:
            log.warning("inbox backlog reading failed: %s", exc)
        await asyncio.sleep(every)


def _read(sessions: sessionmaker) -> Backlog:
    with sessions() as session:
        return inbox_backlog(session)
