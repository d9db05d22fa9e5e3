"""Weekly retraining (issue 19, point 4): the worker keeps a Temporal Schedule in line
with scoring.yaml's `predictive.retrain` (weekly: created, then updated; off: deleted),
and a run trains on the stored history and stores a candidate that nobody activated.
On the Temporal dev server; the run on SQLite and PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import uuid
from datetime import timedelta

import pytest
from temporalio.client import ScheduleOverlapPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.training import RetrainRequest, RetrainResult, TrainingActivities
from models.db import PredictiveModelRecord
from services.retrain_schedule import SCHEDULE_ID, ensure_schedule
from tests.test_model_drift import history_leads, store_history
from workflows.retrain import RetrainWorkflow


def retraining(definitions, value: str):
    predictive = definitions.scoring.predictive.model_copy(update={"retrain": value})
    scoring = definitions.scoring.model_copy(update={"predictive": predictive})
    return dataclasses.replace(definitions, scoring=scoring)


async def test_the_worker_keeps_the_schedule_to_scoring_yaml(
    sqlite_settings, fixture_definitions, dev_server_env
):
    client, weekly = dev_server_env.client, retraining(fixture_definitions, "weekly")
    handle = client.get_schedule_handle(SCHEDULE_ID)
    try:
        assert await ensure_schedule(client, sqlite_settings, weekly)
        described = (await handle.describe()).schedule
        assert described.spec.intervals[0].every == timedelta(days=7)
        assert described.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert described.action.workflow == "RetrainWorkflow"
        assert described.action.task_queue == sqlite_settings.task_queue

        moved = sqlite_settings.model_copy(update={"task_queue": "elsewhere"})
        assert await ensure_schedule(client, moved, weekly)  # updated, not a second one
        assert (await handle.describe()).schedule.action.task_queue == "elsewhere"

        off = retraining(fixture_definitions, "off")
        assert not await ensure_schedule(client, sqlite_settings, off)
        with pytest.raises(RPCError) as gone:
            await handle.describe()
        assert gone.value.status == RPCStatusCode.NOT_FOUND
        assert not await ensure_schedule(client, sqlite_settings, off)  # none: nothing to do
    finally:
        with contextlib.suppress(RPCError):
            await handle.delete()


async def test_a_run_stores_a_candidate_nobody_activated(
    database, settings, fixture_definitions, dev_server_env
):
    store_history(database, history_leads(2000, seed=1, until=None))
    activities = TrainingActivities(database.sessions, fixture_definitions)
    queue = f"retrain-{uuid.uuid4().hex[:8]}"
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    worker = Worker(
        dev_server_env.client, task_queue=queue, workflows=[RetrainWorkflow],
        activities=[activities.train_candidate], activity_executor=executor,
    )  # fmt: skip
    async with worker:
        result = await dev_server_env.client.execute_workflow(
            RetrainWorkflow.run, RetrainRequest(actor="test"), id=f"retrain-{queue}",
            task_queue=queue, result_type=RetrainResult,
        )  # fmt: skip
    assert (result.status, result.reasons, result.leads) == ("candidate", [], 2000)
    with database.sessions() as session:
        (record,) = session.query(PredictiveModelRecord).all()
        assert (record.fingerprint, record.status, record.created_by) == (
            result.fingerprint, "candidate", "test")  # fmt: skip
        assert record.activated_at is None and "reference" in record.summary


def test_too_little_history_is_not_retried(database, fixture_definitions):
    activities = TrainingActivities(database.sessions, fixture_definitions)
    with pytest.raises(ApplicationError) as raised:
        ActivityEnvironment().run(activities.train_candidate, RetrainRequest())
    assert raised.value.type == "TrainingError" and raised.value.non_retryable
    assert "too little history" in str(raised.value)
