"""The console's Sequences pages (api/console/pages/sequences.py).

In a real browser (Debian's Chromium through Playwright) against a worker and the API on
the Temporal dev server (tests/console_browser.py), with leads enrolled through POST
/leads and their welcome emails sent by the worker: the list shows each sequence and its
leads; a sequence's page draws every step, its welcome step's "sent" figure is the number
of welcome emails in the database, its email preview is in a sandboxed frame (no scripts)
and its SMS is counted; a marketer simulates a lead (the real workflow on a time-skipping
server) and sees the timeline with the sends the sequence makes (no lead given: the
sample lead's); bad input is a 422 naming the field, with nothing run; a second
simulation while one runs is refused 429; a viewer sees no simulate form and its POST is
refused 403, as is a POST without the CSRF token; a rep may not see the sequences;
axe-core finds no serious violation on each page.

Without a browser (the API in process, on a copy of the test definitions): problems in
the files, broken after the API started, are shown at their file, line and field on the
pages of the sequences they belong to; figures are kept a while and counted again on
`?recount=1`; a count that fails says so; a split is drawn with an edge per arm.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from api.app import create_app
from models.db import Enrollment, Lead, Message
from services import accounts
from services.definitions import load_definitions
from services.intake import Intake
from services.runtime import open_database, sync_sales_reps
from testkit import FIXTURE_DEFINITIONS
from tests.console_browser import PASSWORD, USERS, assert_accessible, signed_in_http
from tests.harness import eventually

MONTH_STEPS = ("welcome", "pause", "clicked", "nudge", "long_pause", "engaged", "last_try",
               "final_wait", "thanks", "done")  # fmt: skip
SIMULATE = "/console/sequences/month/simulate"


def sent_welcomes(site) -> int:
    """Welcome emails of `month` sent so far, as the page counts them."""
    query = (
        select(func.count(Message.id))
        .join(Enrollment, Enrollment.id == Message.enrollment_id)
        .where(Enrollment.sequence_id == "month", Message.step_id == "welcome",
               Message.sent_at.is_not(None))
    )  # fmt: skip
    with site.sessions() as session:
        return session.scalar(query)


async def welcomed(site, *names: str) -> None:
    """Leads enrolled through the API, their welcome emails sent by the worker."""
    lead_ids = [await site.lead(name) for name in names]

    def all_sent() -> bool:
        with site.sessions() as session:
            query = select(func.count(Message.id)).where(
                Message.lead_id.in_(lead_ids), Message.sent_at.is_not(None)
            )
            return session.scalar(query) == len(lead_ids)

    await eventually(all_sent, what="welcome emails sent")


async def csrf_of(page) -> str:
    return await page.locator('input[name="csrf"]').first.input_value()


def form(csrf: str, **fields: str) -> dict[str, str]:
    return {"csrf": csrf, "email": "sim@example.com", "first_name": "Sim", **fields}


@pytest.mark.devserver
async def test_the_list_shows_each_sequence_and_its_leads(console_site, signed_in):
    await welcomed(console_site, "seq-list-ann")
    page = await signed_in("marketer")
    await page.goto("/console/sequences?recount=1")
    row = page.locator("#sequence-month")
    await row.get_by_role("link", name="Thirty days").wait_for()
    assert "everyone" in await row.inner_text()  # the segment enrolling leads in it

    def enrolled() -> int:
        with console_site.sessions() as session:
            query = select(func.count()).where(Enrollment.sequence_id == "month",
                                               Enrollment.status == "active")  # fmt: skip
            return session.scalar(query)

    before = enrolled()
    active = int((await row.locator("[data-figure=active]").inner_text()).replace(",", ""))
    assert 1 <= active <= max(before, enrolled())
    assert await page.locator("#sequence-quick").count() == 1
    assert await page.get_by_role("heading", name="Problems in the definitions").count() == 1
    await assert_accessible(page)


@pytest.mark.devserver
async def test_a_sequence_page_draws_its_steps_with_their_figures(console_site, signed_in):
    await welcomed(console_site, "seq-fig-ann", "seq-fig-bo")
    page = await signed_in("viewer")
    before = sent_welcomes(console_site)
    await page.goto("/console/sequences/month?recount=1")
    drawn = await page.locator("svg g[data-step]").evaluate_all(
        "nodes => nodes.map(n => n.getAttribute('data-step'))"
    )
    assert set(drawn) == set(MONTH_STEPS)
    assert await page.locator("svg text", has_text="welcome (email)").count() == 1
    sent = (await page.locator("#step-welcome [data-figure=sent]").inner_text()).replace(",", "")
    assert sent.isdigit() and before <= int(sent) <= sent_welcomes(console_site)
    assert before >= 2

    frame = page.locator("iframe[srcdoc]").first
    assert await frame.get_attribute("sandbox") == ""  # no allow-scripts, no allow-same-origin
    await page.frame_locator("iframe[srcdoc]").first.get_by_text("Hi Ada & welcome.").wait_for()
    sms = await page.locator("[data-sms=nudge]").inner_text()
    assert re.fullmatch(r"\d+ characters, GSM-7: 1 segment", sms.strip())
    assert await page.get_by_role("heading", name="Simulate a lead").count() == 0  # a viewer
    assert await page.locator("#replies").inner_text() == (
        "A person's reply (on_reply: exit) ends the sequence: nothing more is sent. An "
        "out-of-office naming a return date holds its sends until then.")  # fmt: skip
    await assert_accessible(page)


@pytest.mark.devserver
async def test_a_marketer_simulates_a_lead_and_sees_its_sends(signed_in):
    page = await signed_in("marketer")
    await page.goto("/console/sequences/month")
    await page.get_by_label("Responses").fill("1d: email.click step=welcome")
    await page.get_by_label("Days (empty").fill("20")
    await page.get_by_role("button", name="Simulate").click()
    timeline = page.locator("#simulation table")
    await timeline.wait_for(timeout=60_000)
    assert page.url.endswith("/console/sequences/month")  # htmx put it under the form
    sends = await timeline.locator("tr[data-kind=sent]").evaluate_all(
        "rows => rows.map(r => r.getAttribute('data-step'))"
    )
    assert sends == ["welcome", "thanks"]  # the click skips the nudge and the last try
    assert "lead: email.click step=welcome" in await timeline.inner_text()
    assert "sequence exited (month over)" in await page.locator("#simulation").inner_text()
    await assert_accessible(page)


@pytest.mark.devserver
async def test_bad_input_is_a_page_naming_the_field_and_nothing_runs(signed_in):
    page = await signed_in("marketer")
    await page.goto("/console/sequences/month")
    csrf = await csrf_of(page)
    answer = await page.request.post(SIMULATE, form=form(csrf, responses="2x: email.click",
                                                         days="400", country="France"))  # fmt: skip
    assert answer.status == 422
    html = await answer.text()
    for field, problem in (("responses", "character 1: &#39;2x&#39; is not an offset"),
                           ("days", "a whole number of days from 1 to 365"),
                           ("country", "at most 2 characters")):  # fmt: skip
        assert re.search(rf'data-field="{field}"><strong>{field}</strong>: [^<]*{problem}', html)
    assert "timeline" not in html.lower()
    assert "sim@example.com" in html  # the form keeps what was typed

    unknown = await page.request.post("/console/sequences/nope/simulate", form=form(csrf))
    assert unknown.status == 404


@pytest.mark.devserver
async def test_one_simulation_runs_at_a_time(signed_in):
    page = await signed_in("admin")
    await page.goto("/console/sequences/quick")
    csrf = await csrf_of(page)
    headers = {"HX-Request": "true"}
    answers = await asyncio.gather(
        *(page.request.post("/console/sequences/quick/simulate", headers=headers,
                            form={"csrf": csrf, "days": "2"}) for _ in range(2))
    )  # fmt: skip
    assert sorted(a.status for a in answers) == [200, 429]
    refused = next(a for a in answers if a.status == 429)
    assert refused.headers["retry-after"] == "30"
    assert "Another simulation is running" in await refused.text()
    done = next(a for a in answers if a.status == 200)
    result = await done.text()
    assert "<html" not in result  # htmx gets the result alone
    assert "sent email welcome: &#39;Hello Ada&#39;" in result  # no lead given: the sample


@pytest.mark.devserver
async def test_a_viewer_may_not_simulate_nor_anyone_without_the_token(signed_in):
    viewer = await signed_in("viewer")
    await viewer.goto("/console/sequences/month")
    assert await viewer.locator(f'form[action="{SIMULATE}"]').count() == 0
    refused = await viewer.request.post(SIMULATE, form=form(await csrf_of(viewer)))
    assert refused.status == 403

    marketer = await signed_in("marketer")
    await marketer.goto("/console/sequences/month")
    forged = await marketer.request.post(SIMULATE, form=form("not-the-token"))
    assert forged.status == 403
    assert "security token" in await forged.text()

    rep = await signed_in("rep")
    assert (await rep.request.get("/console/sequences")).status == 403


@pytest.mark.devserver
async def test_a_marketer_pauses_a_sequence_and_resumes_it(console_site, signed_in):
    viewer = await signed_in("viewer")
    await viewer.goto("/console/sequences/quick")
    assert await viewer.locator('form[action$="/pause"]').count() == 0
    refused = await viewer.request.post("/console/sequences/quick/pause",
                                        form={"csrf": await csrf_of(viewer)})  # fmt: skip
    assert refused.status == 403

    page = await signed_in("marketer")
    await page.goto("/console/sequences/quick")
    await page.get_by_label("Reason (for the audit log)").fill("new pricing copy")
    await page.get_by_role("button", name="Pause sending").click()
    try:
        assert "Paused: its sends are held" in await page.locator(".flash").inner_text()
        lead_id = await console_site.lead("seq-paused-ann", sequence="quick")

        def held() -> list[Message]:
            with console_site.sessions() as session:
                return session.scalars(select(Message).where(Message.lead_id == lead_id)).all()

        (welcome,) = await eventually(held, what="the welcome held")
        assert (welcome.status, welcome.status_reason) == ("deferred", "sequence paused")
        await page.reload()
        section = await page.locator("#pause").inner_text()
        assert "new pricing copy" in section and "1 lead(s) wait at a send" in section
        await assert_accessible(page)
        await page.goto("/console/sequences")
        assert await page.locator("#sequence-quick .badge", has_text="paused").count() == 1
        await page.goto("/console/sequences/quick")
    finally:
        await page.get_by_role("button", name="Resume sending").click()
    assert "Resumed: 1 of 1 held lead(s) woken" in await page.locator(".flash").inner_text()
    await eventually(lambda: [m.status for m in held()] == ["sent"], what="the welcome sent")
    assert "Sending as written" in await page.locator("#pause").inner_text()


# --- without a browser: problems in the files, figures kept -----------------------------------


@pytest.fixture
async def console_on_copy(tmp_path, sqlite_settings, time_skipping_env):
    """The API on a copy of the test definitions (to break after it started), an admin
    signed in; (client, database, definitions directory)."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    async with _console_on(root, sqlite_settings, time_skipping_env) as signed_in:
        yield signed_in


