"""Experiments where a person looks, and checked where a marketer writes them.

`nurture validate`'s static checks of split steps and holdouts, each at its file, line
and field; its database checks (SQLite and PostgreSQL, rows seeded as the workflow and
the outcome webhooks write them): an experiment whose arms changed while running, a
running experiment whose result is conclusive, a database that is not there; and the
lead's arms in `nurture status` and on the console's lead page.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import insert
from typer.testing import CliRunner

from api.console.web import Viewer, _environment
from cli.app import app
from models.db import ExperimentAssignment, ExperimentRecord, Lead, StageChange
from services.definitions import load_definitions
from services.lead_story import lead_story
from services.status import lead_status, print_status
from services.validate import validate, validation
from tests.conftest import FIXTURE_DEFINITIONS

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)

# Line numbers matter: the problems are checked at them.
SPLIT = """\
id: split_test
name: Split
steps:
  - {id: welcome, type: email, template: hello}
  - id: subject
    type: split
    experiment: subject_test
    arms:
      - {name: control, weight: 2, next: a}
      - {name: short, weight: 2, next: b}
      - {name: rest, holdout: true}
  - {id: a, type: email, template: followup, next: gap}
  - {id: b, type: sms, template: ping}
  - {id: gap, type: wait, duration: 1d}
"""
CTA = """\
id: cta_test
name: CTA
steps:
  - id: pick
    type: split
    arms:
      - {name: plain}
      - {name: bold, next: loud}
  - {id: quiet, type: email, template: hello, next: done}
  - {id: loud, type: email, template: followup}
  - {id: done, type: exit}
"""
SEGMENTS = """\
segments:
  - {id: held, when: "lead.country == 'NL'", sequence: split_test, holdout: 10}
default: {id: everyone, sequence: month}
"""


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    """The test definitions with two splits and a segment's holdout."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    write(root, "sequences/split_test.yaml", SPLIT)
    write(root, "sequences/cta_test.yaml", CTA)
    write(root, "segments.yaml", SEGMENTS)
    return root


def where(problems, severity: str | None = None) -> list[tuple[str, int | None, str, str]]:
    """(file name, line, field, message) of each problem, of one severity if given."""
    return [(Path(p.file).name, p.line, p.field, p.message) for p in problems
            if severity is None or p.severity == severity]  # fmt: skip


# --- static checks -------------------------------------------------------------------------------


def test_the_example_definitions_have_no_problem(root):
    assert where(validate(root)) == []


def test_an_experiment_name_used_twice_is_an_error_on_the_second_naming_the_first(root):
    write(root, "sequences/zz_again.yaml", """\
        id: zz_again
        name: Again
        steps:
          - id: other
            type: split
            experiment: subject_test
            arms: [{name: x}, {name: y}]
        """)  # fmt: skip
    # A default name (<sequence>_<step>) counts too: cta_test's `pick` is cta_test_pick.
    write(root, "sequences/cta.yaml", """\
        id: cta
        name: CTA again
        steps:
          - {id: test_pick, type: split, arms: [{name: x}, {name: y}]}
        """)  # fmt: skip
    assert where(validate(root), "error") == [
        ("cta_test.yaml", 4, "steps.0.experiment",
         "experiment 'cta_test_pick' is already the experiment of step 'test_pick' of sequence "
         "'cta' (sequences/cta.yaml:4): give this split its own `experiment:` name"),
        ("zz_again.yaml", 6, "steps.0.experiment",
         "experiment 'subject_test' is already the experiment of step 'subject' of sequence "
         "'split_test' (sequences/split_test.yaml:7): give this split its own `experiment:` "
         "name"),
    ]  # fmt: skip


def test_plan_is_a_reserved_experiment_name(root):
    split = root / "sequences" / "split_test.yaml"
    split.write_text(SPLIT.replace("experiment: subject_test", "experiment: plan"))
    assert where(validate(root), "error") == [
        ("split_test.yaml", 7, "steps.1.experiment",
         "experiment 'plan' is a reserved name (`nurture experiments plan` is a command): "
         "choose another"),
    ]  # fmt: skip


def test_a_winner_warns_that_the_experiment_has_ended(root):
    split = root / "sequences" / "split_test.yaml"
    split.write_text(SPLIT.replace("    arms:\n", "    winner: short\n    arms:\n", 1))
    assert where(validate(root)) == [
        ("split_test.yaml", 8, "steps.1.winner",
         "experiment subject_test has ended: leads not yet assigned take arm short; remove the "
         "split once every assigned lead has finished", ),
    ]  # fmt: skip


