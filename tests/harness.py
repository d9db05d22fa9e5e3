"""The lead workflow under test: a worker with real activities, and helpers to drive it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

from sqlalchemy import select
from temporalio.service import RPCError

from models.db import Handoff, Message
from models.workflow_io import lead_workflow_id
from services.intake import EventIn, Intake, LeadIn
from services.runtime import build_activities, build_worker, open_database, sync_sales_reps
from workflows.lead import LeadWorkflow

QUERY_TIMEOUT = timedelta(seconds=3)


async def eventually(check, timeout: float = 30, what: str = "condition"):
    """Poll `check` (plain or async) until it returns something truthy; return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert asyncio.get_running_loop().time() < deadline, f"{what}: not within {timeout:.0f}s"
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def running_harness(env, settings, definitions) -> AsyncIterator[Harness]:
    """A worker on `env` with real activities (SQLite, the outbox) for `definitions`."""
    database = open_database(settings)
    sync_sales_reps(database, definitions)
    client = env.client
    worker = build_worker(client, settings, build_activities(settings, database, definitions))
    intake = Intake(definitions, database.sessions, client, settings.task_queue)
    async with worker:
        yield Harness(env, intake, database, settings)
        # Let activities still in flight (notifications...) finish with the worker up,
        # before their database goes away.
        for workflow_id in Harness.started:
            await _settle(client.get_workflow_handle(workflow_id))
    Harness.started.clear()
    database.engine.dispose()


async def _settle(handle, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        try:
            description = await handle.describe()
        except RPCError:
            return
        if not description.raw_description.pending_activities:
            return
        await asyncio.sleep(0.1)


class Harness:
    started: list[str] = []

    def __init__(self, env, intake, database, settings):
        self.env, self.intake, self.database, self.settings = env, intake, database, settings

    async def enroll(self, sequence: str | None = None, **fields) -> str:
        lead, _ = self.intake.upsert_lead(LeadIn(**fields))
        await self.intake.enroll(lead, sequence)
        Harness.started.append(lead_workflow_id(lead.id))
        return lead.id

    async def respond(self, lead_id: str, kind: str, event_id: str | None = None) -> None:
        # Stamped with the server's clock: after a time skip it runs ahead of the wall
        # clock, and a wall-clock stamp would look days old (and decayed).
        occurred_at = await self.env.get_current_time()
        rows = self.intake.store_events(
            [EventIn(lead_id=lead_id, type=kind, event_id=event_id, occurred_at=occurred_at)]
        ).stored
        await self.intake.deliver(rows)

    def handle(self, lead_id: str):
        return self.env.client.get_workflow_handle_for(LeadWorkflow.run, lead_workflow_id(lead_id))

    async def state(self, lead_id: str):
        # A query the time-skipping server loses (one sent as a run continues as new while
        # a local activity runs) is asked again after 3 s, not after the default 30 s.
        return await self.handle(lead_id).query(LeadWorkflow.state, rpc_timeout=QUERY_TIMEOUT)

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


def lead_with_handoff(intake: Intake, database, email: str = "ada@example.com"):
    """A lead and a pending handoff of it to alice (the fixture team's first rep)."""
    lead, _ = intake.upsert_lead(LeadIn(email=email))
    with database.sessions.begin() as session:
        handoff = Handoff(lead_id=lead.id, cycle=1, rep_id="alice", score=80, reason="hot")
        session.add(handoff)
    return lead, handoff
