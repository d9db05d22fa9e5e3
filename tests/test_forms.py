"""A website's forms (forms.yaml, `POST /forms/{id}`): a post creates or updates the lead,
records its consent and a `form.submitted` event, and enrolls it; a bot's post (the
honeypot filled) stores nothing; each client may post ten times a minute to a form.

The app runs in-process on SQLite and PostgreSQL with a worker on the Temporal dev server
(tests/harness.py), so the enrollment really starts the lead's workflow.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from api.app import create_app
from models.db import ConsentChange, Lead, Response
from models.workflow_io import lead_workflow_id
from services.definitions import check_definitions
from testkit import FIXTURE_DEFINITIONS
from tests.harness import Harness, running_harness

DEMO = "/forms/demo-request"  # tests/fixtures/definitions/forms.yaml
ADA = {"work_email": "Ada@Example.com", "first": "Ada", "last": "Lovelace", "org": "Engines",
       "role": "Head of Analysis", "team_size": "12", "budget": "yes", "marketing_ok": "on",
       "texts_ok": "", "website": ""}  # fmt: skip


@dataclass
class Site:
    harness: Harness
    app: FastAPI

    def client(self, address: str = "203.0.113.7") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://nurture")

    def leads(self) -> list[Lead]:
        with self.harness.database.sessions() as session:
            return list(session.scalars(select(Lead)))

    def rows(self, model, lead_id: str) -> list:
        with self.harness.database.sessions() as session:
            return list(session.scalars(select(model).where(model.lead_id == lead_id)))

    def watch(self, lead_id: str) -> None:
        """Let the harness settle the lead's workflow before its database goes away."""
        Harness.started.append(lead_workflow_id(lead_id))


@pytest.fixture
async def site(dev_server_env, settings, fixture_definitions) -> AsyncIterator[Site]:
    async with running_harness(dev_server_env, settings, fixture_definitions) as harness:
        yield Site(harness, create_app(harness.intake, settings, relay=False))


async def test_a_form_post_creates_the_lead_with_its_consent_and_enrolls_it(site):
    async with site.client() as http:
        answer = await http.post(DEMO, data=ADA, headers={"Accept-Language": "fr, en-GB;q=0.8"})
    assert answer.status_code == 202, answer.text
    lead_id = answer.json()["lead_id"]
    site.watch(lead_id)
    (lead,) = site.leads()
    assert lead.id == lead_id and lead.email == "ada@example.com"
    assert (lead.first_name, lead.last_name, lead.company, lead.title) == (
        "Ada", "Lovelace", "Engines", "Head of Analysis")  # fmt: skip
    assert lead.attributes == {"team_size": "12"} and lead.source == "form:demo-request"
    # No French templates: the browser's next language the templates have (en -> en-GB).
    assert lead.locale == "en-GB"
    # The ticked box gives email consent; the empty one leaves a new lead without SMS.
    assert lead.email_consent and not lead.sms_consent
    (submitted,) = site.rows(Response, lead_id)
    assert submitted.type == "form.submitted"
    assert submitted.data == {"form": "demo-request", "budget": "yes"}
    changes = {(c.channel, c.opted_in, c.reason, c.source_event_id)
               for c in site.rows(ConsentChange, lead_id)}  # fmt: skip
    assert changes == {("email", True, "form", submitted.event_id),
                       ("sms", False, "form", submitted.event_id)}  # fmt: skip
    # Enrolled in the form's sequence, and the submission signalled to its workflow.
    state = await site.harness.until(
        lead_id, lambda s: s.sequence_id == "quick" and s.responses_handled >= 1
    )
    assert state.enrollment_status == "active"


