"""Where a sequence's goals show in the console (the API in process, on a copy of the test
definitions with `month_goal`, enrollments seeded in the database):

- the sequence's page lists its goals (id, condition, description) with the leads each
  ended it for and their share of the leads enrolled, counted as `nurture report` counts
  them (each lead once, however often enrolled; another sequence's enrollments never),
  kept a while and counted again on `?recount=1`; a sequence without goals says so;
- the list of sequences has a Goals met column;
- a lead's page says why and when each enrollment ended;
- axe-core (Debian's Chromium through Playwright, its requests answered by the API in
  process) finds no serious violation on the sequence page with its goals.

`nurture simulate`'s goal event is tested in tests/test_simulate.py.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime

import pytest

from models.db import Enrollment, Lead
from models.definitions import Goal
from services.reports import ReportFilter, goal_counts
from testkit import FIXTURE_DEFINITIONS
from tests.console_browser import assert_accessible
from tests.test_console_sequences import _console_on

GOALS = [
    Goal(id="trial", when="'trial.started' in responses", description="trial started"),
    Goal(id="mql", when="lead.stage == 'mql'"),
    Goal(id="customer", when="lead.company == 'Acme Customer'", description="a customer"),
]
TRIAL, MQL = GOALS[0].exit_reason(), GOALS[1].exit_reason()
STARTED, ENDED = datetime(2026, 3, 2, 10, 0, tzinfo=UTC), datetime(2026, 3, 4, 9, 30, tzinfo=UTC)
# Each lead's enrollments: (sequence, status, exit reason).
ENROLLED = {
    "ann": [("month_goal", "exited", TRIAL)],
    "bo": [("month_goal", "exited", TRIAL)],
    "cy": [("month_goal", "exited", MQL)],
    "di": [("month_goal", "exited", "replied")],
    "ed": [("month_goal", "active", None)],
    "fay": [("month_goal", "exited", TRIAL), ("month_goal", "exited", TRIAL)],  # counted once
    "gus": [("month", "exited", TRIAL)],  # month's own (it had the goal once): not month_goal's
}


@pytest.fixture
async def console(tmp_path, sqlite_settings, time_skipping_env):
    """(client signed in as an admin, database), on definitions with `month_goal`: the
    month's steps with GOALS."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    month = (root / "sequences" / "month.yaml").read_text()
    goals = "".join(f"  - {json.dumps(g.model_dump())}\n" for g in GOALS)
    header = f"id: month_goal\nname: Until a trial\ngoals:\n{goals}"
    (root / "sequences" / "month_goal.yaml").write_text(
        month.replace("id: month\nname: Thirty days\n", header)
    )
    async with _console_on(root, sqlite_settings, time_skipping_env) as (http, database, _root):
        yield http, database


def seed(database, enrolled: dict[str, list[tuple[str, str, str | None]]]) -> None:
    with database.sessions.begin() as session:
        for lead_id, enrollments in enrolled.items():
            if session.get(Lead, lead_id) is None:
                session.add(Lead(id=lead_id, email=f"{lead_id}@example.com"))
                session.flush()
            for n, (sequence, status, reason) in enumerate(enrollments):
                session.add(Enrollment(
                    id=f"{lead_id}:{sequence}:{n}", lead_id=lead_id, sequence_id=sequence,
                    sequence_version=1, workflow_id=f"lead-{lead_id}", status=status,
                    exit_reason=reason, started_at=STARTED,
                    ended_at=None if status == "active" else ENDED,
                ))  # fmt: skip


def goal_row(page: str, row: str) -> tuple[str, str]:
    """(leads that met it, goal rate) in the goals table's row `goal-<row>`."""
    found = re.search(rf'id="goal-{row}">.*?data-figure="met">([^<]*)<'
                      r'.*?data-figure="rate">([^<]*)<', page, re.S)  # fmt: skip
    return found[1], found[2]


async def test_the_sequence_page_lists_its_goals_with_the_leads_each_met(console):
    http, database = console
    seed(database, ENROLLED)
    page = (await http.get("/console/sequences/month_goal?recount=1")).text
    goals = page[page.index('<h2 id="goals">') : page.index('<h2 id="graph">')]
    assert "<caption" in goals and "of the 6 lead(s) enrolled in it" in goals
    assert re.search(r'id="goal-trial">\s*<th scope="row">trial</th>\s*<td><code>'
                     r"&#39;trial.started&#39; in responses</code></td>\s*<td>trial started</td>",
                     goals)  # fmt: skip
    assert "<td><code>lead.stage == &#39;mql&#39;</code></td>\n      <td>—</td>" in goals
    assert goal_row(goals, "trial") == ("3", "50.0%")  # ann, bo, fay (twice: once)
    assert goal_row(goals, "mql") == ("1", "16.7%")
    assert goal_row(goals, "customer") == ("0", "0.0%")
    assert goal_row(goals, "any") == ("4", "66.7%")
    with database.sessions() as session:  # what `nurture report` says of the sequence
        assert goal_counts(session, ReportFilter())["month_goal"] == (6, 4)

    seed(database, {"hal": [("month_goal", "exited", GOALS[2].exit_reason())]})
    kept = (await http.get("/console/sequences/month_goal")).text
    assert goal_row(kept, "customer") == ("0", "0.0%")  # kept a while
    again = (await http.get("/console/sequences/month_goal?recount=1")).text
    assert goal_row(again, "customer") == ("1", "14.3%")
    assert goal_row(again, "any") == ("5", "71.4%")


async def test_a_sequence_without_goals_says_so(console):
    http, _database = console
    page = (await http.get("/console/sequences/month")).text
    assert '<h2 id="goals">Goals</h2>\n<p class="muted">None: the sequence runs' in page
    assert 'id="goal-figures"' not in page


async def test_the_list_has_the_goals_met_of_each_sequence(console):
    http, database = console
    seed(database, ENROLLED)
    page = (await http.get("/console/sequences?recount=1")).text

    def goals_met(sequence: str) -> str:
        row = re.search(rf'id="sequence-{sequence}">.*?data-figure="goals_met">(.*?)</td>',
                        page, re.S)  # fmt: skip
        return re.sub(r"<[^>]+>", "", row[1])

    assert goals_met("month_goal") == "4 (66.7%)"
    assert goals_met("month") == "1 (100.0%)"  # no goals now, but one met before
    assert goals_met("quick") == "—"  # no goals, none met


async def test_the_lead_page_says_why_and_when_an_enrollment_ended(console):
    http, database = console
    seed(database, {"ann": ENROLLED["ann"]})
    page = (await http.get("/console/leads/ann")).text
    assert ("month_goal v1: exited (goal trial met: trial started), from 2026-03-02 10:00 UTC "
            "to 2026-03-04 09:30 UTC") in page  # fmt: skip


async def test_the_sequence_page_with_goals_is_accessible(console, browser):
    http, database = console
    seed(database, ENROLLED)
    await http.get("/console/sequences/month_goal?recount=1")
    context = await browser.new_context()
    page = await context.new_page()

    async def answer(route) -> None:  # the signed-in client asks the API in process
        got = await http.request(route.request.method, route.request.url)
        headers = {k: v for k, v in got.headers.items()
                   if k not in ("content-length", "content-encoding")}  # fmt: skip
        await route.fulfill(status=got.status_code, headers=headers, body=got.content)

    try:
        await page.route("http://nurture.test/**", answer)
        await page.goto("http://nurture.test/console/sequences/month_goal")
        assert await page.locator("#goal-figures tbody tr").count() == len(GOALS)
        await assert_accessible(page)
    finally:
        await context.close()
