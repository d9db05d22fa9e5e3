"""`nurture preview` and `nurture simulate` on the real definitions at the repository root.

The simulations run the real LeadWorkflow and activities on a time-skipping test
server started the way the command starts it (`sim_env`, one per test: the golden test
moves its clock to a fixed summer Monday). Experiments run on the test definitions with a
split sequence: the timeline tells the arm drawn and shows that arm's sends alone; a
holdout arm, a winner and a segment's holdout (a lead never enrolled) are told too.

The golden timeline (tests/golden/simulate_saas_trial.json) is a trial lead who acts,
becomes an SQL and is handed to sales, enrolled on the first Monday of June at 10:00
London time (so quiet hours, weekdays, daylight saving and the reps' working hours
are the same every run) and compared without its absolute times. After a deliberate
change to the sequences, templates, scoring or sales definitions, regenerate it with

    NURTURE_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_simulate.py -k golden

and review the diff.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
from typer.testing import CliRunner

from cli.app import app
from experiments.assignment import assign
from models.definitions import RESPONSE_TYPES
from services.definitions import load_definitions
from services.preview import LeadError, PreviewError, preview, read_lead_file
from services.simulate import (
    PlannedResponse,
    SpecError,
    first_moment,
    format_offset,
    parse_offset,
    parse_responses,
    planned_length,
    simulate,
    start_environment,
)
from testkit import FIXTURE_DEFINITIONS

REPO = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "simulate_saas_trial.json"
SENDER = {
    "NURTURE_SENDER_NAME": "Nurture Demo",
    "NURTURE_SENDER_EMAIL": "hello@example.com",
    "NURTURE_SENDER_COMPANY": "Nurture Demo Co",
    "NURTURE_SENDER_POSTAL_ADDRESS": "1 Example Street, Springfield, USA",
}
TRIAL_LEAD = {
    "email": "ada@analytical.example",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "title": "VP Engineering",
    "company": "Analytical Engines Ltd",
    "company_size": 250,
    "industry": "software",
    "country": "GB",
    "phone": "+14155550100",
    "timezone": "Europe/London",
    "source": "trial_signup",
}
# Active in the product, on the pricing page, replies and asks for a demo: SQL on day 4.
TRIAL_RESPONSES = (
    "1d: product.action action=invite_team; 2d: product.action action=invite_admin; "
    "3d: page.view url=/pricing; 4d: form.submitted form=demo budget=yes timeline=q3; "
    "4d: email.reply"  # after the handoff: a reply before it would end the sequence first
)


@pytest.fixture(scope="module")
def definitions():
    return load_definitions(REPO)


@pytest_asyncio.fixture
async def sim_env():
    env = await start_environment()
    yield env
    await env.shutdown()


@pytest.fixture
def runner(monkeypatch, tmp_path) -> CliRunner:
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(REPO))
    monkeypatch.setenv("NURTURE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    for name, value in SENDER.items():
        monkeypatch.setenv(name, value)
    return CliRunner()


# --- preview ----------------------------------------------------------------------------------


def test_preview_of_an_email_step_renders_subject_text_and_html(definitions):
    result = preview(definitions, "saas_trial", "welcome")
    assert result.channel == "email" and result.template == "trial_welcome"
    assert result.sample_lead and result.lead["first_name"] == "Ada"
    assert result.subject.startswith("Ada, your Sample Co trial is ready")
    assert "Hi Ada," in result.text and "Analytical Engines Ltd" in result.text
    assert "<html" in result.html.lower() and "style=" in result.html  # CSS inlined
    assert "https://example.com/unsubscribe/preview" in result.text
    assert result.segments is None and result.characters is None


def test_preview_command_writes_the_html_and_prints_subject_and_text(runner, tmp_path):
    out = runner.invoke(app, ["preview", "saas_trial", "welcome"])
    assert out.exit_code == 0, out.output
    html = tmp_path / "state" / "preview" / "saas_trial-welcome.html"
    assert "Subject: Ada, your Nurture Demo Co trial is ready" in out.stdout
    assert "Hi Ada," in out.stdout and f"HTML: {html}" in out.stdout
    assert "Nurture Demo Co" in html.read_text() and "Ada" in html.read_text()

    chosen = tmp_path / "out" / "welcome.html"
    out = runner.invoke(
        app, ["preview", "saas_trial", "welcome", "--html-out", str(chosen), "--json"]
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["html_path"] == str(chosen) and chosen.read_text() == data["html"]
    assert data["channel"] == "email" and data["subject"].startswith("Ada, your")


def test_preview_of_an_sms_step_counts_characters_and_segments(definitions, runner):
    sms = preview(definitions, "saas_trial", "setup_nudge")
    assert sms.channel == "sms" and sms.html is None and sms.subject is None
    assert sms.text.startswith("Sample Co: Hi Ada, your trial is ready")
    assert sms.characters == len(sms.text) and sms.segments == 1 and sms.encoding == "GSM-7"

    # A name outside GSM-7 makes the whole SMS UCS-2: 70 characters a segment, not 160.
    lead = {"email": "zoe@example.com", "first_name": "Zoë", "phone": "+14155550123"}
    ucs2 = preview(definitions, "saas_trial", "setup_nudge", lead)
    assert ucs2.encoding == "UCS-2" and "Hi Zoë," in ucs2.text
    assert ucs2.segments == -(-ucs2.characters // 67) >= 2

    out = runner.invoke(app, ["preview", "general", "checkin"])
    assert out.exit_code == 0, out.output
    text = preview(definitions, "general", "checkin").text.replace("Sample Co", "Nurture Demo Co")
    assert text in out.stdout and "To: +14155550100" in out.stdout
    assert f"{len(text)} characters, 1 segment (GSM-7)" in out.stdout


def test_preview_for_a_lead_from_a_yaml_or_json_file(definitions, runner, tmp_path):
    yaml_file = tmp_path / "lead.yaml"
    yaml_file.write_text(
        "email: Grace@Navy.example\nfirst_name: Grace\ncompany: Navy\ntimezone: America/New_York\n"
    )
    json_file = tmp_path / "lead.json"
    json_file.write_text(json.dumps({"email": "linus@example.com", "first_name": "Linus"}))
    assert read_lead_file(yaml_file)["email"] == "grace@navy.example"
    out = runner.invoke(app, ["preview", "general", "hello", "--lead", str(yaml_file)])
    assert out.exit_code == 0, out.output
    assert "Grace" in out.stdout and "grace@navy.example" in out.stdout
    assert "(sample lead)" not in out.stdout
    data = json.loads(
        runner.invoke(
            app, ["preview", "general", "hello", "--lead", str(json_file), "--json"]
        ).stdout
    )
    assert data["lead"]["first_name"] == "Linus" and not data["sample_lead"]
    assert data["lead"]["segment"] == "general"  # chosen by segments.yaml, as at intake


def test_a_bad_lead_file_names_the_file_and_the_field(runner, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("email: not-an-address\ncompany_size: lots\nnickname: Ada\n")
    with pytest.raises(LeadError) as caught:
        read_lead_file(bad)
    message = str(caught.value)
    for field in ("email", "company_size", "nickname"):
        assert f"{bad}: {field}:" in message
    out = runner.invoke(app, ["preview", "general", "hello", "--lead", str(bad)])
    assert out.exit_code == 2 and f"{bad}: company_size:" in out.stderr

    broken = tmp_path / "broken.json"
    broken.write_text('{"email": "a@example.com",}')
    with pytest.raises(LeadError, match=r"broken.json: line 1 column \d+"):
        read_lead_file(broken)
    with pytest.raises(LeadError, match="cannot read it"):
        read_lead_file(tmp_path / "missing.yaml")


def test_preview_errors_name_what_exists(definitions, runner):
    with pytest.raises(PreviewError) as caught:
        preview(definitions, "saas_trial", "welcom")
    assert "no step 'welcom'" in str(caught.value)
    assert "steps: welcome, first_day, setup_check" in str(caught.value)
    assert "messages: welcome, setup_nudge, tips" in str(caught.value)

    with pytest.raises(
        PreviewError, match="'first_day' of 'saas_trial' is a wait step, which sends nothing"
    ):
        preview(definitions, "saas_trial", "first_day")
    with pytest.raises(PreviewError, match="sequences: demo, enterprise_content, general"):
        preview(definitions, "trial", "welcome")

    out = runner.invoke(app, ["preview", "saas_trial", "engaged"])
    assert out.exit_code == 2 and "branch step" in out.stderr
    out = runner.invoke(app, ["preview", "nope", "welcome"])
    assert out.exit_code == 2 and "no sequence 'nope'" in out.stderr


# --- the responses spec -----------------------------------------------------------------------


def test_responses_spec_parses_offsets_types_and_data():
    spec = (
        "5d: page.view url=/pricing; 2d: email.click step=welcome\n"
        "1w2d: form.submitted form=demo note='call me maybe'; 30m: email.open; "
        "2d3h: product.action"
    )
    planned = parse_responses(spec)
    assert planned == [
        PlannedResponse(timedelta(minutes=30), "email.open"),
        PlannedResponse(timedelta(days=2), "email.click", {"step": "welcome"}),
        PlannedResponse(timedelta(days=2, hours=3), "product.action"),
        PlannedResponse(timedelta(days=5), "page.view", {"url": "/pricing"}),
        PlannedResponse(
            timedelta(days=9), "form.submitted", {"form": "demo", "note": "call me maybe"}
        ),
    ]
    assert parse_responses("") == [] and parse_responses(" ; ") == []
    assert parse_offset("1w") == timedelta(weeks=1) and parse_offset("2h") == timedelta(hours=2)
    assert planned[1].describe() == "email.click step=welcome"


@pytest.mark.parametrize(
    ("spec", "position", "message"),
    [
        (
            "2d: email.clik step=welcome",
            4,
            "unknown response type 'email.clik' (did you mean "
            "email.click?); known: content.download",
        ),
        ("2d: email.click; 3x: page.view", 17, "'3x' is not an offset"),
        ("2d: email.click; 3h2d: page.view", 17, "'3h2d' is not an offset"),
        ("2d email.click", 0, "expected 'OFFSET: TYPE key=value ...'"),
        ("2d: step=welcome email.click", 4, "the response type comes first"),
        ("2d: email.click welcome", 16, "expected key=value after the type, got 'welcome'"),
        ("1d: email.open; 2d:", 18, "no response type after the offset"),
    ],
)
def test_responses_spec_errors_say_where(spec, position, message):
    with pytest.raises(SpecError) as caught:
        parse_responses(spec)
    assert caught.value.position == position
    assert str(caught.value).startswith(f"character {position + 1}: ")
    assert message in str(caught.value)
    if "unknown response type" in message:
        assert all(kind in str(caught.value) for kind in RESPONSE_TYPES)


def test_a_bad_spec_is_bad_usage_with_a_caret(runner):
    out = runner.invoke(app, ["simulate", "general", "--responses", "2d: email.open; 3d: clik"])
    assert out.exit_code == 2
    assert "bad --responses: character 21: unknown response type 'clik'" in out.stderr
    assert "  2d: email.open; 3d: clik\n" + " " * 22 + "^\n" in out.stderr
    assert runner.invoke(app, ["simulate", "nope"]).exit_code == 2
    out = runner.invoke(app, ["simulate", "general", "--start", "someday"])
    assert out.exit_code == 2 and "'someday' is not a start" in out.stderr


# --- timing helpers ---------------------------------------------------------------------------


def test_planned_length_follows_the_longest_path(definitions):
    lengths = {
        s: planned_length(definitions.sequences[s]) / timedelta(days=1)
        for s in ("saas_trial", "general", "enterprise_content")
    }
    assert lengths == {"saas_trial": 22, "general": 35, "enterprise_content": 38}


def test_first_moment_is_the_next_local_weekday_and_time():
    london = ZoneInfo("Europe/London")
    friday = datetime(2026, 6, 5, 12, 0, tzinfo=UTC)
    assert first_moment(friday, london) == datetime(2026, 6, 8, 9, 0, tzinfo=UTC)  # BST
    assert first_moment(friday, london, "fri 14:00") == datetime(2026, 6, 5, 13, 0, tzinfo=UTC)
    assert first_moment(friday, london, "fri 13:00") == datetime(2026, 6, 12, 12, 0, tzinfo=UTC)
    assert format_offset(timedelta(days=2, hours=3, seconds=40)) == "+2d 03:01"
    assert format_offset(timedelta(seconds=-20)) == "+0d 00:00"


# --- simulate -----------------------------------------------------------------------------------


def _june_monday(after: datetime, zone: ZoneInfo) -> datetime:
    """10:00 on the first Monday of June (local) ahead of `after`: summer time everywhere
    the reps work, for the whole simulation."""
    for year in (after.year, after.year + 1):
        day = datetime(year, 6, 1, 10, 0, tzinfo=zone)
        day += timedelta(days=-day.weekday() % 7)
        if day > after + timedelta(minutes=1):
            return day
    raise AssertionError("unreachable")


def _normalised(timeline: dict) -> dict:
    """What does not depend on when the test runs: offsets, local times, texts, scores."""
    for key in ("started_at", "started_local", "ended_at", "seconds"):
        timeline.pop(key)
    for event in timeline["events"]:
        event.pop("time")
    return timeline


async def test_golden_timeline_of_a_trial_lead_handed_to_sales(sim_env, definitions, monkeypatch):
    for name, value in SENDER.items():
        monkeypatch.setenv(name, value)
    zone = ZoneInfo(TRIAL_LEAD["timezone"])
    start = _june_monday(await sim_env.get_current_time(), zone)
    timeline = await simulate(
        definitions,
        "saas_trial",
        TRIAL_LEAD,
        parse_responses(TRIAL_RESPONSES),
        env=sim_env,
        start=start,
    )
    data = _normalised(timeline.to_dict())
    if os.environ.get("NURTURE_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    expected = json.loads(GOLDEN.read_text())
    if data != expected:
        lines = [json.dumps(d, indent=1, ensure_ascii=False).splitlines() for d in (expected, data)]
        diff = "\n".join(difflib.unified_diff(*lines, "golden", "this run", lineterm=""))
        pytest.fail(f"the timeline changed (see the module docstring):\n{diff}")

    # What the golden file holds, spelled out.
    kinds = [event["kind"] for event in data["events"]]
    assert kinds[:2] == ["enrolled", "sent"] and kinds.count("response") == 5
    handoff = next(e for e in data["events"] if e["kind"] == "handoff")
    assert handoff["at"] == "+4d 00:00" and handoff["stage"] == "sql"
    assert data["summary"]["handoff"]["rep_name"] == handoff["rep_name"]
    assert data["summary"]["enrollment"] == "handed_off"
    assert timeline.started_at == start.astimezone(UTC)


async def test_quiet_hours_hold_an_sms_until_monday(sim_env, definitions):
    # Enrolled on a Friday at 10:00: the trial's nudge SMS falls due on Sunday. (In June:
    # never the weekend the clocks change.)
    zone = ZoneInfo(TRIAL_LEAD["timezone"])
    friday = _june_monday(await sim_env.get_current_time(), zone) + timedelta(days=4)
    timeline = await simulate(definitions, "saas_trial", TRIAL_LEAD, [], env=sim_env, start=friday)
    held = next(e for e in timeline.events if e.kind == "deferred")
    sent = next(e for e in timeline.events if e.kind == "sent" and e.data["step"] == "setup_nudge")
    assert (held.at, f"{held.local:%a %H:%M}") == ("+2d 00:00", "Sun 10:00")
    assert "quiet hours: sms goes out weekdays 09:00-20:00 (Europe/London)" in held.what
    assert held.data["until"] == sent.at == "+2d 23:00" and f"{sent.local:%a %H:%M}" == "Mon 09:00"
    assert timeline.enrollment == "exited" and timeline.handoff is None
    assert timeline.count("response") == 0 and timeline.final_score == 0


async def test_ninety_days_of_the_longest_root_sequence(sim_env, definitions):
    longest = max(definitions.sequences.values(), key=planned_length)
    assert longest.id == "enterprise_content"
    responses = parse_responses(
        "1d: email.open; 3d1h: email.click step=related_reading; "
        "10d: webinar.registered; 20d: page.view url=/pricing"
    )
    timeline = await simulate(definitions, longest.id, None, responses, 90, env=sim_env)
    # The figure (bench/simulate_speed.py measures it alone): printed, not asserted.
    print(f"\n{longest.id}, 90 days with {len(responses)} responses: {timeline.seconds:.2f} s")
    assert timeline.days == 90 and timeline.enrollment == "exited"
    sent = [e.data["step"] for e in timeline.events if e.kind == "sent"]
    assert sent[:3] == ["asset_delivery", "related_reading", "webinar_invite"]
    assert "security_pack" in sent and timeline.count("response") == 4
    assert timeline.events[-1].offset <= timedelta(days=90)


# --- experiments: the real workflow takes the split ------------------------------------------

SPLIT = """
id: split_test
name: Split
steps:
  - {id: welcome, type: email, template: hello}
  - id: subject
    type: split
    experiment: subject_test
    arms:
      - {name: control, weight: CONTROL, next: a}
      - {name: short, weight: SHORT, next: b}
      - {name: rest, weight: REST, holdout: true}
  - {id: a, type: email, template: followup, next: gap}
  - {id: b, type: sms, template: ping}
  - {id: gap, type: wait, duration: 1d}
  - {id: last, type: email, template: followup}
