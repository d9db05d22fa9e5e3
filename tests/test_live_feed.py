"""The console's live feed (services/live_feed.py), on SQLite and PostgreSQL: rows written
with the ORM as the activities and intake write them, polled as the page's stream does."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from models.db import Handoff, HandoffEvent, Lead, Message, Response, StageChange
from services import live_feed

T0 = datetime(2024, 5, 6, 10, 54, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Rows:
    def __init__(self, database):
        self.sessions = database.sessions
        self.n = 0

    def lead(self, key: str) -> None:
        with self.sessions.begin() as session:
            session.add(Lead(id=key, email=f"{key}@example.com", created_at=at(-3600)))

    def send(self, lead_id: str, moment: datetime, subject: str = "Welcome") -> str:
        self.n += 1
        with self.sessions.begin() as session:
            session.add(Message(id=f"m{self.n}", send_key=f"k{self.n}", lead_id=lead_id,
                                channel="email", template="welcome", recipient="x",
                                subject=subject, body="", status="sent", created_at=moment,
                                sent_at=moment))  # fmt: skip
        return f"m{self.n}"

    def respond(self, lead_id: str, kind: str, moment: datetime, message_id=None, **data) -> None:
        self.n += 1
        with self.sessions.begin() as session:
            session.add(Response(id=f"r{self.n}", event_id=f"e{self.n}", lead_id=lead_id,
                                 type=kind, message_id=message_id, data=data,
                                 occurred_at=moment, received_at=moment,
                                 delivered_at=moment))  # fmt: skip

    def stage(self, lead_id: str, old: str, new: str, moment: datetime) -> None:
        self.n += 1
        with self.sessions.begin() as session:
            session.add(StageChange(lead_id=lead_id, change_key=f"c{self.n}", from_stage=old,
                                    to_stage=new, reason="test", created_at=moment))  # fmt: skip

    def handoff(self, lead_id: str, rep_id: str, moment: datetime) -> None:
        with self.sessions.begin() as session:
            session.add(Handoff(id=f"h-{lead_id}", lead_id=lead_id, cycle=0, rep_id=rep_id,
                                score=80, reason="test", created_at=moment))  # fmt: skip
            session.flush()
            for key, kind in (("assigned:0", "assigned"), (f"new:0:{rep_id}:email", "notified")):
                session.add(HandoffEvent(handoff_id=f"h-{lead_id}", key=key, kind=kind,
                                         rep_id=rep_id, channel="email",
                                         created_at=moment))  # fmt: skip


@pytest.fixture
def rows(database):
    made = Rows(database)
    for key in ("ada", "bo", "cy"):
        made.lead(key)
    return made


def started(database, rep_id=None):
    with database.sessions() as session:
        return live_feed.start(session, rep_id, now=T0)


def poll(database, feed, clock=None):
    with database.sessions() as session:
        return live_feed.poll(session, feed, clock or Clock())


def lines(items) -> list[str]:
    return [f"{item.at:%H:%M:%S} {item.email} {item.text}" for item in items]


def test_only_what_happens_after_the_feed_starts_in_time_order(database, rows):
    before = rows.send("ada", at(-5), "Old news")
    rows.respond("ada", "email.open", at(-4), before)
    rows.stage("ada", "lead", "mql", at(-3))
    feed = started(database)
    assert poll(database, feed) == []

    welcome = rows.send("ada", at(2))
    rows.respond("ada", "email.open", at(3), welcome)
    rows.respond("bo", "page.view", at(5), url="/pricing")
    rows.stage("bo", "mql", "sql", at(6))
    rows.handoff("bo", "alice", at(7))
    assert lines(poll(database, feed)) == [
        '10:54:02 ada@example.com was sent "Welcome" by email',
        '10:54:03 ada@example.com opened "Welcome"',
        "10:54:05 bo@example.com viewed /pricing",
        "10:54:06 bo@example.com moved from mql to sql",
        "10:54:07 bo@example.com was handed off to Alice Rep",  # the notification is not shown
    ]
    assert poll(database, feed) == []


def test_a_row_committed_late_is_shown_once(database, rows):
    feed = started(database)
    clock = Clock()
    rows.send("ada", at(5))
    assert len(poll(database, feed, clock)) == 1
    # Committed after the newer one was read, with an older key: still within the lag.
    clock.now += 3
    rows.send("bo", at(2), "Late")
    assert lines(poll(database, feed, clock)) == [
        '10:54:02 bo@example.com was sent "Late" by email'
    ]
    clock.now += 3
    assert poll(database, feed, clock) == []


def test_the_floor_trails_by_the_lag_then_forgets(database, rows):
    feed = started(database)
    clock = Clock()
    rows.send("ada", at(5))
    rows.stage("ada", "lead", "mql", at(5))
    assert len(poll(database, feed, clock)) == 2
    clock.now += live_feed.LAG + 1
    assert poll(database, feed, clock) == []
    assert live_feed._key(feed.floor["send"]) == at(5)
    assert feed.shown["send"] == {} and feed.shown["stage"] == {}
    # Far behind the floor now: a row this late is not shown.
    rows.send("bo", at(1), "Too late")
    assert poll(database, feed, clock) == []


def test_a_reps_feed_has_only_its_own_leads(database, rows):
    rows.handoff("ada", "alice", at(-10))
    rows.handoff("bo", "bob", at(-10))
    alices = started(database, rep_id="alice")
    everyone = started(database)
    rows.respond("ada", "email.click", at(1))
    rows.respond("bo", "email.click", at(2))
    rows.respond("cy", "email.click", at(3))
    assert [item.email for item in poll(database, alices)] == ["ada@example.com"]
    assert [item.email for item in poll(database, everyone)] == [
        "ada@example.com", "bo@example.com", "cy@example.com"]  # fmt: skip


def test_a_poll_reads_at_most_the_newest_rows_of_each_source(database, rows, monkeypatch):
    monkeypatch.setattr(live_feed, "LIMIT", 3)
    feed = started(database)
    for n in range(5):
        rows.send("ada", at(n + 1), f"Step {n}")
    assert [item.text for item in poll(database, feed)] == [
        f'was sent "Step {n}" by email' for n in (2, 3, 4)
    ]


def test_a_feed_resumes_from_its_token(database, rows):
    feed = started(database)
    rows.send("ada", at(5))
    rows.stage("ada", "lead", "mql", at(6))
    assert len(poll(database, feed)) == 2
    token = live_feed.token(feed)
    rows.send("bo", at(7), "Meanwhile")
    resumed = live_feed.resume(token, now=at(8))
    meanwhile = ['10:54:07 bo@example.com was sent "Meanwhile" by email']
    assert lines(poll(database, resumed)) == meanwhile
    # A token sent back a day later goes back RESUME_WITHIN at most.
    stale = live_feed.resume(token, now=at(86_400))
    assert live_feed._key(stale.floor["send"]) == at(86_400) - live_feed.RESUME_WITHIN
    good = {"send": T0.isoformat(), "response": T0.isoformat(), "stage": 1, "handoff": 1}
    bad = [{**good, "send": "x"}, {**good, "stage": "1"}, {**good, "handoff": True}]
    for junk in ("", "null", "[]", '{"send": 1}', *(json.dumps(b) for b in bad)):
        assert live_feed.resume(junk) is None, junk
    assert live_feed.resume(json.dumps(good)) is not None
