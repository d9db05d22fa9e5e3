"""Predictive scoring at scoring time (issue 19, part 3): `predicted` on the score card.

A model trained on the synthetic history, stored and activated in a real database
(SQLite and PostgreSQL): the scoring activity adds `predicted` and its reasons before
the stage is decided, stage rules may use it, every score change records the model's
fingerprint; `nurture score`, `nurture status`, the console's lead page, the handoff
and `nurture rescore` show or record the same. No active model: no `predicted`, and a
rule naming it does not hold, saying why. The lead workflow on the time-skipping server
scores a response with the active model and hands the lead off with the prediction first.
"""

from __future__ import annotations

import dataclasses
import email
from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console
from sqlalchemy import select

from api.console.web import _environment
from models.db import Handoff, Lead, Response, ScoreChange, StageChange, as_utc, utcnow
from models.scoring_model import ScoringBook
from models.workflow_io import ScoreRequest
from scoring import synthetic
from scoring.engine import ResponseFact, condition_holds, decide_stage, score, stage_context
from scoring.history import HistoryLead
from scoring.model_store import ActiveModel, store
from scoring.predictive import Training, train
from services.lead_story import lead_story
from services.rescore import rescore_all
from services.runtime import build_activities, open_database
from services.status import lead_status, print_status
from tests.harness import eventually, running_harness
from tests.test_definitions import defs, errors, write  # noqa: F401 (fixture)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOT = {"title": "VP Marketing", "company": "Acme", "company_size": 400, "industry": "software",
       "country": "US", "source": "demo_request"}  # fmt: skip


@pytest.fixture(scope="module")
def training(fixture_definitions_module) -> Training:
    history = [HistoryLead.model_validate(lead) for lead in synthetic.generate(3000, seed=1)]
    trained = train(history, fixture_definitions_module)
    assert not trained.refused
    return trained


@pytest.fixture(scope="module")
def fixture_definitions_module():
    from services.definitions import load_definitions
    from testkit import FIXTURE_DEFINITIONS

    return load_definitions(FIXTURE_DEFINITIONS)


def activate(sessions, training: Training) -> str:
    with sessions.begin() as session:
        store(session, training, "test").status = "active"
    return training.model.fingerprint


def book(mql: dict, page_view: int = 10) -> ScoringBook:
    return ScoringBook.model_validate({
        "default_model": "t",
        "models": {"t": {
            "engagement": {"max": 100, "rules": [
                {"id": "page_view", "event": "page.view", "points": page_view}]},
            "weights": {"fit": 0, "engagement": 100},
            "stages": {"mql": mql, "sql": {"at": 90}},
        }},
    })  # fmt: skip


def hot_lead(database, views: int = 3) -> str:
    """A senior lead at a software company that viewed /pricing `views` times today."""
    with database.sessions.begin() as session:
        lead = Lead(email="vp@acme.example", first_name="Vi", **HOT)
        session.add(lead)
        session.flush()
        for n in range(views):
            at = NOW - timedelta(hours=n + 1)
            session.add(Response(event_id=f"v{n}", lead_id=lead.id, type="page.view",
                                 data={"url": "https://www.nurture.example/pricing"},
                                 occurred_at=at, delivered_at=at))  # fmt: skip
        return lead.id


def scoring_activities(settings, database, definitions):
    activities = build_activities(settings, database, definitions).lead
    activities.predictive = ActiveModel(database.sessions, refresh_seconds=0)
    return activities


def expected(database, training: Training, lead_id: str, at: datetime):
    """The model's own answer for the lead, from what is stored."""
    with database.sessions() as session:
        lead = session.get(Lead, lead_id)
        facts = [ResponseFact(r.type, as_utc(r.occurred_at), r.data) for r in session.scalars(
            select(Response).where(Response.lead_id == lead_id))]  # fmt: skip
        return training.model.predict(lead.profile(), facts, at, as_utc(lead.created_at))


def request(lead_id: str, event_id: str = "v0") -> ScoreRequest:
    return ScoreRequest(lead_id=lead_id, event_id=event_id, cause="page.view", at=NOW)


# --- the engine and validation ----------------------------------------------------------------


def test_a_rule_on_predicted_without_a_model_does_not_hold_and_says_why():
    model = book({"at": 10, "when": "predicted >= 0.2"}).models["t"]
    facts = [ResponseFact("page.view", NOW)] * 2
    card = score(model, {}, facts, NOW)
    decision = decide_stage(model, "lead", card, {})
    assert card.predicted is None and decision.new == "lead"
    assert card.problems == ["condition 'predicted >= 0.2': no predictive model is active"]

    card = score(model, {}, facts, NOW)
    card.add_prediction(0.25, ["senior title +0.05"], "pm-0123456789abcdef", 90)
    assert decide_stage(model, "lead", card, {}).new == "mql" and not card.problems
    assert card.to_dict()["predicted"] == 0.25
    assert card.prediction_line() == (
        "predicted 25% likely to be won within 90 days (senior title +0.05)"
    )
    # Only the name `predicted` needs a model, not an answer or attribute of that name.
    context = stage_context(score(model, {}, facts, NOW), {})
    assert condition_holds("answers.predicted is none and total > 0", context)


