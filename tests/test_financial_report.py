"""`nurture financial` on a planted database, SQLite and PostgreSQL: the model's figures,
the forecast and its backtest known by construction (the same histories as
tests/test_financial.py works out by hand), and a late outcome that must not move a
forecast as of an earlier moment."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from models.costs import load_costs
from models.db import Enrollment, Lead, StageChange
from sales.outcome_store import store_outcomes
from sales.outcomes import OutcomeEventIn
from services.financial_report import financial_model, forecast_backtest, pipeline_forecast
from services.reports import ReportFilter
from tests.test_financial import ACTUAL, AS_OF, EXPECTED, PIPELINE_HISTORY, SMB, figures

JAN, FEB = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
FINAL = {"won": "customer", "lost": "closed_lost"}


def at(start: datetime, days: float) -> datetime:
    return start + timedelta(days=days)


def add_leads(database, leads: list[tuple[str, str, datetime]], **fields) -> None:
    with database.sessions.begin() as session:
        for lead_id, segment, created in leads:
            session.add(Lead(id=lead_id, email=f"{lead_id}@example.com", segment=segment,
                             created_at=created, **fields))  # fmt: skip


def add_stages(database, changes: list[tuple[str, str, datetime]]) -> None:
    with database.sessions.begin() as session:
        for index, (lead_id, stage, moment) in enumerate(changes):
            session.add(StageChange(lead_id=lead_id, change_key=f"{index}:{stage}:{moment}",
                                    from_stage="?", to_stage=stage, reason="planted",
                                    created_at=moment))  # fmt: skip


def event(deal: str, lead: str, kind: str, moment: datetime, amount=None) -> OutcomeEventIn:
    return OutcomeEventIn(opportunity_id=deal, lead_id=lead, kind=kind, occurred_at=moment,
                          amount=amount, currency="USD" if amount else None)  # fmt: skip


# --- the pipeline history -------------------------------------------------------------------------


@pytest.fixture
def pipeline(database):
    """PIPELINE_HISTORY: MQL a day after creation, SQL two; an opportunity opened on day 3
    (the stage `opportunity`) and closed on day 10; the others' stage on day 5."""
    add_leads(database, [(lead, segment, datetime(2026, month, 1, tzinfo=UTC))
                         for lead, segment, month, _stage, _deal in PIPELINE_HISTORY])  # fmt: skip
    changes, events = [], []
    for lead, _segment, month, stage, deal in PIPELINE_HISTORY:
        created = datetime(2026, month, 1, tzinfo=UTC)
        changes += [(lead, "mql", at(created, 1)), (lead, "sql", at(created, 2))]
        if deal is None:
            changes.append((lead, stage, at(created, 5)))
            continue
        status, amount = deal
        changes.append((lead, "opportunity", at(created, 3)))
        events.append(event(f"o-{lead}", lead, "created", at(created, 3), amount))
        if status != "open":
            changes.append((lead, FINAL[status], at(created, 10)))
            events.append(event(f"o-{lead}", lead, status, at(created, 10)))
    add_stages(database, changes)
    store_outcomes(database.sessions, events, "test")
    return database


def plant_late_outcomes(database) -> None:
    """After 1 April: open10 won at $12,000, open20 lost, sql1 opened and won $12,000,
    sql2 turned down, jan2 reopened and won, a new lead came and won $50,000."""
    apr = AS_OF
    add_leads(database, [("new", "ent", at(apr, 1))])
    add_stages(database, [("sql2", "lead", at(apr, 4)), ("sql1", "opportunity", at(apr, 9)),
                          ("new", "sql", at(apr, 2))])  # fmt: skip
    store_outcomes(database.sessions, [
        event("o-open10", "open10", "won", at(apr, 19), 12_000),
        event("o-open20", "open20", "lost", at(apr, 24)),
        event("o-sql1", "sql1", "created", at(apr, 9)),
        event("o-sql1", "sql1", "won", at(apr, 34), 12_000),
        event("o-jan2", "jan2", "reopened", at(apr, 14)),
        event("o-jan2", "jan2", "won", at(apr, 19), 5_000),
        event("o-new", "new", "created", at(apr, 3)),
        event("o-new", "new", "won", at(apr, 29), 50_000),
    ], "test")  # fmt: skip


