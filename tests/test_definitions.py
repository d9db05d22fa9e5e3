"""Definitions: valid files load; each kind of mistake is reported with file, line and field."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from models.definitions import parse_duration
from models.yaml_source import DefinitionError
from services.definitions import load_definitions
from services.validate import sms_segments, validate
from tests.conftest import FIXTURE_DEFINITIONS, FIXTURES

REPO = Path(__file__).resolve().parent.parent
BROKEN = FIXTURES / "broken_definitions"  # one mistake of each kind: see its README.md


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


def test_on_reply_defaults_to_exit_and_a_pause_takes_a_duration(defs):
    month = load_definitions(defs).sequences["month"]
    assert (month.on_reply, month.reply_pause) == ("exit", 7 * 86400)
    write(defs, "sequences/month.yaml", """
        id: month
        name: Month
        on_reply: pause
        reply_pause: 48h
        steps:
          - {id: hello, type: email, template: hello}
    """)  # fmt: skip
    assert load_definitions(defs).sequences["month"].reply_pause == 48 * 3600
    write(defs, "sequences/month.yaml", """
        id: month
        name: Month
        on_reply: pause
        reply_pause: a while
        steps:
          - {id: hello, type: email, template: hello}
    """)  # fmt: skip
    problem = only_error(defs)
    assert (problem.line, problem.field) == (4, "reply_pause")
    assert "'a while' is not a duration" in problem.message


def test_a_step_acting_on_a_reply_warns_unless_replies_let_the_sequence_go_on(defs):
    sequence = """
        id: month
        name: Month{on_reply}
        steps:
          - {{id: hello, type: email, template: hello}}
          - {{id: answer, type: wait_for, event: email.reply, timeout: 2d, on_event: done}}
          - {{id: asked, type: branch, if: "'sms.reply' in responses", then: done}}
          - {{id: done, type: exit}}
    """
    write(defs, "sequences/month.yaml", sequence.format(on_reply=""))
    warned = [(p.line, p.field) for p in validate(defs) if "a reply ends" in p.message]
    assert warned == [(5, "steps.1.event"), (6, "steps.2.if")]
    write(defs, "sequences/month.yaml", sequence.format(on_reply="\n        on_reply: continue"))
    assert not [p for p in validate(defs) if "a reply ends" in p.message]


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


def test_missing_template_is_reported_once_at_the_step(defs):
    write(defs, "sequences/month.yaml", """
        id: month
        name: Month
        steps:
          - {id: hello, type: sms, template: no_such_sms}
    """)  # fmt: skip
    problem = only_error(defs)  # not also a "template not found" when rendering it
    assert (problem.line, problem.field) == (4, "steps.0.template")


# --- everything at once, each at its source ----------------------------------------------------


def located(problem) -> tuple:
    return (str(Path(problem.file).relative_to(BROKEN)), problem.line, problem.column,
            problem.field)  # fmt: skip


def test_every_problem_is_reported_in_one_run_each_at_its_source():
    found = {located(p): p.message for p in errors(BROKEN)}
    assert set(found) == {
        # Schema errors in two files...
        ("sequences/webinar.yaml", 8, 15, "steps.1.duration"),
        ("scoring.yaml", 8, 57, "models.test.engagement.rules.0.points"),
        # ...do not hide the valid steps of the broken sequence: a missing template,
        ("sequences/webinar.yaml", 9, 41, "steps.2.template"),
        # a template error in an email of another sequence,
        ("templates/email/tips/body.html", 3, None, ""),
        # and the shared footer without the postal address, once, at the footer.
        ("templates/email/_footer.txt", 5, 17, "sender.postal_address"),
    }
    assert "nickname" in found["templates/email/tips/body.html", 3, None, ""]
    footer = found["templates/email/_footer.txt", 5, 17, "sender.postal_address"]
    assert "no postal address" in footer and "emails invite, tips, welcome" in footer
    assert "webinar_invites.invite" in footer  # a valid step of the broken sequence
    # segments.yaml and sales.yaml name the broken sequence (by its id, not its file
    # name): no follow-on "no sequence" errors.
    assert not any("no sequence" in message for message in found.values())


def test_validate_command_lists_every_problem_at_once():
    result = CliRunner().invoke(app, ["validate", str(BROKEN), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["errors"] == 5
    files = {Path(p["file"]).name for p in report["problems"]}
    assert files == {"webinar.yaml", "scoring.yaml", "body.html", "_footer.txt"}


@pytest.fixture
def shipped(tmp_path) -> Path:
    """A copy of the shipped definitions: emails built on _layout.html and _footer.txt."""
    root = tmp_path / "shipped"
    root.mkdir()
    for name in ("sequences", "templates"):
        shutil.copytree(REPO / name, root / name)
    for name in ("segments.yaml", "scoring.yaml", "sales.yaml", "delivery.yaml"):
        shutil.copy(REPO / name, root / name)
    return root


def edit(path: Path, old: str, new: str) -> int:
    """Replace `old` (which must be there) and return the line `new` is on."""
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))
    return text[: text.index(old)].count("\n") + 1


def test_a_shared_footer_without_the_address_is_one_error_at_the_footer(shipped):
    footer = shipped / "templates/email/_footer.txt"
    edit(footer, "{{ sender.company }}, {{ sender.postal_address }}", "{{ sender.company }}")
    link = footer.read_text().splitlines().index("Unsubscribe: {{ unsubscribe_url }}") + 1
    problem = only_error(shipped)
    assert (problem.file, problem.line, problem.column) == (str(footer), link, 17)
    assert problem.field == "sender.postal_address"
    assert "the text part has no postal address" in problem.message
    emails = sorted(p.name for p in (shipped / "templates/email").iterdir() if p.is_dir())
    assert len(emails) > 10 and f"emails {', '.join(emails)};" in problem.message

    # An email that does not use the footer at all is its own error, at its own file.
    body = shipped / "templates/email/trial_welcome/body.txt"
    edit(body, '{% include "email/_footer.txt" %}', "Bye")
    edit(
        footer,
        "{{ sender.company }}\nYou",
        "{{ sender.company }}, {{ sender.postal_address }}\nYou",
    )
    own = errors(shipped)
    assert {(p.file, p.field) for p in own} == {
        (str(body), "sender.postal_address"), (str(body), "unsubscribe_url")
    }  # fmt: skip
    assert all("saas_trial.welcome" in p.message for p in own)


def test_a_layout_without_a_footer_is_one_error_per_element_at_the_layout(shipped):
    layout = shipped / "templates/email/_layout.html"
    edit(layout, "{{ sender.company }} &middot; {{ sender.postal_address }}<br>", "")
    edit(layout, '<a href="{{ unsubscribe_url }}"', '<a href="https://example.com"')
    last_line = len(layout.read_text().rstrip().splitlines())
    found = {(p.file, p.line, p.field) for p in errors(shipped)}
    assert found == {(str(layout), last_line, "sender.postal_address"),
                     (str(layout), last_line, "unsubscribe_url")}  # fmt: skip


def test_a_render_error_in_a_shared_partial_is_one_error_and_hides_nothing(shipped):
    footer = shipped / "templates/email/_footer.txt"
    line = edit(footer, "{{ sender.name }}", "{{ sender.nickname }}")
    layout = shipped / "templates/email/_layout.html"
    edit(
        layout, "{{ sender.company }} &middot; {{ sender.postal_address }}", "{{ sender.company }}"
    )
    link = next(i for i, text in enumerate(layout.read_text().splitlines(), 1)
                if "{{ unsubscribe_url }}" in text)  # fmt: skip
    found = errors(shipped)
    # The footer's error, and (the text part failing) the HTML part checked all the same.
    assert {(p.file, p.line) for p in found} == {(str(footer), line), (str(layout), link)}
    broken = next(p for p in found if p.file == str(footer))
    assert "nickname" in broken.message and "saas_trial.welcome" in broken.message
