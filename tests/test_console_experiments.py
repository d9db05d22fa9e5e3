"""The console's Experiments pages (api/console/pages/experiments.py).

In a real browser (Debian's Chromium, tests/console_browser.py): a viewer opens a
segment's holdout from the list and plans an experiment, a value not valid said beside
the form; axe-core finds no serious violation on any of them.

In-process on SQLite and PostgreSQL: experiments, assignments and what the leads did
after them are written to the database as the workflow and the webhooks write them, and
the pages must show them.

- The list: every experiment newest first, with its kind, sequence or segment, status,
  leads and verdict; a sample-ratio mismatch badged. With none: how to start one.
- An experiment: each arm's exact figures (what happened before a lead's assignment not
  counted), each arm against control with its always-valid interval, the verdict; a
  segment's holdout by its name with a colon; an unknown name 404.
- Roles: a viewer may look, a rep may not (403), no session goes to the sign-in page.
- The planning form: statistics.plan's answer; each value that is not valid named.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from html import unescape

import httpx
import pytest

from api.app import create_app
from experiments import statistics
from models.db import (
    AMOUNT_SCALE,
    ExperimentAssignment,
    ExperimentRecord,
    Handoff,
    Lead,
    Message,
    Opportunity,
    Response,
    StageChange,
)
from services import accounts
from services.definitions import load_definitions
from services.experiment_results import experiment_results
from services.intake import Intake
from services.runtime import open_database, sync_sales_reps
from tests.conftest import FIXTURE_DEFINITIONS
from tests.console_browser import PASSWORD, USERS, assert_accessible, signed_in_http

SPLIT = """
id: trial
name: Trial
steps:
  - {id: welcome, type: email, template: hello}
  - id: subject
    type: split
    metric: sql
    arms:
      - {name: plain, weight: 2, next: a}
      - {name: bold, weight: 2, next: a}
      - {name: quiet, weight: 1, holdout: true}
  - {id: a, type: email, template: followup}
"""
SEGMENTS = """
segments:
  - {id: europe, when: "lead.country in ('FR', 'DE')", sequence: exit_early, holdout: 20}
