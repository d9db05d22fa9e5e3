"""`nurture rescore`: every lead scored again with a new model, in bulk.

`rescore_all` on SQLite and PostgreSQL (the `database` fixture) with real definitions
and the real scoring activity; the command end to end on the time-skipping server,
where the workflow of a lead the new model makes an SQL hands it off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select

from models.db import Handoff, Lead, Response, ScoreChange, StageChange, as_utc, utcnow
from models.scoring_model import ScoringBook
from models.workflow_io import ScoreRequest
from services.definitions import load_definitions
from services.intake import EventIn, LeadIn
from services.rescore import rescore_all
from services.runtime import build_activities
from tests.conftest import FIXTURE_DEFINITIONS
from tests.harness import running_harness

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

# The fixture's model gives a page view 10 points (MQL at 20, SQL at 50); the new one
# gives it 20, drops email replies and recycles an MQL below 10.
NEW = ScoringBook.model_validate({
    "default_model": "t",
    "models": {"t": {
        "engagement": {"max": 100, "rules": [
            {"id": "email_open", "event": "email.open", "points": 1},
            {"id": "page_view", "event": "page.view", "points": 20}]},
        "weights": {"fit": 0, "engagement": 100},
        "stages": {"mql": {"at": 20, "recycle_below": 10}, "sql": {"at": 50}},
    }},
})  # fmt: skip
FINGERPRINT = NEW.models["t"].fingerprint

# name: (stage and score as the old model left them, delivered responses)
LEADS = {
    "up": ("lead", 10.0, ["page.view"]),  # 20: enters MQL
    "sql": ("mql", 30.0, ["page.view"] * 3),  # 60: newly SQL, to its workflow
    "same": ("lead", 2.0, ["email.open"] * 2),  # 2: unchanged
    "near": ("lead", 2.04, ["email.open"] * 2),  # 2.0: the same to 0.1
    "owned": ("accepted", 50.0, ["page.view"] * 5),  # sales': never touched
    "down": ("mql", 31.0, ["email.open", "email.reply"]),  # 1: recycled to nurture
    "kept": ("sql", 30.0, ["page.view"] * 3),  # 60: new score, SQL stays SQL
    "quiet": ("mql", 20.0, ["page.view"]),  # 20 (plus one undelivered, one after NOW)
}


@pytest.fixture
def new_model(fixture_definitions):
    return dataclasses.replace(fixture_definitions, scoring=NEW)


def seed(database) -> dict[str, str]:
    """The leads above, as the old model scored them; returns name -> lead id."""
    ids = {}
    with database.sessions.begin() as session:
        for name, (stage, score, kinds) in LEADS.items():
            lead = Lead(email=f"{name}@example.com", stage=stage, score=score,
                        scored_at=NOW - timedelta(days=3))  # fmt: skip
            session.add(lead)
            session.flush()
            ids[name] = lead.id
            for n, kind in enumerate(kinds):
                at = NOW - timedelta(days=2, minutes=n)
                session.add(Response(event_id=f"{name}-{n}", lead_id=lead.id, type=kind,
                                     occurred_at=at, delivered_at=at))  # fmt: skip
        quiet = ids["quiet"]
        session.add(Response(event_id="quiet-undelivered", lead_id=quiet, type="page.view",
                             occurred_at=NOW - timedelta(hours=1)))  # fmt: skip
        later = NOW + timedelta(hours=1)
        session.add(Response(event_id="quiet-later", lead_id=quiet, type="page.view",
                             occurred_at=later, delivered_at=later))  # fmt: skip
    return ids


def snapshot(database) -> tuple:
    """Every lead's figures and every score and stage change, to compare runs."""
    with database.sessions() as session:
        leads = session.execute(
            select(Lead.id, Lead.stage, Lead.score, Lead.fit_score, Lead.engagement_score,
                   Lead.grade, Lead.scoring_model, Lead.scored_at).order_by(Lead.id)
        ).all()  # fmt: skip
        scores = session.execute(
            select(ScoreChange.lead_id, ScoreChange.event_id).order_by(ScoreChange.id)
        ).all()
        stages = session.execute(
            select(StageChange.lead_id, StageChange.change_key).order_by(StageChange.id)
        ).all()
    return leads, scores, stages