def test_a_holdout_of_most_of_a_segment_warns(root):
    larger = SEGMENTS.replace("holdout: 10", "holdout: 50")  # half: allowed
    write(root, "segments.yaml", larger.replace("month}", "month, holdout: 60}"))
    assert where(validate(root)) == [
        ("segments.yaml", 3, "default.holdout",
         "segment everyone holds out 60% of its leads: most of them are never nurtured (a "
         "holdout of 5-10% is usually enough to measure the effect)"),
    ]  # fmt: skip


@pytest.mark.parametrize("arm, field, message", [
    ("{name: short, weight: 0, next: b}", "steps.1.arms.1.weight",
     "Input should be greater than 0"),
    ("{name: short, next: nowhere}", "steps.1.arms.1.next",
     "step 'subject' goes to 'nowhere', which is not a step of this sequence"),
    ("{name: control, next: b}", "steps.1.arms.1.name", "arm 'control' is named twice"),
])  # fmt: skip
def test_a_mistake_inside_a_split_is_at_its_arm(root, arm, field, message):
    split = root / "sequences" / "split_test.yaml"
    split.write_text(SPLIT.replace("{name: short, weight: 2, next: b}", arm))
    (problem,) = [p for p in validate(root) if p.severity == "error"]
    assert (Path(problem.file).name, problem.line, problem.field) == ("split_test.yaml", 10,
                                                                      field)  # fmt: skip
    assert problem.message.startswith(message)


def test_an_unknown_winner_is_an_error_at_the_winner(root):
    split = root / "sequences" / "split_test.yaml"
    split.write_text(SPLIT.replace("    arms:\n", "    winner: long\n    arms:\n", 1))
    assert where(validate(root), "error") == [
        ("split_test.yaml", 8, "steps.1.winner",
         "'long' is not an arm of this split (arms: control, short, rest)"),
    ]  # fmt: skip


# --- database checks -----------------------------------------------------------------------------


def record(session, definitions, name: str, sequence_id: str, step_id: str,
           changed: dict | None = None, added=(), removed=()) -> None:  # fmt: skip
    """The experiment as its first lead would have stored it from the definitions now, but
    for the arms `changed` since ({arm: {field: value as recorded}}), `added` since (not
    recorded) and `removed` since (recorded, not defined)."""
    sequence = definitions.sequences[sequence_id]
    step = sequence.step(step_id)
    paths = sequence.arm_paths(step)
    arms = [{"name": a.name, "weight": a.weight, "holdout": a.holdout, "next": a.next,
             "path": paths[a.name]} | (changed or {}).get(a.name, {})
            for a in step.arms if a.name not in added]  # fmt: skip
    arms += [{"name": n, "weight": 1, "holdout": False, "next": None, "path": "x"}
             for n in removed]  # fmt: skip
    session.add(ExperimentRecord(name=name, kind="split", sequence_id=sequence_id,
                                 step_id=step_id, control=step.control_arm, metric=step.metric,
                                 arms=arms, started_at=T0))  # fmt: skip


def seed_leads(session, experiment: str, arms: dict[str, int], sql: set[str] = frozenset()):
    """`arms[arm]` leads assigned at T0 to each arm; those of the arms in `sql` become SQLs
    an hour later."""
    leads, assigned, changes = [], [], []
    for arm, count in arms.items():
        for n in range(count):
            lead_id = f"{experiment}-{arm}-{n}"
            leads.append({"id": lead_id, "email": f"{lead_id}@example.com", "created_at": T0})
            assigned.append({"experiment": experiment, "lead_id": lead_id, "arm": arm,
                             "holdout": False, "assigned_at": T0, "recorded_at": T0})  # fmt: skip
            if arm in sql:
                changes.append({"lead_id": lead_id, "change_key": "sql", "from_stage": "mql",
                                "to_stage": "sql", "reason": "seeded",
                                "created_at": T0 + timedelta(hours=1)})  # fmt: skip
    session.execute(insert(Lead), leads)
    session.execute(insert(ExperimentAssignment), assigned)
    if changes:
        session.execute(insert(StageChange), changes)