default: {id: everyone, sequence: trial}
"""
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
# Per arm of trial_subject: leads, then how many of them did each thing after assignment.
# plain: 40 leads; 40 sends; 20 opened, 8 clicked, 6 MQL, 4 SQL, 3 accepted, 2 opportunities,
# 1 won (1,000.00). bold: 40 leads; 40 sends; 24, 12, 10, 9, 7, 5, 3 won (1,500.00 each).
# quiet (holdout): 20 leads, nothing sent; 2 MQL, 1 SQL.
PLAN = {
    "plain": dict(leads=40, sends=40, open=20, click=8, mql=6, sql=4, accepted=3, opportunity=2,
                  won=1, amount=1000),
    "bold": dict(leads=40, sends=40, open=24, click=12, mql=10, sql=9, accepted=7,
                 opportunity=5, won=3, amount=1500),
    "quiet": dict(leads=20, sends=0, open=0, click=0, mql=2, sql=1, accepted=0, opportunity=0,
                  won=0, amount=0),
}  # fmt: skip


@pytest.fixture
def definitions(tmp_path):
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "sequences" / "trial.yaml").write_text(SPLIT)
    (root / "segments.yaml").write_text(SEGMENTS)
    return load_definitions(root)


@pytest.fixture
def console(settings, definitions):
    """The API in-process (the pages never reach Temporal: no client), a user per role."""
    settings = settings.model_copy(update={"definitions_dir": definitions.root})
    database = open_database(settings)
    sync_sales_reps(database, definitions)
    for email, role, rep in USERS.values():
        accounts.add_user(database.sessions, "tests", email, role.title(), role, PASSWORD, rep,
                          {rep} if rep else set())  # fmt: skip
    intake = Intake(definitions, database.sessions, None, settings.task_queue)
    yield create_app(intake, settings, relay=False), database.sessions
    database.engine.dispose()


class Seeder:
    """Rows as the workflow, the webhooks and the CRM sync write them."""

    def __init__(self, session):
        self.session, self.n = session, 0

    def lead(self, assigned_at: datetime, experiment: str, arm: str, holdout: bool) -> str:
        self.n += 1
        lead = Lead(email=f"lead{self.n}@example.com", segment="everyone")
        self.session.add(lead)
        self.session.flush()
        self.session.add(ExperimentAssignment(
            experiment=experiment, lead_id=lead.id, arm=arm, holdout=holdout,
            assigned_at=assigned_at, recorded_at=assigned_at,
        ))  # fmt: skip
        return lead.id

    def sent(self, lead_id: str, at: datetime) -> None:
        self.n += 1
        self.session.add(Message(send_key=f"send-{self.n}", lead_id=lead_id, channel="email",
                                 template="hello", recipient="x@example.com", body="Hi",
                                 status="sent", sent_at=at, created_at=at))  # fmt: skip

    def response(self, lead_id: str, kind: str, at: datetime) -> None:
        self.n += 1
        self.session.add(Response(event_id=f"event-{self.n}", lead_id=lead_id, type=kind,
                                  occurred_at=at, received_at=at))  # fmt: skip

    def stage(self, lead_id: str, stage: str, at: datetime) -> None:
        self.n += 1
        self.session.add(StageChange(lead_id=lead_id, change_key=f"change-{self.n}",
                                     from_stage="lead", to_stage=stage, reason="tests",
                                     created_at=at))  # fmt: skip

    def accepted(self, lead_id: str, at: datetime) -> None:
        self.session.add(Handoff(lead_id=lead_id, cycle=1, rep_id="alice", score=80,
                                 reason="hot", status="accepted", created_at=at,
                                 answered_at=at + HOUR))  # fmt: skip

    def opportunity(self, lead_id: str, at: datetime, won_amount: float | None) -> None:
        self.n += 1
        self.session.add(Opportunity(
            crm_id=f"opp-{self.n}", lead_id=lead_id, status="won" if won_amount else "open",
            amount_units=round((won_amount or 5000) * AMOUNT_SCALE), currency="USD",
            opened_at=at, closed_at=at + HOUR if won_amount else None,
        ))  # fmt: skip


def seed_split(session) -> None:
    """trial_subject as PLAN says, started at T0, one lead assigned a minute; and things
    its leads did before their assignment, which must not count."""
    session.add(ExperimentRecord(
        name="trial_subject", kind="split", sequence_id="trial", step_id="subject",
        segment=None, control="plain", metric="sql", started_at=T0,
        arms=[{"name": "plain", "weight": 2.0, "holdout": False, "next": "a", "path": "p"},
              {"name": "bold", "weight": 2.0, "holdout": False, "next": "a", "path": "p"},
              {"name": "quiet", "weight": 1.0, "holdout": True, "next": None, "path": "q"}],
    ))  # fmt: skip
    seed = Seeder(session)
    minute = 0
    for arm, figures in PLAN.items():
        for i in range(figures["leads"]):
            minute += 1
            at = T0 + timedelta(minutes=minute)
            lead = seed.lead(at, "trial_subject", arm, holdout=arm == "quiet")
            seed.response(lead, "email.open", at - HOUR)  # before: not counted
            seed.stage(lead, "mql", at - HOUR)
            if i < figures["sends"]:
                seed.sent(lead, at + HOUR)
            for kind in ("open", "click"):
                if i < figures[kind]:
                    seed.response(lead, f"email.{kind}", at + 2 * HOUR)
            for stage in ("mql", "sql"):
                if i < figures[stage]:
                    seed.stage(lead, stage, at + 3 * HOUR)
            if i < figures["accepted"]:
                seed.accepted(lead, at + 4 * HOUR)
            if i < figures["opportunity"]:
                won = figures["amount"] if i < figures["won"] else None
                seed.opportunity(lead, at + 5 * HOUR, won)


def seed_holdout(session) -> None:
    """holdout:europe, 20% held out, started a day after the split: 30 and 30 leads, far
    from 20/80 (a sample-ratio mismatch)."""
    started = T0 + timedelta(days=1)
    session.add(ExperimentRecord(
        name="holdout:europe", kind="holdout", sequence_id="exit_early", step_id=None,
        segment="europe", control="holdout", metric="sql", started_at=started,
        arms=[{"name": "holdout", "weight": 20.0, "holdout": True, "next": None, "path": ""},
              {"name": "nurtured", "weight": 80.0, "holdout": False, "next": None, "path": ""}],
    ))  # fmt: skip
    seed = Seeder(session)
    seed.n = 10_000
    for i in range(60):
        arm = "holdout" if i % 2 else "nurtured"
        lead = seed.lead(started + timedelta(minutes=i), "holdout:europe", arm, arm == "holdout")
        if i % 5 == 0:
            seed.stage(lead, "sql", started + timedelta(minutes=i) + HOUR)


@pytest.fixture
def seeded(console):
    app, sessions = console
    with sessions.begin() as session:
        seed_split(session)
    with sessions.begin() as session:
        seed_holdout(session)
    return app, sessions


def text_of(html: str) -> str:
    """The page's text, tags removed and spaces collapsed."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def row_of(html: str, attribute: str) -> str:
    found = re.search(rf"<tr {attribute}>(.*?)</tr>", html, re.S)
    assert found, f"no row {attribute}"
    return text_of(found[1])


