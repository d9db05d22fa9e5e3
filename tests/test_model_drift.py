"""`nurture models check` (issue 19, point 4): the recent population against the active
model's training reference (PSI per feature and of the predictions) and calibration now
against then, with a verdict. A synthetic history (a model trained on seed 1, the
database holding seed 2's leads: the same process, other leads) is stable; shifted
(pricing views, industries the model never saw) it says retrain, the shifted features
first. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console
from sqlalchemy import insert

from models.db import Lead, Opportunity, PredictiveModelRecord, Response
from scoring import synthetic
from scoring.history import HistoryLead, HistoryResponse
from scoring.model_store import store
from scoring.predictive import train
from services.model_drift import DriftError, drift_report, print_drift

NOW = datetime(2024, 9, 1, tzinfo=UTC)
PRICING = "https://www.nurture.example/pricing"


@pytest.fixture(scope="module")
def training():
    from services.definitions import load_definitions
    from testkit import FIXTURE_DEFINITIONS

    history = [HistoryLead.model_validate(r) for r in synthetic.generate(3000, seed=1)]
    return train(history, load_definitions(FIXTURE_DEFINITIONS))


def history_leads(n: int = 3000, seed: int = 2, until: datetime | None = NOW) -> list[HistoryLead]:
    leads = [HistoryLead.model_validate(r) for r in synthetic.generate(n, seed=seed)]
    return [lead for lead in leads if until is None or lead.created_at <= until]


def store_history(database, leads: list[HistoryLead], until: datetime | None = None) -> None:
    """Leads, delivered responses and won opportunities, as stored_history reads them
    (what happened after `until` left out). Emails made unique, domains kept."""

    def known(moment) -> bool:
        return until is None or moment <= until

    with database.sessions.begin() as session:
        for lead in leads:
            p = lead.profile
            local, _, domain = p.email.partition("@")
            session.add(Lead(id=lead.id, email=f"{lead.id}.{local}@{domain}", title=p.title,
                             company=p.company, company_size=p.company_size,
                             industry=p.industry, country=p.country, source=p.source,
                             created_at=lead.created_at))  # fmt: skip
        session.flush()
        rows = [dict(event_id=f"{lead.id}:{n}", lead_id=lead.id, type=r.type, source="test",
                     data=r.data, occurred_at=r.at, received_at=r.at, delivered_at=r.at)
                for lead in leads for n, r in enumerate(lead.responses) if known(r.at)]  # fmt: skip
        session.execute(insert(Response), rows)
        for lead in leads:
            if lead.outcome.customer and known(lead.outcome.at):
                session.add(Opportunity(crm_id=f"won-{lead.id}", lead_id=lead.id, status="won",
                                        closed_at=lead.outcome.at))  # fmt: skip


def activate(database, training) -> str:
    with database.sessions.begin() as session:
        store(session, training, "test").status = "active"
    return training.model.fingerprint


def test_a_population_like_training_s_is_stable(database, training, fixture_definitions):
    store_history(database, history_leads(), until=NOW)
    fingerprint = activate(database, training)

    report = drift_report(database.sessions, fixture_definitions, NOW)

    assert (report["fingerprint"], report["status"], report["verdict"]) == (
        fingerprint, "active", "stable")  # fmt: skip
    assert report["recent"]["leads"] > 500 and report["recent"]["moments"] > 1000
    judged = [row for row in report["features"] if row["in_verdict"]]
    assert len(judged) > 50 and max(row["psi"] for row in judged) < 0.1
    assert [row["psi"] for row in judged] == sorted((row["psi"] for row in judged), reverse=True)
    assert report["features"][-1]["feature"] == "age_days"  # shown, no verdict (sampling)
    assert report["predicted"]["psi"] < 0.1
    calibration = report["calibration"]  # moments 2024-05-04 to 06-03: answers known by NOW
    assert calibration["to"] == (NOW - timedelta(days=90)).isoformat()
    assert calibration["moments"] > 500 and calibration["won"] > 20
    assert [row["decile"] for row in calibration["deciles"]] == list(range(1, 11))
    assert calibration["error_then"] > 0 and abs(calibration["growth"]) < 0.05
    assert calibration["deciles"][0]["actual"] > calibration["deciles"][-1]["actual"]
    assert any("calibration error" in reason for reason in report["reasons"])

    # Before any answer is known: no calibration, said so; a named model is checked too.
    early = drift_report(database.sessions, fixture_definitions, datetime(2024, 3, 1, tzinfo=UTC),
                         fingerprint=fingerprint)  # fmt: skip
    assert (early["calibration"]["moments"], early["calibration"]["error_now"]) == (0, None)
    assert any("calibration not measured" in reason for reason in early["reasons"])


def with_pricing_views(lead: HistoryLead) -> HistoryLead:
    """Six more pricing views just after each recent lead's first response in the month."""
    recent = [r.at for r in lead.responses if NOW - timedelta(days=30) < r.at <= NOW]
    if not recent:
        return lead
    views = [HistoryResponse(type="page.view", at=min(NOW, recent[0] + timedelta(hours=i)),
                             data={"url": PRICING}) for i in range(1, 7)]  # fmt: skip
    return lead.model_copy(update={"responses": sorted([*lead.responses, *views],
                                                       key=lambda r: r.at)})  # fmt: skip


def in_other_industries(lead: HistoryLead) -> HistoryLead:
    """Leads of the last four months from industries the model never saw."""
    if lead.created_at < NOW - timedelta(days=120):
        return lead
    industry = "mining" if int(lead.id[-1]) % 2 else "agriculture"
    return lead.model_copy(update={"profile": lead.profile.model_copy(
        update={"industry": industry})})  # fmt: skip


@pytest.mark.parametrize(("shift", "shifted"), [
    (with_pricing_views, ("page:/pricing:", "count:page.view:", "recent:page.view")),
    (in_other_industries, ("industry=*", "industry=")),
])  # fmt: skip
def test_a_shifted_population_says_retrain_and_names_what_moved(
    database, training, fixture_definitions, shift, shifted
):
    store_history(database, [shift(lead) for lead in history_leads()], until=NOW)
    activate(database, training)

    report = drift_report(database.sessions, fixture_definitions, NOW)

    assert report["verdict"] == "retrain"
    top = [row["feature"] for row in report["features"][:3]]
    assert all(name.startswith(shifted) for name in top), top
    assert top[0].startswith(shifted[0]) and report["features"][0]["psi"] >= 0.25
    assert top[0] in report["reasons"][0] and "PSI ≥ 0.25" in report["reasons"][0]
    if shift is in_other_industries:  # unknown to the model: listed, not measured
        assert {"industry=mining", "industry=agriculture"} <= {
            row["feature"] for row in report["unseen"]}  # fmt: skip

    console = Console(record=True, width=140)
    print_drift(console, report)
    text = console.export_text()
    assert "verdict: retrain" in text and top[0] in text and "nurture train" in text


def test_no_model_to_check_says_what_to_do(database, fixture_definitions):
    with pytest.raises(DriftError, match="no predictive model is active"):
        drift_report(database.sessions, fixture_definitions, NOW)
    with pytest.raises(DriftError, match="no predictive model pm-missing"):
        drift_report(database.sessions, fixture_definitions, NOW, fingerprint="pm-missing")
    with database.sessions() as session:
        assert session.query(PredictiveModelRecord).count() == 0