def test_arms_changed_while_running_warn_at_the_split(root, database, settings):
    definitions = load_definitions(root)
    with database.sessions.begin() as session:
        record(session, definitions, "subject_test", "split_test", "subject",
               changed={"short": {"weight": 1.0}, "control": {"path": "an older path"}},
               added=("rest",), removed=("gone",))  # fmt: skip
        record(session, definitions, "cta_test_pick", "cta_test", "pick")  # as it is now
        session.add(ExperimentRecord(
            name="holdout:held", kind="holdout", sequence_id="split_test", step_id=None,
            segment="held", control="holdout", metric="sql", started_at=T0,
            arms=[{"name": "holdout", "weight": 5, "holdout": True},
                  {"name": "nurtured", "weight": 95, "holdout": False}],
        ))  # fmt: skip
        record(session, definitions, "removed_since", "cta_test", "pick",
               changed={"plain": {"weight": 9}})  # fmt: skip
    found = validation(root, settings)
    assert found.notes == []
    assert where(found.problems) == [
        ("segments.yaml", 2, "segments.0.holdout",
         "experiment holdout:held: segment held's holdout changed while running: 5% -> 10% "
         "(leads already assigned keep their arm, so its result mixes both shares)"),
        ("split_test.yaml", 9, "steps.1.arms.0",
         "experiment subject_test's arm control changed while running: its steps changed"),
        ("split_test.yaml", 10, "steps.1.arms.1",
         "experiment subject_test's arm short changed while running: weight 1 -> 2"),
        ("split_test.yaml", 11, "steps.1.arms.2",
         "experiment subject_test's arm rest was added while running: it gets only the leads "
         "from now on, over a shorter period than the other arms"),
        ("split_test.yaml", 9, "steps.1.arms",
         "experiment subject_test's arm gone was removed while running: its leads keep it, "
         "and go on down the control arm (control)"),
    ]  # fmt: skip
    # An experiment no longer in the definitions ("removed_since") is not compared.


def test_a_conclusive_running_experiment_warns_until_it_has_a_winner(root, database, settings):
    definitions = load_definitions(root)
    with database.sessions.begin() as session:
        record(session, definitions, "cta_test_pick", "cta_test", "pick")
        seed_leads(session, "cta_test_pick", {"plain": 300, "bold": 300}, sql={"bold"})
    (problem,) = validation(root, settings).problems
    assert (Path(problem.file).name, problem.line, problem.field) == (
        "cta_test.yaml", 4, "steps.0.experiment")  # fmt: skip
    assert problem.severity == "warning"
    assert problem.message.startswith(
        "experiment cta_test_pick is conclusive: bold beats plain "
        "on sql: +100.0 points (95% always-valid interval "
    )
    assert problem.message.endswith("); end it with `winner:`")

    cta = root / "sequences" / "cta_test.yaml"
    cta.write_text(CTA.replace("    arms:\n", "    winner: bold\n    arms:\n", 1))
    (ended,) = validation(root, settings).problems  # only the static warning
    assert ended.field == "steps.0.winner" and "has ended" in ended.message


def test_no_database_is_no_problem(root, tmp_path, settings):
    # The default SQLite file not made yet: nothing to check, nothing said, nothing created.
    fresh = settings.model_copy(update={"database_url": None, "state_dir": tmp_path / "none"})
    assert validation(root, fresh).notes == [] and not (tmp_path / "none").exists()
    refused = settings.model_copy(update={
        "database_url": "postgresql+psycopg://nurture:secret@127.0.0.1:9/nurture",
        "db_connect_timeout": 2})  # fmt: skip
    found = validation(root, refused)
    assert found.problems == [] and len(found.notes) == 1
    assert found.notes[0].startswith(
        "experiments not checked against the database "
        "(postgresql+psycopg://nurture:***@127.0.0.1:9/nurture): "
    )


