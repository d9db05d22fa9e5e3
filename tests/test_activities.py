"""Activities against a real database (SQLite and PostgreSQL): each is idempotent."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import func, select

from models.consent import ConsentEffect, set_consent
from models.db import (
    Enrollment,
    Handoff,
    Lead,
    Message,
    Response,
    SalesRepRow,
    ScoreChange,
    StageChange,
    utcnow,
)
from models.workflow_io import (
    FinishEnrollment,
    HandoffRequest,
    ScoreRequest,
    ScoreUpdate,
    SendRequest,
    StartEnrollment,
)
from services.runtime import build_activities


def make_lead(database, **fields) -> str:
    with database.sessions.begin() as session:
        lead = Lead(email=fields.pop("email", "lin@example.com"), first_name="Lin", **fields)
        session.add(lead)
        session.flush()
        return lead.id


def count(database, model) -> int:
    with database.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def start(activities, lead_id: str) -> str:
    activities.start_enrollment(
        StartEnrollment(lead_id=lead_id, enrollment_id=f"{lead_id}:month:v1",
                        workflow_id=f"lead-{lead_id}", sequence_id="month", sequence_version=1)
    )  # fmt: skip
    return f"{lead_id}:month:v1"


def send_request(lead_id, enrollment_id, step_id, channel, template) -> SendRequest:
    return SendRequest(lead_id=lead_id, enrollment_id=enrollment_id, sequence_id="month",
                       step_id=step_id, visit=1, channel=channel, template=template)  # fmt: skip


def test_send_is_claimed_once_and_retries_return_the_same_message(settings, database):
    activities = build_activities(settings, database).lead
    lead_id = make_lead(database, phone="+14155550100")
    enrollment_id = start(activities, lead_id)
    request = send_request(lead_id, enrollment_id, "welcome", "email", "hello")
    first = activities.send_message(request)
    again = activities.send_message(request)  # a retry after the worker lost the answer
    assert first.status == "sent" and again == first
    assert count(database, Message) == 1
    (eml,) = settings.outbox_dir.glob("*.eml")
    content = eml.read_text()
    assert "Subject: Hello Lin" in content and "To: lin@example.com" in content
    assert f"X-Nurture-Lead-Id: {lead_id}" in content and "List-Unsubscribe" in content
    # A later visit of the same step is a different send.
    activities.send_message(request.model_copy(update={"visit": 2}))
    assert count(database, Message) == 2


def test_concurrent_claims_send_once(settings, database):
    activities = build_activities(settings, database).lead
    lead_id = make_lead(database, phone="+14155550100")
    enrollment_id = start(activities, lead_id)
    request = send_request(lead_id, enrollment_id, "nudge", "sms", "ping")
    outcomes = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(activities.send_message(request)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert count(database, Message) == 1
    assert len(list(settings.outbox_dir.glob("*.sms.txt"))) == 1
    assert {o.message_id for o in outcomes} == {outcomes[0].message_id}


def test_opted_out_lead_is_skipped(settings, database):
    activities = build_activities(settings, database).lead
    lead_id = make_lead(database)
    with database.sessions.begin() as session:
        set_consent(session, session.get(Lead, lead_id), ConsentEffect("email", False, "manual"))
    enrollment_id = start(activities, lead_id)
    outcome = activities.send_message(
        send_request(lead_id, enrollment_id, "welcome", "email", "hello")
    )
    assert (outcome.status, outcome.reason) == ("skipped", "opted out of email (manual)")
    assert not settings.outbox_dir.exists() or not list(settings.outbox_dir.iterdir())


def test_score_and_stage_changes_are_recorded_once(settings, database):
    activities = build_activities(settings, database).lead
    lead_id = make_lead(database)
    update = ScoreUpdate(
        lead_id=lead_id, event_id="evt-1", response_type="webinar.attended", old_score=0,
        new_score=55, reason="webinar.attended +55", old_stage="lead", new_stage="sql",
        stages_entered=["mql", "sql"],
    )  # fmt: skip
    activities.record_score(update)
    activities.record_score(update)
    assert count(database, ScoreChange) == 1
    with database.sessions() as session:
        stages = session.execute(select(StageChange.from_stage, StageChange.to_stage)).all()
        assert sorted(stages) == [("lead", "mql"), ("mql", "sql")]
        assert (session.get(Lead, lead_id).score, session.get(Lead, lead_id).stage) == (55, "sql")


def test_a_burst_is_scored_once_and_each_response_shows_it(settings, database):
    """Three responses handled together: one score change counts all three, each response
    points at it, and none of them is scored again when delivered again later (after its
    workflow continued as new and forgot it) or when the activity is retried."""
    activities = build_activities(settings, database).lead
    lead_id = make_lead(database)
    now = utcnow()
    with database.sessions.begin() as session:
        for event_id, kind in (("o1", "email.open"), ("c1", "email.click"), ("v1", "page.view")):
            session.add(Response(event_id=event_id, lead_id=lead_id, type=kind,
                                 occurred_at=now, delivered_at=now))  # fmt: skip
        # Delivered to the workflow but not in this burst: counted in the card, not marked.
        session.add(Response(event_id="v0", lead_id=lead_id, type="page.view",
                             occurred_at=now, delivered_at=now))  # fmt: skip
    burst = ScoreRequest(lead_id=lead_id, event_id="v1", cause="page.view", at=now,
                         batch_event_ids=["o1", "c1"])  # fmt: skip
    result = activities.score_lead(burst)
    assert (result.total, result.stage, result.entered) == (26, "mql", ["mql"])
    assert activities.score_lead(burst) == result  # a retry answers the same
    again = activities.score_lead(ScoreRequest(
        lead_id=lead_id, event_id="c1", cause="email.click", at=now + timedelta(days=1)
    ))  # fmt: skip
    assert again == result  # the workflow sees `requested_at` is not its own: stale
    with database.sessions() as session:
        (change,) = session.scalars(select(ScoreChange)).all()
        assert (change.event_id, change.new_score) == ("v1", 26)
        scored_in = dict(session.execute(select(Response.event_id, Response.scored_in)).all())
    assert scored_in == {"o1": change.id, "c1": change.id, "v1": change.id, "v0": None}
    assert count(database, StageChange) == 1


def test_handoff_once_per_cycle_round_robin_over_active_reps(settings, database):
    activities = build_activities(settings, database).lead
    reps = []
    for n in range(4):
        lead_id = make_lead(database, email=f"l{n}@example.com")
        request = HandoffRequest(lead_id=lead_id, cycle=1, score=60, reasons=["email.reply +30"])
        first = activities.hand_off(request)
        assert activities.hand_off(request) == first  # retried: same handoff, same rep
        reps.append(first.rep_id)
    assert reps == ["alice", "bob", "alice", "bob"]  # carol is inactive
    assert count(database, Handoff) == 4
    assert len(list(settings.outbox_dir.glob("handoff-*.eml"))) == 4
    with database.sessions() as session:
        assert session.get(SalesRepRow, "carol").last_assigned_at is None


def test_enrollment_rows(settings, database):
    activities = build_activities(settings, database).lead
    lead_id = make_lead(database)
    enrollment_id = start(activities, lead_id)
    start(activities, lead_id)
    finish = FinishEnrollment(enrollment_id=enrollment_id, status="exited", reason="done")
    activities.finish_enrollment(finish)
    activities.finish_enrollment(finish.model_copy(update={"reason": "later"}))
    with database.sessions() as session:
        (row,) = session.scalars(select(Enrollment)).all()
        assert (row.status, row.exit_reason) == ("exited", "done") and row.ended_at is not None


def test_concurrent_handoffs_spread_over_reps(settings, database):
    activities = build_activities(settings, database).lead
    lead_ids = [make_lead(database, email=f"c{n}@example.com") for n in range(4)]
    results = []

    def hand_off(lead_id):
        results.append(
            activities.hand_off(HandoffRequest(lead_id=lead_id, cycle=1, score=60, reasons=[]))
        )

    threads = [threading.Thread(target=hand_off, args=(lead_id,)) for lead_id in lead_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.rep_id for r in results) == ["alice", "alice", "bob", "bob"]
