"""Sequence goals: on the time-skipping server with real activities, a goal met during a
seven-day wait ends the sequence at once and nothing more is sent; a response that meets
no goal leaves it running; a goal met at enrollment ends it before its first send. Then
validate's report of a bad goal, and the report's goal conversion per sequence."""

from __future__ import annotations

import shutil
import textwrap
from datetime import timedelta

import pytest
import yaml

from models.db import Enrollment
from models.definitions import Goal
from services.definitions import load_definitions
from services.validate import validate
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import running_harness
from tests.test_reports import T0, Rows, at, cli_env, invoke, report

GOALS = [
    {"id": "trial", "when": "'trial.started' in responses", "description": "trial started"},
    {"id": "mql", "when": "lead.stage == 'mql'"},
    {"id": "customer", "when": "lead.company == 'Acme Customer'"},
]


@pytest.fixture
def goal_definitions(tmp_path):
    """The fixtures, and `month_goal`: the month's steps with goals."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    month = yaml.safe_load((root / "sequences" / "month.yaml").read_text())
    goal = month | {"id": "month_goal", "name": "Until a trial", "goals": GOALS}
    (root / "sequences" / "month_goal.yaml").write_text(yaml.safe_dump(goal))
    return load_definitions(root)


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, goal_definitions):
    settings = sqlite_settings.model_copy(update={"definitions_dir": goal_definitions.root})
    async with running_harness(time_skipping_env, settings, goal_definitions) as h:
        yield h


async def test_a_goal_met_during_a_seven_day_wait_ends_the_sequence(harness):
    lead_id = await harness.enroll("month_goal", email="trier@example.com",
                                   phone="+14155550100")  # fmt: skip
    await harness.until(lead_id, lambda s: s.step_id == "pause")  # the 7-day wait
    await harness.respond(lead_id, "trial.started")
    # At once: the wait does not run out first.
    state = await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    assert state.step_id is None and state.next_action_at is None
    await harness.env.sleep(timedelta(days=32))
    assert harness.sent_steps(lead_id) == ["welcome"]
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert (enrollment.status, enrollment.exit_reason) == (
        "exited",
        "goal trial met: trial started",
    )


async def test_a_response_meeting_no_goal_leaves_the_sequence_running(harness):
    lead_id = await harness.enroll("month_goal", email="looker@example.com",
                                   phone="+14155550101")  # fmt: skip
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    await harness.respond(lead_id, "page.view")  # 10 points: still a lead
    state = await harness.until(lead_id, lambda s: s.score == 10)
    assert (state.enrollment_status, state.step_id) == ("active", "pause")
    await harness.env.sleep(timedelta(days=11))  # past the wait_for, the nudge sent
    await harness.until(lead_id, lambda s: s.step_id == "long_pause")
    assert harness.sent_steps(lead_id) == ["welcome", "nudge"]
    await harness.respond(lead_id, "page.view")  # 20 points: an MQL, the second goal
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    await harness.env.sleep(timedelta(days=25))
    assert harness.sent_steps(lead_id) == ["welcome", "nudge"]
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert enrollment.exit_reason == "goal mql met: lead.stage == 'mql'"


async def test_a_goal_met_at_enrollment_ends_the_sequence_before_a_send(harness):
    lead_id = await harness.enroll("month_goal", email="owner@example.com",
                                   company="Acme Customer")  # fmt: skip
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    await harness.env.sleep(timedelta(days=2))
    assert harness.sent_steps(lead_id) == []
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert enrollment.exit_reason == "goal customer met: lead.company == 'Acme Customer'"


# --- validate -------------------------------------------------------------------------------


def test_a_bad_goal_condition_is_reported_at_its_line(tmp_path):
    root = tmp_path / "defs"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "sequences" / "month.yaml").write_text(textwrap.dedent("""
        id: month
        name: Month
        goals:
          - {id: demo, when: "'demo.booked' in responses"}
          - id: trial
            when: "lead.score >"
          - {id: demo, when: "true"}
        steps:
          - {id: hello, type: email, template: hello}
    """).lstrip())  # fmt: skip
    found = [p for p in validate(root) if p.severity == "error"]
    assert [(p.line, p.field) for p in found] == [(7, "goals.2.id")]  # the model's, first
    assert "duplicate goal id 'demo'" in found[0].message
    text = (root / "sequences" / "month.yaml").read_text()
    (root / "sequences" / "month.yaml").write_text(
        text.replace('id: demo, when: "true', 'id: seen, when: "true')
    )
    (problem,) = [p for p in validate(root) if p.severity == "error"]
    assert problem.file.endswith("sequences/month.yaml")
    assert (problem.line, problem.field) == (6, "goals.1.when")
    assert "invalid condition" in problem.message


# --- the report: goal conversion per sequence, on SQLite and PostgreSQL ----------------------


def test_the_report_counts_goal_conversions_per_sequence(database, settings, monkeypatch):
    rows = Rows(database)
    for key in ("g1", "g2", "g3", "g4"):
        rows.lead(key, None, at(-1))
        rows.send(key, "s1", "intro", at(1))
    rows.lead("g5", None, at(-1))
    rows.send("g5", "s2", "hello", at(1))
    ended = {"g1": Goal(id="trial", when="true", description="trial started").exit_reason(),
             "g2": Goal(id="mql", when="lead.stage == 'mql'").exit_reason(),
             "g3": "replied", "g5": "goal reached by an exit step"}  # fmt: skip
    with database.sessions.begin() as session:
        for lead_id, reason in ended.items():
            enrollment = session.get(Enrollment, f"{lead_id}:{'s2' if lead_id == 'g5' else 's1'}")
            enrollment.status, enrollment.exit_reason = "exited", reason
    sequences = {row["sequence"]: row for row in report(database, since=T0)["sequences"]}
    figures = {name: (row["enrolled"], row["goals_met"], row["goal_rate"])
               for name, row in sequences.items()}  # fmt: skip
    assert figures == {"s1": (4, 2, 0.5), "s2": (1, 0, 0.0)}
    cli_env(monkeypatch, settings)
    table = invoke("report", "--section", "sequences", "--since", "2024-05-01T09:00")
    assert "goals met: 2 of the 4 leads enrolled in the range (50.0%)" in table.stdout
    assert table.stdout.count("goals met") == 1  # s2: none met
    # Enrollments are counted by their start (today's, in the rows here): none in May 2024.
    (s1, s2) = report(database, until=at(2))["sequences"]
    assert (s1["enrolled"], s1["goals_met"], s1["goal_rate"]) == (0, 0, None)
