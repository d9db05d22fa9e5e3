"""Web tracking in a real browser (Debian's Chromium through Playwright): pages of a website
load the snippet from the API (`/t.js`) on the same origin, as behind the site's proxy; a
visitor's anonymous views wait, the demo form's post joins them to the new lead, and they
are scored; a tracked email link joins a browser to its lead. A headless browser's own
User-Agent is a bot's, and a browser sending Global Privacy Control sends nothing.

The API is served by uvicorn on a free port, with a worker on the Temporal dev server
(tests/harness.py), on SQLite.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from api.app import create_app
from devstack.stack import api_server
from devstack.temporal_server import free_port
from models.db import Lead, Response, Visitor, VisitorView
from models.workflow_io import lead_workflow_id
from services.runtime import build_links
from services.tracking import VISITOR_FIELD
from tests.harness import Harness, eventually, running_harness

# A desktop Chrome's User-Agent: Playwright's headless one says HeadlessChrome, a bot's.
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/131.0.0.0 Safari/537.36")  # fmt: skip
PAGE_POINTS = 10  # tests/fixtures/definitions/scoring.yaml: page_view
# The pages' own policy: the API's is for its own pages (no script), not a website's.
SITE_POLICY = {"Content-Security-Policy": "default-src 'self'"}
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<script src="/t.js" defer></script></head>
<body><h1>{title}</h1><a href="/site/pricing">Pricing</a>
<form method="post" action="/forms/demo-request">
  <label>Work email <input name="work_email" type="email"></label>
  <input name="website" style="display:none" tabindex="-1" autocomplete="off">
  <button type="submit">Book a demo</button>
</form></body></html>"""


@dataclass
class Website:
    harness: Harness
    url: str
    collected: list[str] = field(default_factory=list)  # the /collect requests the pages sent

    def rows(self, model, *where) -> list:
        with self.harness.database.sessions() as session:
            return list(session.scalars(select(model).where(*where)))

    def page_views(self, lead_id: str) -> list[Response]:
        return self.rows(Response, Response.lead_id == lead_id, Response.type == "page.view")

    async def score(self, lead_id: str, points: float) -> None:
        def scored():
            return self.rows(Lead, Lead.id == lead_id, Lead.score == points)

        await eventually(scored, timeout=20, what=f"the lead scored {points}")

    async def visit(self, context, path: str):
        """Open a page of the site and wait for its load (the snippet runs before it)."""
        page = await context.new_page()
        page.on("request", lambda r: self.collected.append(r.url) if "/collect" in r.url else None)
        await page.goto(self.url + path, wait_until="load")
        return page


@pytest.fixture
async def website(dev_server_env, sqlite_settings, fixture_definitions) -> AsyncIterator[Website]:
    settings = sqlite_settings.model_copy(update={"api_port": free_port()})
    async with running_harness(dev_server_env, settings, fixture_definitions) as harness:
        app = create_app(harness.intake, settings, relay=False)

        @app.get("/site/{name}", include_in_schema=False)
        async def site_page(name: str) -> HTMLResponse:
            return HTMLResponse(PAGE.format(title=name.title()), headers=SITE_POLICY)

        server = api_server(app, settings, log_level="warning")
        task = asyncio.create_task(server.serve())
        await eventually(lambda: server.started or task.done(), what="the API started")
        try:
            yield Website(harness, f"http://127.0.0.1:{settings.api_port}")
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)


async def test_anonymous_views_are_the_leads_and_scored_once_it_posts_the_form(browser, website):
    # The headless browser as it is: its User-Agent is a bot's, and nothing is kept.
    headless = await browser.new_context()
    await website.visit(headless, "/site/home")
    await eventually(lambda: website.collected, what="the headless view sent")
    await headless.close()

    person = await browser.new_context(user_agent=CHROME)
    await website.visit(person, "/site/home")
    page = await website.visit(person, "/site/pricing")
    waiting = await eventually(lambda: len(website.rows(VisitorView)) == 2 and
                               website.rows(VisitorView), what="two views waiting")  # fmt: skip
    # One first-party cookie holds the visitor, and both views are its.
    (cookie,) = [c for c in await person.cookies() if c["name"] == "nurture_vid"]
    assert {view.visitor_id for view in waiting} == {cookie["value"]}
    assert sorted(view.url for view in waiting) == [f"{website.url}/site/home",
                                                    f"{website.url}/site/pricing"]  # fmt: skip
    assert {view.title for view in waiting} == {"Home", "Pricing"}
    assert website.rows(Response) == []

    # The form carries the visitor; posting it makes the lead.
    await page.get_by_label("Work email").fill("ada@example.com")
    await page.get_by_role("button", name="Book a demo").click()
    await page.wait_for_url(f"{website.url}/forms/demo-request")
    (lead,) = website.rows(Lead)
    website.harness.started.append(lead_workflow_id(lead.id))
    assert lead.email == "ada@example.com"
    (visitor,) = website.rows(Visitor)
    assert (visitor.id, visitor.lead_id) == (cookie["value"], lead.id)
    views = website.page_views(lead.id)
    assert sorted(v.event_id for v in views) == sorted(f"view:{v.id}" for v in waiting)
    assert website.rows(VisitorView) == []
    await website.score(lead.id, 2 * PAGE_POINTS)

    # Back on the site, the next view is the lead's at once.
    await website.visit(person, "/site/blog")
    await eventually(lambda: len(website.page_views(lead.id)) == 3, what="the third view")
    await website.score(lead.id, 3 * PAGE_POINTS)
    await person.close()