def test_stage_rules_and_gates_may_use_predicted(defs):  # noqa: F811
    write(defs, "scoring.yaml", """
        default_model: test
        models:
          test:
            engagement: {rules: [{id: click, event: email.click, points: 5}]}
            weights: {fit: 50, engagement: 50}
            stages:
              mql: {at: 30, when: "predicted >= 0.3 and fit >= 40"}
              sql: {at: 70, gate: {likely: "predicted >= 0.5"}}
    """)  # fmt: skip
    assert errors(defs) == []
    write(defs, "scoring.yaml", (defs / "scoring.yaml").read_text().replace(
        '"predicted >= 0.3', '"predictd >= 0.3'))  # fmt: skip
    (problem,) = errors(defs)
    assert problem.field == "models.test.stages.mql.when" and "predictd" in problem.message


# --- the scoring activity ---------------------------------------------------------------------


def test_the_activity_adds_predicted_and_records_the_fingerprint(
    settings, database, fixture_definitions, training
):
    fingerprint = activate(database.sessions, training)
    activities = scoring_activities(settings, database, fixture_definitions)
    lead_id = hot_lead(database)
    result = activities.score_lead(request(lead_id))

    prediction = expected(database, training, lead_id, NOW)
    assert 0 < result.predicted < 1 and result.predicted == prediction.probability
    assert result.predicted_reasons == prediction.reason_lines(3)
    assert len(result.predicted_reasons) == 3 and result.predictive_model == fingerprint
    # The prediction is the first reason, the rules' follow (a handoff shows them so).
    assert result.reasons[0] == (
        f"predicted {result.predicted:.0%} likely to be won within 90 days "
        f"({'; '.join(result.predicted_reasons)})"
    )
    assert result.reasons[1:] == ["page_view ×3 +30.0"]
    with database.sessions() as session:
        (change,) = session.scalars(select(ScoreChange)).all()
    assert change.predictive_model == fingerprint
    assert change.breakdown["predicted"] == round(result.predicted, 4)
    assert change.breakdown["predicted_reasons"] == result.predicted_reasons
    assert change.reason.endswith(f"predicted {result.predicted:.0%}; lead -> mql: total 30.0 "
                                  "(mql at 20)")  # fmt: skip
    assert activities.score_lead(request(lead_id)) == result  # a retry answers the same


def test_no_active_model_leaves_scoring_as_it_was(settings, database, fixture_definitions):
    activities = scoring_activities(settings, database, fixture_definitions)
    lead_id = hot_lead(database)
    result = activities.score_lead(request(lead_id))
    assert (result.predicted, result.predicted_reasons, result.predictive_model) == (None, [], None)
    assert result.reasons == ["page_view ×3 +30.0"] and result.stage == "mql"
    with database.sessions() as session:
        (change,) = session.scalars(select(ScoreChange)).all()
    assert change.predictive_model is None and "predicted" not in change.breakdown


def test_a_stage_rule_on_predicted_moves_the_lead_only_when_it_is_high_enough(
    settings, database, fixture_definitions, training
):
    """The same lead and card against a threshold just under and just over its
    prediction, then with no model active."""
    lead_id = hot_lead(database)
    probability = expected(database, training, lead_id, NOW).probability

    def stage_with(threshold: float, event_id: str) -> str:
        definitions = dataclasses.replace(
            fixture_definitions, scoring=book({"at": 10, "when": f"predicted >= {threshold}"})
        )
        activities = scoring_activities(settings, database, definitions)
        with database.sessions.begin() as session:  # back to where it was
            session.get(Lead, lead_id).stage = "lead"
        return activities.score_lead(request(lead_id, event_id)).stage

    assert stage_with(0.2, "none-active") == "lead"  # no model: the rule does not hold
    with database.sessions() as session:
        change = session.scalars(select(ScoreChange).where(ScoreChange.event_id == "none-active"))
        problems = change.one().breakdown["problems"]
    assert problems == [f"condition 'predicted >= {0.2}': no predictive model is active"]

    activate(database.sessions, training)
    assert stage_with(round(probability + 0.001, 4), "above") == "lead"
    assert stage_with(round(probability - 0.001, 4), "below") == "mql"
    with database.sessions() as session:
        moved = session.scalars(select(StageChange).where(StageChange.to_stage == "mql")).one()
    assert moved.reason.startswith("total 30.0 (mql at 10; predicted >= ")


# --- where it shows --------------------------------------------------------------------------


