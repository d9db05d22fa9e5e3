"""Experiments in the lead workflow, on the time-skipping server with real activities: a
split step sends each lead down its arm and records it; a holdout arm and a segment's
holdout send nothing, yet the lead is scored and handed off; a lead keeps its arm across
visits, continue-as-new and replay, and after the experiment's winner is set."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from sqlalchemy import select
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from experiments.assignment import assign, held_out
from models.db import Enrollment, ExperimentAssignment, ExperimentRecord, Handoff
from models.workflow_io import lead_workflow_id
from services.definitions import load_definitions
from services.intake import Intake
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import eventually, running_harness
from tests.test_long_life import all_scored, run_ids
from workflows import sandbox_runner
from workflows.lead import LeadWorkflow

SPLIT = """
id: split_test
name: Split
steps:
  - {id: welcome, type: email, template: hello}
  - id: subject
    type: split
    experiment: subject_test
    metric: sql
    arms:
      - {name: control, weight: 2, next: a}
      - {name: short, weight: 1, next: b}
      - {name: rest, weight: 1, holdout: true}
  - {id: a, type: email, template: followup, next: gap}
  - {id: b, type: sms, template: ping}
  - {id: gap, type: wait, duration: 1d}
  - {id: last, type: email, template: followup}
"""
PATHS = {"control": ["welcome", "a", "last"], "short": ["welcome", "b", "last"],
         "rest": ["welcome"]}  # fmt: skip
ARMS = [("control", 2.0), ("short", 1.0), ("rest", 1.0)]

# A split visited again and again: the lead must take the same arm each time.
LOOP = """
id: loop_test
name: Loop
steps:
  - id: pick
    type: split
    experiment: loop_test
    arms:
      - {name: left, next: l}
      - {name: right, next: r}
  - {id: l, type: email, template: hello, next: rest}
  - {id: r, type: sms, template: ping, next: rest}
  - {id: rest, type: wait, duration: 2d, next: pick}
"""

SEGMENTS = """
segments:
  - {id: held, when: "lead.country == 'NL'", sequence: split_test, holdout: 50}
default: {id: everyone, sequence: month}
"""


@pytest.fixture
def experiment_definitions(tmp_path):
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "sequences" / "split_test.yaml").write_text(SPLIT)
    (root / "sequences" / "loop_test.yaml").write_text(LOOP)
    (root / "segments.yaml").write_text(SEGMENTS)
    return load_definitions(root)


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, experiment_definitions):
    settings = sqlite_settings.model_copy(update={"definitions_dir": experiment_definitions.root})
    async with running_harness(time_skipping_env, settings, experiment_definitions) as h:
        yield h


def assignments(harness) -> dict[str, ExperimentAssignment]:
    with harness.database.sessions() as session:
        rows = session.scalars(select(ExperimentAssignment))
        return {(row.experiment, row.lead_id): row for row in rows}


async def test_each_lead_goes_down_its_arm_and_the_arm_is_recorded(harness):
    leads = [await harness.enroll("split_test", email=f"s{i}@example.com", country="US",
                                 phone=f"+1415555{i:04d}")
             for i in range(24)]  # fmt: skip
    await harness.env.sleep(timedelta(days=2))
    for lead_id in leads:
        await harness.until(lead_id, lambda s: s.enrollment_status not in (None, "active"),
                            timeout=60)  # fmt: skip
    stored = assignments(harness)
    seen = set()
    for lead_id in leads:
        arm = assign("subject_test", lead_id, ARMS)
        seen.add(arm)
        row = stored["subject_test", lead_id]
        assert (row.arm, row.holdout) == (arm, arm == "rest")
        assert harness.sent_steps(lead_id) == PATHS[arm], arm
        state = await harness.state(lead_id)
        assert state.experiments == {"subject_test": arm}
        assert state.enrollment_status == ("held_out" if arm == "rest" else "completed")
    assert seen == {"control", "short", "rest"}  # 24 leads reach every arm
    with harness.database.sessions() as session:
        (record,) = session.scalars(select(ExperimentRecord))
    assert (record.name, record.kind, record.control, record.metric) == (
        "subject_test", "split", "control", "sql")  # fmt: skip
    assert [arm["name"] for arm in record.arms] == ["control", "short", "rest"]


async def test_a_segment_holdout_is_never_nurtured_but_is_scored_and_handed_off(harness):
    leads = [await harness.enroll(email=f"h{i}@example.com", country="NL") for i in range(16)]
    held = [lead for lead in leads if held_out("held", lead, 50)]
    assert 0 < len(held) < len(leads)
    await harness.env.sleep(timedelta(days=2))
    for lead_id in leads:
        await harness.until(lead_id, lambda s: s.enrollment_status not in (None, "active"),
                            timeout=60)  # fmt: skip
    stored = assignments(harness)
    for lead_id in leads:
        row = stored["holdout:held", lead_id]
        assert row.arm == ("holdout" if lead_id in held else "nurtured")
        if lead_id in held:
            assert harness.sent_steps(lead_id) == []
            assert harness.rows(Enrollment, lead_id) == []  # never in the sequence
            assert (await harness.state(lead_id)).enrollment_status == "held_out"
        else:
            assert harness.sent_steps(lead_id)[0] == "welcome"
    hot = held[0]
    await harness.respond(hot, "webinar.attended", "hot-1")
    state = await harness.until(hot, lambda s: s.stage == "sql" and s.handoff is not None)
    assert state.score == 50
    assert len(harness.rows(Handoff, hot)) == 1
    assert harness.sent_steps(hot) == []


async def test_a_lead_keeps_its_arm_across_visits_runs_and_replay(harness):
    h = harness
    h.intake = Intake(h.intake.definitions, h.intake.sessions, h.intake.client,
                      h.intake.task_queue, responses_per_run=2)  # fmt: skip
    lead_id = await h.enroll(
        "loop_test", email="loop@example.com", country="US", phone="+14155550199"
    )
    arm = assign("loop_test", lead_id, [("left", 1), ("right", 1)])
    step = "l" if arm == "left" else "r"
    for visit in range(3):  # two responses a visit: the run continues as new each time
        await eventually(lambda v=visit: h.sent_steps(lead_id).count(step) == v + 1,
                         what=f"visit {visit + 1}'s send")  # fmt: skip
        opens = [f"open-{visit}-a", f"open-{visit}-b"]
        for event_id in opens:
            await h.respond(lead_id, "email.open", event_id)
        # Watched in the database, not by queries: the time-skipping server can lose a
        # query sent just as a run continues as new.
        await eventually(lambda ids=opens: all_scored(h, lead_id, ids), what="the opens")
        await h.env.sleep(timedelta(days=2))
    await eventually(lambda: len(h.sent_steps(lead_id)) >= 4, what="the fourth visit")
    assert set(h.sent_steps(lead_id)) == {step}
    assert (await h.state(lead_id)).experiments == {"loop_test": arm}
    assert [row.arm for row in assignments(h).values()] == [arm]
    runs = await run_ids(h.env.client, lead_id)
    assert len(runs) >= 3, "the lead's workflow should have continued as new"
    replayer = Replayer(workflows=[LeadWorkflow], data_converter=pydantic_data_converter,
                        workflow_runner=sandbox_runner())  # fmt: skip
    for run_id, _ in runs:  # each run's history replays: the arm is read back, not redrawn
        handle = h.env.client.get_workflow_handle(lead_workflow_id(lead_id), run_id=run_id)
        result = await replayer.replay_workflow(await handle.fetch_history(),
                                                raise_on_replay_failure=False)  # fmt: skip
        assert result.replay_failure is None
