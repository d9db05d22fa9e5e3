"""A lead's long life in several runs: continue-as-new with its state carried over.

On the time-skipping server with a run ending every few responses: the sequence's timer,
sends, de-duplication and the score survive each boundary. On the dev server: a lead
that receives 10,000 responses keeps working, each handled exactly once.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus

from models.db import Lead, Message, Response, ScoreChange, StageChange
from models.workflow_io import lead_workflow_id
from services.intake import EventIn, Intake
from tests.harness import eventually, running_harness


def with_runs_every(harness, responses: int):
    """The harness's intake, starting workflows that continue as new every `responses`."""
    intake = harness.intake
    harness.intake = Intake(intake.definitions, intake.sessions, intake.client,
                            intake.task_queue, responses_per_run=responses)  # fmt: skip
    return harness


def all_scored(harness, lead_id: str, event_ids: list[str]) -> bool:
    with harness.database.sessions() as session:
        scored = session.scalars(select(Response.event_id).where(
            Response.lead_id == lead_id, Response.scored_in.is_not(None)))  # fmt: skip
        return set(event_ids) <= set(scored)


async def run_ids(client, lead_id: str) -> list[tuple[str, EventType.ValueType]]:
    """Every run of the lead's workflow, oldest first, with the event that closed it."""
    runs, run_id = [], (await client.get_workflow_handle(lead_workflow_id(lead_id)).describe())
    # Walk back from the current run through each run's first event's `continued` link.
    run_id = run_id.run_id
    while run_id:
        history = await client.get_workflow_handle(lead_workflow_id(lead_id),
                                                   run_id=run_id).fetch_history()  # fmt: skip
        runs.insert(0, (run_id, history.events[-1].event_type))
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id
    return runs


async def test_a_run_ends_mid_wait_and_the_next_picks_the_sequence_up(
    time_skipping_env, sqlite_settings, fixture_definitions
):
    async with running_harness(time_skipping_env, sqlite_settings, fixture_definitions) as h:
        with_runs_every(h, 3)
        lead_id = await h.enroll(email="long@example.com")
        waiting = await h.until(lead_id, lambda s: s.step_id == "pause")  # a 7-day wait
        first_ids = []
        for n in range(3):
            first_ids.append(f"open-{n}")
            await h.respond(lead_id, "email.open", event_id=f"open-{n}")
        # Watched in the database and the runs, not by queries: the time-skipping server
        # can lose a query sent just as a run continues as new (never a real server).
        await eventually(lambda: all_scored(h, lead_id, first_ids), what="the opens scored")

        async def continued() -> bool:
            return len(await run_ids(h.env.client, lead_id)) >= 2

        for _ in range(100):
            if await continued():
                break
            await asyncio.sleep(0.1)
        runs = await run_ids(h.env.client, lead_id)
        assert [closed for _, closed in runs[:-1]] == [
            EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
        ]
        # The next run knows what the last one did: the score, the step, the same timer.
        state = await h.state(lead_id)
        assert (state.responses_handled, state.score, state.step_id) == (3, 3, "pause")
        assert state.next_action_at == waiting.next_action_at
        assert state.enrollment_id == waiting.enrollment_id

        # An event the first run handled, delivered again: recognised, not scored again.
        cards = len(h.rows(ScoreChange, lead_id))  # 2 or 3: a burst is scored once
        with h.database.sessions() as session:
            again = list(session.scalars(select(Response).where(Response.event_id == "open-0")))
        await h.intake.deliver(again)
        await h.respond(lead_id, "email.click", event_id="click-1")
        state = await h.until(lead_id, lambda s: s.score == 8)
        assert state.responses_handled == 4
        assert [c.event_id for c in h.rows(ScoreChange, lead_id)][cards:] == ["click-1"]

        # The wait ends on the carried timer; the click (since the last send) takes the
        # `clicked` step to `thanks`: each message sent once over both runs.
        await h.env.sleep(timedelta(days=7, hours=1))
        await h.until(lead_id, lambda s: s.enrollment_status == "exited")
        assert h.sent_steps(lead_id) == ["welcome", "thanks"]
        assert len(h.rows(Message, lead_id)) == 2


