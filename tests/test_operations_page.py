"""What the console's Operations page reads (services/operations.py): sends recorded
`unknown`, webhook refusals, events waiting for a lead on SQLite and PostgreSQL (rows as
the activities, intake and the API write them); worker health from the real Temporal dev
server, with a worker polling, queues no worker polls, and Temporal cut off."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import create_engine, select
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from models.db import (
    EarlyStatus,
    Handoff,
    HandoffEvent,
    Lead,
    Message,
    Response,
    ScoreChange,
    WebhookRefusal,
    session_factory,
)
from services import operations
from services.intake import UNVERIFIED_REPLY
from tests.harness import eventually
from tests.tcp_proxy import TcpProxy

T0 = datetime(2024, 5, 6, 10, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_unknown_sends_are_counted_and_the_newest_listed(database):
    with database.sessions.begin() as session:
        session.add(Lead(id="ada", email="ada@example.com"))
        session.flush()
        for n, (status, subject, hours) in enumerate([
            ("sent", "Welcome", 0), ("unknown", "Welcome", 1), ("unknown", None, 3),
            ("failed", "Tips", 4), ("unknown", "Tips", 2), ("sending", "Last", 5),
        ]):  # fmt: skip
            session.add(Message(id=f"m{n}", send_key=f"k{n}", lead_id="ada", channel="email",
                                template=f"t{n}", recipient="ada@example.com", subject=subject,
                                body="", status=status, provider="sendgrid",
                                status_reason="interrupted" if status == "unknown" else None,
                                created_at=at(hours)))  # fmt: skip
    with database.sessions() as session:
        count, newest = operations.unknown_sends(session, limit=2)
    assert count == 3
    assert [(s.message_id, s.what, s.at, s.email) for s in newest] == [
        ("m2", "t2", at(3), "ada@example.com"),  # no subject: its template
        ("m4", "Tips", at(2), "ada@example.com"),
    ]
    assert newest[0].reason == "interrupted" and newest[0].provider == "sendgrid"


def test_unknown_rep_notifications(database):
    with database.sessions.begin() as session:
        session.add(Lead(id="ada", email="ada@example.com"))
        session.flush()
        session.add(Handoff(id="h1", lead_id="ada", cycle=0, rep_id="alice", score=80,
                            reason="hot"))  # fmt: skip
        session.flush()
        for n, (status, hours) in enumerate([("sent", 1), ("unknown", 2), ("failed", 3)]):
            session.add(HandoffEvent(handoff_id="h1", key=f"new:0:alice:{n}", kind="notified",
                                     rep_id="alice", channel="sms", status=status,
                                     detail="interrupted: not sent again",
                                     updated_at=at(hours)))  # fmt: skip
    with database.sessions() as session:
        count, notices = operations.unknown_notices(session)
    assert count == 1
    assert notices == [operations.UnknownNotice("ada", "ada@example.com", "alice", "sms", at(2),
                                                "interrupted: not sent again")]  # fmt: skip


def test_refusals_add_up_per_day_source_and_reason(database):
    with database.sessions.begin() as session:
        for hours in (0, 1, 2):
            operations.record_refusal(session, "sendgrid", 403, "signature does not match",
                                      at(hours))  # fmt: skip
        operations.record_refusal(session, "sendgrid", 403, "signature does not match", at(24))
        operations.record_refusal(session, "twilio", 403, "missing X-Twilio-Signature", at(5))
        operations.record_refusal(session, "crm", 400, "x" * 300, at(6))
        operations.record_refusal(session, "twilio", 403, "long ago", at(-24 * 8))
    operations.count_refusal(database.sessions, "twilio", 403, "missing X-Twilio-Signature")
    with database.sessions() as session:
        rows = {(r.day, r.source, r.reason[:9]): r.count for r in session.scalars(
            select(WebhookRefusal))}  # fmt: skip
        shown = operations.refusals(session, now=at(24))
    assert rows[(date(2024, 5, 6), "sendgrid", "signature")] == 3
    assert rows[(date(2024, 5, 7), "sendgrid", "signature")] == 1
    # Seven days to 7 May: not the one of 28 April; today's (the real today) neither.
    assert [(r.source, r.reason[:10], r.status, r.count, r.last_at) for r in shown] == [
        ("sendgrid", "signature ", 403, 4, at(24)),
        ("crm", "x" * 10, 400, 1, at(6)),
        ("twilio", "missing X-", 403, 1, at(5)),
    ]
    assert len(shown[1].reason) == operations.REASON_LENGTH


def test_counting_a_refusal_never_raises(tmp_path, caplog):
    nowhere = create_engine(f"sqlite:///{tmp_path}/missing/dir/nurture.db")
    operations.count_refusal(session_factory(nowhere), "sendgrid", 403, "bad signature")
    assert "sendgrid webhook refusal was not counted" in caplog.text


def test_events_waiting_for_a_lead(database):
    with database.sessions.begin() as session:
        session.add(Lead(id="ada", email="ada@example.com"))
        session.flush()
        for n, (lead_id, email, phone, kind, hours) in enumerate([
            (None, "bo@example.com", None, "email.open", 1),
            (None, None, "+14155550100", "sms.reply", 3),
            (None, "cy@example.com", None, "page.view", 2),
            ("ada", "ada@example.com", None, "email.click", 4),  # found its lead
            (None, None, None, UNVERIFIED_REPLY, 5),  # waits for no one
        ]):  # fmt: skip
            session.add(Response(event_id=f"e{n}", lead_id=lead_id, lead_email=email,
                                 lead_phone=phone, type=kind, source="sendgrid",
                                 received_at=at(hours), occurred_at=at(hours)))  # fmt: skip
        session.add(EarlyStatus(provider_message_id="SM1", status="delivered"))
    with database.sessions() as session:
        waiting = operations.waiting_events(session, limit=2)
    assert (waiting.count, waiting.oldest, waiting.statuses) == (3, at(1), 1)
    assert [(e.type, e.waiting_for, e.received_at) for e in waiting.newest] == [
        ("sms.reply", "+14155550100", at(3)),
        ("page.view", "cy@example.com", at(2)),
    ]


@pytest.fixture
def inbox(database):
    """Responses as the inbox leaves them: ada's three and bo's two delivered long ago and
    not scored (stuck), cy's one a minute ago (not yet), one scored, two not delivered."""
    with database.sessions.begin() as session:
        for key in ("ada", "bo", "cy"):
            session.add(Lead(id=key, email=f"{key}@example.com"))
        session.flush()
        change = ScoreChange(lead_id="ada", event_id="x", old_score=0, new_score=1, reason="x")
        session.add(change)
        session.flush()
        rows = [("ada", -60, None), ("ada", -50, None), ("ada", -40, None), ("bo", -30, None),
                ("bo", -20, None), ("cy", -1, None), ("cy", -90, change.id)]  # fmt: skip
        for n, (lead_id, minutes, scored) in enumerate(rows):
            moment = T0 + timedelta(minutes=minutes)
            session.add(Response(event_id=f"e{n}", lead_id=lead_id, type="email.open",
                                 received_at=moment, delivered_at=moment,
                                 scored_in=scored))  # fmt: skip
        for n in range(2):
            session.add(Response(event_id=f"u{n}", lead_id="cy", type="email.open",
                                 received_at=T0 - timedelta(minutes=3 + n)))  # fmt: skip


