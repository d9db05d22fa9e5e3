"""The inbox backlog: responses stored and not scored yet, undelivered and unscored,
with the age of the oldest of each, counted from the database (SQLite and PostgreSQL)
and recorded by every worker as the gauges `nurture_inbox_backlog` and
`nurture_inbox_oldest_seconds`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig

from models.db import Lead, Response, ScoreChange, utcnow
from services import backlog


def fill(database, now):
    """Two undelivered (oldest 90 s), three delivered of which one scored (oldest unscored
    delivered 40 s ago), one for an unknown lead (not in the backlog)."""
    with database.sessions.begin() as session:
        lead = Lead(email="ada@example.com")
        session.add(lead)
        session.flush()
        change = ScoreChange(lead_id=lead.id, event_id="e-scored", cause="email.open",
                             old_score=0, new_score=5, reason="open")  # fmt: skip
        session.add(change)
        session.flush()

        def response(event_id, received, delivered=None, scored_in=None, lead_id=lead.id):
            session.add(Response(event_id=event_id, lead_id=lead_id, type="email.open",
                                 received_at=now - timedelta(seconds=received),
                                 delivered_at=delivered and now - timedelta(seconds=delivered),
                                 scored_in=scored_in))  # fmt: skip

        response("new-1", 90)
        response("new-2", 10)
        response("sent-1", 60, delivered=40)
        response("sent-2", 30, delivered=20)
        response("e-scored", 100, delivered=99, scored_in=change.id)
        response("stranger", 500, lead_id=None)  # waits for its lead: not processing's


def test_the_backlog_counts_each_part_and_its_oldest(database):
    now = utcnow()
    fill(database, now)
    with database.sessions() as session:
        found = backlog.inbox_backlog(session, now)
    assert found.undelivered == backlog.Part(2, 90.0)
    assert found.unscored == backlog.Part(2, 40.0)


def test_an_empty_backlog_is_zero(database):
    with database.sessions() as session:
        found = backlog.inbox_backlog(session)
    assert found == backlog.Backlog(backlog.Part(0, 0.0), backlog.Part(0, 0.0))


async def test_a_worker_records_the_backlog_as_gauges(database):
    fill(database, utcnow())
    buffer = MetricBuffer(1000)
    meter = Runtime(telemetry=TelemetryConfig(metrics=buffer)).metric_meter
    watching = asyncio.create_task(backlog.watch(database.sessions, meter, every=0.05))
    await asyncio.sleep(0.5)
    watching.cancel()
    latest = {}
    for update in buffer.retrieve_updates():
        latest[(update.metric.name, update.attributes["state"])] = update.value
    assert latest[("nurture_inbox_backlog", "undelivered")] == 2
    assert latest[("nurture_inbox_backlog", "unscored")] == 2
    assert 90 <= latest[("nurture_inbox_oldest_seconds", "undelivered")] < 120
    assert 40 <= latest[("nurture_inbox_oldest_seconds", "unscored")] < 70
