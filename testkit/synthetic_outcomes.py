"""A history lead's opportunities (scoring/synthetic.py writes them) as the CRM's events.

    for lead in parse_leads(synthetic.generate(1000, seed=1)):
        store_outcomes(sessions, opportunity_events(lead), "synthetic")

Each opportunity becomes a `created` event at its opening (amount, currency, expected
close) and, if it closed, a `won` or `lost` one at its close: what `POST /outcomes`
takes, so `sales.outcomes.converge` folds them back into the opportunity's status.
Event IDs derive from the opportunity's, so loading a history twice stores nothing new.

Here, not in a services module: only tests and benchmarks load synthetic outcomes, and
they share through testkit (docs/design.md, Layers). It joins `scoring.history` and
`sales.outcomes`, two domain packages that must not import each other.
"""

from __future__ import annotations

from typing import Any

from sales.outcomes import OutcomeEventIn
from scoring.history import HistoryLead, HistoryOpportunity


def opportunity_events(
    lead: HistoryLead | dict[str, Any], lead_id: str | None = None
) -> list[OutcomeEventIn]:
    """The lead's opportunities as outcome events, naming the lead by `lead_id` (by
    default the history's ID: pass Nurture's if the lead was stored under another)."""
    if isinstance(lead, dict):
        lead = HistoryLead.model_validate(lead)
    who = lead_id or lead.id
    return [event for opp in lead.opportunities for event in _events(opp, who)]


def _events(opp: HistoryOpportunity, lead_id: str) -> list[OutcomeEventIn]:
    def event(kind, at, stage: str, **fields) -> OutcomeEventIn:
        return OutcomeEventIn(opportunity_id=opp.id, kind=kind, occurred_at=at,
                              event_id=f"{opp.id}:{kind}", lead_id=lead_id, crm_stage=stage,
                              amount=opp.amount, currency=opp.currency, **fields)  # fmt: skip

    events = [event("created", opp.opened_at, "Qualification",
                    expected_close_date=opp.expected_close_date)]  # fmt: skip
    if opp.status != "open":
        stage = "Closed Won" if opp.status == "won" else "Closed Lost"
        events.append(event(opp.status, opp.closed_at, stage, close_date=opp.closed_at.date(),
                            lost_reason=opp.lost_reason))  # fmt: skip
    return events