"""
ARM_SENDS = {"control": ["welcome", "a", "last"], "short": ["welcome", "b", "last"],
             "rest": ["welcome"]}  # fmt: skip
SPLIT_LEAD = {"email": "split@example.com", "country": "US", "phone": "+14155550100"}


def split_definitions(tmp_path, weights: dict[str, float], holdout: float = 0,
                      winner: str | None = None):  # fmt: skip
    """The test definitions with `split_test` (arms weighted so, and its `winner`), which
    the segment of leads from NL enters with `holdout` percent held out."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    text = SPLIT.replace("    arms:", f"    winner: {winner}\n    arms:") if winner else SPLIT
    for arm, weight in weights.items():
        text = text.replace(arm.upper(), repr(weight))
    (root / "sequences" / "split_test.yaml").write_text(text)
    (root / "segments.yaml").write_text(
        f"segments:\n  - {{id: held, when: \"lead.country == 'NL'\", sequence: split_test, "
        f"holdout: {holdout}}}\ndefault: {{id: everyone, sequence: month}}\n"
    )
    return load_definitions(root)


def sends(timeline) -> list[str]:
    return [event.data["step"] for event in timeline.events if event.kind == "sent"]


async def test_a_split_shows_the_leads_arm_and_only_that_arms_sends(sim_env, tmp_path):
    definitions = split_definitions(tmp_path, {"control": 1, "short": 1, "rest": 1})
    timeline = await simulate(definitions, "split_test", SPLIT_LEAD, env=sim_env)
    arm = assign("subject_test", timeline.lead["id"], [("control", 1), ("short", 1), ("rest", 1)])
    (event,) = [e for e in timeline.events if e.kind == "experiment"]
    held = " (holdout: sent nothing more)" if arm == "rest" else ""
    assert event.what == f"experiment subject_test: arm {arm}{held}"
    assert event.data == {"experiment": "subject_test", "arm": arm, "holdout": arm == "rest",
                          "segment": None, "step": "subject"}  # fmt: skip
    assert sends(timeline) == ARM_SENDS[arm]
    kinds = [e.kind for e in timeline.events]  # drawn after the welcome, before the arm's send
    assert kinds.index("experiment") == kinds.index("sent") + 1
    assert timeline.summary()["experiments"] == {"subject_test": arm}
    assert timeline.to_dict()["events"][kinds.index("experiment")]["arm"] == arm