def test_nurture_score_status_and_the_lead_page_show_predicted(
    tmp_path, monkeypatch, settings, database, fixture_definitions, training
):
    from typer.testing import CliRunner

    from cli.app import app

    lead_id = hot_lead(database)
    monkeypatch.setenv("DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(settings.definitions_dir))
    monkeypatch.setenv("NURTURE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    before = runner.invoke(app, ["score", lead_id])
    assert before.exit_code == 0, before.output
    assert "predicted: no predictive model is active" in before.output

    fingerprint = activate(database.sessions, training)
    shown = runner.invoke(app, ["score", lead_id])
    assert shown.exit_code == 0, shown.output
    now = utcnow()
    prediction = expected(database, training, lead_id, now)
    assert (f"predicted {prediction.probability:.0%} likely to be won within 90 days "
            f"(predictive model {fingerprint})") in shown.output  # fmt: skip
    for reason in prediction.reason_lines(3):
        assert f"  {reason}\n" in shown.output

    with database.sessions() as session:
        data = lead_status(session, fixture_definitions, session.get(Lead, lead_id), now)
    assert data["lead"]["predicted"] == pytest.approx(prediction.probability, abs=1e-3)
    console = Console(record=True, width=200)
    print_status(console, data, now)
    assert f"predicted {prediction.probability:.0%}  owner" in console.export_text()

    with database.sessions() as session:
        story = lead_story(session, fixture_definitions, lead_id, now)
        html = _environment().get_template("leads/lead.html").render(
            story=story, tones={}, chart={}, temporal_url="", older=None, paged=False,
            request=None, viewer=None, nav=[], now=now, csrf_field=lambda: "",
        )  # fmt: skip
    assert f"{prediction.probability * 100:.0f}%</span> predicted to be won within 90" in html
    for reason in prediction.reason_lines(3):
        assert f"<li>{reason}</li>".replace("'", "&#39;") in html
    assert fingerprint in html


# --- nurture rescore ------------------------------------------------------------------------


def test_rescore_predicts_with_the_active_model_and_records_it(
    database, fixture_definitions, training
):
    definitions = dataclasses.replace(fixture_definitions, scoring=book({"at": 20}))
    lead_id = hot_lead(database, views=3)  # 30: enters MQL
    with database.sessions.begin() as session:
        quiet = Lead(email="quiet@example.com")  # 0: unchanged, not written
        session.add(quiet)
    fingerprint = activate(database.sessions, training)
    # On PostgreSQL in two processes (a lead each): the model goes to each of them.
    report = rescore_all(database.sessions, definitions, NOW, batch_size=1, workers=2)
    assert report.predictive_model == fingerprint and report.changed == 1
    assert report.to_dict()["predictive_model"] == fingerprint

    prediction = expected(database, training, lead_id, NOW)
    with database.sessions() as session:
        (change,) = session.scalars(select(ScoreChange)).all()
    assert change.lead_id == lead_id and change.predictive_model == fingerprint
    assert change.breakdown["predicted"] == round(prediction.probability, 4)
    # Its stage moved: its reasons were worked out too.
    assert change.breakdown["predicted_reasons"] == prediction.reason_lines(3)

    without = rescore_all(database.sessions, definitions, NOW + timedelta(days=1),
                          predictive=None)  # fmt: skip
    assert without.predictive_model is None


# --- the lead workflow ----------------------------------------------------------------------


async def test_the_workflow_scores_with_the_active_model_and_hands_off_with_it(
    time_skipping_env, sqlite_settings, fixture_definitions, training
):
    definitions = dataclasses.replace(
        fixture_definitions, scoring=book({"at": 40, "recycle_below": 20}, page_view=95)
    )
    database = open_database(sqlite_settings)  # migrated: the model is active from the start
    fingerprint = activate(database.sessions, training)
    database.engine.dispose()
    async with running_harness(time_skipping_env, sqlite_settings, definitions) as harness:
        lead_id = await harness.enroll("exit_early", email="vp@acme.example", **HOT)
        await harness.respond(lead_id, "page.view")
        await harness.until(lead_id, lambda s: s.handoff_rep_id is not None)

        (change,) = harness.rows(ScoreChange, lead_id)
        assert change.predictive_model == fingerprint
        predicted = change.result["predicted"]
        assert 0 < predicted < 1 and change.result["predictive_model"] == fingerprint
        assert change.breakdown["predicted"] == round(predicted, 4)
        line = f"predicted {predicted:.0%} likely to be won within 90 days ("
        assert change.result["reasons"][0].startswith(line)

        (handoff,) = harness.rows(Handoff, lead_id)
        assert handoff.reason.startswith(line) and "page_view +95.0" in handoff.reason

        def notice() -> str | None:
            found = list(harness.settings.outbox_dir.glob(f"handoff-{handoff.id}-*.eml"))
            if not found:
                return None
            message = email.message_from_bytes(found[0].read_bytes())
            part = next(p for p in message.walk() if p.get_content_type() == "text/plain")
            return part.get_payload(decode=True).decode()

        text = await eventually(notice, what="the rep's email")
        assert line in " ".join(text.split())
