"""Consent at intake (docs/consent.md): `POST /leads`, an import and a form carry each
channel's consent with its status, source, time and legal basis; what is not valid is
refused naming the field, and changes nothing; a new lead told nothing starts as
delivery.yaml's `consent.defaults` say for its country (SMS: explicit consent only); the
migration leaves every stored lead's consent as it was.

The API runs in-process with a worker on the Temporal dev server (tests/harness.py); the
sends run on the time-skipping server through the SDKs to the provider imitation.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import yaml
from fastapi import FastAPI
from pydantic import SecretStr
from sqlalchemy import insert, select

from api.app import create_app
from api.console.web import COOKIE, session_signer
from models import schema
from models.db import ConsentChange, Lead, Message, make_engine, new_id
from models.workflow_io import lead_workflow_id
from services import accounts
from services.definitions import check_definitions, load_definitions
from services.importer import LeadImporter, open_csv, plan_columns
from services.intake import Intake
from testkit import FIXTURE_DEFINITIONS
from tests.harness import Harness, eventually, running_harness

HEADERS = {"Authorization": "Bearer test-token"}
# Germany and Austria need consent given for email; Austria asks for double opt-in too.
CONSENT_POLICY = {
    "defaults": {"email": {"default": "opted_in", "opt_in_countries": ["DE", "AT"]}},
    "double_opt_in": {"email": ["AT"]},
}


def consent_root(tmp_path):
    """The fixture definitions with CONSENT_POLICY (SMS: the product's default)."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    delivery = yaml.safe_load((root / "delivery.yaml").read_text())
    delivery["consent"] = CONSENT_POLICY
    (root / "delivery.yaml").write_text(yaml.safe_dump(delivery))
    return root


@pytest.fixture
def consent_definitions(tmp_path):
    return load_definitions(consent_root(tmp_path))


def changes(sessions, lead_id: str) -> list[ConsentChange]:
    with sessions() as session:
        query = select(ConsentChange).where(ConsentChange.lead_id == lead_id)
        return list(session.scalars(query.order_by(ConsentChange.id)))


def told(change: ConsentChange) -> tuple:
    at = change.given_at.replace(tzinfo=UTC) if change.given_at else None
    return (change.channel, change.status, change.opted_in, change.reason, change.source, at,
            change.basis)  # fmt: skip


# --- POST /leads and forms ---------------------------------------------------------------------


@dataclass
class Site:
    harness: Harness
    app: FastAPI

    def client(self, cookies: dict[str, str] | None = None) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=("203.0.113.7", 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://nurture", headers=HEADERS,
                                 cookies=cookies)  # fmt: skip

    def leads(self) -> dict[str, Lead]:
        with self.harness.database.sessions() as session:
            return {lead.email: lead for lead in session.scalars(select(Lead))}

    def watch(self, lead_id: str) -> None:
        Harness.started.append(lead_workflow_id(lead_id))

    async def console_page(self, path: str) -> str:
        """A console page as an admin sees it (a session made in the database)."""
        sessions = self.harness.database.sessions
        admin = accounts.add_user(sessions, "tests", "admin@example.com", "Admin", "admin",
                                  "a long enough password", None, set())  # fmt: skip
        with sessions.begin() as session:
            secret, _csrf = accounts.open_session(session, admin.id)
        signer = session_signer(self.harness.settings.resolved_secret_key())
        cookies = {COOKIE: signer.sign(secret).decode()}
        async with self.client(cookies) as http:
            answer = await http.get(path)
        assert answer.status_code == 200, answer.text
        return answer.text


@pytest.fixture
async def site(dev_server_env, settings, consent_definitions):
    settings = settings.model_copy(update={"definitions_dir": consent_definitions.root})
    async with running_harness(dev_server_env, settings, consent_definitions) as harness:
        yield Site(harness, create_app(harness.intake, settings, relay=False))


async def test_post_leads_records_each_channels_consent_with_its_source_time_and_basis(site):
    given = {"email": {"status": "given", "basis": "legitimate_interest",
                       "source": "trade show stand", "at": "2026-03-02T10:30:00Z"},
             "sms": {"status": "given", "basis": "consent", "source": "SMS keyword"}}  # fmt: skip
    async with site.client() as http:
        created = await http.post(
            "/leads",
            json={
                "email": "jonas@example.de",
                "country": "de",
                "phone": "+4915112345678",
                "consent": given,
            },
        )
        site.watch(created.json()["lead_id"])
        withdrawn = await http.post("/leads", json={
            "email": "jonas@example.de",
            "consent": {"sms": {"status": "withdrawn", "source": "call centre"}},
        })  # fmt: skip
    assert created.status_code == withdrawn.status_code == 201, withdrawn.text
    jonas = site.leads()["jonas@example.de"]
    assert jonas.country == "DE"
    # Given on legitimate interest: Germany's default (opted out) does not apply.
    assert jonas.email_consent and not jonas.sms_consent
    assert jonas.sms_opt_out_reason == "withdrawn (call centre)"
    rows = changes(site.harness.database.sessions, jonas.id)
    sms_at = rows[1].given_at.replace(tzinfo=UTC)
    assert abs(sms_at - datetime.now(UTC)) < timedelta(minutes=1)  # none given: now
    assert [told(row) for row in rows] == [
        ("email", "given", True, "api", "trade show stand",
         datetime(2026, 3, 2, 10, 30, tzinfo=UTC), "legitimate_interest"),
        ("sms", "given", True, "api", "SMS keyword", sms_at, "consent"),
        ("sms", "withdrawn", False, "api", "call centre", rows[2].given_at.replace(tzinfo=UTC),
         None),
    ]  # fmt: skip
    # The console's lead page shows what was told, per channel.
    page = await site.console_page(f"/console/leads/{jonas.id}")
    cells = re.findall(r"<tr>\s*<td>(email|sms)</td>.*?</td>\s*<td>(.*?)</td>", page, re.S)
    assert cells == [
        ("email", "given, basis legitimate_interest, from trade show stand, 2026-03-02 10:30 UTC"),
        ("sms", f"withdrawn, from call centre, {rows[2].given_at:%Y-%m-%d %H:%M} UTC"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("lead", "field", "message"),
    [
        ({"consent": {"email": {"status": "given"}}}, "consent.email.basis",
         "give the legal basis it was given on: one of consent, contract"),
        ({"consent": {"email": {"status": "given", "basis": "whim"}}}, "consent.email.basis",
         "Input should be 'consent', 'contract'"),
        ({"consent": {"email": {"status": "maybe", "basis": "consent"}}},
         "consent.email.status", "Input should be 'given', 'withdrawn' or 'pending'"),
        ({"consent": {"sms": {"status": "given", "basis": "legitimate_interest"}}},
         "consent.sms.basis", "SMS needs the person's explicit consent: basis consent"),
        ({"consent": {"sms": {"status": "pending", "basis": "consent"}}}, "consent.sms.status",
         "Input should be 'given' or 'withdrawn'"),
        ({"consent": {"email": {"status": "given", "basis": "consent",
                                "at": "2999-01-01T00:00:00Z"}}}, "consent.email.at",
         "is not a plausible time for a consent"),
        ({"consent": {"fax": {"status": "given"}}}, "consent.fax", "Extra inputs"),
        ({"consent": "yes"}, "consent", "valid dictionary"),
        ({"country": "XX"}, "country", "'XX' is not an ISO 3166 country code"),
    ],
)  # fmt: skip
async def test_invalid_consent_is_refused_naming_the_field_and_nothing_is_stored(
    site, lead, field, message
):
    async with site.client() as http:
        answer = await http.post("/leads", json={"email": "nope@example.com", **lead})
    assert answer.status_code == 422, answer.text
    ((problem),) = answer.json()["problems"]
    assert problem["field"] == field and message in problem["message"], problem
    assert site.leads() == {}


async def test_a_new_lead_told_nothing_starts_as_its_countrys_default(site):
    async with site.client() as http:
        for email, country in (("lena@example.de", "DE"), ("sam@example.com", "US"),
                               ("kim@example.com", None)):  # fmt: skip
            answer = await http.post("/leads", json={"email": email, "country": country,
                                                     "phone": "+14155550123"})  # fmt: skip
            assert answer.status_code == 201, answer.text
            site.watch(answer.json()["lead_id"])
        stored = site.leads()
        # A lead we have keeps its consent when it comes again with none (or moves).
        again = await http.post("/leads", json={"email": "sam@example.com", "country": "DE"})
        assert again.status_code == 201
    got = {email: (lead.email_consent, lead.email_opt_out_reason, lead.sms_consent,
                   lead.sms_opt_out_reason) for email, lead in stored.items()}  # fmt: skip
    explicit = "no consent given: SMS needs explicit consent"
    assert got == {
        "lena@example.de": (False, "no consent given: DE is an opt-in country", False, explicit),
        "sam@example.com": (True, None, False, explicit),
        "kim@example.com": (True, None, False, explicit),
    }
    sam = site.leads()["sam@example.com"]
    assert (sam.country, sam.email_consent, sam.sms_consent) == ("DE", True, False)
    # Defaults are not consent anyone gave or withdrew: no rows.
    assert all(changes(site.harness.database.sessions, lead.id) == [] for lead in stored.values())


async def test_a_forms_ticked_boxes_record_consent_and_ask_for_confirmation_where_required(site):
    form = {"first": "Anna", "marketing_ok": "on", "texts_ok": "on"}
    async with site.client() as http:
        vienna = await http.post(
            "/forms/demo-request", data=form | {"work_email": "anna@example.at", "country": "AT"}
        )
        berlin = await http.post(
            "/forms/demo-request", data=form | {"work_email": "ben@example.de", "country": "DE"}
        )
    assert vienna.status_code == berlin.status_code == 202, vienna.text
    for answer in (vienna, berlin):
        site.watch(answer.json()["lead_id"])
    leads = site.leads()
    anna, ben = leads["anna@example.at"], leads["ben@example.de"]
    # Germany: consent given on the form; Austria: it waits for Anna's confirmation.
    assert (ben.email_consent, ben.email_confirmation, ben.sms_consent) == (True, None, True)
    assert (anna.email_consent, anna.email_confirmation, anna.sms_consent) == (
        False, "pending", True)  # fmt: skip
    rows = changes(site.harness.database.sessions, anna.id)
    assert [(r.channel, r.status, r.reason, r.source, r.basis) for r in rows] == [
        ("email", "pending", "form", "form:demo-request: marketing_ok", "consent"),
        ("sms", "given", "form", "form:demo-request: texts_ok", "consent"),
    ]  # fmt: skip
    assert all(r.given_at is not None and r.source_event_id for r in rows)

    def confirmation_sent() -> list[Message]:
        with site.harness.database.sessions() as session:
            query = select(Message).where(Message.template == "consent/confirm",
                                          Message.status == "sent")  # fmt: skip
            return list(session.scalars(query))

    # Enrolling the lead started its confirmation: the email went, to Anna only.
    (sent,) = await eventually(confirmation_sent, what="the confirmation email")
    assert (sent.lead_id, sent.recipient, sent.counts_for_caps) == (anna.id, anna.email, False)
    assert "/confirm/" in sent.body


# --- an import ----------------------------------------------------------------------------------


async def test_an_import_records_consent_columns_and_reports_bad_ones_by_column(
    tmp_path, database, consent_definitions
):
    path = tmp_path / "consent.csv"
    path.write_text(
        "email,country,phone,Email Consent,email_consent_source,Email consent date,"
        "email_consent_basis,sms_consent,sms_consent_basis\n"
        "ada@example.de,DE,+4915112345678,given,webinar,2026-03-01T09:00:00Z,consent,given,"
        "consent\n"
        "bert@example.de,DE,,,,,,,\n"
        "cleo@example.com,US,,Withdrawn,crm export,,,,\n"
        "dora@example.com,US,,given,,,,,\n"
        "emil@example.com,US,,,,,,given,contract\n"
        "finn@example.com,US,,perhaps,,,consent,,\n"
    )
    other = tmp_path / "json.csv"
    other.write_text(
        'email,consent\n'
        'gus@example.com,"{""email"": {""status"": ""given"", ""basis"": ""contract""}}"\n'
        'hana@example.com,"{""email"": {""status"": ""given""}}"\n'
        'ivo@example.com,not json\n'
    )  # fmt: skip
    intake = Intake(consent_definitions, database.sessions, None, "unused")
    reports = []
    for file in (path, other):
        source = open_csv(file)
        reports.append(await LeadImporter(source, plan_columns(source.headers), intake,
                                          enroll=False).run())  # fmt: skip
    rejected = [(r.line, r.field, r.reason) for report in reports for r in report.rejected]
    assert rejected == [
        (5, "email_consent_basis", "give the legal basis it was given on: one of consent, "
         "contract, legal_obligation, vital_interests, public_task, legitimate_interest"),
        (6, "sms_consent_basis", "SMS needs the person's explicit consent: basis consent, not "
         "contract"),
        (7, "email_consent", "Input should be 'given', 'withdrawn' or 'pending' (got 'perhaps')"),
        (3, "consent.email.basis", "give the legal basis it was given on: one of consent, "
         "contract, legal_obligation, vital_interests, public_task, legitimate_interest"),
        (4, "consent", "not JSON: Expecting value: line 1 column 1 (char 0)"),
    ]  # fmt: skip
    with database.sessions() as session:
        leads = {lead.email: lead for lead in session.scalars(select(Lead))}
    assert set(leads) == {"ada@example.de", "bert@example.de", "cleo@example.com",
                          "gus@example.com"}  # fmt: skip
    flags = {email: (lead.email_consent, lead.sms_consent) for email, lead in leads.items()}
    assert flags == {"ada@example.de": (True, True), "bert@example.de": (False, False),
                     "cleo@example.com": (False, False),
                     "gus@example.com": (True, False)}  # fmt: skip
    ada = changes(database.sessions, leads["ada@example.de"].id)
    assert [told(row)[:6] for row in ada] == [
        ("email", "given", True, "import", "webinar", datetime(2026, 3, 1, 9, tzinfo=UTC)),
        ("sms", "given", True, "import", "import:consent.csv", ada[1].given_at.replace(tzinfo=UTC)),
    ]  # fmt: skip
    (cleo,) = changes(database.sessions, leads["cleo@example.com"].id)
    assert (cleo.status, cleo.source, cleo.opted_in) == ("withdrawn", "crm export", False)
    (gus,) = changes(database.sessions, leads["gus@example.com"].id)
    assert (gus.basis, gus.source) == ("contract", "import:json.csv")


# --- sends: a lead in an opt-in country that gave no consent is never sent to -------------------


@pytest.fixture
async def sending(time_skipping_env, sqlite_settings, providers, tmp_path):
    definitions = load_definitions(consent_root(tmp_path))
    settings = sqlite_settings.model_copy(update={
        "definitions_dir": definitions.root,
        "sendgrid_api_key": SecretStr(providers.sendgrid_key), "sendgrid_host": providers.url,
        "twilio_account_sid": providers.twilio_sid,
        "twilio_auth_token": SecretStr(providers.twilio_token),
        "twilio_from_number": "+14155550000", "twilio_api_base": providers.url,
    })  # fmt: skip
    async with running_harness(time_skipping_env, settings, definitions) as harness:
        harness.providers = providers
        yield harness


async def test_a_lead_in_an_opt_in_country_with_no_consent_is_never_sent_to(sending):
    sms_consent = {"sms": {"status": "given", "basis": "consent", "source": "SMS opt-in form"}}
    silent = await sending.enroll("month", email="lea@example.de", country="DE",
                                  phone="+4915112345678")  # fmt: skip
    texted = await sending.enroll("month", email="max@example.com", country="US",
                                  phone="+14155550188", consent=sms_consent)  # fmt: skip
    await sending.enroll("month", email="ola@example.com", country="US",
                                   phone="+14155550199")  # fmt: skip
    await sending.until(texted, lambda s: s.step_id == "pause")
    await sending.env.sleep(timedelta(days=40))
    await sending.until(silent, lambda s: s.enrollment_status != "active")
    # Not one provider request for Lea; Max gets SMS (he consented), Ola only email.
    to = [r.json()["personalizations"][0]["to"][0]["email"] if r.path == "/v3/mail/send"
          else r.form()["To"] for r in sending.providers.requests]  # fmt: skip
    assert "lea@example.de" not in to and "+4915112345678" not in to
    assert to.count("+14155550188") == 1 and "+14155550199" not in to
    assert to.count("max@example.com") >= 2 and to.count("ola@example.com") >= 2
    with sending.database.sessions() as session:
        lea = session.scalars(select(Message).where(Message.lead_id == silent)).all()
    reasons = {(m.step_id, m.status, m.status_reason) for m in lea}
    assert (
        "welcome",
        "skipped",
        "opted out of email (no consent given: DE is an opt-in country)",
    ) in reasons
    assert (
        "nudge",
        "skipped",
        "opted out of SMS (no consent given: SMS needs explicit consent)",
    ) in reasons
    assert {m.status for m in lea} == {"skipped"}


# --- delivery.yaml and the migration ----------------------------------------------------------


def test_consent_policy_problems_name_file_line_and_field(tmp_path):
    root = consent_root(tmp_path)
    (root / "delivery.yaml").write_text(
        "consent:\n"
        "  defaults:\n"
        "    email: {default: opted_in, opt_in_countries: [DE, UK]}\n"
        "    sms: {default: maybe}\n"
        "  double_opt_in: {email: [AT], reminder_after: 8d, expires_after: 7d}\n"
        "  sms_help: Texts from Acme.\n"
    )
    _definitions, problems = check_definitions(root)
    found = {(p.file.rsplit("/", 1)[-1], p.line, p.field): p.message for p in problems}
    assert "'UK' is not an ISO 3166 country code such as US or DE (the United Kingdom is GB)" \
        in found["delivery.yaml", 3, "consent.defaults.email.opt_in_countries"]  # fmt: skip
    assert "'opted_in' or 'opted_out'" in found["delivery.yaml", 4, "consent.defaults.sms.default"]
    assert "reminder_after (8d) must be shorter than expires_after (1w)" \
        in found["delivery.yaml", 5, "consent.double_opt_in"]  # fmt: skip
    assert "mention STOP" in found["delivery.yaml", 6, "consent.sms_help"]
    (root / "delivery.yaml").write_text(
        "consent:\n  defaults:\n    sms: {default: opted_out, opt_in_countries: [DE]}\n"
    )
    (problem,) = check_definitions(root)[1]
    assert (problem.line, problem.field) == (3, "consent.defaults.sms")
    assert "only with `default: opted_in`" in problem.message


def test_the_migration_keeps_every_leads_consent(database_url):
    engine = make_engine(database_url)
    before = schema.script_directory().get_revision("0017").down_revision
    schema.upgrade(engine, before)
    stored = [("in@example.com", True, True), ("out@example.com", False, False),
              ("mixed@example.com", True, False)]  # fmt: skip
    with engine.begin() as connection:
        for email, email_consent, sms_consent in stored:
            connection.execute(insert(Lead.__table__).values(
                id=new_id(), email=email, email_consent=email_consent, sms_consent=sms_consent,
                email_opt_out_reason=None if email_consent else "unsubscribe"))  # fmt: skip
    schema.upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(select(Lead.email, Lead.email_consent, Lead.sms_consent,
                                         Lead.email_confirmation)).all()  # fmt: skip
    engine.dispose()
    assert sorted(rows) == sorted((*row, None) for row in stored)
