"""Safe upgrades of sequences: a lead keeps the version it was enrolled on until
`nurture migrate-leads` moves it, at the step it waits in, with its timer kept; a step
the new version lacks is refused (nothing changes) unless mapped."""

from __future__ import annotations

import asyncio
import json
import shutil
from datetime import timedelta

import pytest
import yaml
from temporalio.client import WorkflowUpdateFailedError
from typer.testing import CliRunner

from models.db import Enrollment, Message
from models.definitions import Sequence
from models.workflow_io import MigrateRequest
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import running_harness
from workflows.lead import LeadWorkflow

MONTH = yaml.safe_load((FIXTURE_DEFINITIONS / "sequences" / "month.yaml").read_text())


def month(version: int, rename: dict[str, str] | None = None, nudge_by: str = "email") -> dict:
    """The fixture's `month` sequence as a new version: the nudge by email instead of SMS,
    and steps renamed as given."""
    rename = rename or {}
    steps = []
    for step in MONTH["steps"]:
        step = {key: rename.get(value, value) if isinstance(value, str) else value
                for key, value in step.items()}  # fmt: skip
        if step["id"] == "nudge":
            step = {"id": "nudge", "type": nudge_by,
                    "template": "followup" if nudge_by == "email" else "ping"}  # fmt: skip
        steps.append(step)
    return MONTH | {"version": version, "steps": steps}


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, fixture_definitions):
    async with running_harness(time_skipping_env, sqlite_settings, fixture_definitions) as h:
        yield h


async def test_a_lead_keeps_its_version_until_migrated_then_follows_the_new_one(harness):
    lead_id = await harness.enroll(email="v1@example.com", phone="+14155550100")
    waiting = await harness.until(lead_id, lambda s: s.step_id == "pause")
    assert waiting.sequence_version == 1
    handle = harness.handle(lead_id)

    # v3 renamed the wait: refused, and nothing changes; a mapping to a step of another
    # type is refused too.
    renamed = Sequence.model_validate(month(3, rename={"pause": "rest"}))
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(LeadWorkflow.migrate, MigrateRequest(sequence=renamed))
    assert "the lead is at step 'pause', which v3 has not" in str(refused.value.cause)
    wrong = MigrateRequest(sequence=renamed, step_map={"pause": "welcome"})
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(LeadWorkflow.migrate, wrong)
    assert "'pause' is a wait step but 'welcome' in v3 is a email step" in str(refused.value.cause)
    state = await harness.state(lead_id)
    assert (state.sequence_version, state.next_action_at) == (1, waiting.next_action_at)

    # Mapped: it goes on in v3 from `rest`, on the same timer.
    mapped = MigrateRequest(sequence=renamed, step_map={"pause": "rest"})
    result = await handle.execute_update(LeadWorkflow.migrate, mapped)
    assert (result.from_version, result.to_version, result.from_step, result.to_step) == (
        1, 3, "pause", "rest")  # fmt: skip
    state = await harness.until(lead_id, lambda s: s.step_id == "rest")
    assert (state.sequence_version, state.next_action_at) == (3, waiting.next_action_at)
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert enrollment.sequence_version == 3
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(LeadWorkflow.migrate, mapped)
    assert "the lead is already on month v3" in str(refused.value.cause)

    # v3's nudge is an email: after the wait and the 3-day wait_for, it goes by email;
    # the welcome of v1 is not sent again.
    await harness.env.sleep(timedelta(days=10, hours=1))
    await harness.until(lead_id, lambda s: s.step_id == "long_pause")
    sends = {m.step_id: m.channel for m in harness.rows(Message, lead_id)}
    assert sends == {"welcome": "email", "nudge": "email"}


async def test_the_command_moves_older_leads_and_reports_refusals(harness, tmp_path, monkeypatch):
    on_v1 = await harness.enroll(email="mover@example.com")
    await harness.until(on_v1, lambda s: s.step_id == "pause")
    # The marketer's new definitions: month v2.
    definitions = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, definitions)
    (definitions / "sequences" / "month.yaml").write_text(yaml.safe_dump(month(2)))
    # ... and a new follow-up email (v2's nudge), which the moved lead goes on with.
    (definitions / "templates" / "email" / "followup" / "subject.txt").write_text("v2 nudge")
    settings = harness.settings
    for name, value in {
        "DATABASE_URL": settings.effective_database_url,
        "NURTURE_DEFINITIONS": str(definitions),
        "NURTURE_STATE_DIR": str(settings.state_dir),
        "NURTURE_TASK_QUEUE": settings.task_queue,
        "TEMPORAL_ADDRESS": harness.env.client.service_client.config.target_host,
    }.items():
        monkeypatch.setenv(name, value)

    def invoke(*args: str):
        from cli.app import app

        return CliRunner().invoke(app, ["migrate-leads", *args], env={"COLUMNS": "200"})

    dry = await asyncio.to_thread(invoke, "month", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    assert [(o["email"], o["status"]) for o in json.loads(dry.stdout)] == [
        ("mover@example.com", "would migrate")
    ]
    assert (await harness.state(on_v1)).sequence_version == 1

    moved = await asyncio.to_thread(invoke, "month", "--json")
    assert moved.exit_code == 0, moved.output
    (outcome,) = json.loads(moved.stdout)
    assert (outcome["status"], outcome["detail"]) == ("migrated", "v1 pause -> v2 pause")
    assert (await harness.state(on_v1)).sequence_version == 2
    again = await asyncio.to_thread(invoke, "month")
    assert again.exit_code == 0 and "no running enrollment of month is older than v2" in (
        again.stdout
    )

    bad = await asyncio.to_thread(invoke, "month", "--map", "pause")
    assert bad.exit_code == 2 and "write OLD_STEP=NEW_STEP" in bad.output
    unknown = await asyncio.to_thread(invoke, "nope")
    assert unknown.exit_code == 2 and "no sequence 'nope'" in unknown.output

    # v3 renames the wait: the lead (now on v2) is refused, exit 1, and stays on v2.
    (definitions / "sequences" / "month.yaml").write_text(
        yaml.safe_dump(month(3, rename={"pause": "rest"}))
    )
    refused = await asyncio.to_thread(invoke, "month")
    assert refused.exit_code == 1
    assert "refused" in refused.stdout and "--map pause=STEP" in refused.stdout
    assert (await harness.state(on_v1)).sequence_version == 2

    # On v2, with the templates of the move: the worker's own files are still the old
    # ones, but the send uses the version the command stored.
    await harness.env.sleep(timedelta(days=10, hours=1))
    await harness.until(on_v1, lambda s: s.step_id == "long_pause")
    nudge = {m.step_id: m for m in harness.rows(Message, on_v1)}["nudge"]
    assert (nudge.channel, nudge.status, nudge.subject) == ("email", "sent", "v2 nudge")
