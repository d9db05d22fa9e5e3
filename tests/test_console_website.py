"""The console's Website page (api/console/pages/website.py) in a real browser: Debian's
Chromium through Playwright against a worker and the API on the Temporal dev server
(tests/console_browser.py).

- Page views sent to the real `POST /collect` as the snippet sends them: a visitor who
  stays anonymous, one joined to its lead by a tracked email link (`nt`), one by posting
  a form. A marketer sees the totals grow by exactly those, the page and the campaign
  source among the top ones, and both joins with their leads; the page fits a phone's
  screen and axe-core finds no serious violation.
- A `days` outside 1 to 365 is the console's 422 page; a rep may not open the page (403).
"""

from __future__ import annotations

import re
import uuid

import pytest
from sqlalchemy import select

from models.db import Lead
from services.runtime import build_links
from services.tracking import VISITOR_FIELD
from tests.console_browser import assert_accessible
from tests.harness import eventually

pytestmark = pytest.mark.devserver

# A desktop Firefox's User-Agent: an HTTP library's own is a bot's, whose views are dropped.
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
TOTALS = ("views", "visitors", "joined")


async def collect(site, visitor: str, url: str, **fields) -> None:
    """A view as the snippet posts it."""
    body = {"visitor": visitor, "url": url, "title": "A page", **fields}
    answer = await site.http.post("/collect", json=body, headers={"User-Agent": FIREFOX})
    assert answer.status_code == 204, answer.text


async def totals(page) -> dict[str, int]:
    """The page's three totals (all 0 when it says nothing was tracked yet)."""
    await page.goto("/console/website")
    if await page.locator("#no-traffic").count():
        return dict.fromkeys(TOTALS, 0)
    figures = {}
    for name in TOTALS:
        text = await page.locator(f"[data-total={name}] .figure").inner_text()
        figures[name] = int(text.replace(",", ""))
    return figures


async def test_a_marketer_sees_the_websites_traffic(console_site, signed_in):
    page = await signed_in("marketer")
    before = await totals(page)
    tag = uuid.uuid4().hex[:8]
    site = f"https://www.example.com/w{tag}"
    source = f"src-{tag}"
    anonymous, linked, former = ("a" + tag) * 4, ("b" + tag) * 4, ("c" + tag) * 4

    await collect(console_site, anonymous, f"{site}/pricing?utm_source={source}")
    await collect(console_site, anonymous, f"{site}/pricing#faq")
    ada = await console_site.lead("website-ada")
    links = build_links(console_site.stack.settings)
    tracked = links.tracked_url(f"{site}/pricing?utm_source={source}", ada)
    await collect(console_site, linked, tracked, nt=links.tracking_token(ada))
    await collect(console_site, former, f"{site}/signup")
    grace = f"website-grace-{tag}@example.org"
    posted = await console_site.http.post("/forms/newsletter", data={
        "email": grace, VISITOR_FIELD: former}, headers={"User-Agent": FIREFOX})  # fmt: skip
    assert posted.status_code == 303, posted.text

    after = await totals(page)
    # 4 views (2 still anonymous), 1 visitor waiting, 2 joined: a link's and a form's.
    assert {name: after[name] - before[name] for name in TOTALS} == {
        "views": 4, "visitors": 1, "joined": 2}  # fmt: skip
    assert re.search(r"\d+ by a form, \d+ by a tracked link",
                     await page.locator("[data-total=joined]").inner_text())  # fmt: skip
    pricing = page.locator("table#top-pages tbody tr", has_text=f"{site}/pricing")
    assert await cells(pricing) == [f"{site}/pricing", "3", "1"]  # its campaigns together
    campaign = page.locator("table#top-sources tbody tr", has_text=source)
    assert await cells(campaign) == [source, "2", "1"]
    assert await page.locator("table#top-sources", has_text="direct / none").count() == 1

    grace_id = await eventually(lambda: lead_id_of(console_site, grace), what="grace's lead")
    by_link = page.locator("table#joined tbody tr", has_text="website-ada@")
    assert (await cells(by_link))[1] == "tracked link"
    await by_link.get_by_role("link").wait_for()
    assert await by_link.get_by_role("link").get_attribute("href") == f"/console/leads/{ada}"
    by_form = page.locator("table#joined tbody tr", has_text=grace)
    assert (await cells(by_form))[1] == "form newsletter"
    assert await by_form.get_by_role("link").get_attribute("href") == f"/console/leads/{grace_id}"
    assert "/t.js" in await page.locator("pre code").inner_text()  # the tag to install
    assert (
        await page.get_by_role("link", name="Website", exact=True).get_attribute("aria-current")
        == "page"
    )
    await assert_accessible(page)

    await page.set_viewport_size({"width": 390, "height": 844})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390


async def cells(row) -> list[str]:
    return [text.strip() for text in await row.locator("td").all_inner_texts()]


def lead_id_of(site, email: str) -> str | None:
    with site.sessions() as session:
        return session.scalar(select(Lead.id).where(Lead.email == email))


async def test_days_outside_1_to_365_are_not_valid(console_site, signed_in):
    page = await signed_in("viewer")
    shown = await page.goto("/console/website?days=7")
    assert shown.status == 200
    assert await page.get_by_label("Days counted").input_value() == "7"
    for days in ("0", "366", "a week"):
        answer = await page.goto(f"/console/website?days={days}")
        assert answer.status == 422, days
        assert "days" in await page.locator("main").inner_text()


async def test_a_rep_may_not_open_the_website_page(console_site, signed_in):
    page = await signed_in("rep")
    answer = await page.goto("/console/website")
    assert answer.status == 403
    assert (
        await page.get_by_role("link", name="Website", exact=True).count() == 0
    )  # not in the menu