async def test_a_holdout_arm_is_sent_nothing_more(sim_env, tmp_path):
    definitions = split_definitions(tmp_path, {"control": 1e-6, "short": 1e-6, "rest": 1e6})
    timeline = await simulate(definitions, "split_test", SPLIT_LEAD, env=sim_env)
    assert sends(timeline) == ["welcome"]
    what = [e.what for e in timeline.events if e.kind in ("experiment", "finished")]
    assert what == ["experiment subject_test: arm rest (holdout: sent nothing more)",
                    "sequence held out: holdout arm of experiment subject_test"]  # fmt: skip
    summary = timeline.summary()
    assert (summary["enrollment"], summary["experiments"]) == ("held_out", {"subject_test": "rest"})
    assert timeline.summary_line().endswith(
        "sequence held out (holdout arm of experiment subject_test)")  # fmt: skip


async def test_once_an_experiment_has_a_winner_a_new_lead_takes_it_unassigned(sim_env, tmp_path):
    definitions = split_definitions(tmp_path, {"control": 1, "short": 1, "rest": 1}, 0, "short")
    timeline = await simulate(definitions, "split_test", SPLIT_LEAD, env=sim_env)
    assert sends(timeline) == ARM_SENDS["short"]
    (event,) = [e.what for e in timeline.events if e.kind == "experiment"]
    assert event == "experiment subject_test has ended: arm short, its winner"
    assert timeline.summary()["experiments"] == {}  # not in the experiment