def test_the_validate_command_warns_and_notes(root, database, settings, monkeypatch):
    definitions = load_definitions(root)
    with database.sessions.begin() as session:
        record(session, definitions, "subject_test", "split_test", "subject",
               changed={"short": {"weight": 1.0}})  # fmt: skip
    monkeypatch.setenv("DATABASE_URL", settings.effective_database_url)
    runner = CliRunner()
    shown = runner.invoke(app, ["validate", str(root)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    assert ("split_test.yaml:10:9: steps.1.arms.1: experiment subject_test's arm short changed "
            "while running: weight 1 -> 2") in shown.output  # fmt: skip
    as_json = json.loads(runner.invoke(app, ["validate", str(root), "--json"]).stdout)
    assert (as_json["errors"], as_json["warnings"], as_json["notes"]) == (0, 1, [])
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:9/none")
    monkeypatch.setenv("NURTURE_DB_CONNECT_TIMEOUT", "2")
    offline = json.loads(runner.invoke(app, ["validate", str(root), "--json"]).stdout)
    assert offline["warnings"] == 0 and len(offline["notes"]) == 1
    shown = runner.invoke(app, ["validate", str(root)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0 and "note experiments not checked against the database" in (
        shown.output)  # fmt: skip
    # Settings that do not load: the files are still checked, the database is not.
    monkeypatch.setenv("NURTURE_ENVIRONMENT", "production")
    for name in ("NURTURE_SECRET_KEY", "NURTURE_API_TOKEN", "NURTURE_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    unset = json.loads(runner.invoke(app, ["validate", str(root), "--json"]).stdout)
    assert unset["errors"] == 0 and unset["notes"] == [
        "experiments not checked against a database: the settings do not load (invalid "
        "settings: NURTURE_ENVIRONMENT=production needs NURTURE_SECRET_KEY, NURTURE_API_TOKEN, "
        "NURTURE_PUBLIC_URL)"]  # fmt: skip


# --- the lead's arms: status and the lead page ---------------------------------------------------


@pytest.fixture
def assigned_lead(database) -> str:
    with database.sessions.begin() as session:
        session.add(Lead(id="ada", email="ada@example.com", segment="held", created_at=T0))
        session.flush()
        session.add_all([
            ExperimentAssignment(experiment="holdout:held", lead_id="ada", arm="nurtured",
                                 holdout=False, assigned_at=T0, recorded_at=T0),
            ExperimentAssignment(experiment="subject_test", lead_id="ada", arm="rest",
                                 holdout=True, enrollment_id="ada:split_test:v1",
                                 assigned_at=T0 + timedelta(hours=2), recorded_at=T0),
        ])  # fmt: skip
    return "ada"


def test_status_lists_the_leads_experiments(database, assigned_lead, root):
    definitions = load_definitions(root)
    now = T0 + timedelta(days=1)
    with database.sessions() as session:
        data = lead_status(session, definitions, session.get(Lead, assigned_lead), now)
    assert data["experiments"] == [
        {"experiment": "holdout:held", "arm": "nurtured", "holdout": False,
         "assigned_at": "2026-06-01T09:00:00+00:00", "enrollment_id": None},
        {"experiment": "subject_test", "arm": "rest", "holdout": True,
         "assigned_at": "2026-06-01T11:00:00+00:00", "enrollment_id": "ada:split_test:v1"},
    ]  # fmt: skip
    console = Console(record=True, width=200)
    print_status(console, data, now)
    lines = [line.split("│")[1:-1] for line in console.export_text().splitlines()
             if "holdout:held" in line or "subject_test" in line]  # fmt: skip
    assert [[cell.strip() for cell in line] for line in lines] == [
        ["holdout:held", "nurtured", "", "2026-06-01 09:00:00"],
        ["subject_test", "rest", "yes", "2026-06-01 11:00:00"],
    ]


def _lead_page(database, root, lead_id: str, role: str) -> str:
    definitions = load_definitions(root)
    now = T0 + timedelta(days=1)
    viewer = Viewer(user_id="u", email="u@example.com", name="U", role=role,
                    rep_id="alice" if role == "rep" else None, csrf="x")  # fmt: skip
    with database.sessions() as session:
        story = lead_story(session, definitions, lead_id, now)
        return _environment().get_template("leads/lead.html").render(
            story=story, tones={}, chart={}, temporal_url="", older=None, paged=False,
            request=None, viewer=viewer, nav=[], now=now, csrf_field=lambda: "",
        )  # fmt: skip


def test_the_lead_page_names_a_reps_experiments_without_links_they_cannot_open(
    database, assigned_lead, root
):
    html = _lead_page(database, root, assigned_lead, "rep")
    assert "<li>holdout:held: arm nurtured, assigned 2026-06-01 09:00 UTC</li>" in html
    assert "/console/experiments/" not in html


def test_the_lead_page_links_each_experiment(database, assigned_lead, root):
    html = _lead_page(database, root, assigned_lead, "marketer")
    assert ('<li><a href="/console/experiments/holdout%3Aheld">holdout:held</a>: arm nurtured, '
            "assigned 2026-06-01 09:00 UTC</li>") in html  # fmt: skip
    assert (
        '<li><a href="/console/experiments/subject_test">subject_test</a>: arm rest '
        '<span class="badge warn">holdout</span>, assigned 2026-06-01 11:00 UTC</li>'
    ) in html