@contextlib.asynccontextmanager
async def _console_on(root, sqlite_settings, time_skipping_env):
    settings = sqlite_settings.model_copy(update={"definitions_dir": root})
    definitions = load_definitions(root)
    database = open_database(settings)
    sync_sales_reps(database, definitions)
    intake = Intake(definitions, database.sessions, time_skipping_env.client, settings.task_queue)
    email = USERS["admin"][0]
    accounts.add_user(database.sessions, "tests", email, "Admin", "admin", PASSWORD, None, set())
    app = create_app(intake, settings, relay=False)
    try:
        async with signed_in_http(app, email) as http:
            yield http, database, root
    finally:
        database.engine.dispose()


async def test_problems_in_the_files_are_shown_at_their_file_and_line(console_on_copy):
    http, _database, root = console_on_copy
    assert "No problems." in (await http.get("/console/sequences/month")).text
    month = root / "sequences" / "month.yaml"
    month.write_text(month.read_text().replace("duration: 7d}", "duration: 7 days}"))
    (root / "templates" / "sms" / "ping.txt").write_text("Hi {{ lead.first_name }, reply YES\n")

    page = (await http.get("/console/sequences/month")).text
    assert re.search(r"<code>sequences/month.yaml:6:39</code> <code>steps.1.duration</code>: "
                     r"&#39;7 days&#39; is not a duration", page)  # fmt: skip
    assert re.search(r"<code>templates/sms/ping.txt:1</code>: unexpected &#39;}&#39; \(used by "
                     r"month.nudge, quick.ping\)", page)  # fmt: skip
    # Another sequence's page shows only its own: ping.txt, not month's file.
    quick = (await http.get("/console/sequences/quick")).text
    assert "templates/sms/ping.txt:1" in quick and "month.yaml" not in quick
    assert "No problems." in (await http.get("/console/sequences/exit_early")).text
    listed = (await http.get("/console/sequences")).text
    assert "sequences/month.yaml:6:39" in listed and "templates/sms/ping.txt:1" in listed


