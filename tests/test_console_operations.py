"""The console's Operations page (api/console/pages/operations.py) in a real browser:
Debian's Chromium through Playwright against a worker and the API on the Temporal dev
server (tests/console_browser.py).

- A send recorded `unknown` (the row a worker leaves when it stopped during the provider
  call) and an event posted to POST /events for an address no lead has are listed; so is
  a webhook refusal counted by the API.
- The worker of the stack polls its task queues: the page says so, naming the worker.
- A rep may not open the page (403); axe-core finds no serious violation.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from models.db import Message
from services import operations
from tests.console_browser import assert_accessible
from tests.harness import eventually

pytestmark = pytest.mark.devserver


async def unknown_send(site, lead_id: str) -> None:
    """The lead's welcome, as the send activity leaves it when a retry found it `sending`."""

    def welcomed():
        with site.sessions() as session:
            return session.scalar(select(Message.id).where(
                Message.lead_id == lead_id, Message.status == "sent"))  # fmt: skip

    message_id = await eventually(welcomed, what="the welcome sent")
    with site.sessions.begin() as session:
        message = session.get(Message, message_id)
        message.status = "unknown"
        message.status_reason = "interrupted during the provider call; outcome unknown"


async def test_operations_lists_what_needs_an_operator(console_site, signed_in):
    lead_id = await console_site.lead("operations-ada")
    await unknown_send(console_site, lead_id)
    stranger = f"ops-{uuid.uuid4().hex[:6]}@nowhere.example"
    answer = await console_site.http.post("/events", json={"email": stranger,
                                                           "type": "email.click"})  # fmt: skip
    assert answer.status_code == 202 and answer.json()["pending"] == 1
    operations.count_refusal(console_site.sessions, "sendgrid", 403,
                             "the SendGrid webhook signature does not match")  # fmt: skip

    page = await signed_in("viewer")
    await page.goto("/console/operations")
    unknown = page.locator("table#unknown-sends tbody tr", has_text="operations-ada")
    assert "outcome unknown" in await unknown.inner_text()
    await unknown.get_by_role("link", name="operations-ada@alice-co.example").wait_for()
    waiting = page.locator("table#waiting-events tbody tr", has_text=stranger)
    assert "email.click" in await waiting.inner_text()
    refusal = page.locator("table#refusals tbody tr", has_text="signature does not match")
    assert "sendgrid" in await refusal.inner_text()

    queue = page.locator("table#workers tbody tr", has_text="every activity")
    assert "polled" in await queue.inner_text()
    assert "no worker polling" not in await page.locator("table#workers").inner_text()
    assert await page.get_by_role("link", name="/health", exact=True).count() == 1
    await assert_accessible(page)


async def test_a_rep_may_not_open_operations(console_site, signed_in):
    page = await signed_in("rep")
    answer = await page.goto("/console/operations")
    assert answer.status == 403
    assert await page.get_by_role("link", name="Operations").count() == 0  # not in the menu
