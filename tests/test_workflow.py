"""The lead workflow on the time-skipping server, with real activities, SQLite and the outbox."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest
from sqlalchemy import select
from temporalio.service import RPCError

from models.db import Enrollment, Handoff, Lead, Message, ScoreChange, StageChange
from models.workflow_io import lead_workflow_id
from nurture.intake import EventIn, Intake, LeadIn
from nurture.runtime import build_activities, build_worker, open_database, sync_sales_reps
from workflows.lead import LeadWorkflow


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, fixture_definitions):
    database = open_database(sqlite_settings)
    sync_sales_reps(database, fixture_definitions)
    client = time_skipping_env.client
    worker = build_worker(client, sqlite_settings, build_activities(sqlite_settings, database))
    intake = Intake(fixture_definitions, database.sessions, client, sqlite_settings.task_queue)
    async with worker:
        yield Harness(time_skipping_env, intake, database, sqlite_settings)
    for workflow_id in Harness.started:
        with contextlib.suppress(Exception):  # already closed is fine
            await client.get_workflow_handle(workflow_id).terminate("test over")
    Harness.started.clear()
    database.engine.dispose()


class Harness:
    started: list[str] = []

    def __init__(self, env, intake, database, settings):
        self.env, self.intake, self.database, self.settings = env, intake, database, settings

    async def enroll(self, **fields) -> str:
        lead, _ = self.intake.upsert_lead(LeadIn(**fields))
        await self.intake.enroll(lead)
        Harness.started.append(lead_workflow_id(lead.id))
        return lead.id

    async def respond(self, lead_id: str, kind: str, event_id: str | None = None) -> None:
        rows, _ = self.intake.store_events([EventIn(lead_id=lead_id, type=kind, event_id=event_id)])
        await self.intake.deliver(rows)

    def handle(self, lead_id: str):
        return self.env.client.get_workflow_handle_for(LeadWorkflow.run, lead_workflow_id(lead_id))

    async def state(self, lead_id: str):
        return await self.handle(lead_id).query(LeadWorkflow.state)

    async def until(self, lead_id: str, predicate, timeout: float = 15):
        """Poll the workflow's state (in real time, without skipping time) until predicate holds."""
        deadline = asyncio.get_running_loop().time() + timeout
        state = None
        while True:
            with contextlib.suppress(RPCError):  # a query can time out while the worker is busy
                state = await self.state(lead_id)
                if predicate(state):
                    return state
            assert asyncio.get_running_loop().time() < deadline, f"gave up waiting: {state}"
            await asyncio.sleep(0.1)

    def rows(self, model, lead_id: str):
        with self.database.sessions() as session:
            return list(session.scalars(select(model).where(model.lead_id == lead_id)))

    def sent_steps(self, lead_id: str) -> list[str]:
        return [m.step_id for m in self.rows(Message, lead_id) if m.status == "sent"]


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
    assert "page.view +10" in change.reason
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
    state = await harness.until(lead_id, lambda s: s.responses_handled == 2)
    await harness.until(lead_id, lambda s: s.enrollment_status == "handed_off")
    assert state.stage == "sql" and state.score == 100
    (handoff,) = harness.rows(Handoff, lead_id)
    assert handoff.rep_id in ("alice", "bob")  # never the inactive rep
    assert [(s.from_stage, s.to_stage) for s in harness.rows(StageChange, lead_id)] == [
        ("lead", "mql"),
        ("mql", "sql"),
    ]
    assert len(harness.rows(ScoreChange, lead_id)) == 2
    notifications = list(harness.settings.outbox_dir.glob("handoff-*.eml"))
    assert len(notifications) == 1
    # Nurture stopped: the rest of the sequence never sends.
    await harness.env.sleep(timedelta(days=30))
    assert harness.sent_steps(lead_id) == ["welcome"]


async def test_handoffs_go_round_robin(harness):
    reps = []
    for n in range(3):
        lead_id = await harness.enroll(email=f"rr{n}@example.com")
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