def rows(database, model, lead_id: str) -> list:
    with database.sessions() as session:
        return list(session.scalars(select(model).where(model.lead_id == lead_id)))


def lead_row(database, lead_id: str) -> Lead:
    with database.sessions() as session:
        return session.get(Lead, lead_id)


EXPECTED_TRANSITIONS = {"lead->mql": 1, "mql->lead (recycled)": 1,
                        "mql->sql (to its workflow)": 1}  # fmt: skip


def test_a_dry_run_reports_and_writes_nothing(database, new_model):
    seed(database)
    before = snapshot(database)
    handed = []
    report = rescore_all(database.sessions, new_model, NOW, dry_run=True,
                         on_sql=lambda *args: handed.append(args))  # fmt: skip
    assert (report.total, report.scored, report.sales_owned) == (8, 7, 1)
    assert (report.changed, report.unchanged, report.to_sql) == (3, 3, 1)
    assert dict(report.transitions) == EXPECTED_TRANSITIONS
    assert report.models == {"t": FINGERPRINT}
    assert snapshot(database) == before
    assert handed == []


def test_rescore_writes_exactly_the_leads_that_moved(database, settings, new_model):
    ids = seed(database)
    before = snapshot(database)
    handed, progress = [], []
    report = rescore_all(
        database.sessions, new_model, NOW, batch_size=3,
        progress=lambda done, total: progress.append((done, total)),
        on_sql=lambda *args: handed.append(args),
    )  # fmt: skip
    event_id = f"rescore:{report.run_id}"
    assert report.event_id == event_id and not report.dry_run
    assert progress == [(3, 8), (6, 8), (8, 8)]
    assert (report.total, report.scored, report.sales_owned) == (8, 7, 1)
    assert (report.changed, report.unchanged, report.to_sql, report.concurrent) == (3, 3, 1, 0)
    assert dict(report.transitions) == EXPECTED_TRANSITIONS
    assert not report.problems

    # The SQL-crosser goes to its workflow, which scores and hands it off: not written.
    assert handed == [([ids["sql"]], event_id, FINGERPRINT)]
    assert lead_row(database, ids["sql"]).stage == "mql"
    assert lead_row(database, ids["sql"]).score == 30.0

    # Exactly the moved leads have a score change, all for this run.
    with database.sessions() as session:
        changes = list(session.scalars(select(ScoreChange)))
    assert sorted(c.lead_id for c in changes) == sorted(ids[n] for n in ("up", "down", "kept"))
    assert {(c.cause, c.event_id, c.model) for c in changes} == {("rescore", event_id, FINGERPRINT)}
    (up,) = rows(database, ScoreChange, ids["up"])
    assert (up.old_score, up.new_score) == (10.0, 20.0)
    assert as_utc(up.scored_at) == NOW
    assert up.breakdown["total"] == 20.0 and up.breakdown["breakdown"][0]["rule"] == "page_view"
    assert up.reason.startswith("rescore: total 20.0") and "lead -> mql" in up.reason
    lead = lead_row(database, ids["up"])
    assert (lead.stage, lead.score, lead.engagement_score, lead.fit_score) == ("mql", 20, 20, 0)
    assert (lead.grade, lead.scoring_model, as_utc(lead.scored_at)) == ("D", "t", NOW)

    # A stage change per stage entered or left; a recycle says why.
    (entered,) = rows(database, StageChange, ids["up"])
    assert (entered.from_stage, entered.to_stage) == ("lead", "mql")
    assert entered.change_key == f"{event_id}:mql"
    (recycled,) = rows(database, StageChange, ids["down"])
    assert (recycled.from_stage, recycled.to_stage) == ("mql", "lead")
    assert recycled.reason == "recycled: total 1.0 fell to below 10"
    assert lead_row(database, ids["down"]).score == 1.0
    kept = lead_row(database, ids["kept"])
    assert (kept.stage, kept.score) == ("sql", 60.0)
    assert rows(database, StageChange, ids["kept"]) == []

    # The rest as they were: sales' lead, the unchanged ones (an undelivered response
    # and one after NOW are not counted).
    leads_before = {row.id: row for row in before[0]}
    leads_after = {row.id: row for row in snapshot(database)[0]}
    for name in ("owned", "same", "near", "quiet", "sql"):
        assert leads_after[ids[name]] == leads_before[ids[name]], name

    # The bulk path stored what the scoring activity stores: asked again, it finds
    # nothing to write; the SQL-crosser it would hand off.
    activities = build_activities(settings, database, new_model).lead
    for name, stage in (("up", "mql"), ("down", "lead"), ("kept", "sql")):
        result = activities.score_lead(ScoreRequest(
            lead_id=ids[name], event_id="rescore:check", cause="rescore", at=NOW,
            model_fingerprint=FINGERPRINT))  # fmt: skip
        assert (result.total, result.stage, result.entered) == (
            lead_row(database, ids[name]).score,
            stage,
            [],
        )
    result = activities.score_lead(ScoreRequest(
        lead_id=ids["sql"], event_id="rescore:check", cause="rescore", at=NOW))  # fmt: skip
    assert (result.total, result.entered) == (60.0, ["sql"])
    with database.sessions() as session:
        checks = session.scalars(select(ScoreChange).where(ScoreChange.event_id == "rescore:check"))
        assert [c.lead_id for c in checks] == [ids["sql"]]

    # A second run changes nothing.
    before_again = snapshot(database)
    again = rescore_all(database.sessions, new_model, NOW, batch_size=2)
    assert (again.changed, again.unchanged, again.to_sql, again.sales_owned) == (0, 7, 0, 1)
    assert not again.transitions
    assert snapshot(database) == before_again