async def test_a_tracked_email_link_joins_the_browser_to_its_lead(browser, website):
    lead_id = await website.harness.enroll(email="grace@example.com")
    token = build_links(website.harness.settings).tracking_token(lead_id)
    context = await browser.new_context(user_agent=CHROME)
    page = await website.visit(context, f"/site/pricing?utm_source=newsletter&nt={token}")
    # The link's token leaves the address bar; the view is the lead's, without it.
    assert page.url == f"{website.url}/site/pricing?utm_source=newsletter"
    (view,) = await eventually(lambda: website.page_views(lead_id), what="the link's view")
    assert view.data["url"] == f"{website.url}/site/pricing?utm_source=newsletter"
    assert view.utm == {"utm_source": "newsletter"}
    (visitor,) = website.rows(Visitor)
    assert (visitor.lead_id, visitor.joined_by) == (lead_id, "link")
    # The forms on the page now carry the visitor.
    assert await page.locator(f"input[name={VISITOR_FIELD}]").input_value() == visitor.id
    await website.score(lead_id, PAGE_POINTS)
    await context.close()


async def test_a_browser_sending_global_privacy_control_sends_nothing(browser, website):
    context = await browser.new_context(user_agent=CHROME)
    # As Firefox and Brave expose GPC (Chromium has no setting for it).
    await context.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', {get: () => true})"
    )
    page = await website.visit(context, "/site/home")
    await page.wait_for_load_state("networkidle")
    assert website.collected == []
    assert [c for c in await context.cookies() if c["name"] == "nurture_vid"] == []
    assert await page.locator(f"input[name={VISITOR_FIELD}]").count() == 0
    # The same page without it sends its view (what the check above would have seen).
    plain = await browser.new_context(user_agent=CHROME)
    await website.visit(plain, "/site/home")
    await eventually(lambda: website.rows(VisitorView), what="the plain browser's view")
    assert len(website.collected) == 1
    await context.close()
    await plain.close()


async def test_a_single_page_sites_new_addresses_are_views_its_fragments_are_not(browser, website):
    context = await browser.new_context(user_agent=CHROME)
    page = await website.visit(context, "/site/app")
    await eventually(lambda: len(website.rows(VisitorView)) == 1, what="the first view")
    # As a single-page site's router does: a new address, then its title.
    await page.evaluate("history.pushState({}, '', '/site/plans?utm_source=ads');"
                        "document.title = 'Plans'")  # fmt: skip
    await eventually(lambda: len(website.rows(VisitorView)) == 2, what="the pushed view")
    # A new fragment (an anchor on the same page) is no new view, whichever way it comes.
    await page.evaluate("location.hash = 'faq'; history.replaceState({}, '', '#answers')")
    await page.wait_for_timeout(500)  # what it would have sent has arrived by now
    assert len(website.rows(VisitorView)) == 2
    await page.evaluate("history.go(-2)")  # back, a popstate: at /site/app again
    views = await eventually(lambda: len(website.rows(VisitorView)) == 3 and
                             website.rows(VisitorView), what="the view gone back to")  # fmt: skip
    first, pushed, back = sorted(views, key=lambda view: view.occurred_at)
    assert (pushed.url, pushed.title) == (f"{website.url}/site/plans?utm_source=ads", "Plans")
    assert pushed.referrer == first.url == f"{website.url}/site/app"
    assert pushed.utm == {"utm_source": "ads"}
    assert (back.url, back.referrer) == (first.url, pushed.url)  # a referrer has no #
    await context.close()