async def test_the_list_shows_every_experiment_newest_first(seeded):
    app, sessions = seeded
    async with signed_in_http(app, USERS["viewer"][0]) as http:
        page = await http.get("/console/experiments")
    assert page.status_code == 200, page.text
    html = page.text
    assert '<a href="/console/experiments" aria-current="page">Experiments</a>' in html
    rows = re.findall(r"<tr>\s*<td><a href=\"/console/experiments/([^\"]+)\"", html)
    assert rows == ["holdout%3Aeurope", "trial_subject"]  # newest first
    results = {e.name: e for e in experiment_results(sessions, app.state.console.definitions)}
    split = text_of(html.split('href="/console/experiments/trial_subject"')[1].split("</tr>")[0])
    assert "split" in split and "trial · step subject" in split and "running" in split
    assert "2026-11-02 09:00 UTC" in split and " 100 " in split
    assert results["trial_subject"].verdict in split
    assert "sample ratio mismatch" not in split
    holdout = text_of(html.split('href="/console/experiments/holdout%3Aeurope"')[1]
                      .split("</tr>")[0])  # fmt: skip
    assert "segment holdout" in holdout and "segment europe" in holdout and " 60 " in holdout
    assert "sample ratio mismatch" in holdout


async def test_with_no_experiment_the_page_says_how_to_start_one(console):
    app, _sessions = console
    async with signed_in_http(app, USERS["marketer"][0]) as http:
        page = await http.get("/console/experiments")
    assert page.status_code == 200
    words = text_of(page.text)
    assert "No experiment yet." in words
    assert "type: split" in words and "holdout: 10" in words and "docs/experiments.md" in words


async def test_an_experiment_shows_each_arm_and_each_against_control(seeded):
    app, sessions = seeded
    async with signed_in_http(app, USERS["viewer"][0]) as http:
        page = await http.get("/console/experiments/trial_subject")
    assert page.status_code == 200, page.text
    html = page.text
    for arm, f in PLAN.items():
        cells = row_of(html, f'data-arm="{arm}"')
        figures = [
            f["leads"],
            f["sends"],
            *(f[m] for m in ("open", "click", "mql", "sql", "accepted", "opportunity", "won")),
        ]
        revenue = f["won"] * f["amount"]
        shown = [int(n.replace(",", "")) for n in re.findall(r"(?<![\d.])([\d,]+)(?![\d.%])",
                                                             cells)]  # fmt: skip
        assert shown[: len(figures)] == figures, (arm, cells)
        assert f"{revenue:,.2f}" in cells, (arm, cells)
    assert "control" in row_of(html, 'data-arm="plain"')
    assert "holdout" in row_of(html, 'data-arm="quiet"')
    # The primary metric is marked in the arms' heading and first in each comparison.
    assert re.search(
        r'data-metric="sql"><strong>SQL</strong> <span class="badge warn">primary', html
    )

    (result,) = experiment_results(sessions, app.state.console.definitions, "trial_subject")
    bold = next(arm for arm in result.arms if arm.name == "bold")
    sql = bold.comparisons["sql"]
    table = html.split('id="against-bold"')[1].split("</table>")[0]
    first = text_of(re.search(r"<tbody>\s*<tr data-metric=\"(\w+)\">(.*?)</tr>", table, re.S)[0])
    assert first.startswith(" sql primary") or first.lstrip().startswith("sql primary")
    assert "10.0% 22.5% +12.5 points" in first
    low, high = sql.sequence.low * 100, sql.sequence.high * 100
    assert f"{low:+.1f} points to {high:+.1f} points" in first
    assert ("significant: higher" in first) == sql.significant
    verdict = text_of(re.search(r'<p id="verdict">(.*?)</p>', html, re.S)[1])
    assert result.verdict in verdict
    links = '<a href="/console/sequences/trial#step-subject">trial</a>'
    assert links in html and "running" in text_of(html)