async def test_figures_are_kept_a_while_and_counted_again_when_asked(console_on_copy):
    http, database, _root = console_on_copy
    with database.sessions.begin() as session:
        session.add(Lead(id="kept", email="kept@example.com"))
        session.flush()
        session.add(Enrollment(id="kept:month", lead_id="kept", sequence_id="month",
                               sequence_version=1, workflow_id="lead-kept"))  # fmt: skip

    def send(n: int) -> None:
        with database.sessions.begin() as session:
            session.add(Message(id=f"kept-{n}", send_key=f"kept:{n}", lead_id="kept",
                                enrollment_id="kept:month", step_id="welcome", channel="email",
                                template="hello", recipient="x", body="", status="sent",
                                sent_at=datetime.now(UTC)))  # fmt: skip

    def sent(page: str) -> str:
        return re.search(r'id="step-welcome">.*?data-figure="sent">([^<]*)<', page, re.S)[1]

    send(1)
    assert sent((await http.get("/console/sequences/month?recount=1")).text) == "1"
    send(2)
    for _ in range(2):  # kept a while: not even counted again in the background meanwhile
        assert sent((await http.get("/console/sequences/month")).text) == "1"
        await asyncio.sleep(0.5)
    assert sent((await http.get("/console/sequences/month?recount=1")).text) == "2"


