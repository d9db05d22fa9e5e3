"""The lead workflow on the time-skipping server, with real activities, SQLite and the outbox."""

from __future__ import annotations

from datetime import timedelta

import pytest

from models.db import Enrollment, Handoff, Lead, Response, ScoreChange, StageChange
from tests.harness import eventually, running_harness


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, fixture_definitions):
    async with running_harness(time_skipping_env, sqlite_settings, fixture_definitions) as h:
        yield h


async def test_thirty_day_sequence_runs_to_the_end(harness):
    lead_id = await harness.enroll(email="month@example.com", first_name="Mo", phone="+14155550100")
    await harness.env.sleep(timedelta(days=32))
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    # No click and a score under 5: the timeout path, then the `else` of the branch.
    assert harness.sent_steps(lead_id) == ["welcome", "nudge", "last_try", "thanks"]
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "month over")
    files = sorted(p.name for p in harness.settings.outbox_dir.iterdir())
    assert len(files) == 4 and sum(name.endswith(".sms.txt") for name in files) == 1


async def test_response_during_a_wait_is_scored_at_once(harness):
    lead_id = await harness.enroll(email="waiting@example.com")
    waiting = await harness.until(lead_id, lambda s: s.step_id == "pause")
    await harness.respond(lead_id, "page.view")
    state = await harness.until(lead_id, lambda s: s.score == 10)
    # Still in the same 7-day wait, timer untouched: the response did not wait for it.
    assert state.step_id == "pause"
    assert state.next_action_at == waiting.next_action_at
    (change,) = harness.rows(ScoreChange, lead_id)
    assert (change.old_score, change.new_score) == (0, 10)
    assert "page_view +10.0" in change.reason and change.cause == "page.view"
    assert [line["rule"] for line in change.breakdown["breakdown"]] == ["page_view"]
    with harness.database.sessions() as session:
        assert session.get(Lead, lead_id).score == 10


async def test_click_during_wait_for_takes_the_event_branch(harness):
    lead_id = await harness.enroll(email="clicker@example.com")
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    await harness.respond(lead_id, "email.click")
    await harness.until(lead_id, lambda s: s.score == 5)
    await harness.env.sleep(timedelta(days=8))
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    assert harness.sent_steps(lead_id) == ["welcome", "thanks"]


async def test_two_responses_crossing_sql_hand_off_once(harness):
    lead_id = await harness.enroll(email="hot@example.com", first_name="Hot")
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    # Each alone crosses SQL (50); together they must still make a single handoff.
    await harness.respond(lead_id, "webinar.attended", "e1")
    await harness.respond(lead_id, "webinar.attended", "e2")
    await harness.respond(lead_id, "webinar.attended", "e1")  # a redelivery: ignored
    # A response counts as handled before its scoring ends: wait for the scores (a wrong
    # total or stage never comes, and `until` gives up with the last state it saw).
    state = await harness.until(
        lead_id,
        lambda s: (
            s.responses_handled == 2
            and s.enrollment_status == "handed_off"
            and s.score == 100
            and s.stage == "sql"
        ),
    )
    assert state.stage == "sql" and state.score == 100
    (handoff,) = harness.rows(Handoff, lead_id)
    assert handoff.rep_id in ("alice", "bob")  # never the inactive rep
    assert [(s.from_stage, s.to_stage) for s in harness.rows(StageChange, lead_id)] == [
        ("lead", "mql"),
        ("mql", "sql"),
    ]
    # Each response counted once: by a change of its own, or by one change for both when
    # they reach the workflow in one burst (a loaded machine); every change counted one.
    scored_in = {r.event_id: r.scored_in for r in harness.rows(Response, lead_id)}
    assert set(scored_in) == {"e1", "e2"} and None not in scored_in.values()
    assert set(scored_in.values()) == {c.id for c in harness.rows(ScoreChange, lead_id)}

    def rep_emails() -> list:  # the new-lead email (the SLA's reminders come later)
        return list(harness.settings.outbox_dir.glob("handoff-*-new-*.eml"))

    # The rep's email goes out on its own activity, just after the handoff.
    await eventually(rep_emails, what="the rep's email")
    # Nurture stopped: the rest of the sequence never sends, and the rep is told once.
    await harness.env.sleep(timedelta(days=30))
    assert harness.sent_steps(lead_id) == ["welcome"]
    assert len(rep_emails()) == 1


async def test_handoffs_go_round_robin(harness):
    reps = []
    for n in range(3):
        # Each from its own company: a company's later leads go to its owner instead.
        lead_id = await harness.enroll(email=f"rr@company{n}.example")
        await harness.until(lead_id, lambda s: s.step_id == "pause")
        await harness.respond(lead_id, "webinar.attended")
        await harness.until(lead_id, lambda s: s.handoff_rep_id is not None)
        reps.append(harness.rows(Handoff, lead_id)[0].rep_id)
    assert reps[:2] in (["alice", "bob"], ["bob", "alice"]) and reps[2] == reps[0]


async def test_exited_lead_sends_nothing_more(harness):
    lead_id = await harness.enroll(email="exit@example.com", country="DE")
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    await harness.env.sleep(timedelta(days=10))
    await harness.respond(lead_id, "page.view")
    await harness.until(lead_id, lambda s: s.score == 10)  # still scored after the exit
    await harness.env.sleep(timedelta(days=10))
    assert harness.sent_steps(lead_id) == ["first"]
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert (enrollment.status, enrollment.exit_reason) == ("exited", "not for us")


async def test_enrolling_twice_is_a_no_op(harness):
    lead_id = await harness.enroll(email="twice@example.com", country="FR")
    await harness.until(lead_id, lambda s: s.step_id == "more")
    with harness.database.sessions() as session:
        lead = session.get(Lead, lead_id)
    await harness.intake.enroll(lead)
    await harness.env.sleep(timedelta(days=2))
    await harness.until(lead_id, lambda s: s.enrollment_status == "completed")
    assert harness.sent_steps(lead_id) == ["first", "second"]
    assert len(harness.rows(Enrollment, lead_id)) == 1