def rows_of(result: dict) -> dict[str, dict]:
    return {row["key"]: row for row in [*result["rows"], result["total"]]}


def test_the_forecast_of_a_planted_history(pipeline):
    with pipeline.sessions() as session:
        then = pipeline_forecast(session, "segment", AS_OF)
        now = pipeline_forecast(session, "segment")  # nothing happened since 1 April
    for result in (then, now):
        rates = result["rates"]
        assert (rates["sql_to_opportunity"], rates["win_rate"]) == (0.7, 0.5)
        assert {key: figures(row) for key, row in rows_of(result).items()} == EXPECTED


def test_the_backtest_and_a_late_outcome_that_moves_nothing_before_it(pipeline):
    with pipeline.sessions() as session:
        before = pipeline_forecast(session, "segment", AS_OF)
    plant_late_outcomes(pipeline)
    with pipeline.sessions() as session:
        assert pipeline_forecast(session, "segment", AS_OF) == before
        result = forecast_backtest(session, "segment", AS_OF)
        now = pipeline_forecast(session, "segment")
    rows = rows_of(result)
    assert {key: figures(row) for key, row in rows.items()} == EXPECTED
    for key, (wins, revenue, inside) in ACTUAL.items():
        assert (rows[key]["wins"]["actual"], rows[key]["wins"]["inside"]) == (wins, True)
        usd = rows[key]["revenue"]["USD"]
        assert (usd["actual"], usd["inside"]) == (revenue, inside), key
    # Today the pipeline is empty: every opportunity closed, the SQLs settled.
    assert (now["total"]["open_opportunities"], now["total"]["open_sqls"]) == (0, 0)


# --- the model ----------------------------------------------------------------------------------


@pytest.fixture
def funnel(database):
    """tests/test_financial.py's funnel: smb a1-a5 created 1 Jan, ent b1-b2 on 1 Feb; b1's
    opportunity came from the CRM with no MQL or SQL in Nurture, won in euros."""
    add_leads(database, [(f"a{i}", "smb", JAN) for i in range(1, 6)], utm_campaign="spring")
    add_leads(database, [("b1", "ent", FEB), ("b2", "ent", FEB)])
    changes, events = [], []
    for lead, (mql, sql, opened, closed, status, amount) in SMB.items():
        changes.append((lead, "mql", at(JAN, mql)))
        if sql is not None:
            changes.append((lead, "sql", at(JAN, sql)))
        if opened is not None:
            events += [event(f"o-{lead}", lead, "created", at(JAN, opened), amount),
                       event(f"o-{lead}", lead, status, at(JAN, closed))]  # fmt: skip
    add_stages(database, changes)
    events += [OutcomeEventIn(opportunity_id="o-b1", lead_id="b1", kind="created",
                              occurred_at=at(FEB, 3), amount=8000, currency="EUR"),
               event("o-b1", "b1", "won", at(FEB, 13))]  # fmt: skip
    store_outcomes(database.sessions, events, "test")
    return database


COSTS = """\
currency: USD
costs:
  - {month: 2026-01, segment: smb, amount: 5000}
  - {month: 2026-02, campaign: launch, amount: 1000}
"""


def test_the_model_of_a_planted_funnel(funnel, tmp_path):
    (tmp_path / "costs.yaml").write_text(COSTS)
    with funnel.sessions() as session:
        result = financial_model(session, ReportFilter(), "segment",
                                 load_costs(tmp_path / "costs.yaml"))  # fmt: skip
    smb, ent = result["groups"]
    assert (smb["leads"], smb["mql"], smb["sql"], smb["opportunity"], smb["won"]) == (5, 4, 3, 3, 2)
    assert smb["median_days"] == {"mql": 3.0, "sql": 2.0, "opportunity": 4.0, "won": 15.0}
    assert (smb["sales_cycle_days"], smb["win_rate"]) == (18.0, 0.6667)
    assert (smb["average_deal"], smb["revenue_per_sql"]) == ({"USD": 15000.0}, {"USD": 10000.0})
    assert (smb["cost_per_sql"], smb["cac"]) == ({"USD": 1666.67}, {"USD": 2500.0})
    assert (ent["leads"], ent["sql"], ent["won"], ent["revenue"]) == (2, 1, 1, {"EUR": 8000.0})
    total = result["total"]
    assert (total["leads"], total["cac"], total["revenue"]) == (
        7, {"USD": 2000.0}, {"EUR": 8000.0, "USD": 30000.0})  # fmt: skip
    cohorts = {(row["key"], row["cohort"]) for row in result["cohorts"]}
    assert ("smb", "2026-01") in cohorts and ("ent", "2026-02") in cohorts