def test_stuck_leads_longest_first(database, inbox):
    with database.sessions() as session:
        count, leads = operations.stuck_leads(session, now=T0)
    assert count == 5
    assert [(s.lead_id, s.unscored, s.since) for s in leads] == [
        ("ada", 3, T0 - timedelta(minutes=60)), ("bo", 2, T0 - timedelta(minutes=30))]  # fmt: skip


def test_stuck_leads_and_counts_are_bounded(database, inbox, monkeypatch):
    monkeypatch.setattr(operations, "COUNT_CAP", 2)
    monkeypatch.setattr(operations, "STUCK_SAMPLE", 3)  # only ada's are among the oldest 3
    with database.sessions() as session:
        count, leads = operations.stuck_leads(session, now=T0)
        backlog = operations.backlog(session, now=T0)
    assert count == 3  # counted no further than the cap and one
    assert [(s.lead_id, s.unscored) for s in leads] == [("ada", 3)]
    assert backlog.unscored.count == 3


def test_the_inbox_backlog(database, inbox):
    with database.sessions() as session:
        backlog = operations.backlog(session, now=T0)
    assert backlog.undelivered == operations.BacklogPart(2, 4 * 60.0)
    assert backlog.unscored == operations.BacklogPart(6, 60 * 60.0)


def test_nothing_to_report(database):
    with database.sessions() as session:
        assert operations.unknown_sends(session) == (0, [])
        assert operations.unknown_notices(session) == (0, [])
        assert operations.refusals(session) == []
        assert operations.waiting_events(session) == operations.Waiting(0, None, [], 0)
        assert operations.stuck_leads(session) == (0, [])
        empty = operations.BacklogPart(0, 0.0)
        assert operations.backlog(session) == operations.Backlog(empty, empty)


@activity.defn
def nothing() -> None:
    """An activity for a worker to poll with."""


@pytest.mark.devserver
async def test_worker_health_names_the_queues_polled_and_not(dev_server_env):
    client = dev_server_env.client
    queue = f"ops-{uuid.uuid4().hex[:8]}"
    names = [queue, queue, f"{queue}-send-email", f"{queue}-send-sms"]
    async with Worker(client, task_queue=queue, activities=[nothing],
                      activity_executor=_executor()):  # fmt: skip

        async def polled():  # the worker's first poll reaches the server soon after it starts
            health = await operations.worker_health(client, "default", queue)
            return health if health[1].pollers else None

        health = await eventually(polled, timeout=15, what="the activity queue polled")
    now = datetime.now(UTC)
    kinds = ["workflow", "activity", "activity", "activity"]
    assert [(q.name, q.kind) for q in health] == list(zip(names, kinds, strict=True))
    # Only the activity queue has a worker (it runs no workflow).
    assert [q.polling(now) for q in health] == [False, True, False, False]
    assert all(q.error is None for q in health)
    poller = health[1].pollers[0]
    assert poller.identity and now - poller.last_access < timedelta(seconds=30)
    # Long gone: no longer polling.
    assert not health[1].polling(now + operations.POLLING_WITHIN + timedelta(seconds=31))


@pytest.mark.devserver
async def test_worker_health_says_temporal_did_not_answer(dev_server_env):
    host, port = dev_server_env.client.service_client.config.target_host.rsplit(":", 1)
    proxy = TcpProxy(host, int(port))
    try:
        client = await Client.connect(f"127.0.0.1:{proxy.port}")
        proxy.cut()
        health = await operations.worker_health(client, "default", "anything", timeout=1)
    finally:
        proxy.close()
    assert len(health) == 4
    assert all(q.error and not q.pollers and not q.polling(datetime.now(UTC)) for q in health)


def _executor():
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=1)
