"""The synthetic history's opportunities (scoring/synthetic.py), their events
(testkit/synthetic_outcomes.py), and what the funnel report makes of them once stored."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import pytest

from models.db import Lead, Opportunity
from sales.outcome_store import store_outcomes
from sales.outcomes import converge
from scoring import synthetic
from scoring.history import HistoryError, load_history, parse_leads
from services.reports import ReportFilter, build_report
from testkit.synthetic_outcomes import opportunity_events


@pytest.fixture(scope="module")
def leads():
    return list(parse_leads(synthetic.generate(400, seed=5)))


def demo_requests(lead):
    return [r.at for r in lead.responses if r.data.get("form") == "demo_request"]


def test_opportunities_are_deterministic_per_seed():
    first = [r["opportunities"] for r in synthetic.generate(60, seed=3)]
    assert first == [r["opportunities"] for r in synthetic.generate(60, seed=3)]
    # Lead i's opportunities do not depend on how many leads are made.
    assert first[:20] == [r["opportunities"] for r in synthetic.generate(20, seed=3)]
    assert first != [r["opportunities"] for r in synthetic.generate(60, seed=4)]
    ids = [opp["id"] for opps in first for opp in opps]
    assert ids and len(set(ids)) == len(ids)


def test_every_buyer_won_an_opportunity_at_its_sale(leads):
    customers = [lead for lead in leads if lead.outcome.customer]
    assert len(customers) > 15
    for lead in customers:
        (won,) = [opp for opp in lead.opportunities if opp.status == "won"]
        assert won.closed_at == lead.outcome.at
        assert lead.created_at <= won.opened_at <= won.closed_at
        assert won.closed_at < lead.created_at + timedelta(days=synthetic.DAYS)
        # Opened during the evaluation, won at its end: after every demo request.
        assert all(at <= won.closed_at for at in demo_requests(lead))
    assert not [o for lead in leads if not lead.outcome.customer for o in lead.opportunities
                if o.status == "won"]  # fmt: skip


def test_evaluations_that_did_not_buy_are_mostly_lost(leads):
    evaluated = [lead for lead in leads if demo_requests(lead) and not lead.outcome.customer]
    assert len(evaluated) > 20
    statuses = [opp.status for lead in evaluated for opp in lead.opportunities]
    assert statuses.count("lost") > len(evaluated) / 2 and set(statuses) <= {"lost", "open"}
    for lead in evaluated:
        (opp,) = lead.opportunities
        if opp.status == "lost":
            assert opp.lost_reason in synthetic.LOST_REASONS
            assert opp.opened_at <= opp.closed_at
            assert opp.closed_at <= lead.created_at + timedelta(days=synthetic.DAYS)
        else:  # decided after the lead's followed days
            assert opp.closed_at is None and opp.lost_reason is None
    # Students (the leads without a company) never evaluate: no opportunity.
    assert not [lead for lead in leads if lead.profile.company is None and lead.opportunities]


def test_amounts_are_positive_dollars_growing_with_the_company(leads):
    opportunities = [(lead, opp) for lead in leads for opp in lead.opportunities]
    assert all(opp.amount > 0 and opp.currency == "USD" for _, opp in opportunities)
    assert all(opp.expected_close_date > opp.opened_at.date() for _, opp in opportunities)
    small = [o.amount for lead, o in opportunities if (lead.profile.company_size or 0) < 100]
    large = [o.amount for lead, o in opportunities if (lead.profile.company_size or 0) >= 1000]
    assert statistics.median(large) > 3 * statistics.median(small)


def test_the_history_file_keeps_and_checks_opportunities(tmp_path):
    path = tmp_path / "history.jsonl"
    synthetic.main([str(path), "--leads", "50", "--seed", "2"])
    loaded = load_history(path)
    assert [lead.opportunities for lead in loaded] == [
        lead.opportunities for lead in parse_leads(synthetic.generate(50, seed=2))
    ]
    record = next(r for r in synthetic.generate(50, seed=2) if r["opportunities"])
    record["opportunities"][0] |= {"status": "won", "closed_at": None, "lost_reason": None}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(HistoryError, match=r":1: opportunities\[0\]: closed_at: set exactly"):
        load_history(path)


def test_the_events_fold_into_each_opportunitys_state(leads):
    checked = defaultdict(int)
    for lead in leads:
        events = opportunity_events(lead)
        for opp in lead.opportunities:
            own = [e for e in events if e.opportunity_id == opp.id]
            state = converge(reversed(own))  # in any order
            assert (state.status, state.amount, state.currency) == (opp.status, opp.amount, "USD")
            assert (state.opened_at, state.closed_at) == (opp.opened_at, opp.closed_at)
            assert state.lost_reason == opp.lost_reason
            assert state.expected_close_date == opp.expected_close_date
            checked[opp.status] += 1
        assert {e.lead_id for e in events} <= {lead.id}
    assert min(checked["won"], checked["lost"], checked["open"]) > 0
    named = opportunity_events(next(lead for lead in leads if lead.opportunities), "nurture-id")
    assert {e.lead_id for e in named} == {"nurture-id"}


def test_stored_synthetic_outcomes_feed_the_funnel(database):
    history = list(parse_leads(synthetic.generate(150, seed=9)))
    with database.sessions.begin() as session:
        for lead in history:
            session.add(Lead(id=lead.id, email=f"{lead.id}@example.com", created_at=lead.created_at,
                             stage="lead", segment="synthetic"))  # fmt: skip
    events = [event for lead in history for event in opportunity_events(lead)]
    assert store_outcomes(database.sessions, events, "synthetic").accepted == len(events)
    assert store_outcomes(database.sessions, events, "synthetic").duplicates == len(events)

    with database.sessions() as session:
        stored = {o.crm_id: o.status for o in session.query(Opportunity)}
        report = build_report(session, ReportFilter(), ["funnel", "segments"])
    assert stored == {opp.id: opp.status for lead in history for opp in lead.opportunities}
    reached = {row["stage"]: row["reached"] for row in report["funnel"]["stages"]}
    assert reached["opportunity"] == sum(bool(lead.opportunities) for lead in history)
    assert reached["won"] == sum(lead.outcome.customer for lead in history) > 0
    won = sum(o.amount for lead in history for o in lead.opportunities if o.status == "won")
    (segment,) = report["segments"]
    assert segment["won_revenue"] == {"USD": Decimal(won)}