def test_the_range_and_other_dimensions(funnel):
    with funnel.sessions() as session:
        feb = financial_model(session, ReportFilter(since=FEB), "segment")
        campaigns = financial_model(session, ReportFilter(), "campaign")
    assert [row["key"] for row in feb["groups"]] == ["ent"] and feb["total"]["leads"] == 2
    assert {row["key"]: row["won"] for row in campaigns["groups"]} == {"spring": 2, "(none)": 1}
    with funnel.sessions.begin() as session:  # a1 and a3 first enrolled in welcome
        for lead, sequence, day in (("a1", "welcome", 0), ("a3", "welcome", 0),
                                    ("a1", "webinar", 5), ("a2", "webinar", 0)):  # fmt: skip
            session.add(Enrollment(id=f"{lead}-{sequence}", lead_id=lead, sequence_id=sequence,
                                   sequence_version=1, workflow_id="wf",
                                   started_at=at(JAN, day)))  # fmt: skip
    with funnel.sessions() as session:
        sequences = financial_model(session, ReportFilter(), "sequence")
    by_key = {row["key"]: row for row in sequences["groups"]}
    assert (by_key["welcome"]["leads"], by_key["welcome"]["revenue"]) == (2, {"USD": 30000.0})
    assert (by_key["webinar"]["leads"], by_key["webinar"]["won"]) == (1, 0)


# --- the command ---------------------------------------------------------------------------------


@pytest.fixture
def cli(settings, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("NURTURE_STATE_DIR", str(settings.state_dir))
    from cli.app import app

    return lambda *args: CliRunner().invoke(app, ["financial", *args])


def test_the_command_prints_tables_and_json(funnel, cli, tmp_path):
    (tmp_path / "spend.csv").write_text("month,segment,amount,currency\n2026-01,smb,5000,USD\n")
    table = cli("--costs", str(tmp_path / "spend.csv"), "--cohort", "month")
    assert table.exit_code == 0, table.output
    assert "smb" in table.stdout and "2,500.00" in table.stdout and "2026-02" in table.stdout
    data = json.loads(cli("--by", "source", "--json").stdout)
    assert data["total"]["won"] == 3 and "cohorts" not in data


def test_the_command_forecasts_and_backtests(pipeline, cli):
    plant_late_outcomes(pipeline)
    printed = cli("--backtest-forecast", "--as-of", "2026-04-01")
    assert printed.exit_code == 0, printed.output
    assert "revenue USD" in printed.stdout and "24,000.00" in printed.stdout
    data = json.loads(cli("--backtest-forecast", "--as-of", "2026-04-01", "--json").stdout)
    assert data["backtest"]["total"]["revenue"]["USD"]["actual"] == 24000.0
    forecast = json.loads(cli("--forecast", "--as-of", "2026-04-01", "--json").stdout)
    assert forecast["forecast"]["total"]["wins"]["expected"] == 1.7


def test_the_command_refuses_bad_usage_and_bad_costs(cli, tmp_path):
    assert cli("--by", "color").exit_code == 2
    assert cli("--backtest-forecast").exit_code == 2
    assert cli("--as-of", "2026-04-01").exit_code == 2
    (tmp_path / "costs.yaml").write_text("currency: USD\ncosts:\n  - {month: 2026-13, amount: 1}\n")
    bad = cli("--costs", str(tmp_path / "costs.yaml"))
    assert bad.exit_code == 1 and "costs.yaml:3" in bad.stderr and "costs.0.month" in bad.stderr