async def test_a_lead_held_out_by_its_segment_is_never_enrolled(sim_env, tmp_path):
    definitions = split_definitions(tmp_path, {"control": 1, "short": 1, "rest": 1}, 99.9999)
    lead = SPLIT_LEAD | {"country": "NL"}
    timeline = await simulate(definitions, "split_test", lead, env=sim_env)
    assert sends(timeline) == [] and timeline.count("finished") == 0
    assert [(e.kind, e.what) for e in timeline.events] == [
        ("enrolled", "enrolled in split_test (Split); segment held, scoring model test"),
        ("experiment", "held out by segment held's holdout (99.9999%): never nurtured"),
    ]
    summary = timeline.summary()
    assert summary["enrollment"] == "held_out"
    assert summary["enrollment_reason"] == "segment held's holdout: never enrolled"
    assert summary["experiments"] == {"holdout:held": "holdout"}
    assert timeline.summary_line().endswith(
        "0 email(s) and 0 SMS sent; 0 response(s); score 0, stage lead; no handoff; sequence "
        "held out (segment held's holdout: never enrolled)")  # fmt: skip


def test_simulate_command_json_touches_nothing_outside_its_temporary_directory(
    runner, tmp_path, monkeypatch
):
    real_db = tmp_path / "real.db"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    # Everything that would reach a real database or provider if it were used.
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{real_db}")
    monkeypatch.setenv("SENDGRID_API_KEY", "SG.not-a-key")
    monkeypatch.setenv("SENDGRID_HOST", "http://127.0.0.1:9")
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "ACnot-a-sid")
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "not-a-token")
    monkeypatch.setenv("TWILIO_API_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("NURTURE_CRM_WEBHOOK_SECRET", "not-a-secret")
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    out = runner.invoke(
        app,
        [
            "simulate",
            "general",
            "--responses",
            "15d: email.click step=guide; 16d: page.view url=/pricing",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output + out.stderr
    data = json.loads(out.stdout)
    assert data["sequence"] == "general" and data["lead"]["email"] == "ada@example.com"
    sent = [(e["channel"], e["step"]) for e in data["events"] if e["kind"] == "sent"]
    # Clicked the guide: the invite at once, no check-in SMS.
    assert sent == [
        ("email", "hello"),
        ("email", "best_of"),
        ("email", "guide"),
        ("email", "invite"),
    ]
    assert not [e for e in data["events"] if e["kind"] == "failed"]  # no provider was called
    click = next(e for e in data["events"] if e["kind"] == "response")
    assert (click["at"], click["type"], click["data"]) == (
        "+15d 00:00",
        "email.click",
        {"step": "guide"},
    )
    assert data["summary"]["responses"] == 2 and data["summary"]["emails_sent"] == 4
    assert not real_db.exists() and not (tmp_path / "state").exists()
    assert list(scratch.iterdir()) == []  # its temporary directory is gone too


def test_simulate_command_prints_a_timeline_table(runner):
    out = runner.invoke(
        app,
        [
            "simulate",
            "saas_trial",
            "--days",
            "3",
            "--responses",
            "1d: product.action action=invite_team",
        ],
    )
    assert out.exit_code == 0, out.output + out.stderr
    text = out.stdout
    assert text.startswith("saas_trial for Ada Lovelace <ada@example.com> (Europe/London;")
    for cell in (
        "when",
        "lead's time",
        "what",
        "score",
        "stage",
        "+0d 00:00",
        "Mon 10:00",
        "sent email welcome",
        "lead: product.action action=invite_team",
        "stage lead -> mql",
        "sent email tips",
    ):
        assert cell in text, cell
    assert "3 days in " in text and "no handoff; sequence active" in text
    assert "\x1b[" not in text  # no colours off a terminal


# --- goals: met, the sequence ends there ------------------------------------------------------

GOAL = {"id": "trial", "when": "'trial.started' in responses", "description": "trial started"}


def goal_definitions(tmp_path) -> Path:
    """The test definitions with `month_goal`: the month's steps, ended by a trial."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    month = (root / "sequences" / "month.yaml").read_text()
    header = f"id: month_goal\nname: Until a trial\ngoals:\n  - {json.dumps(GOAL)}\n"
    text = month.replace("id: month\nname: Thirty days\n", header)
    (root / "sequences" / "month_goal.yaml").write_text(text)
    return root


async def test_a_goal_met_shows_when_it_ended_the_sequence(sim_env, tmp_path):
    definitions = load_definitions(goal_definitions(tmp_path))
    planned = parse_responses("1d: trial.started")
    timeline = await simulate(definitions, "month_goal", SPLIT_LEAD, planned, env=sim_env)
    # Nothing after it: not the 7-day wait's end, nor the nudge, nor the rest.
    lines = [(e.at, e.kind, e.what) for e in timeline.events if e.kind != "score"]
    assert lines[1:] == [
        ("+0d 00:00", "sent", "sent email welcome: 'Hello there'"),
        ("+1d 00:00", "response", "lead: trial.started"),
        ("+1d 00:00", "goal", "goal trial met (trial started): sequence ended"),
    ]
    event = timeline.to_dict()["events"][-1]
    assert (event["kind"], event["goal"], event["status"], event["reason"]) == (
        "goal", "trial", "exited", "goal trial met: trial started")  # fmt: skip
    assert timeline.count("finished") == 0 and timeline.days == 31
    assert timeline.summary_line().endswith("sequence exited (goal trial met: trial started)")


def test_simulate_command_prints_the_goal_met(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(goal_definitions(tmp_path)))
    out = runner.invoke(app, ["simulate", "month_goal", "--responses", "2d: trial.started"])
    assert out.exit_code == 0, out.output + out.stderr
    (line,) = [line for line in out.stdout.splitlines() if "goal trial met" in line and "│" in line]
    assert "+2d 00:00" in line and "goal trial met (trial started): sequence ended" in line
    rows = [line for line in out.stdout.splitlines() if line.startswith("│ +")]
    assert rows[-1] == line and sum("sent " in row for row in rows) == 1  # the welcome alone


async def test_a_reply_shows_whom_it_was_forwarded_to(sim_env, tmp_path):
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    month = (root / "sequences" / "month.yaml").read_text()
    (root / "sequences" / "month.yaml").write_text(month + "notify_owner: true\n")
    definitions = load_definitions(root)
    alone = await simulate(definitions, "month", SPLIT_LEAD,
                           parse_responses("1d: email.reply"), env=sim_env)  # fmt: skip
    (told,) = [e for e in alone.events if "forwarded" in e.what]
    assert (told.at, told.what) == (
        "+1d 00:00",
        "reply forwarded to nobody: the lead has no rep and its company no owner",
    )
    # Handed to sales first: the reply after goes to the rep who has the lead.
    sold = await simulate(definitions, "month", SPLIT_LEAD,
                          parse_responses("1d: webinar.attended; 1d5m: email.reply"),
                          env=sim_env)  # fmt: skip
    (handoff,) = [e for e in sold.events if e.kind == "handoff"]
    (told,) = [e for e in sold.events if "forwarded" in e.what]
    assert told.what == f"reply forwarded to {handoff.data['rep_name']}: email sent"
