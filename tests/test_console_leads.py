"""The console's Leads pages (api/console/pages/leads.py) in a real browser.

Debian's Chromium through Playwright against a worker and the API on the Temporal dev
server (tests/console_browser.py), with leads made, sent to, responding and handed off
by real traffic: a search by email and by stage finds the lead; its page shows the
timeline (the welcome send, a response, the handoff), the score chart drawn by
console.js, consent per channel, the current step from the workflow's query and the
Temporal UI link; a rep sees only the leads handed off to it (another rep's lead page is
403); an unknown lead is a 404 page; a bad filter says what to fix; axe-core finds no
serious violation on either page.
"""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from models.db import Handoff, Message
from services.lead_story import temporal_ui_url
from tests.console_browser import HOT_EVENTS, assert_accessible
from tests.harness import eventually

pytestmark = pytest.mark.devserver


async def welcomed_lead(site, name: str, rep: str = "alice") -> str:
    """A lead whose welcome email went out (its workflow then waits 7 days); its ID."""
    lead_id = await site.lead(name, rep)

    def welcomed():
        with site.sessions() as session:
            return session.scalar(select(Message.id).where(
                Message.lead_id == lead_id, Message.step_id == "welcome",
                Message.status == "sent"))  # fmt: skip

    await eventually(welcomed, what=f"{name} welcomed")
    return lead_id


async def handed_off(site, lead_id: str) -> Handoff:
    """Play the responses that make the lead an SQL; its handoff once written."""
    for kind in HOT_EVENTS:
        await site.respond(lead_id, kind)

    def handoff():
        with site.sessions() as session:
            return session.scalar(select(Handoff).where(Handoff.lead_id == lead_id))

    return await eventually(handoff, what="handed off")


async def search(page, **fields) -> None:
    """Fill the filters form (labels as a person reads them) and submit it."""
    await page.goto("/console/leads")
    if "email" in fields:
        await page.get_by_label("Email", exact=True).fill(fields["email"])
    if "stage" in fields:
        await page.get_by_label("Stage").select_option(fields["stage"])
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_load_state()


async def test_search_by_email_and_by_stage_finds_the_lead(console_site, signed_in):
    lead_id = await welcomed_lead(console_site, "leads-ada")
    await handed_off(console_site, lead_id)
    email = "leads-ada@alice-co.example"
    page = await signed_in("marketer")

    await search(page, email="LEADS-ADA")  # any case
    assert "email=LEADS-ADA" in page.url
    rows = page.locator("table.data tbody tr")
    assert await rows.count() == 1
    row = rows.first
    await row.get_by_role("link", name=email).wait_for()
    cells = await row.locator("td").all_inner_texts()
    assert cells[2] == "sql" and cells[5] == "month" and float(cells[3].split()[0]) >= 50

    await search(page, stage="sql")
    await page.get_by_role("link", name=email).wait_for()
    stages = await page.locator("table.data tbody tr td:nth-child(3)").all_inner_texts()
    assert stages and set(stages) == {"sql"}
    await assert_accessible(page)

    await search(page, email="leads-ada", stage="lead")  # it is past `lead`
    assert await page.locator("table.data").count() == 0
    assert "No lead matches these filters" in await page.locator(".empty").inner_text()
    await page.get_by_role("link", name="clear them").click()
    await page.wait_for_url(re.compile(r"/console/leads$"))


async def test_the_lead_page_tells_the_leads_story(console_site, signed_in):
    lead_id = await welcomed_lead(console_site, "leads-bea")
    handoff = await handed_off(console_site, lead_id)
    page = await signed_in("admin")
    await search(page, email="leads-bea")
    await page.get_by_role("link", name="leads-bea@alice-co.example").click()
    await page.wait_for_url(f"**/console/leads/{lead_id}")

    timeline = page.locator("section[aria-labelledby=timeline] table")
    text = await timeline.inner_text()
    assert "email sent: welcome" in text  # a send
    assert "email.reply" in text and "webinar.attended" in text  # responses
    assert f"handed off to {handoff.rep_id}" in text and "stage mql → sql" in text
    assert "handoff notified by email (alice)" in text  # the handoff's events
    chart = page.locator("canvas[data-chart]")
    await page.wait_for_function("document.querySelector('canvas[data-chart]').dataset.drawn")
    assert "score over time" in await chart.get_attribute("aria-label")
    consent = await page.locator("section[aria-labelledby=consent] tbody tr").all_inner_texts()
    assert [line.split("\t")[:2] for line in consent] == [
        ["email", "yes"], ["sms", "no lead has no phone number"]]  # fmt: skip
    link = page.get_by_role("link", name=f"Open workflow lead-{lead_id} in the Temporal UI")
    assert await link.get_attribute("href") == temporal_ui_url(
        console_site.stack.settings, f"lead-{lead_id}")  # fmt: skip
    now = await page.locator("section[aria-labelledby=now]").inner_text()
    assert "running" in now and "handed_off" in now  # from the workflow's query
    await assert_accessible(page)


async def test_the_current_step_and_next_action_come_from_the_workflow(console_site, signed_in):
    lead_id = await welcomed_lead(console_site, "leads-cid")
    page = await signed_in("viewer")
    answer = await page.goto(f"/console/leads/{lead_id}")
    assert answer.status == 200
    now = await page.locator("section[aria-labelledby=now]").inner_text()
    assert re.search(r"Current step\s+pause", now), now  # the 7-day wait after the welcome
    assert re.search(r"Next action\s+\d{4}-\d\d-\d\d \d\d:\d\d UTC", now), now
    assert "month (active)" in now


async def test_a_rep_sees_only_the_leads_handed_off_to_it(console_site, signed_in):
    alices = await welcomed_lead(console_site, "leads-dan", rep="alice")
    await handed_off(console_site, alices)
    page = await signed_in("bob")
    answer = await page.goto(f"/console/leads/{alices}")
    assert answer.status == 403
    assert "not handed off to you" in await page.locator("main").inner_text()
    await search(page, email="leads-dan")
    assert await page.locator("table.data").count() == 0

    alice = await signed_in("rep")
    assert (await alice.goto(f"/console/leads/{alices}")).status == 200
    await search(alice, email="leads-dan")
    await alice.get_by_role("link", name="leads-dan@alice-co.example").wait_for()

    missing = await alice.goto("/console/leads/no-such-lead")
    assert missing.status == 404
    assert "There is no lead no-such-lead" in await alice.locator("main").inner_text()


async def test_a_bad_filter_says_what_to_fix(console_site, signed_in):
    page = await signed_in("marketer")
    await page.goto("/console/leads")
    await page.get_by_label("Score from").fill("60")
    await page.get_by_label("Score to").fill("40")
    await page.get_by_role("button", name="Search").click()
    alert = await page.get_by_role("alert").inner_text()
    assert alert == "score min: minimum 60 is above the maximum 40"
    assert await page.get_by_label("Score from").input_value() == "60"  # kept to fix
    assert await page.locator("table.data").count() == 0
    unknown = await page.goto("/console/leads?stage=hot")  # not one the form offers
    assert unknown.status == 422 and "stage" in await page.locator("main").inner_text()