async def test_a_count_that_fails_says_so(console_on_copy):
    http, database, _root = console_on_copy
    with database.engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE responses")  # counting needs it
    page = (await http.get("/console/sequences/month?recount=1")).text
    assert re.search(r"not counted</span> The count failed \(OperationalError: "
                     r"\(sqlite3.OperationalError\) no such table: responses\)", page)  # fmt: skip
    assert 'data-figure="sent">…<' in page  # no figures, and no made-up zeros


async def test_a_split_is_drawn_with_an_edge_per_arm(tmp_path, sqlite_settings, time_skipping_env):
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "sequences" / "split_test.yaml").write_text(
        "id: split_test\nname: Split\nsteps:\n"
        "  - {id: welcome, type: email, template: hello}\n"
        "  - id: subject\n    type: split\n    experiment: subject_test\n    arms:\n"
        "      - {name: control, weight: 3}\n      - {name: rest, holdout: true}\n"
        "  - {id: last, type: email, template: followup}\n"
    )
    async with _console_on(root, sqlite_settings, time_skipping_env) as (http, _database, _root):
        page = (await http.get("/console/sequences/split_test")).text
    assert "No problems." in page
    assert '<g data-step="subject">' in page and '<g data-step="(holdout)">' in page
    assert "subject_test: 2 arms, sql" in page  # the step's line, in the graph and the table
    assert (
        'last <span class="muted">(control 75%)</span>; (holdout) <span class="muted">'
        "(rest 25%)</span>" in page
    )
