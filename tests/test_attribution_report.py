"""`nurture report --attribution`: SQLs, pipeline and revenue from the database credited
to sequences and steps, each figure traced to its leads (`--explain`). SQLite and
PostgreSQL, against the hand-computed worked example of docs/outcomes.md."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from models.db import Enrollment, Lead, Message, Opportunity, StageChange
from services.attribution_report import attribution
from services.reports import ReportFilter

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


@pytest.fixture
def history(database):
    """Ada: welcome/intro (day 1), webinar/invite (3), welcome/case (6); SQL on day 7; an
    opportunity opened on day 8 ($9,000), won on day 10; webinar/replay on day 12.
    Bob: no send; SQL on day 4. Cy: a send, no outcome."""
    with database.sessions.begin() as session:
        for name in ("ada", "bob", "cy"):
            session.add(Lead(id=name, email=f"{name}@example.com", segment="general"))
        session.flush()
        for sequence in ("welcome", "webinar"):
            session.add(Enrollment(id=f"ada-{sequence}", lead_id="ada", sequence_id=sequence,
                                   sequence_version=1, workflow_id="wf"))  # fmt: skip
        session.add(Enrollment(id="cy-welcome", lead_id="cy", sequence_id="welcome",
                               sequence_version=1, workflow_id="wf"))  # fmt: skip
        session.flush()
        sends = [("ada", "ada-welcome", "intro", 1), ("ada", "ada-webinar", "invite", 3),
                 ("ada", "ada-welcome", "case", 6), ("ada", "ada-webinar", "replay", 12),
                 ("cy", "cy-welcome", "intro", 2)]  # fmt: skip
        for lead, enrollment, step, n in sends:
            session.add(Message(send_key=f"{lead}-{step}", lead_id=lead, enrollment_id=enrollment,
                                step_id=step, channel="email", template="t", recipient="x",
                                body="b", status="sent", sent_at=day(n)))  # fmt: skip
        for lead, n in (("ada", 7), ("bob", 4)):
            session.add(StageChange(lead_id=lead, change_key="1:sql", from_stage="mql",
                                    to_stage="sql", reason="r", created_at=day(n)))  # fmt: skip
        session.add(Opportunity(crm_id="o1", lead_id="ada", status="won", amount=Decimal(9000),
                                currency="USD", opened_at=day(8), closed_at=day(10)))  # fmt: skip


def test_position_based_by_sequence(database, history):
    with database.sessions() as session:
        report = attribution(session, ReportFilter(), "position_based", "sequence")
    rows = {row["key"]: row for row in report["rows"]}
    # Ada's SQL: three touches before day 7: 0.4 welcome, 0.2 webinar, 0.4 welcome.
    assert rows["welcome"]["sqls"] == pytest.approx(0.8)
    assert rows["webinar"]["sqls"] == pytest.approx(0.2)
    assert rows["(none)"]["sqls"] == pytest.approx(1.0)  # Bob: no touch
    assert rows["welcome"]["revenue USD"] == pytest.approx(7200)
    assert rows["webinar"]["pipeline USD"] == pytest.approx(1800)
    assert rows["welcome"]["leads"] == ["ada"] and rows["(none)"]["leads"] == ["bob"]


def test_a_range_keeps_the_outcomes_inside_it(database, history):
    with database.sessions() as session:
        report = attribution(session, ReportFilter(since=day(5)), "last_touch", "step")
    rows = {row["key"]: row for row in report["rows"]}
    assert set(rows) == {"welcome/case"}  # Bob's SQL (day 4) is before the range
    assert rows["welcome/case"]["sqls"] == 1 and rows["welcome/case"]["revenue USD"] == 9000


def test_the_command_explains_a_figure(database, history, settings, monkeypatch):
    from cli.app import app

    monkeypatch.setenv("DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("NURTURE_STATE_DIR", str(settings.state_dir))
    runner = CliRunner()
    table = runner.invoke(app, ["report", "--attribution", "linear", "--json"])
    assert table.exit_code == 0, table.output
    assert {row["key"] for row in json.loads(table.stdout)["rows"]} == {"welcome", "webinar",
                                                                       "(none)"}  # fmt: skip
    explained = runner.invoke(app, ["report", "--attribution", "linear", "--explain", "webinar"])
    assert explained.exit_code == 0 and explained.stdout.split() == ["ada"]
    unknown = runner.invoke(app, ["report", "--attribution", "linear", "--explain", "nope"])
    assert unknown.exit_code == 1 and "welcome" in unknown.stderr
    bad = runner.invoke(app, ["report", "--attribution", "time_decay"])
    assert bad.exit_code == 2
