"""services/step_figures.py: each step's sends, responses and attributed SQLs, and each
sequence's enrollments and SQLs, on SQLite and PostgreSQL.

Rows written with the ORM as the activities and webhooks write them (data setup; the
counting is what is under test): two sequences sharing a step id, responses matched each
way `nurture report` matches them (their message, the step in their data, the lead's
last send on the channel), delivery statuses on the messages, a step sent twice to one
lead, a send that was skipped, and two leads that became SQLs. The figures must equal
`nurture report`'s step rows for the same data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models.db import Enrollment, Lead, Message, Response, StageChange
from services.reports import ReportFilter, build_report
from services.step_figures import SequenceFigures, StepFigures, sequence_figures, step_figures

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


class History:
    def __init__(self, sessions):
        self.sessions = sessions
        self.count = 0

    def lead(self, lead_id: str, sequence: str, status: str = "active") -> None:
        with self.sessions.begin() as session:
            session.add(Lead(id=lead_id, email=f"{lead_id}@example.com", created_at=T0))
            session.flush()
            session.add(Enrollment(id=f"{lead_id}:{sequence}", lead_id=lead_id,
                                   sequence_id=sequence, sequence_version=1, status=status,
                                   workflow_id=f"lead-{lead_id}"))  # fmt: skip

    def send(self, lead_id: str, sequence: str, step: str, hours: float, channel: str = "email",
             status: str = "sent", delivery_status: str | None = None) -> str:  # fmt: skip
        self.count += 1
        message_id = f"m{self.count}"
        with self.sessions.begin() as session:
            session.add(Message(
                id=message_id, send_key=f"{lead_id}:{step}:{self.count}", lead_id=lead_id,
                enrollment_id=f"{lead_id}:{sequence}", step_id=step, channel=channel,
                template=step, recipient="x", body="", status=status, created_at=at(hours),
                sent_at=at(hours) if status == "sent" else None, delivery_status=delivery_status,
            ))  # fmt: skip
        return message_id

    def respond(self, lead_id: str, kind: str, hours: float, message_id: str | None = None,
                **data) -> None:  # fmt: skip
        self.count += 1
        with self.sessions.begin() as session:
            session.add(Response(event_id=f"e{self.count}", lead_id=lead_id, type=kind,
                                 message_id=message_id, data=data, occurred_at=at(hours),
                                 delivered_at=at(hours)))  # fmt: skip

    def sql(self, lead_id: str, hours: float) -> None:
        with self.sessions.begin() as session:
            for n, (old, new) in enumerate((("lead", "mql"), ("mql", "sql"))):
                session.add(StageChange(lead_id=lead_id, change_key=f"{n}:{new}", from_stage=old,
                                        to_stage=new, reason="setup",
                                        created_at=at(hours)))  # fmt: skip


@pytest.fixture
def history(database) -> History:
    h = History(database.sessions)
    # l1: the whole of alpha, each response matched a different way, then SQL.
    h.lead("l1", "alpha", "handed_off")
    welcome = h.send("l1", "alpha", "welcome", 0, delivery_status="delivered")
    h.respond("l1", "email.open", 1, message_id=welcome)
    h.respond("l1", "email.open", 2, message_id=welcome)  # the same lead: counted once
    h.respond("l1", "email.click", 3, step="welcome", sequence="alpha")
    h.send("l1", "alpha", "nudge", 24, channel="sms")
    h.respond("l1", "sms.reply", 25)  # no message, no step: the last SMS sent
    h.send("l1", "alpha", "offer", 48)
    h.sql("l1", 50)
    h.respond("l1", "page.view", 51)  # not about a message
    # l2: bounced, and SQL straight after the welcome (its first and last touch).
    h.lead("l2", "alpha", "handed_off")
    bounced = h.send("l2", "alpha", "welcome", 0)
    h.respond("l2", "email.bounce", 0.1, message_id=bounced)
    h.sql("l2", 5)
    # l3: the welcome twice (a loop), then an unsubscribe naming no message.
    h.lead("l3", "alpha", "completed")
    h.send("l3", "alpha", "welcome", 0)
    h.send("l3", "alpha", "welcome", 30)
    h.respond("l3", "email.unsubscribe", 31)
    # l4: the welcome skipped (no consent): not a send; the SMS undelivered.
    h.lead("l4", "alpha", "active")
    h.send("l4", "alpha", "welcome", 0, status="skipped")
    h.send("l4", "alpha", "nudge", 24, channel="sms", delivery_status="undelivered")
    # l5: beta's welcome, a step id alpha also has.
    h.lead("l5", "beta", "exited")
    h.respond("l5", "email.open", 2, message_id=h.send("l5", "beta", "welcome", 1))
    h.lead("l6", "alpha", "migrated")  # a status the list does not name
    return h


def test_each_step_counts_its_sends_leads_responses_and_sqls(database, history):
    with database.sessions() as session:
        alpha = step_figures(session, "alpha")
        beta = step_figures(session, "beta")
        nothing = step_figures(session, "gamma")
    assert alpha == {
        "welcome": StepFigures("welcome", "email", sent=4, recipients=3, delivered=1, opened=1,
                               clicked=1, unsubscribed=1, bounced=1, sql_first_touch=2,
                               sql_last_touch=1),
        "nudge": StepFigures("nudge", "sms", sent=2, recipients=2, replied=1, bounced=1,
                             sql_first_touch=0, sql_last_touch=0),
        "offer": StepFigures("offer", "email", sent=1, recipients=1, sql_last_touch=1),
    }  # fmt: skip
    assert beta == {"welcome": StepFigures("welcome", "email", sent=1, recipients=1, opened=1)}
    assert nothing == {}


def test_the_figures_are_the_reports_step_rows(database, history):
    with database.sessions() as session:
        report = build_report(session, ReportFilter(), sections=("steps",))
        figures = {s: step_figures(session, s) for s in ("alpha", "beta")}
    assert {(row["sequence"], row["step"]) for row in report["steps"]} == {
        (sequence, step) for sequence, steps in figures.items() for step in steps
    }
    for row in report["steps"]:
        skipped = ("sequence", "open_events", "click_events")
        expected = {key: value for key, value in row.items() if key not in skipped}
        assert figures[row["sequence"]][row["step"]].to_dict() == expected


def test_each_sequence_has_its_enrollments_by_status_and_its_sqls(database, history):
    with database.sessions() as session:
        found = sequence_figures(session)
    assert found == {
        "alpha": SequenceFigures("alpha", active=1, completed=1, handed_off=2, other=1, sqls=2),
        "beta": SequenceFigures("beta", exited=1),
    }
    assert found["alpha"].enrolled == 5