async def test_a_second_post_updates_the_lead(site):
    first = {"work_email": "grace@example.com", "org": "Navy", "team_size": "5",
             "language": "de-at", "marketing_ok": True}  # fmt: skip
    again = {"work_email": "GRACE@example.com", "org": "Harvard", "role": "Professor",
             "marketing_ok": False}  # fmt: skip
    async with site.client() as http:
        created = await http.post(DEMO, json=first)
        updated = await http.post(DEMO, json=again, headers={"Accept-Language": "en"})
    assert created.status_code == updated.status_code == 202, updated.text
    lead_id = created.json()["lead_id"]
    site.watch(lead_id)
    assert updated.json()["lead_id"] == lead_id
    (lead,) = site.leads()
    assert (lead.company, lead.title, lead.attributes) == (
        "Harvard",
        "Professor",
        {"team_size": "5"},
    )
    assert lead.locale == "de-AT"  # the form's own field; a browser does not overwrite it
    # An empty box on a later form withdraws nothing she gave before.
    assert lead.email_consent
    assert len(site.rows(Response, lead_id)) == 2
    await site.harness.until(lead_id, lambda s: s.responses_handled >= 2)


async def test_a_bot_filling_the_honeypot_is_answered_as_accepted_and_nothing_is_stored(site):
    async with site.client() as http:
        bot = await http.post(DEMO, data={**ADA, "website": "https://spam.example"})
        redirected = await http.post("/forms/newsletter",
                                     data={"email": "bot@example.com", "url": "x"})  # fmt: skip
        person = await http.post("/forms/newsletter", data={"email": "lin@example.com"})
    assert bot.status_code == 202 and len(bot.json()["lead_id"]) == 32
    # The newsletter form sends browsers on to its thank-you page, bots too.
    for answer in (redirected, person):
        assert answer.status_code == 303
        assert answer.headers["location"] == "https://example.com/thanks"
    (lead,) = site.leads()
    site.watch(lead.id)
    assert lead.email == "lin@example.com" and lead.source == "form:newsletter"
    with site.harness.database.sessions() as session:
        assert [r.lead_id for r in session.scalars(select(Response))] == [lead.id]


async def test_unknown_forms_and_bad_emails_are_refused_and_nothing_is_stored(site):
    async with site.client() as http:
        unknown = await http.post("/forms/contact-us", data=ADA)
        bad = await http.post(DEMO, data={**ADA, "work_email": "ada at example"})
        missing = await http.post(DEMO, json={"first": "Ada"})
        nested = await http.post(DEMO, json={"work_email": {"a": 1}})
        country = await http.post(DEMO, data={**ADA, "country": "France"})
    assert unknown.status_code == 404 and "contact-us" in unknown.json()["detail"]
    for answer, field in ((bad, "work_email"), (missing, "work_email"), (nested, "work_email"),
                          (country, "country")):  # fmt: skip
        assert answer.status_code == 422, answer.text
        assert [p["field"] for p in answer.json()["problems"]] == [field]
    assert site.leads() == []


async def test_the_eleventh_post_in_a_minute_from_one_address_is_refused(site):
    async with site.client("198.51.100.9") as http:
        answers = [await http.post(DEMO, data={"work_email": "no"}) for _ in range(11)]
        other_form = await http.post("/forms/newsletter", data={"email": "no"})
    async with site.client("198.51.100.10") as other:
        other_address = await other.post(DEMO, data={"work_email": "no"})
    assert [a.status_code for a in answers] == [422] * 10 + [429]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    assert other_form.status_code == other_address.status_code == 422


def test_forms_yaml_problems_name_file_line_and_field(tmp_path):
    root = tmp_path / "defs"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    (root / "forms.yaml").write_text(
        "forms:\n"
        "  - id: demo\n"
        "    fields: {email: email, co: company_name}\n"
        "    sequence: nope\n"
        "  - id: Bad Id\n"
        "    fields: {email: email}\n"
        "  - id: signup\n"
        "    fields: {name: first_name}\n"
    )
    definitions, problems = check_definitions(root)
    found = {(p.file.rsplit("/", 1)[-1], p.line, p.field) for p in problems}
    assert ("forms.yaml", 3, "forms.0.fields.co") in found
    assert ("forms.yaml", 5, "forms.1.id") in found
    assert any(p.field == "forms.2" and "fills `email`" in p.message for p in problems)
    assert definitions is None
    (root / "forms.yaml").write_text("forms:\n  - id: demo\n    fields: {email: email}\n"
                                     "    sequence: nope\n")  # fmt: skip
    _definitions, problems = check_definitions(root)
    assert [(p.line, p.field) for p in problems if p.severity == "error"] == [
        (4, "forms.0.sequence")]  # fmt: skip
