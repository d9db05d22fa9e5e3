"""Double opt-in (docs/consent.md), on the time-skipping server with real activities: email
consent given by a lead where delivery.yaml asks for it waits for the lead's confirmation.
The confirmation email goes out through SendGrid's SDK (to the imitation), the sequence's
own emails are held, not sent, until the lead follows the link; a reminder goes once, and
an unconfirmed request expires (recorded), after which the held emails are skipped.
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, timedelta

import httpx
import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy import select

from api.app import create_app
from models.db import ConsentChange, Lead, Message
from models.workflow_io import CONFIRMATION_WAIT
from services import confirmation_client
from services.definitions import load_definitions
from testkit import FIXTURE_DEFINITIONS
from tests.harness import eventually, running_harness

CONSENT = {"email": {"status": "given", "basis": "consent", "source": "webinar sign-up"}}
DOI = {"email": ["DE"], "reminder_after": "2d", "expires_after": "7d"}


@pytest.fixture
def doi_definitions(tmp_path):
    """The fixtures with double opt-in for leads in Germany."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    delivery = yaml.safe_load((root / "delivery.yaml").read_text())
    delivery["consent"]["double_opt_in"] = DOI
    (root / "delivery.yaml").write_text(yaml.safe_dump(delivery))
    return load_definitions(root)


@pytest.fixture
async def site(time_skipping_env, sqlite_settings, providers, doi_definitions):
    settings = sqlite_settings.model_copy(update={
        "definitions_dir": doi_definitions.root,
        "sendgrid_api_key": SecretStr(providers.sendgrid_key), "sendgrid_host": providers.url,
        "public_url": "https://nurture.example.com",
    })  # fmt: skip
    async with running_harness(time_skipping_env, settings, doi_definitions) as harness:
        harness.app = create_app(harness.intake, settings, relay=False)
        harness.providers = providers
        yield harness


def emails(site, category: str | None = None) -> list[dict]:
    """The SendGrid requests so far (of one category: double_opt_in, or a sequence's)."""
    sent = [r.json() for r in site.providers.requests if r.path == "/v3/mail/send"]
    return [e for e in sent if category is None or category in e.get("categories", [])]


def steps_sent(site, lead_id: str) -> list[str]:
    """The sequence's steps sent (the confirmation emails are the lead's, of no step)."""
    return [step for step in site.sent_steps(lead_id) if step is not None]


def lead_row(site, lead_id: str) -> Lead:
    with site.database.sessions() as session:
        return session.get(Lead, lead_id)


def confirm_path(email: dict) -> str:
    text = next(c["value"] for c in email["content"] if c["type"] == "text/plain")
    return re.search(r"https://nurture\.example\.com(/confirm/\S+)", text)[1]


