"""UTM campaign fields: captured at intake (a lead's first touch, never overwritten), on
events (`Response.utm`), by the CSV import's columns, and credited by
`nurture report --attribution --by campaign|medium`, on SQLite and PostgreSQL, against
the hand-computed example of docs/outcomes.md."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from api.app import create_app
from models.db import Lead, Opportunity, Response, StageChange
from services.attribution_report import attribution
from services.importer import LeadImporter, open_csv, plan_columns
from services.intake import EventIn, Intake, LeadIn
from services.reports import ReportFilter

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SPRING = {"utm_source": "newsletter", "utm_medium": "email", "utm_campaign": "spring"}


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


@pytest.fixture
def intake(database, fixture_definitions) -> Intake:
    return Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")


def stored_lead(database, email: str) -> Lead:
    with database.sessions() as session:
        return Lead.find(session, email)


# --- intake -----------------------------------------------------------------------------------


def test_a_leads_first_campaign_stays(database, intake):
    intake.upsert_lead(LeadIn(email="ada@example.com", **SPRING, utm_term=" crm "))
    intake.upsert_lead(LeadIn(email="ada@example.com", first_name="Ada",
                              utm_campaign="retarget", utm_medium="cpc"))  # fmt: skip
    ada = stored_lead(database, "ada@example.com")
    assert (ada.first_name, ada.utm_source, ada.utm_medium, ada.utm_campaign, ada.utm_term,
            ada.utm_content) == ("Ada", "newsletter", "email", "spring", "crm", None)  # fmt: skip


def test_a_lead_without_a_campaign_gets_it_from_a_later_upsert(database, intake):
    intake.upsert_lead(LeadIn(email="bob@example.com", utm_campaign="  "))  # blank: none
    assert stored_lead(database, "bob@example.com").utm_campaign is None
    intake.upsert_lead(LeadIn(email="bob@example.com", utm_campaign="summer"))
    intake.upsert_lead(LeadIn(email="bob@example.com", utm_campaign="autumn"))
    assert stored_lead(database, "bob@example.com").utm_campaign == "summer"


def test_an_events_utm_fields_are_kept_on_its_response(database, intake):
    intake.upsert_lead(LeadIn(email="ada@example.com"))
    intake.store_events([
        EventIn(type="page.view", email="ada@example.com", event_id="ad",
                utm_campaign="retarget", utm_medium="cpc"),
        EventIn(type="page.view", email="ada@example.com", event_id="plain"),
    ])  # fmt: skip
    with database.sessions() as session:
        utm = dict(session.execute(select(Response.event_id, Response.utm)).all())
        # SQL NULL, not JSON null, when the event carried none
        nulls = session.scalar(select(func.count()).where(Response.utm.is_(None)))
    assert utm == {"ad": {"utm_campaign": "retarget", "utm_medium": "cpc"}, "plain": None}
    assert nulls == 1


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/leads", {"email": "long@example.com"}),
        ("/events", {"type": "page.view", "email": "long@example.com"}),
    ],
)
def test_a_campaign_over_200_characters_is_refused(settings, database, intake, route, body):
    client = TestClient(create_app(intake, settings, relay=False))
    answer = client.post(route, json=body | {"utm_campaign": "x" * 201},
                         headers={"Authorization": "Bearer test-token"})  # fmt: skip
    assert answer.status_code == 422
    (problem,) = answer.json()["problems"]
    assert problem["field"] == "utm_campaign" and "at most 200 characters" in problem["message"]
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == 0
        assert session.scalar(select(func.count()).select_from(Response)) == 0


# --- the CSV import -----------------------------------------------------------------------------


def test_import_columns_for_the_campaign():
    headers = ["Email", "UTM Source", "utm_medium", "Campaign", "Campaign Term",
               "utm-content", "Lead Source"]  # fmt: skip
    assert plan_columns(headers).describe() == {
        "Email": "email", "UTM Source": "utm_source", "utm_medium": "utm_medium",
        "Campaign": "utm_campaign", "Campaign Term": "utm_term", "utm-content": "utm_content",
        "Lead Source": "source",
    }  # fmt: skip


async def test_an_import_keeps_each_leads_first_campaign(database, intake, tmp_path):
    intake.upsert_lead(LeadIn(email="old@example.com", utm_campaign="launch"))
    path = tmp_path / "leads.csv"
    path.write_text(
        "email,utm campaign,medium\n"
        "old@example.com,spring,email\n"
        "kim@example.com,spring,email\n"
        "kim@example.com,autumn,cpc\n"
        "lee@example.com,,\n"
    )
    source = open_csv(path)
    report = await LeadImporter(source, plan_columns(source.headers), intake,
                                enroll=False).run()  # fmt: skip
    assert (report.created, report.updated, report.rejected) == (2, 1, [])
    found = {email: stored_lead(database, email) for email in
             ("old@example.com", "kim@example.com", "lee@example.com")}  # fmt: skip
    assert {email: (lead.utm_campaign, lead.utm_medium) for email, lead in found.items()} == {
        "old@example.com": ("launch", None),  # had a campaign: kept whole
        "kim@example.com": ("spring", "email"),  # its first row's
        "lee@example.com": (None, None),
    }


# --- attribution --------------------------------------------------------------------------------


@pytest.fixture
def campaigns(database, intake) -> dict[str, str]:
    """Ada came via "spring" (medium email) on day 0, clicked a "retarget" ad (cpc) on
    day 3, had an opportunity opened on day 4 ($6,000), became an SQL on day 5, and
    clicked a "late" ad on day 6. Bob came with no campaign and became an SQL on day 2.
    Cy came via "spring" with no medium, had an event with a source only (day 1), and
    became an SQL on day 3. Returns their lead IDs by name."""
    ids = {}
    for name, utm in (("ada", SPRING), ("bob", {}), ("cy", {"utm_campaign": "spring"})):
        lead, _ = intake.upsert_lead(LeadIn(email=f"{name}@example.com", **utm))
        ids[name] = lead.id
    intake.store_events([
        EventIn(type="page.view", lead_id=ids["ada"], occurred_at=day(3),
                utm_campaign="retarget", utm_medium="cpc"),
        EventIn(type="page.view", lead_id=ids["ada"], occurred_at=day(6), utm_campaign="late"),
        EventIn(type="page.view", lead_id=ids["cy"], occurred_at=day(1), utm_source="google"),
    ])  # fmt: skip
    with database.sessions.begin() as session:
        session.execute(update(Lead).values(created_at=day(0)))
        for name, n in (("ada", 5), ("bob", 2), ("cy", 3)):
            session.add(StageChange(lead_id=ids[name], change_key="1:sql", from_stage="mql",
                                    to_stage="sql", reason="r", created_at=day(n)))  # fmt: skip
        session.add(Opportunity(crm_id="o1", lead_id=ids["ada"], status="open", currency="USD",
                                amount=Decimal(6000), opened_at=day(4)))  # fmt: skip
    return ids


def credited(database, model: str, by: str) -> dict[str, dict]:
    with database.sessions() as session:
        return {row["key"]: row for row in attribution(session, ReportFilter(), model, by)["rows"]}


@pytest.mark.parametrize("model", ["position_based", "linear"])
def test_by_campaign_the_intake_and_the_ad_share_ada(database, campaigns, model):
    rows = credited(database, model, "campaign")
    # Ada: spring (intake) and retarget (day 3) before her SQL, 0.5 each; "late" came
    # after it. Cy: spring alone (her day-1 event had no campaign). Bob: none.
    assert {key: row["sqls"] for key, row in rows.items()} == pytest.approx(
        {"spring": 1.5, "retarget": 0.5, "(none)": 1.0})  # fmt: skip
    assert rows["spring"]["pipeline USD"] == pytest.approx(3000)
    assert rows["retarget"]["pipeline USD"] == pytest.approx(3000)
    assert rows["spring"]["leads"] == sorted([campaigns["ada"], campaigns["cy"]])
    assert rows["(none)"]["leads"] == [campaigns["bob"]]


def test_first_and_last_touch_by_campaign_and_medium(database, campaigns):
    first = credited(database, "first_touch", "campaign")
    assert {key: row["sqls"] for key, row in first.items()} == {"spring": 2, "(none)": 1}
    last = credited(database, "last_touch", "medium")
    # Ada: email (intake), cpc (day 3): the last is cpc. Cy has no medium: (none).
    assert {key: row["sqls"] for key, row in last.items()} == {"cpc": 1, "(none)": 2}


def test_the_command_explains_a_campaign(database, campaigns, settings, monkeypatch):
    from cli.app import app

    monkeypatch.setenv("DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("NURTURE_STATE_DIR", str(settings.state_dir))
    runner = CliRunner()
    report = runner.invoke(app, ["report", "--attribution", "linear", "--by", "campaign",
                                 "--json"])  # fmt: skip
    assert report.exit_code == 0, report.output
    assert {row["key"] for row in json.loads(report.stdout)["rows"]} == {
        "spring", "retarget", "(none)"}  # fmt: skip
    explained = runner.invoke(app, ["report", "--attribution", "linear", "--by", "campaign",
                                    "--explain", "retarget"])  # fmt: skip
    assert explained.exit_code == 0 and explained.stdout.split() == [campaigns["ada"]]
    unknown = runner.invoke(app, ["report", "--attribution", "linear", "--by", "medium",
                                  "--explain", "late"])  # fmt: skip
    assert unknown.exit_code == 1 and "cpc" in unknown.stderr
