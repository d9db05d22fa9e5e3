"""`nurture outcomes import FILE.csv`: a Salesforce Opportunity export and a HubSpot Deals
export, one event a row, rejects with line, field (and column) and reason, a second
import of the same file storing nothing. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from models.db import Opportunity
from services.importer import UsageError, open_csv
from services.intake import Intake, LeadIn
from services.outcome_import import import_outcomes, plan_outcome_columns

SALESFORCE = """Opportunity ID,Opportunity Name,Stage,Amount,Opportunity Currency,Close Date,\
Last Modified Date,Contact Email,Loss Reason
0061,Acme,Closed Won,"12,000.50",USD,2026-11-20,2026-11-20T10:00:00Z,ada@example.com,
0062,Beta,Closed Lost,5000,EUR,2026-11-18,2026-11-18,bob@example.com,Budget
0063,Gamma,Prospecting,3000,USD,2026-12-31,2026-11-10,ada@example.com,
0064,Delta,Negotiation,lots,USD,2026-12-31,2026-11-12,carl@example.com,
"""
HUBSPOT = """Record ID,Deal Name,Deal Stage,Amount,Close Date,Create Date,Last Modified Date,\
Email,Nurture Lead ID,Closed Lost Reason
901,Acme,closedwon,800,2026-11-21 09:30,2026-11-01 08:00,2026-11-21 09:30,ada@example.com,,
902,Other,Appointment Scheduled,100,2026-12-15,2026-11-02,2026-11-03,,no-such-lead,
903,Late,Closed Lost,,2026-11-25,2026-11-05,,erin@example.com,,Went with a competitor
"""


@pytest.fixture
def intake(database, fixture_definitions):
    intake = Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")
    intake.upsert_lead(LeadIn(email="ada@example.com"))
    return intake


def opportunities(database) -> dict[str, Opportunity]:
    with database.sessions() as session:
        return {o.crm_id: o for o in session.scalars(select(Opportunity))}


def test_a_salesforce_export(tmp_path, database, intake):
    path = tmp_path / "salesforce.csv"
    path.write_text(SALESFORCE)
    report = import_outcomes(database.sessions, open_csv(path))
    assert (report.read, report.stored.accepted, report.stored.waiting) == (4, 3, 1)
    assert [(r.line, r.field) for r in report.rejected] == [(5, "amount (Amount)")]

    stored = opportunities(database)
    assert (stored["0061"].status, stored["0061"].amount) == ("won", Decimal("12000.5"))
    assert (stored["0062"].status, stored["0062"].lost_reason) == ("lost", "Budget")
    assert (stored["0063"].status, stored["0063"].crm_stage) == ("open", "Prospecting")
    assert str(stored["0063"].expected_close_date) == "2026-12-31"
    lead_id = stored["0061"].lead_id
    assert lead_id is not None and stored["0063"].lead_id == lead_id
    assert stored["0062"].lead_id is None  # bob has no lead yet: it waits for him

    again = import_outcomes(database.sessions, open_csv(path))
    assert (again.stored.accepted, again.stored.duplicates) == (0, 3)


def test_a_hubspot_export_with_a_default_currency(tmp_path, database, intake):
    path = tmp_path / "hubspot.csv"
    path.write_text(HUBSPOT)
    report = import_outcomes(database.sessions, open_csv(path), currency="GBP")
    # 902 names a lead ID we do not have: rejected alone, the others stored.
    assert [(r.line, r.field) for r in report.rejected] == [(3, "lead_id")]
    stored = opportunities(database)
    assert set(stored) == {"901", "903"}
    assert (stored["901"].status, stored["901"].currency) == ("won", "GBP")
    assert (stored["903"].status, stored["903"].lost_reason) == ("lost", "Went with a competitor")
    assert str(stored["903"].close_date) == "2026-11-25"  # no modified time: its close date


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("Name,Stage,Email,Close Date", "no opportunity ID column"),
        ("Opportunity ID,Stage,Close Date", "no column naming the lead"),
        ("Opportunity ID,Stage,Email", "no date"),
    ],
)
def test_a_file_without_the_columns_it_needs_is_bad_usage(header, message):
    with pytest.raises(UsageError, match=message):
        plan_outcome_columns(header.split(","))


def test_the_command_reports_and_exits_by_what_it_stored(tmp_path, settings, monkeypatch):
    from cli.app import app

    for name, value in {"DATABASE_URL": settings.effective_database_url,
                        "NURTURE_STATE_DIR": str(tmp_path / "state")}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_text(SALESFORCE)
    bad.write_text("Opportunity ID,Email,Close Date,Amount,Currency\n1,a@example.com,x,1,USD\n")
    result = CliRunner().invoke(app, ["outcomes", "import", str(good), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accepted"] == 3
    refused = CliRunner().invoke(app, ["outcomes", "import", str(bad)])
    assert refused.exit_code == 1 and "line 2: occurred_at (Close Date)" in refused.stdout
    usage = CliRunner().invoke(app, ["outcomes", "import", str(good).replace("good", "none")])
    assert usage.exit_code == 2
