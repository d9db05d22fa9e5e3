"""Definitions: valid files load; each kind of mistake is reported with file, line and field."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from models.definitions import parse_duration
from models.loader import load_definitions
from models.yaml_source import DefinitionError
from nurture.cli import app
from nurture.validate import sms_segments, validate
from tests.conftest import FIXTURE_DEFINITIONS

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def defs(tmp_path) -> Path:
    root = tmp_path / "defs"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    return root


def write(root: Path, name: str, content: str) -> None:
    (root / name).write_text(textwrap.dedent(content).lstrip())


def errors(root: Path) -> list:
    return [p for p in validate(root) if p.severity == "error"]


def only_error(root: Path):
    found = errors(root)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def test_fixture_and_shipped_examples_are_valid():
    for root in (FIXTURE_DEFINITIONS, REPO):
        assert errors(root) == [], root
    shipped = load_definitions(REPO)
    assert {"saas_trial", "enterprise_content", "demo"} <= set(shipped.sequences)
    assert len(shipped.segments.segments) >= 2
    for sequence_id in ("saas_trial", "enterprise_content"):
        sequence = shipped.sequences[sequence_id]
        channels = {channel for _, channel, _ in sequence.templates()}
        assert len(sequence.steps) >= 5 and channels == {"email", "sms"}
        assert sum(s.duration for s in sequence.steps if s.type == "wait") >= 14 * 86400
    demo_waits = [s for s in shipped.sequences["demo"].steps if s.type in ("wait", "wait_for")]
    assert demo_waits and all(
        getattr(s, "duration", 0) + getattr(s, "timeout", 0) < 60 for s in demo_waits
    )


def test_segments_first_match_wins_with_default(fixture_definitions):
    assert fixture_definitions.choose_segment({"country": "FR"}) == ("europe", "exit_early")
    assert fixture_definitions.choose_segment({"country": "US"}) == ("everyone", "month")


def test_durations():
    assert parse_duration("90s") == 90
    assert parse_duration("3d") == 3 * 86400
    assert parse_duration("1w") == 604800
    for bad in ("3 days", "-1d", "0s", "d", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_yaml_syntax_error_names_the_line(defs):
    write(defs, "sequences/month.yaml", "id: month\nname: x\nsteps: [\n  - {id: a\n")
    problem = only_error(defs)
    assert problem.file.endswith("sequences/month.yaml") and problem.line == 4
    assert "YAML syntax error" in problem.message


def test_bad_duration_names_line_and_field(defs):
    write(defs, "sequences/month.yaml", """
        id: month
        name: Month
        steps:
          - id: hello
            type: email
            template: hello
          - id: pause
            type: wait
            duration: three days
    """)  # fmt: skip
    problem = only_error(defs)
    assert (problem.line, problem.field) == (9, "steps.1.duration")
    assert "not a duration" in problem.message
    assert str(problem).startswith(f"{defs}/sequences/month.yaml:9:")


def test_unknown_step_type_and_typo_keys(defs):
    write(defs, "sequences/month.yaml", """
        id: month
        name: Month
        steps:
          - id: hello
            type: fax
          - id: pause
            type: wait
            duraton: 3d
    """)  # fmt: skip
    found = {(p.line, p.field) for p in errors(defs)}
    assert (5, "steps.0.type") in found  # the step type
    assert (8, "steps.1.duraton") in found  # the typo
    assert any(
        p.field == "steps.1.duration" and "Field required" in p.message for p in errors(defs)
    )


def test_branch_to_missing_step(defs):
    write(defs, "sequences/month.yaml", """
        id: month
        name: Month
        steps:
          - {id: hello, type: email, template: hello}
          - id: decide
            type: branch
            if: "lead.score > 3"
            then: nowhere
    """)  # fmt: skip
    problem = only_error(defs)
    assert problem.field == "steps.1.if" and problem.line == 7
    assert "'nowhere'" in problem.message


def test_duplicate_step_ids(defs):
    write(defs, "sequences/month.yaml", """
        id: month
        name: Month
        steps:
          - {id: hello, type: email, template: hello}
          - {id: hello, type: wait, duration: 1d}
    """)  # fmt: skip
    problem = only_error(defs)
    assert (problem.line, problem.field) == (5, "steps.1.id") and "duplicate" in problem.message


def test_missing_template_and_bad_condition(defs):
    write(defs, "sequences/month.yaml", """
        id: month
        name: Month
        steps:
          - {id: hello, type: email, template: no_such_template}
          - {id: decide, type: branch, if: "lead.score >", then: hello}
          - {id: pause, type: wait, duration: 1d}
    """)  # fmt: skip
    found = {p.field: p for p in errors(defs)}
    assert "no_such_template" in found["steps.0.template"].message
    assert found["steps.0.template"].line == 4
    assert "invalid condition" in found["steps.1.if"].message


def test_loop_without_a_wait_is_an_error_and_unreachable_is_a_warning(defs):
    write(defs, "sequences/month.yaml", """
        id: month
        name: Month
        steps:
          - {id: hello, type: email, template: hello, next: again}
          - {id: orphan, type: wait, duration: 1d}
          - {id: again, type: email, template: followup, next: hello}
    """)  # fmt: skip
    problems = validate(defs)
    (loop,) = [p for p in problems if p.severity == "error"]
    assert "loop with no wait" in loop.message
    (warning,) = [p for p in problems if p.severity == "warning"]
    assert warning.field == "steps.1.id" and "never be reached" in warning.message


def test_segment_to_unknown_sequence(defs):
    write(defs, "segments.yaml", """
        segments:
          - id: europe
            when: "lead.country == 'FR'"
            sequence: nope
        default: {id: everyone, sequence: month}
    """)  # fmt: skip
    problem = only_error(defs)
    assert (problem.field, problem.line) == ("segments.0.sequence", 4)
    assert "no sequence 'nope'" in problem.message


def test_missing_default_segment(defs):
    write(defs, "segments.yaml", "segments: []\n")
    problem = only_error(defs)
    assert problem.field == "default" and problem.message == "Field required"


def test_template_with_undefined_variable(defs):
    (defs / "templates/email/hello/body.txt").write_text("Hi {{ lead.nickname }}\n")
    problem = only_error(defs)
    assert problem.file.endswith("templates/email/hello/body.txt") and problem.line == 1
    assert "nickname" in problem.message and "month.welcome" in problem.message


def test_long_sms_is_a_warning(defs):
    (defs / "templates/sms/ping.txt").write_text("x" * 200)
    problems = validate(defs)
    assert errors(defs) == []
    assert any(p.severity == "warning" and "2 segments" in p.message for p in problems)
    assert sms_segments("a" * 160) == 1 and sms_segments("a" * 161) == 2
    assert sms_segments("é" * 160) == 1 and sms_segments("€🙂" * 40) == 2


def test_load_raises_with_every_error(defs):
    write(defs, "scoring.yaml", "points: {email.open: x}\nthresholds: {mql: 1, sql: 2}\n")
    write(defs, "sales.yaml", "reps: []\n")
    with pytest.raises(DefinitionError) as raised:
        load_definitions(defs)
    assert {p.file.rsplit("/", 1)[1] for p in raised.value.problems} == {
        "scoring.yaml",
        "sales.yaml",
    }


def test_validate_command_exit_codes(defs):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(defs)])
    assert ok.exit_code == 0, ok.output
    write(defs, "sales.yaml", "reps: []\n")
    bad = runner.invoke(app, ["validate", str(defs)])
    assert bad.exit_code == 1
    assert "sales.yaml" in bad.output and "1 error" in bad.output
    as_json = runner.invoke(app, ["validate", str(defs), "--json"])
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    (problem,) = report["problems"]
    assert report["errors"] == 1 and problem["file"].endswith("sales.yaml")
    assert (problem["line"], problem["column"], problem["field"]) == (1, 7, "reps")


def test_email_without_postal_address_or_unsubscribe_link_is_an_error(defs):
    (defs / "templates/email/hello/body.html").write_text("<p>Hi {{ lead.first_name }}</p>\n")
    found = errors(defs)
    assert {p.file.rsplit("/", 2)[-2:][1] for p in found} == {"body.html"}
    messages = " / ".join(p.message for p in found)
    assert "no postal address of the sender (CAN-SPAM)" in messages
    assert "no unsubscribe link" in messages and "month.welcome" in messages