def test_a_lead_scored_by_its_workflow_during_the_run_is_left_to_it(database, settings, new_model):
    """Between reading a batch and writing it, a response arrives for "up" and its
    workflow's scoring activity stores a newer card: the bulk write leaves it alone."""
    ids = seed(database)
    activities = build_activities(settings, database, new_model).lead
    fired = []

    def response_meanwhile(_conn, _cursor, statement, *_args):
        if fired or "FROM responses" not in statement:
            return
        fired.append(statement)  # the batch's leads are read; their responses next
        at = NOW - timedelta(minutes=1)
        with database.sessions.begin() as session:
            session.add(Response(event_id="meanwhile", lead_id=ids["up"], type="page.view",
                                 occurred_at=at, delivered_at=at))  # fmt: skip
        activities.score_lead(ScoreRequest(lead_id=ids["up"], event_id="meanwhile",
                                           cause="page.view", at=NOW))  # fmt: skip

    event.listen(database.engine, "before_cursor_execute", response_meanwhile)
    try:
        report = rescore_all(database.sessions, new_model, NOW, batch_size=100)
    finally:
        event.remove(database.engine, "before_cursor_execute", response_meanwhile)
    assert len(fired) == 1
    assert (report.concurrent, report.changed, report.to_sql) == (1, 2, 1)
    assert "lead->mql" not in report.transitions
    lead = lead_row(database, ids["up"])
    assert (lead.stage, lead.score) == ("mql", 40.0)  # the workflow's card
    assert [c.event_id for c in rows(database, ScoreChange, ids["up"])] == ["meanwhile"]
    assert [c.change_key for c in rows(database, StageChange, ids["up"])] == ["meanwhile:mql"]
    # The rest of the batch is written as usual.
    assert lead_row(database, ids["down"]).stage == "lead"
    assert lead_row(database, ids["kept"]).score == 60.0


def test_a_lead_sales_turned_down_is_no_sql_again_in_its_cool_down(database, new_model):
    with database.sessions.begin() as session:
        held = Lead(email="held@example.com", stage="mql", score=30.0,
                    sql_hold_until=NOW + timedelta(days=7))  # fmt: skip
        released = Lead(email="released@example.com", stage="mql", score=30.0,
                        sql_hold_until=NOW - timedelta(days=1))  # fmt: skip
        session.add_all([held, released])
        session.flush()
        for lead in (held, released):
            for n in range(3):
                at = NOW - timedelta(hours=n + 1)
                kind = "page.view"
                session.add(Response(event_id=f"{lead.email}-{n}", lead_id=lead.id, type=kind,
                                     occurred_at=at, delivered_at=at))  # fmt: skip
    handed = []
    report = rescore_all(database.sessions, new_model, NOW,
                         on_sql=lambda lead_ids, *_: handed.extend(lead_ids))  # fmt: skip
    assert handed == [released.id]
    assert (report.changed, report.to_sql) == (1, 1)
    assert dict(report.transitions) == {"mql->sql (to its workflow)": 1}
    lead = lead_row(database, held.id)
    assert (lead.stage, lead.score) == ("mql", 60.0)  # 60 points, still only an MQL


