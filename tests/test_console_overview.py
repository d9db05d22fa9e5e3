"""The console's Overview page and live feed (api/console/pages/overview.py) in a real
browser: Debian's Chromium through Playwright against a worker and the API on the
Temporal dev server (tests/console_browser.py), with leads made, responding and handed
off by real traffic.

- The figures and the funnel count a new hot lead (lead, MQL, SQL one more each), the
  charts are drawn by console.js, speed to lead is shown; a range's figures are read
  once per CACHE_SECONDS.
- The live feed shows a response posted to POST /events while the page is open; a rep's
  feed never shows another rep's lead.
- The stream itself: comments keep a quiet stream open, it ends after STREAM_SECONDS and
  a reconnection with the last event's id goes on from there; no session, no stream.
- axe-core finds no serious violation.
"""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import expect
from sqlalchemy import select

from api.console.pages import overview as page_module
from models.db import HandoffEvent
from tests.console_browser import assert_accessible
from tests.harness import eventually

pytestmark = pytest.mark.devserver


async def figures(page) -> dict[str, int]:
    """The funnel table: leads per stage."""
    await page.goto("/console/?range=7d")
    rows = page.locator("table#funnel tbody tr")
    found = {}
    for n in range(await rows.count()):
        row = rows.nth(n)
        stage = await row.get_attribute("data-stage")
        found[stage] = int((await row.locator("td").first.inner_text()).replace(",", ""))
    return found


async def open_feed(page) -> None:
    """The overview, once its feed's stream has answered (it starts "now" then)."""
    async with page.expect_response(lambda r: r.url.endswith("/console/feed")):
        await page.goto("/console/")


async def test_the_funnel_counts_a_new_hot_lead(console_site, signed_in, monkeypatch):
    monkeypatch.setattr(page_module, "CACHE_SECONDS", 0.0)  # read anew each time
    page = await signed_in("marketer")
    before = await figures(page) if await _has_leads(page) else {}
    _, handoff = await console_site.hot_lead("overview-ada")
    await eventually(lambda: _notified(console_site, handoff.id), what="alice notified")
    after = await figures(page)
    for stage in ("lead", "mql", "sql"):
        assert after[stage] == before.get(stage, 0) + 1, stage
    cards = {await c.get_attribute("data-stage"): await c.inner_text()
             for c in await page.locator(".cards .figure[data-stage]").all()}  # fmt: skip
    assert cards["sql"] == str(after["sql"])
    # console.js drew every chart: the funnel and both SQL series.
    await expect(page.locator("canvas[data-chart][data-drawn='1']")).to_have_count(3)
    speed = page.locator("section[aria-labelledby=speed-heading]")
    assert "handoffs timed" in await speed.inner_text()
    await assert_accessible(page)


async def test_the_figures_are_read_once_per_cache_period(console_site, signed_in, monkeypatch):
    page = await signed_in("viewer")
    monkeypatch.setattr(page_module, "CACHE_SECONDS", 0.0)
    first = await figures(page)  # read now, and kept
    monkeypatch.setattr(page_module, "CACHE_SECONDS", 30.0)
    await console_site.lead("overview-cached-dee")
    assert await figures(page) == first  # within CACHE_SECONDS: the same reading
    monkeypatch.setattr(page_module, "CACHE_SECONDS", 0.0)
    assert (await figures(page))["lead"] == first.get("lead", 0) + 1


async def test_the_live_feed_shows_a_response_posted_to_events(console_site, signed_in):
    lead_id = await console_site.lead("overview-feed-bo")
    page = await signed_in("marketer")
    await open_feed(page)
    await console_site.respond(lead_id, "page.view", url="/pricing")
    item = page.locator("ul[data-feed] li", has_text="overview-feed-bo@alice-co.example viewed")
    await item.wait_for(timeout=15_000)
    assert "/pricing" in await item.inner_text()
    await item.get_by_role("link", name="overview-feed-bo@alice-co.example").wait_for()
    assert await item.get_by_role("link").get_attribute("href") == f"/console/leads/{lead_id}"
    assert await page.locator("[data-feed-empty]").is_hidden()
    await assert_accessible(page)


async def test_a_reps_feed_has_only_its_own_leads(console_site, signed_in):
    alices, _ = await console_site.hot_lead("overview-alices")
    bobs, _ = await console_site.hot_lead("overview-bobs", rep="bob")
    page = await signed_in("rep")  # alice
    await open_feed(page)
    await console_site.respond(bobs.id, "email.click")
    await console_site.respond(alices.id, "email.click")
    feed = page.locator("ul[data-feed]")
    await feed.locator("li", has_text=alices.email).first.wait_for(timeout=15_000)
    assert bobs.email not in await feed.inner_text()


async def test_the_stream_keeps_alive_ends_and_resumes(console_site, signed_in, monkeypatch):
    monkeypatch.setattr(page_module, "KEEP_ALIVE", 0.5)
    monkeypatch.setattr(page_module, "STREAM_SECONDS", 3.0)
    lead_id = await console_site.lead("overview-stream-cy")
    page = await signed_in("viewer")
    # Its answer is whole once the stream ends; meanwhile a response comes.
    first = asyncio.create_task(page.request.get("/console/feed"))
    await asyncio.sleep(1.2)  # the stream has started and polled once
    await console_site.respond(lead_id, "email.open")
    answer = await first
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = _events(await answer.text())
    assert events[0] == {"retry": "1000"}
    assert {"comment": " keep-alive"} in events
    link = f'<a href="/console/leads/{lead_id}">overview-stream-cy@alice-co.example</a>'
    opened = [e for e in events if "data" in e]
    assert len(opened) == 1 and f"{link} opened an email" in opened[0]["data"]
    # Reconnecting with the last id: what happened in between is not lost.
    await console_site.respond(lead_id, "email.click")
    again = await page.request.get("/console/feed", headers={"Last-Event-ID": opened[0]["id"]})
    clicked = [e["data"] for e in _events(await again.text()) if "data" in e]
    assert len(clicked) == 1 and clicked[0].endswith(f"{link} clicked in an email")


async def test_no_session_no_stream(console_site, browser):
    context = await browser.new_context(base_url=console_site.url)
    try:
        answer = await context.request.get("/console/feed", max_redirects=0)
        assert answer.status == 303
        assert answer.headers["location"] == "/console/login?next=%2Fconsole%2Ffeed"
    finally:
        await context.close()


def _notified(site, handoff_id: str) -> bool:
    with site.sessions() as session:
        return session.scalar(select(HandoffEvent.id).where(
            HandoffEvent.handoff_id == handoff_id, HandoffEvent.kind == "notified",
            HandoffEvent.status == "sent")) is not None  # fmt: skip


async def _has_leads(page) -> bool:
    await page.goto("/console/?range=7d")
    return await page.locator("table#funnel").count() == 1


def _events(body: str) -> list[dict[str, str]]:
    """A server-sent event stream as its events (a comment is an event of its own)."""
    events = []
    for block in body.split("\n\n"):
        if not block:
            continue
        event: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            if name == "":
                event["comment"] = value
            else:
                event[name] = value.removeprefix(" ")
        events.append(event)
    return events