async def test_a_segment_holdout_is_found_by_its_name_with_a_colon(seeded):
    app, _sessions = seeded
    async with signed_in_http(app, USERS["viewer"][0]) as http:
        for path in ("/console/experiments/holdout:europe",
                     "/console/experiments/holdout%3Aeurope"):  # fmt: skip
            page = await http.get(path)
            assert page.status_code == 200, page.text
            words = text_of(page.text)
            assert "Experiment holdout:europe" in words and "Sample ratio mismatch." in words
            assert row_of(page.text, 'data-arm="holdout"').split()[:5] == [
                "holdout", "control", "holdout", "20.0%", "30"]  # fmt: skip


async def test_an_unknown_experiment_is_a_404(seeded):
    app, _sessions = seeded
    async with signed_in_http(app, USERS["viewer"][0]) as http:
        missing = await http.get("/console/experiments/no_such_test")
        assert missing.status_code == 404
        assert "There is no experiment &#39;no_such_test&#39;" in missing.text
        assert "trial_subject, holdout:europe" in missing.text  # the ones there are
        assert (await http.get("/console/experiments/holdout:nowhere")).status_code == 404
        assert (await http.get("/console/experiments/Not-A-Name")).status_code == 422


async def test_a_rep_may_not_look_and_no_session_signs_in_first(seeded):
    app, _sessions = seeded
    async with signed_in_http(app, USERS["rep"][0]) as http:
        listing = await http.get("/console/experiments")
        assert listing.status_code == 403 and "may not do this (experiments)" in listing.text
        assert (await http.get("/console/experiments/trial_subject")).status_code == 403
        assert "/console/experiments" not in (await http.get("/console/")).text  # not in nav
    async with signed_in_http(app, USERS["marketer"][0]) as http:
        assert (await http.get("/console/experiments/trial_subject")).status_code == 200
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nurture.test") as http:
        anonymous = await http.get("/console/experiments/holdout:europe")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"] == (
        "/console/login?next=%2Fconsole%2Fexperiments%2Fholdout%3Aeurope"
    )


async def test_the_planning_form_answers_as_statistics_plan(console):
    app, _sessions = console
    async with signed_in_http(app, USERS["viewer"][0]) as http:
        query = {"baseline": "10", "effect": "3", "arms": "2", "leads_per_day": "250"}
        page = await http.get("/console/experiments", params=query)
    assert page.status_code == 200
    plan = text_of(re.search(r'<div class="card" id="plan".*?</div>', page.text, re.S)[0])
    # docs/experiments.md's example: 10% baseline, +3 points.
    assert "10% becoming 13% (+3 points) with 2 arms" in plan
    assert "Leads per arm 3,386 " in plan and "Leads in all 6,772 " in plan
    assert "Days 28 at 250 leads a day" in plan and "1,769 per arm" in plan

    # Three arms: 5% shared over the two comparisons, as the results compare them.
    async with signed_in_http(app, USERS["viewer"][0]) as http:
        query = {"baseline": "8", "effect": "2", "arms": "3", "leads_per_day": ""}
        page = await http.get("/console/experiments", params=query)
    plan = text_of(re.search(r'<div class="card" id="plan".*?</div>', page.text, re.S)[0])
    expected = statistics.plan(0.08, 0.02, 3, 0.025)
    assert f"Leads in all {expected.leads_total:,} " in plan and "Days" not in plan
    assert "compared with control at 2.5%, so that together they keep 5%" in plan