async def page(site, method: str, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=site.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nurture") as http:
        return await http.request(method, path)


async def test_a_confirmed_lead_gets_its_held_email_and_no_reminder(site):
    lead_id = await site.enroll("month", email="hans@example.de", country="DE",
                                first_name="Hans", consent=CONSENT)  # fmt: skip
    (first,) = await eventually(lambda: emails(site, "double_opt_in"), what="confirmation")
    assert first["personalizations"][0]["to"] == [{"email": "hans@example.de"}]
    assert first["subject"] == "Please confirm you want emails from Nurture Demo Co"
    assert sorted(first["categories"]) == ["double_opt_in", "first"]
    # The sequence's welcome waits for the confirmation, asking again as time passes.
    state = await site.until(lead_id, lambda s: s.deferred is not None)
    assert (state.deferred.step_id, state.deferred.reason) == ("welcome", CONFIRMATION_WAIT)
    lead = lead_row(site, lead_id)
    assert (lead.email_consent, lead.email_confirmation) == (False, "pending")
    await site.env.sleep(timedelta(days=1))
    assert emails(site) == [first]  # nothing else before the confirmation
    # Given again meanwhile (a second form): the same request, no second email.
    await site.enroll("month", email="hans@example.de", consent=CONSENT)
    assert lead_row(site, lead_id).email_confirmation_id == lead.email_confirmation_id

    path = confirm_path(first)
    asked = await page(site, "GET", path)
    assert asked.status_code == 200 and "<form method='post'>" in asked.text
    assert lead_row(site, lead_id).email_confirmation == "pending"  # a GET changes nothing
    at = await site.env.get_current_time()
    confirmed = await page(site, "POST", path)
    assert confirmed.status_code == 200 and "you are confirmed" in confirmed.text
    # The held welcome goes at once (the confirmation wakes it, not its recheck, which
    # would come hours later); no time passes meanwhile.
    await eventually(lambda: steps_sent(site, lead_id) == ["welcome"], what="welcome")
    (welcome,) = [m for m in site.rows(Message, lead_id) if m.step_id == "welcome"]
    assert welcome.scheduled_at.replace(tzinfo=UTC) - at < timedelta(minutes=1)
    handle = site.env.client.get_workflow_handle(
        confirmation_client.workflow_id(lead.email_confirmation_id)
    )
    assert await handle.result() == "confirmed"
    lead = lead_row(site, lead_id)
    assert (lead.email_consent, lead.email_confirmation) == (True, "confirmed")

    # The reminder never goes.
    await site.env.sleep(timedelta(days=3))
    assert len(emails(site, "double_opt_in")) == 1
    assert [sorted(e["categories"]) for e in emails(site)] == [
        ["double_opt_in", "first"], ["month", "month:welcome"]]  # fmt: skip
    again = await page(site, "POST", path)  # a second click: the same answer, no change
    assert again.status_code == 200
    with site.database.sessions() as session:
        rows = session.scalars(select(ConsentChange).where(ConsentChange.lead_id == lead_id)
                               .order_by(ConsentChange.id)).all()  # fmt: skip
    assert [(r.status, r.opted_in, r.reason, r.source, r.basis) for r in rows] == [
        ("pending", False, "api", "webinar sign-up", "consent"),
        ("pending", False, "api", "webinar sign-up", "consent"),
        ("confirmed", True, "confirmed", "double opt-in link", "consent"),
    ]


async def test_an_unconfirmed_request_is_reminded_once_then_expires(site):
    lead_id = await site.enroll("month", email="greta@example.de", country="DE",
                                consent=CONSENT)  # fmt: skip
    (first,) = await eventually(lambda: emails(site, "double_opt_in"), what="confirmation")
    confirmation_id = lead_row(site, lead_id).email_confirmation_id
    await site.env.sleep(timedelta(days=2, hours=1))
    first_again, reminder = await eventually(
        lambda: len(emails(site, "double_opt_in")) == 2 and emails(site, "double_opt_in"),
        what="reminder",
    )
    assert first_again == first and sorted(reminder["categories"]) == ["double_opt_in", "reminder"]
    assert reminder["subject"].startswith("Reminder: Please confirm")
    assert confirm_path(reminder) == confirm_path(first)  # the same request, the same link

    await site.env.sleep(timedelta(days=5))  # past the seven days
    handle = site.env.client.get_workflow_handle(confirmation_client.workflow_id(confirmation_id))
    assert await handle.result() == "expired"
    lead = lead_row(site, lead_id)
    assert (lead.email_consent, lead.email_confirmation) == (False, "expired")
    await site.env.sleep(timedelta(days=30))
    # Reminded once; the held welcome was skipped once the request expired; nothing else.
    assert len(emails(site, "double_opt_in")) == 2 and len(emails(site)) == 2
    with site.database.sessions() as session:
        welcome = session.scalars(
            select(Message).where(Message.lead_id == lead_id, Message.step_id == "welcome")
        ).one()
        expired = session.scalars(select(ConsentChange).where(
            ConsentChange.lead_id == lead_id, ConsentChange.status == "expired")).one()  # fmt: skip
    assert welcome.status == "skipped" and "double opt-in link expired" in welcome.status_reason
    assert (expired.opted_in, expired.reason) == (False, "confirmation_expired")
    # The link no longer works, and following it changes nothing.
    for method in ("GET", "POST"):
        gone = await page(site, method, confirm_path(first))
        assert gone.status_code == 410 and "This link has expired" in gone.text
    assert lead_row(site, lead_id).email_confirmation == "expired"


async def test_a_link_we_did_not_sign_is_refused(site):
    for method in ("GET", "POST"):
        answer = await page(site, method, "/confirm/not-a-token")
        assert answer.status_code == 404 and "not valid" in answer.text
