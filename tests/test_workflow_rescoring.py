"""Rescoring inside the lead workflow: decay on a durable timer, and `rescore` signals.

On the time-skipping server, with real activities, SQLite and the outbox.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError

from models.db import Handoff, Lead, ScoreChange, StageChange, utcnow
from models.scoring_model import ScoringBook
from models.workflow_io import RescoreRequest, ScoreRequest
from services.runtime import build_activities
from tests.harness import running_harness
from workflows.lead import LeadWorkflow


def book(page_view_points: int, half_life: str | None) -> ScoringBook:
    return ScoringBook.model_validate({
        "default_model": "t",
        "models": {"t": {
            "engagement": {"max": 100, "half_life": half_life, "rules": [
                {"id": "page_view", "event": "page.view", "points": page_view_points}]},
            "weights": {"fit": 0, "engagement": 100},
            "stages": {"mql": {"at": 40, "recycle_below": 20}, "sql": {"at": 90}},
        }},
    })  # fmt: skip


@pytest.fixture
def decaying(fixture_definitions):
    return dataclasses.replace(fixture_definitions, scoring=book(50, "1d"))


async def test_decay_rescores_daily_recycles_an_mql_then_stops(
    time_skipping_env, sqlite_settings, decaying
):
    async with running_harness(time_skipping_env, sqlite_settings, decaying) as harness:
        lead_id = await harness.enroll("exit_early", email="cooling@example.com")
        await harness.respond(lead_id, "page.view")
        state = await harness.until(lead_id, lambda s: s.stage == "mql")
        assert round(state.score, 1) == 50.0 and state.next_rescore_at is not None

        # A day later: half the points, still an MQL (hysteresis: recycled only below 20).
        await harness.env.sleep(timedelta(days=1, hours=1))
        state = await harness.until(lead_id, lambda s: round(s.score, 1) == 25.0)
        assert state.stage == "mql"
        # Two days: 12.5, recycled to nurture, with a stage change that says why.
        await harness.env.sleep(timedelta(days=1))
        state = await harness.until(lead_id, lambda s: s.stage == "lead")
        assert round(state.score, 1) == 12.5
        recycled = [c for c in harness.rows(StageChange, lead_id) if c.to_stage == "lead"]
        assert len(recycled) == 1 and recycled[0].from_stage == "mql"
        assert "recycled: total 12.5 fell to below 20" in recycled[0].reason

        # Once the points have faded the timer stops: the history stops growing.
        await harness.env.sleep(timedelta(days=14))
        state = await harness.until(lead_id, lambda s: s.next_rescore_at is None)
        history = await harness.handle(lead_id).fetch_history()
        await harness.env.sleep(timedelta(days=60))
        later = await harness.handle(lead_id).fetch_history()
        assert len(later.events) == len(history.events)

        changes = harness.rows(ScoreChange, lead_id)
        decays = [c for c in changes if c.cause == "decay"]
        # One per day while the score still moved by 0.1 or more (50 / 2**9 ~ 0.1).
        assert [c.new_score for c in decays[:3]] == [25.0, 12.5, 6.25]
        assert 9 <= len(decays) <= 11
        assert all(c.breakdown["breakdown"][0]["rule"] == "page_view" for c in decays)
        timers = [e for e in later.events if e.event_type == EventType.EVENT_TYPE_TIMER_FIRED]
        assert len(timers) <= 16  # one a day while decaying, then none


async def test_rescore_signal_hands_off_a_lead_the_new_model_makes_sql(
    time_skipping_env, sqlite_settings, fixture_definitions
):
    definitions = dataclasses.replace(fixture_definitions, scoring=book(50, None))
    async with running_harness(time_skipping_env, sqlite_settings, definitions) as harness:
        lead_id = await harness.enroll("exit_early", email="upgraded@example.com")
        await harness.respond(lead_id, "page.view")
        await harness.until(lead_id, lambda s: s.stage == "mql")

        # The marketer gives page views more weight; the worker runs the new model.
        definitions.scoring = book(95, None)
        fingerprint = definitions.scoring.models["t"].fingerprint
        request = RescoreRequest(event_id="rescore:run-1", model_fingerprint=fingerprint)
        await harness.handle(lead_id).signal(LeadWorkflow.rescore, request)
        await harness.handle(lead_id).signal(LeadWorkflow.rescore, request)  # sent twice
        state = await harness.until(lead_id, lambda s: s.handoff_rep_id is not None)
        assert state.stage == "sql" and state.score == 95.0
        (handoff,) = harness.rows(Handoff, lead_id)
        assert handoff.score == 95.0 and "page_view +95.0" in handoff.reason
        rescored = [c for c in harness.rows(ScoreChange, lead_id) if c.cause == "rescore"]
        assert len(rescored) == 1 and rescored[0].event_id == "rescore:run-1"
        assert [c.to_stage for c in harness.rows(StageChange, lead_id)] == ["mql", "sql"]


def test_a_worker_on_another_model_refuses_a_rescore(settings, database, fixture_definitions):
    activities = build_activities(settings, database, fixture_definitions).lead
    with database.sessions.begin() as session:
        lead = Lead(email="stale@example.com")
        session.add(lead)

    request = ScoreRequest(lead_id=lead.id, event_id="rescore:x", cause="rescore",
                           at=utcnow(), model_fingerprint="test@000000000000")  # fmt: skip
    with pytest.raises(ApplicationError, match="restart the workers"):
        activities.score_lead(request)
    current = fixture_definitions.scoring.models["test"].fingerprint
    result = activities.score_lead(request.model_copy(update={"model_fingerprint": current}))
    assert result.total == 0 and result.stage == "lead"