@pytest.mark.parametrize(
    ("query", "field", "says"),
    [
        ({"baseline": "0", "effect": "1"}, "baseline", "a percentage above 0 and below 100"),
        ({"baseline": "ten", "effect": "1"}, "baseline", "a percentage above 0 and below 100"),
        ({"baseline": "", "effect": "1"}, "baseline", "a percentage above 0 and below 100"),
        ({"baseline": "5", "effect": "0"}, "effect", "not 0"),
        ({"baseline": "98", "effect": "5"}, "effect", "the baseline 98% changed by +5 points "
                                                      "must stay above 0% and below 100%"),
        ({"baseline": "5", "effect": "1", "arms": "1"}, "arms", "a whole number from 2 to 10"),
        ({"baseline": "5", "effect": "1", "arms": "2.5"}, "arms", "a whole number from 2 to 10"),
        ({"baseline": "5", "effect": "1", "leads_per_day": "-3"}, "leads per day", "above 0"),
    ],
)  # fmt: skip
async def test_the_planning_form_names_each_value_not_valid(console, query, field, says):
    app, _sessions = console
    async with signed_in_http(app, USERS["viewer"][0]) as http:
        page = await http.get("/console/experiments", params=query)
    assert page.status_code == 200
    problems = text_of(re.search(r'<div class="flash error" role="alert" id="plan-problems">'
                                 r"(.*?)</div>", page.text, re.S)[1])  # fmt: skip
    assert f"{field}: " in problems and says in problems, problems
    assert 'id="plan"' not in page.text  # nothing planned
    assert 'aria-invalid="true"' in page.text


async def test_a_value_too_long_for_the_form_is_a_422(console):
    app, _sessions = console
    async with signed_in_http(app, USERS["viewer"][0]) as http:
        page = await http.get("/console/experiments", params={"baseline": "1" * 31})
    assert page.status_code == 422 and "baseline" in page.text


@pytest.mark.devserver
async def test_in_a_browser_a_viewer_reads_an_experiment_and_plans_one(console_site, signed_in):
    """On the shared site (the test definitions: the experiment is no longer defined)."""
    leads = [await console_site.lead(f"exp-{name}") for name in ("ann", "ben", "cat", "dan")]
    at = datetime.now(UTC) - timedelta(days=1)
    with console_site.sessions.begin() as session:
        session.add(ExperimentRecord(
            name="holdout:browsing", kind="holdout", sequence_id="month", segment="browsing",
            control="holdout", metric="sql", started_at=at,
            arms=[{"name": "holdout", "weight": 50.0, "holdout": True},
                  {"name": "nurtured", "weight": 50.0, "holdout": False}],
        ))  # fmt: skip
        for n, lead_id in enumerate(leads):
            arm = "holdout" if n % 2 else "nurtured"
            session.add(ExperimentAssignment(experiment="holdout:browsing", lead_id=lead_id,
                                             arm=arm, holdout=arm == "holdout",
                                             assigned_at=at, recorded_at=at))  # fmt: skip
    page = await signed_in("viewer")
    await page.goto("/console/experiments")
    await page.get_by_role("link", name="Experiments").wait_for()
    await assert_accessible(page)
    await page.get_by_role("link", name="holdout:browsing").click()
    await page.get_by_role("heading", name="Experiment holdout:browsing").wait_for()
    arm = page.locator('tr[data-arm="nurtured"]')
    assert (await arm.locator("td").nth(1).inner_text()) == "2"  # leads
    assert "removed" in await page.locator("dl").inner_text()
    await assert_accessible(page)

    await page.get_by_role("link", name="All experiments").click()
    await page.get_by_label("Baseline rate (%)").fill("10")
    await page.get_by_label("Minimum effect (points)").fill("3")
    await page.get_by_label("Leads a day (optional)").fill("250")
    await page.get_by_role("button", name="Plan").click()
    answer = page.get_by_role("status")
    await answer.get_by_text("6,772").wait_for()
    assert "28 at 250 leads a day" in await answer.inner_text()
    await assert_accessible(page)
    await page.get_by_label("Baseline rate (%)").fill("0")
    await page.get_by_role("button", name="Plan").click()
    await page.get_by_role("alert").get_by_text("a percentage above 0").wait_for()
    assert await page.get_by_label("Baseline rate (%)").get_attribute("aria-invalid") == "true"
    await assert_accessible(page)
