"""Lifecycle to revenue (issue 17, point 2): an opportunity's news moves the lead's stage
in its workflow (opportunity, customer, closed_lost), stops the nurture while it is open
or won, and a loss is nurtured again after the recycle cool-down. Out-of-order and
repeated events tell the workflow only what changed. On the time-skipping server with
real activities and SQLite."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from models.db import StageChange
from models.workflow_io import HandoffAnswer
from sales.outcome_store import store_outcomes
from sales.outcomes import OutcomeEventIn
from services.answering import submit_answer
from testkit.webhook_sink import WebhookSink
from tests.harness import running_harness
from tests.test_handoff import qualify, team


@pytest.fixture
def definitions(fixture_definitions):
    with WebhookSink() as sink:
        yield dataclasses.replace(fixture_definitions, sales=team(sink))


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, definitions):
    async with running_harness(time_skipping_env, sqlite_settings, definitions) as h:
        yield h


async def outcome(harness, lead_id: str, kind: str, opportunity: str = "opp-1", **fields):
    """The CRM's event, stored and delivered as POST /webhooks/crm does."""
    at = await harness.env.get_current_time()
    event = OutcomeEventIn(opportunity_id=opportunity, kind=kind, lead_id=lead_id,
                           occurred_at=fields.pop("occurred_at", at), **fields)  # fmt: skip
    result = store_outcomes(harness.database.sessions, [event], "api")
    await harness.intake.deliver(result.news)
    return result


def stages(harness, lead_id: str) -> list[tuple[str, str]]:
    rows = sorted(harness.rows(StageChange, lead_id), key=lambda c: c.id)
    return [(c.from_stage, c.to_stage) for c in rows]


async def test_an_opportunity_won_makes_a_customer(harness):
    lead_id, handoff = await qualify(harness, "won@acme.example")
    await submit_answer(harness.env.client, harness.database.sessions,
                        HandoffAnswer(handoff_id=handoff.id, answer="accept"))  # fmt: skip
    await outcome(harness, lead_id, "created", amount="5000", currency="USD")
    await harness.until(lead_id, lambda s: s.stage == "opportunity")
    won = await outcome(harness, lead_id, "won", amount="6000", currency="USD")
    assert len(won.news) == 1
    await harness.until(lead_id, lambda s: s.stage == "customer")
    # The same win again, and an older stage change: nothing new for the workflow.
    again = await outcome(harness, lead_id, "won", amount="6000", currency="USD",
                          occurred_at=won.news[0].occurred_at)  # fmt: skip
    older = await outcome(harness, lead_id, "stage_changed", crm_stage="Proposal",
                          occurred_at=won.news[0].occurred_at - timedelta(hours=1))  # fmt: skip
    assert again.news == [] and older.news == []
    assert stages(harness, lead_id)[-3:] == [
        ("sql", "accepted"), ("accepted", "opportunity"), ("opportunity", "customer")]  # fmt: skip


async def test_a_lost_opportunity_is_recycled_after_the_cool_down(harness):
    lead_id, handoff = await qualify(harness, "lost@acme.example")
    await submit_answer(harness.env.client, harness.database.sessions,
                        HandoffAnswer(handoff_id=handoff.id, answer="accept"))  # fmt: skip
    await outcome(harness, lead_id, "lost", lost_reason="budget")
    state = await harness.until(lead_id, lambda s: s.stage == "closed_lost")
    assert state.cool_down_until is not None

    await harness.env.sleep(timedelta(days=2, hours=1))  # the fixture team's cool-down: 2d
    state = await harness.until(lead_id, lambda s: s.sequence_id == "quick")
    assert state.stage in ("lead", "mql") and state.cool_down_until is None
    assert ("closed_lost", "lead") in stages(harness, lead_id)
    lost = [c for c in harness.rows(StageChange, lead_id) if c.to_stage == "closed_lost"]
    assert "opp-1 lost" in lost[0].reason and "recycled" in lost[0].reason