async def test_the_command_hands_sql_crossers_to_their_workflows(
    time_skipping_env, sqlite_settings, tmp_path, monkeypatch
):
    """`nurture rescore` against a running worker: the lead with a workflow is handed off
    by it; the one without is reported, and left as it was."""
    from typer.testing import CliRunner

    from cli.app import app

    defs = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, defs)
    settings = sqlite_settings.model_copy(update={"definitions_dir": defs})
    definitions = load_definitions(defs)
    async with running_harness(time_skipping_env, settings, definitions) as harness:
        lead_id = await harness.enroll("exit_early", email="rescored@example.com")
        # Stamped with the wall clock: the command scores at the wall clock's now.
        seen = utcnow() - timedelta(minutes=5)
        stored = harness.intake.store_events(
            [EventIn(lead_id=lead_id, type="page.view", occurred_at=seen) for _ in range(3)]
        ).stored
        await harness.intake.deliver(stored)
        await harness.until(lead_id, lambda s: s.stage == "mql" and s.score == 30)
        orphan, _ = harness.intake.upsert_lead(LeadIn(email="no-workflow@example.com"))
        with harness.database.sessions.begin() as session:
            for n in range(3):
                session.add(Response(event_id=f"orphan-{n}", lead_id=orphan.id, type="page.view",
                                     occurred_at=seen, delivered_at=seen))  # fmt: skip

        # The marketer doubles page views; the workers are restarted on the new file.
        scoring = defs / "scoring.yaml"
        text = scoring.read_text()
        assert "{id: page_view, event: page.view, points: 10}" in text
        scoring.write_text(text.replace("page.view, points: 10}", "page.view, points: 20}"))
        definitions.scoring = load_definitions(defs).scoring

        for name, value in {
            "DATABASE_URL": settings.effective_database_url,
            "NURTURE_DEFINITIONS": str(defs),
            "NURTURE_STATE_DIR": str(settings.state_dir),
            "TEMPORAL_ADDRESS": time_skipping_env.client.service_client.config.target_host,
        }.items():
            monkeypatch.setenv(name, value)
        result = await asyncio.to_thread(CliRunner().invoke, app, ["rescore", "--json"])
        assert result.exit_code == 0, (result.output, result.exception)
        report = json.loads(result.stdout)
        assert (report["leads"], report["to_sql"], report["changed"]) == (2, 2, 0)
        assert report["transitions"] == {"mql->sql (to its workflow)": 1,
                                         "lead->sql (to its workflow)": 1}  # fmt: skip
        assert report["handed"] == {"signalled": 1, "not_running": [orphan.id], "failed": {}}

        state = await harness.until(lead_id, lambda s: s.handoff_rep_id is not None)
        assert (state.stage, state.score) == ("sql", 60.0)
        (handoff,) = harness.rows(Handoff, lead_id)
        assert handoff.score == 60.0
        (rescored,) = [c for c in harness.rows(ScoreChange, lead_id) if c.cause == "rescore"]
        assert rescored.event_id == report["event_id"]
        assert rescored.model == definitions.scoring.models["test"].fingerprint
        assert [c.to_stage for c in harness.rows(StageChange, lead_id)] == ["mql", "sql"]

        # No workflow to hand it off: nothing written, named in the report.
        lead = lead_row(harness.database, orphan.id)
        assert (lead.stage, lead.score) == ("lead", 0)
        assert harness.rows(ScoreChange, orphan.id) == []

        # Run again, as a person reads it: the handed-off lead is an SQL now, the other
        # one still waits for a workflow.
        again = await asyncio.to_thread(CliRunner().invoke, app, ["rescore"])
        assert again.exit_code == 0, again.output
        out = again.stdout
        assert re.search(r"\n  unchanged +1\n", out), out
        assert re.search(r"handed to workflows for SQL +1  signalled 0, 1 with no running", out)
        assert re.search(r"\n  lead->sql \(to its workflow\) +1\n", out)
        assert f"not handed off {orphan.id}: no running workflow" in out
        assert f"models: test ({rescored.model})" in out
        with harness.database.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Handoff)) == 1
