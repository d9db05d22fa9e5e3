"""The handoff inbox (services/handoff_inbox.py) and the manual reassignment of a handoff.

- The inbox over hand-made rows, on SQLite and PostgreSQL: a rep's open handoffs (not
  another rep's), the soonest due first, with the lead, the reasons and the SLA; the ones
  answered lately; every rep's for a manager; the countdown's wording.
- Reassign (the `reassign` update, services/answering.py) on the time-skipping server
  with real activities: the handoff moves, the new rep is notified and the previous one
  told, the SLA starts again for the new rep, the previous rep's answer is refused and the
  new rep's taken; an answered handoff is not reassigned.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError

from models.db import Handoff, Lead
from models.workflow_io import HandoffAnswer, ReassignRequest
from services.answering import AnswerRefused, submit_answer, submit_reassign
from services.handoff_inbox import countdown, duration, inbox, inbox_item, open_counts
from testkit.webhook_sink import WebhookSink
from tests.harness import eventually, running_harness
from tests.test_handoff import arrived, events, qualify, team
from workflows.lead import LeadWorkflow

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def add_lead(session, email: str, **fields) -> Lead:
    lead = Lead(email=email, **fields)
    session.add(lead)
    session.flush()
    return lead


def add_handoff(session, lead: Lead, rep_id: str, **fields) -> Handoff:
    values = {"cycle": 1, "score": 72.5, "grade": "A", "created_at": NOW - timedelta(hours=1),
              "reason": "webinar.attended +40.0; pricing page (3×) +15.0"} | fields  # fmt: skip
    handoff = Handoff(lead_id=lead.id, rep_id=rep_id, **values)
    session.add(handoff)
    session.flush()
    return handoff


@pytest.fixture
def handoffs(database):
    """alice: two open (one due in 20 min, one overdue), one without a deadline, one
    answered yesterday, one answered a month ago; bob: one open, one answered."""
    with database.sessions.begin() as session:
        ada = add_lead(session, "ada@acme.example", first_name="Ada", last_name="Lovelace",
                       company="Acme")  # fmt: skip
        soon = add_handoff(session, ada, "alice", due_at=NOW + timedelta(minutes=20))
        late = add_handoff(session, add_lead(session, "late@acme.example"), "alice",
                           due_at=NOW - timedelta(minutes=5), reminders=1)  # fmt: skip
        free = add_handoff(session, add_lead(session, "free@acme.example"), "alice",
                           due_at=None, reason="")  # fmt: skip
        done = add_handoff(session, add_lead(session, "done@acme.example"), "alice",
                           status="accepted", answered_at=NOW - timedelta(days=1),
                           answered_by="alice@example.com")  # fmt: skip
        add_handoff(session, add_lead(session, "old@acme.example"), "alice", status="rejected",
                    answered_at=NOW - timedelta(days=30), answer_reason="not_ready")  # fmt: skip
        bobs = add_handoff(session, add_lead(session, "bob1@acme.example"), "bob",
                           due_at=NOW + timedelta(hours=2))  # fmt: skip
        add_handoff(session, add_lead(session, "bob2@acme.example"), "bob",
                    status="disqualified", answered_at=NOW - timedelta(hours=3))  # fmt: skip
        ids = {"soon": soon.id, "late": late.id, "free": free.id, "done": done.id, "bob": bobs.id}
    return ids


def test_a_reps_inbox_holds_their_open_handoffs_soonest_due_first(
    database, fixture_definitions, handoffs
):
    box = inbox(database.sessions, fixture_definitions.sales, "alice", NOW)
    assert [item.handoff_id for item in box.open] == [
        handoffs["late"], handoffs["soon"], handoffs["free"]
    ]  # fmt: skip
    late, soon, free = box.open
    assert (soon.email, soon.name, soon.company) == ("ada@acme.example", "Ada Lovelace", "Acme")
    assert (late.name, late.company) == ("late@acme.example", None)  # no name: the address
    assert soon.reasons == ("webinar.attended +40.0", "pricing page (3×) +15.0")
    assert free.reasons == ()
    assert soon.handed_off_at == NOW - timedelta(hours=1)
    assert soon.due_at == NOW + timedelta(minutes=20) and soon.sla_seconds == 15 * 60
    assert soon.time_left(NOW) == timedelta(minutes=20) and not soon.overdue(NOW)
    assert soon.countdown(NOW) == "due in 20 min"
    assert late.countdown(NOW) == "overdue by 5 min" and late.overdue(NOW)
    assert late.reminders == 1 and free.countdown(NOW) == "no deadline"
    assert (soon.rep_id, soon.rep_name, soon.status) == ("alice", "Alice Rep", "pending")
    # Answered lately, not a month ago; never bob's.
    assert [item.handoff_id for item in box.answered] == [handoffs["done"]]
    assert box.answered[0].answered_by == "alice@example.com"
    assert not box.truncated


def test_a_manager_sees_every_reps_queue_and_the_counts(database, fixture_definitions, handoffs):
    box = inbox(database.sessions, fixture_definitions.sales, None, NOW)
    assert {item.rep_id for item in box.open} == {"alice", "bob"}
    assert len(box.open) == 4 and box.open[-1].handoff_id == handoffs["free"]
    assert [item.rep_id for item in box.answered] == ["bob", "alice"]  # latest answer first
    assert open_counts(database.sessions) == {"alice": 3, "bob": 1}
    bobs = inbox(database.sessions, fixture_definitions.sales, "bob", NOW)
    assert [item.handoff_id for item in bobs.open] == [handoffs["bob"]]
    nobody = inbox(database.sessions, fixture_definitions.sales, "carol", NOW)
    assert nobody.open == [] and nobody.answered == []


def test_a_long_queue_comes_in_pages(database, fixture_definitions, handoffs):
    box = inbox(database.sessions, fixture_definitions.sales, "alice", NOW, limit=2)
    assert [item.handoff_id for item in box.open] == [handoffs["late"], handoffs["soon"]]
    assert box.truncated
    rest = inbox(database.sessions, fixture_definitions.sales, "alice", NOW, limit=2, offset=2)
    assert [item.handoff_id for item in rest.open] == [handoffs["free"]]
    assert not rest.truncated and rest.offset == 2


def test_one_item_as_the_inbox_shows_it(database, fixture_definitions, handoffs):
    item = inbox_item(database.sessions, fixture_definitions.sales, handoffs["done"])
    assert (item.status, item.email) == ("accepted", "done@acme.example")
    assert item.answered_at == NOW - timedelta(days=1)
    assert inbox_item(database.sessions, fixture_definitions.sales, "nope") is None


@pytest.mark.parametrize(
    ("left", "said"),
    [
        (timedelta(hours=1, minutes=20, seconds=59), "due in 1 h 20 min"),
        (timedelta(hours=2), "due in 2 h"),
        (timedelta(days=2, hours=3, minutes=7), "due in 2 d 3 h"),
        (timedelta(days=1, minutes=7), "due in 1 d"),
        (timedelta(seconds=30), "due now"),
        (timedelta(seconds=-59), "due now"),
        (-timedelta(minutes=5, seconds=10), "overdue by 5 min"),
        (-timedelta(hours=26), "overdue by 1 d 2 h"),
    ],
)
def test_the_countdown_reads_as_a_rep_says_it(left, said):
    assert countdown(NOW + left, NOW) == said


def test_a_duration_under_a_minute_is_zero_minutes():
    assert duration(timedelta(seconds=20)) == "0 min"


# --- reassign: the workflow, on the time-skipping server ------------------------------------

ADMIN = "admin@example.com"


@pytest.fixture
def sink():
    with WebhookSink() as server:
        yield server


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, fixture_definitions, sink):
    definitions = dataclasses.replace(fixture_definitions, sales=team(sink))
    async with running_harness(time_skipping_env, sqlite_settings, definitions) as h:
        yield h


async def reassign(harness, handoff_id: str, rep_id: str):
    request = ReassignRequest(handoff_id=handoff_id, rep_id=rep_id, by=ADMIN)
    return await submit_reassign(harness.env.client, harness.database.sessions,
                                 harness.intake.definitions.sales, request)  # fmt: skip


async def answer(harness, handoff_id: str, rep_id: str):
    request = HandoffAnswer(handoff_id=handoff_id, answer="accept", by=rep_id)
    return await submit_answer(harness.env.client, harness.database.sessions, request, rep_id)


def kinds(harness, handoff_id: str) -> list[tuple[str, str]]:
    return [(e.kind, e.rep_id) for e in events(harness, handoff_id) if e.kind != "notified"]


async def test_a_manager_moves_a_handoff_and_the_sla_starts_again(harness, sink):
    lead_id, handoff = await qualify(harness, "moved@acme.example")
    first = handoff.rep_id
    other = "bob" if first == "alice" else "alice"
    await arrived(sink, 1, f"/slack/{first}")
    await harness.env.sleep(timedelta(minutes=10))  # 5 min of the first rep's 15 left

    result = await reassign(harness, handoff.id, other)
    assert (result.rep_id, result.previous_rep_id) == (other, first)
    assert ADMIN in result.message and result.due_at is not None
    state = await harness.until(lead_id, lambda s: s.handoff.rep_id == other)
    assert state.handoff.reassignments == 1 and state.handoff_rep_id == other
    assert state.handoff.due_at == result.due_at
    # Both reps told on their channels, as a lapse's reassignment tells them.
    (told,) = await arrived(sink, 1, f"/slack/{other}")
    assert "reassigned to you" in told.json()["text"].lower()
    away = (await arrived(sink, 2, f"/slack/{first}"))[1]
    assert "reassigned" in away.json()["text"].lower()
    with harness.database.sessions() as session:
        stored = session.get(Handoff, handoff.id)
        assert (stored.rep_id, stored.reassignments) == (other, 1)
        assert f"by {ADMIN}" in stored.routing
        assert session.get(Lead, lead_id).owner_rep_id == other
    assert kinds(harness, handoff.id) == [
        ("assigned", first), ("reassigned_away", first), ("reassigned_to", other)
    ]  # fmt: skip

    # The first rep's 15 minutes would have lapsed by now; the new rep's have not.
    await harness.env.sleep(timedelta(minutes=10))
    assert not [k for k in kinds(harness, handoff.id) if k[0] == "reminded"]
    await harness.env.sleep(timedelta(minutes=6))
    await eventually(lambda: ("reminded", other) in kinds(harness, handoff.id), what="reminder")

    with pytest.raises(AnswerRefused, match=f"reassigned to {other}"):
        await answer(harness, handoff.id, first)
    assert (await answer(harness, handoff.id, other)).stage == "accepted"
    state = await harness.until(lead_id, lambda s: s.handoff.status == "accepted")
    assert state.stage == "accepted"


async def test_a_reassign_is_refused_with_the_reason(harness):
    lead_id, handoff = await qualify(harness, "refused@acme.example")
    first = handoff.rep_id
    with pytest.raises(AnswerRefused, match=f"already with {first}") as refused:
        await reassign(harness, handoff.id, first)
    assert refused.value.status == 409
    with pytest.raises(AnswerRefused, match="carol is not an active rep"):
        await reassign(harness, handoff.id, "carol")
    # Past the service's checks, the workflow's activity refuses a rep it cannot give it.
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await harness.handle(lead_id).execute_update(
            LeadWorkflow.reassign, ReassignRequest(handoff_id=handoff.id, rep_id="carol")
        )
    assert "carol is not an active rep" in failed.value.cause.message
    assert (await harness.state(lead_id)).handoff.rep_id == first

    await answer(harness, handoff.id, first)
    other = "bob" if first == "alice" else "alice"
    with pytest.raises(AnswerRefused, match=f"already accepted by {first}") as refused:
        await reassign(harness, handoff.id, other)
    assert refused.value.status == 409
    with pytest.raises(WorkflowUpdateFailedError) as failed:  # the workflow says so too
        await harness.handle(lead_id).execute_update(
            LeadWorkflow.reassign, ReassignRequest(handoff_id=handoff.id, rep_id=other)
        )
    assert "already answered (accepted)" in failed.value.cause.message
    with harness.database.sessions() as session:
        assert session.get(Handoff, handoff.id).rep_id == first
    assert [k for k, _ in kinds(harness, handoff.id)] == ["assigned", "answered"]


async def test_a_reassign_after_the_chase_stopped_follows_the_sla_again(harness):
    """Both reps had it (reminded, reassigned, reminded): the chase stops; a manager's
    reassignment starts it again."""
    lead_id, handoff = await qualify(harness, "stopped@acme.example")
    first = handoff.rep_id
    await harness.env.sleep(timedelta(hours=1, minutes=5))
    state = await harness.until(lead_id, lambda s: s.handoff.due_at is None)
    assert state.handoff.rep_id != first and state.handoff.status == "pending"

    result = await reassign(harness, handoff.id, first)
    assert result.due_at is not None
    await harness.env.sleep(timedelta(minutes=16))
    await eventually(lambda: kinds(harness, handoff.id)[-1] == ("reminded", first),
                     what="the first rep reminded again")  # fmt: skip