async def test_a_handoff_and_its_sla_carry_over(
    time_skipping_env, sqlite_settings, fixture_definitions
):
    async with running_harness(time_skipping_env, sqlite_settings, fixture_definitions) as h:
        with_runs_every(h, 2)
        lead_id = await h.enroll(email="hot@example.com", first_name="Hal")
        await h.until(lead_id, lambda s: s.step_id == "pause")
        await h.respond(lead_id, "webinar.attended", event_id="webinar")
        handed = await h.until(lead_id, lambda s: s.handoff is not None)
        await h.respond(lead_id, "email.open", event_id="open-after")  # the second: a new run
        for _ in range(100):
            if len(await run_ids(h.env.client, lead_id)) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(await run_ids(h.env.client, lead_id)) >= 2
        state = await h.state(lead_id)
        assert state.handoff.handoff_id == handed.handoff.handoff_id
        assert (state.stage, state.handoff.status) == ("sql", "pending")
        assert state.handoff.due_at == handed.handoff.due_at
        with h.database.sessions() as session:
            stages = [c.to_stage for c in session.scalars(
                select(StageChange).where(StageChange.lead_id == lead_id)
                .order_by(StageChange.id))]  # fmt: skip
        assert stages == ["mql", "sql"]  # crossed once: no second handoff in the new run


@pytest.mark.devserver
async def test_ten_thousand_responses_across_runs(dev_server_env, sqlite_settings,
                                                  fixture_definitions):  # fmt: skip
    total, opens = 10_000, 25
    async with running_harness(dev_server_env, sqlite_settings, fixture_definitions) as h:
        lead_id = await h.enroll(email="busy@example.com")
        waiting = await h.until(lead_id, lambda s: s.step_id == "pause")
        # Delivery receipts (no points) and 25 opens (1 point each): an MQL, never an SQL.
        events = [EventIn(lead_id=lead_id, event_id=f"bulk-{n}",
                          type="email.open" if n % (total // opens) == 0 else "email.delivered")
                  for n in range(total)]  # fmt: skip
        stored = []
        for start in range(0, total, 1000):
            stored += h.intake.store_events(events[start : start + 1000]).stored
        # In bursts of 500 from eight deliverers (as API processes are), each burst taken
        # in while the next is stored: a run can only end between signals.
        for start in range(0, total, 500):
            burst = stored[start : start + 500]
            await asyncio.gather(*(h.intake.deliver(burst[n::8]) for n in range(8)))
            await h.until(lead_id, lambda s, n=start + 500: s.responses_handled >= n, timeout=60)
        state = await h.state(lead_id)
        assert state.responses_handled == total

        # Delivered again (a relay retrying, seconds later): none is scored a second time.
        await h.intake.deliver(stored[-1000::10])
        await h.respond(lead_id, "email.click", event_id="last")
        state = await h.until(lead_id, lambda s: s.score == opens + 5, timeout=60)
        assert state.responses_handled == total + 1

        runs = await run_ids(dev_server_env.client, lead_id)
        assert len(runs) >= 5  # 2,000 responses a run
        assert all(closed == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
                   for _, closed in runs[:-1])  # fmt: skip
        description = await h.handle(lead_id).describe()
        assert description.status == WorkflowExecutionStatus.RUNNING
        assert description.raw_description.workflow_execution_info.history_length < 2_000

        # Nothing lost: every response counted once in the score (25 opens + a click).
        assert (state.score, state.stage) == (opens + 5, "mql")
        with h.database.sessions() as session:
            lead = session.get(Lead, lead_id)
            assert (lead.score, lead.stage) == (opens + 5, "mql")
            undelivered = session.scalar(select(func.count()).select_from(Response).where(
                Response.lead_id == lead_id, Response.delivered_at.is_(None)))  # fmt: skip
            assert undelivered == 0
        changes = h.rows(StageChange, lead_id)
        assert [c.to_stage for c in changes] == ["mql"]
        # The sequence went on waiting on the same timer through every run.
        assert (state.step_id, state.next_action_at) == ("pause", waiting.next_action_at)
        assert h.sent_steps(lead_id) == ["welcome"]
