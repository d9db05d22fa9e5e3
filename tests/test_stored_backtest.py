"""`nurture backtest --stored` (issue 17, point 5): the history read from the database,
customers by their won opportunities, scores as the same history exported to JSONL
does. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from models.db import Lead, Opportunity, Response
from scoring.stored_history import stored_history

T0 = datetime(2026, 9, 1, tzinfo=UTC)


def seed(database) -> None:
    """Ada: pricing page and a webinar, won on day 20. Bob: an open, a lost deal. Cy:
    nothing. A CRM news response and an undelivered one are not history."""
    with database.sessions.begin() as session:
        for name, title in (("ada", "VP Sales"), ("bob", "Intern"), ("cy", None)):
            session.add(Lead(id=name, email=f"{name}@acme.example", title=title,
                             company_size=500, created_at=T0))  # fmt: skip
        session.flush()
        responses = [("ada", "page.view", 2, {"url": "https://www.example.com/pricing"}, True),
                     ("ada", "webinar.attended", 5, {}, True),
                     ("ada", "crm.opportunity_won", 20, {"opportunity_id": "o1"}, True),
                     ("bob", "email.open", 3, {}, True),
                     ("bob", "email.click", 4, {}, False)]  # fmt: skip
        for n, (lead, kind, day, data, delivered) in enumerate(responses):
            session.add(Response(event_id=f"e{n}", lead_id=lead, type=kind, source="test",
                                 data=data, occurred_at=T0 + timedelta(days=day),
                                 delivered_at=T0 if delivered else None))  # fmt: skip
        session.add(Opportunity(crm_id="o1", lead_id="ada", status="won",
                                closed_at=T0 + timedelta(days=20)))  # fmt: skip
        session.add(Opportunity(crm_id="o2", lead_id="bob", status="lost",
                                closed_at=T0 + timedelta(days=9)))  # fmt: skip


def test_the_history_of_the_database(database):
    seed(database)
    history = {lead.id: lead for lead in stored_history(database.sessions)}
    assert set(history) == {"ada", "bob", "cy"}
    ada, bob = history["ada"], history["bob"]
    assert (ada.outcome.customer, ada.outcome.at) == (True, T0 + timedelta(days=20))
    assert [r.type for r in ada.responses] == ["page.view", "webinar.attended"]
    assert ada.profile.title == "VP Sales" and ada.created_at == T0
    assert (bob.outcome.customer, bob.outcome.at) == (False, None)
    assert [r.type for r in bob.responses] == ["email.open"]  # the click was never delivered


def test_the_command_scores_it_as_the_exported_file(database, settings, monkeypatch, tmp_path):
    from cli.app import app

    seed(database)
    monkeypatch.setenv("DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("NURTURE_STATE_DIR", str(settings.state_dir))
    monkeypatch.setenv("NURTURE_DEFINITIONS", str(settings.definitions_dir))
    export = tmp_path / "history.jsonl"
    export.write_text("".join(lead.model_dump_json() + "\n"
                              for lead in stored_history(database.sessions)))  # fmt: skip
    runner = CliRunner()
    stored = runner.invoke(app, ["backtest", "--stored", "--json"])
    exported = runner.invoke(app, ["backtest", "--leads", str(export), "--json"])
    assert stored.exit_code == 0, stored.output
    assert json.loads(stored.stdout) == json.loads(exported.stdout)
    report = json.loads(stored.stdout)
    assert (report["leads"], report["customers"]) == (3, 1)
    both = runner.invoke(app, ["backtest", "--stored", "--synthetic", "10"])
    assert both.exit_code == 2
