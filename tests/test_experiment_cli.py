"""`nurture experiments [NAME]` and `nurture experiments plan`, run as a user runs them
(typer's runner, the database and definitions from the environment), on SQLite and
PostgreSQL. The rows are written as in tests/test_experiment_results.py."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from experiments.statistics import plan
from tests.test_experiment_results import Rows, at
from tests.test_reports import cli_env


def invoke(*args: str):
    from cli.app import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "250"})


@pytest.fixture
def cli(monkeypatch, settings, database):
    cli_env(monkeypatch, settings)
    return Rows(database)


def _two_experiments(rows: Rows) -> None:
    """subject_test: control 1 SQL of 2, short 2 of 2 (one sent after, one before);
    plan: a split named like the command."""
    rows.experiment("subject_test", {"control": 1, "short": 1})
    rows.experiment("plan", {"a": 1, "b": 1}, metric="click")
    for lead_id, arm in (("c1", "control"), ("c2", "control"), ("s1", "short"), ("s2", "short")):
        rows.assign("subject_test", lead_id, arm)
    rows.assign("plan", "c1", "a")
    for lead_id in ("c1", "s1", "s2"):
        rows.stage(lead_id, "sql", at(2))
    rows.send("s1", at(1))
    rows.send("s2", at(-1))
    rows.deal("s1", "won", at(3), at(9), 1234.5, currency="EUR")


def test_no_experiments_says_how_to_start_one(cli):
    shown = invoke("experiments")
    assert shown.exit_code == 0, shown.output
    assert "No experiments yet" in shown.output and "type: split" in shown.output
    assert "docs/experiments.md" in shown.output
    listed = invoke("experiments", "--json")
    assert listed.exit_code == 0 and json.loads(listed.stdout) == []


def test_the_list_and_one_experiment(cli):
    _two_experiments(cli)
    listed = invoke("experiments")
    assert listed.exit_code == 0, listed.output
    lines = {line.split()[1]: line for line in listed.output.splitlines() if "split" in line}
    assert set(lines) == {"subject_test", "plan"}
    assert "removed" in lines["subject_test"] and "sql" in lines["subject_test"]  # not defined
    assert "No difference yet on sql" in listed.output

    one = invoke("experiments", "subject_test")
    assert one.exit_code == 0, one.output
    out = one.output
    assert "split at step split of sequence seq; primary metric sql; control control" in out
    assert "control (control)" in out and "short - control" in out
    row = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "1 (50.0%)" in row["SQL"] and "2 (100.0%)" in row["SQL"] and "+50.0 (" in row["SQL"]
    assert "(primary)" in row["SQL"]
    assert "1,234.50 (617.25/lead)" in row["revenue"]
    assert "Revenue in EUR." in out and "Assignment matches the weights" in out
    assert "Verdict: No difference yet on sql: short against control +50.0 points" in out
    assert "Leads needed to find a 20% lift on sql" in out

    data = json.loads(invoke("experiments", "subject_test", "--json").stdout)
    assert data["name"] == "subject_test" and data["status"] == "removed"
    short = data["arms"][1]
    assert (short["name"], short["leads"], short["sends"], short["converted"]["sql"]) == (
        "short", 2, 1, 2)  # fmt: skip
    assert short["comparisons"]["sql"]["difference"] == 0.5
    assert data["started_at"] == "2026-06-01T09:00:00+00:00"


def test_an_experiment_named_like_a_command_and_an_unknown_one(cli):
    _two_experiments(cli)
    named_plan = invoke("experiments", "show", "plan", "--json")
    assert named_plan.exit_code == 0, named_plan.output
    assert json.loads(named_plan.stdout)["metric"] == "click"
    unknown = invoke("experiments", "nope")
    assert unknown.exit_code == 1
    assert "no experiment 'nope' (experiments: plan, subject_test)" in unknown.output
    assert invoke("experiments", "--alpha", "0").exit_code == 2


def test_plan_gives_leads_and_days_and_refuses_what_is_not_a_rate():
    shown = invoke("experiments", "plan", "--baseline", "0.10", "--effect", "0.02",
                   "--leads-per-day", "250")  # fmt: skip
    assert shown.exit_code == 0, shown.output
    expected = plan(0.10, 0.02, leads_per_day=250)
    assert f"leads per arm: {expected.leads_per_arm[0]:,}; in all {expected.leads_total:,}; " \
           f"{expected.days} days at 250 leads a day" in shown.output  # fmt: skip
    assert "10.0% -> 12.0%" in shown.output
    three = json.loads(invoke("experiments", "plan", "--baseline", "0.1", "--effect", "0.02",
                              "--arms", "3", "--json").stdout)  # fmt: skip
    assert three["alpha"] == 0.025 and three["family_alpha"] == 0.05
    assert three["leads_total"] == plan(0.1, 0.02, 3, 0.025).leads_total
    for args, message in (
        (("--baseline", "10", "--effect", "0.02"), "--baseline is a rate strictly between 0 and 1"),
        (("--baseline", "0.95", "--effect", "0.1"), "= 1.05 is not a rate"),
        (("--baseline", "0.1", "--effect", "0"), "--effect must not be 0"),
        (("--baseline", "0.1", "--effect", "0.02", "--power", "1"), "--power"),
        (("--baseline", "0.1", "--effect", "0.02", "--arms", "1"), "--arms"),
    ):
        refused = invoke("experiments", "plan", *args)
        assert refused.exit_code == 2, args
        assert message in refused.output, refused.output
