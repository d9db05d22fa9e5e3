"""`nurture status`, `nurture leads` and `nurture report`.

Two kinds of data. Leads run through the real lead workflow with the fixture
definitions on the time-skipping server (real activities, sends through the outbox,
responses through intake, a handoff answered through the workflow), then looked at
with the commands. And, for the aggregation's edge cases (exact medians, date ranges,
each way a response is matched to a send), rows written with the ORM exactly as the
activities and webhooks write them: data setup, with the report code itself under test.
Both on SQLite and PostgreSQL (the `database_url` fixture).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from typer.testing import CliRunner

from models.db import Enrollment, Handoff, Lead, Message, Response, StageChange, utcnow
from models.workflow_io import HandoffAnswer
from sales.outcome_store import store_outcomes
from sales.outcomes import OutcomeEventIn
from services.answering import submit_answer
from services.intake import EventIn
from services.reports import ReportFilter, build_report, parse_moment, to_csv
from tests.harness import running_harness

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
HOUR = 3600


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def cli_env(monkeypatch, settings, temporal: str | None = None) -> None:
    values = {
        "DATABASE_URL": settings.effective_database_url,
        "NURTURE_DEFINITIONS": str(settings.definitions_dir),
        "NURTURE_STATE_DIR": str(settings.state_dir),
        "TEMPORAL_ADDRESS": temporal or "127.0.0.1:1",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("COLUMNS", raising=False)


def invoke(*args: str):
    from cli.app import app

    return CliRunner().invoke(app, list(args))


def rows_of(report: dict, section: str, key: str) -> dict:
    return {row[key]: row for row in report[section]}


# --- data setup with the ORM: rows as the activities and webhooks write them -----------------


class Rows:
    def __init__(self, database):
        self.sessions = database.sessions
        self.sent = 0

    def lead(self, key: str, segment: str | None, created: datetime, stage: str = "lead") -> str:
        with self.sessions.begin() as session:
            session.add(Lead(id=key, email=f"{key}@example.com", segment=segment,
                             created_at=created, stage=stage))  # fmt: skip
        return key

    def stages(self, lead_id: str, *changes: tuple[str, str, datetime]) -> None:
        with self.sessions.begin() as session:
            for n, (old, new, moment) in enumerate(changes):
                session.add(
                    StageChange(
                        lead_id=lead_id,
                        change_key=f"{n}:{new}",
                        from_stage=old,
                        to_stage=new,
                        reason="setup",
                        created_at=moment,
                    )
                )

    def send(self, lead_id: str, sequence: str, step: str, moment: datetime, channel="email",
             status="sent", delivery_status=None) -> str:  # fmt: skip
        self.sent += 1
        message_id = f"m{self.sent}"
        enrollment_id = f"{lead_id}:{sequence}"
        with self.sessions.begin() as session:
            if session.get(Enrollment, enrollment_id) is None:
                session.add(
                    Enrollment(
                        id=enrollment_id,
                        lead_id=lead_id,
                        sequence_id=sequence,
                        sequence_version=1,
                        workflow_id=f"lead-{lead_id}",
                    )
                )
                session.flush()
            session.add(Message(
                id=message_id, send_key=f"{enrollment_id}:{step}:{self.sent}", lead_id=lead_id,
                enrollment_id=enrollment_id, step_id=step, channel=channel, template=step,
                recipient="x", body="", status=status, created_at=moment,
                sent_at=moment if status == "sent" else None, delivery_status=delivery_status,
            ))  # fmt: skip
        return message_id

    def respond(self, lead_id: str, kind: str, moment: datetime, message_id: str | None = None,
                **data) -> None:  # fmt: skip
        with self.sessions.begin() as session:
            session.add(Response(event_id=f"e{self.sent}-{kind}-{moment.isoformat()}-{data}",
                                 lead_id=lead_id, type=kind, message_id=message_id, data=data,
                                 occurred_at=moment, delivered_at=moment))  # fmt: skip


def report(database, **filters) -> dict:
    with database.sessions() as session:
        return build_report(session, ReportFilter(**filters))


# --- the funnel and the segments ----------------------------------------------------------------


@pytest.fixture
def funnel_data(database):
    rows = Rows(database)
    # l1: one stage at a time, accepted 2h after SQL.
    rows.lead("l1", "alpha", at(0))
    rows.stages("l1", ("lead", "mql", at(1)), ("mql", "sql", at(3)), ("sql", "accepted", at(5)))
    # l2: jumps to SQL (the MQL passed is recorded too), is turned down, qualifies again,
    # and that second SQL is accepted an hour later.
    rows.lead("l2", "alpha", at(0))
    rows.stages("l2", ("lead", "mql", at(2)), ("mql", "sql", at(2)), ("sql", "lead", at(3)),
                ("lead", "mql", at(4)), ("mql", "sql", at(10)),
                ("sql", "accepted", at(11)))  # fmt: skip
    rows.lead("l3", "beta", at(0))
    rows.stages("l3", ("lead", "mql", at(4)))
    rows.lead("l4", "beta", at(0))
    # l5: a PQL, which passes MQL on its way.
    rows.lead("l5", "beta", at(0))
    rows.stages("l5", ("lead", "mql", at(8)), ("mql", "pql", at(8)))
    rows.lead("l6", None, at(0))
    # Created before the range of the date-range checks: SQL fast, never accepted.
    rows.lead("old", "alpha", at(-48))
    rows.stages("old", ("lead", "mql", at(-47)), ("mql", "sql", at(-47)))
    return rows


def test_funnel_counts_rates_and_median_times(database, funnel_data):
    data = report(database, since=T0)
    stages = {row["stage"]: row for row in data["funnel"]["stages"]}
    assert [stages[s]["reached"] for s in ("lead", "mql", "sql", "accepted")] == [6, 4, 2, 2]
    assert stages["lead"]["rate_from_previous"] is None
    assert (
        stages["mql"]["rate_from_previous"] == 0.6667 and stages["mql"]["rate_from_leads"] == 0.6667
    )
    assert stages["sql"]["rate_from_previous"] == 0.5 and stages["sql"]["rate_from_leads"] == 0.3333
    assert stages["accepted"]["rate_from_previous"] == 1.0
    assert data["funnel"]["overall_rate"] == 0.3333
    # lead -> MQL: 1h, 2h, 4h, 8h; MQL -> SQL: 2h, 0 (the jump); SQL -> accepted: 2h, and
    # 1h for l2 (from its second SQL, the one accepted, not its first).
    assert stages["mql"]["median_seconds_from_previous"] == 3 * HOUR
    assert stages["mql"]["timed_leads"] == 4
    assert stages["sql"]["median_seconds_from_previous"] == 1 * HOUR
    assert stages["accepted"]["median_seconds_from_previous"] == 1.5 * HOUR

    segments = rows_of(data, "segments", "segment")
    assert segments["alpha"] == NO_OUTCOMES | {
        "segment": "alpha", "leads": 2, "mql": 2, "sql": 2, "accepted": 2, "mql_rate": 1.0,
        "sql_rate": 1.0, "accepted_rate": 1.0, "overall_rate": 1.0, "opportunity_rate": 0.0,
    }  # fmt: skip
    assert segments["beta"] == NO_OUTCOMES | {
        "segment": "beta", "leads": 3, "mql": 2, "sql": 0, "accepted": 0, "mql_rate": 0.6667,
        "sql_rate": 0.0, "accepted_rate": None, "overall_rate": 0.0,
    }  # fmt: skip
    assert segments["(none)"]["leads"] == 1 and segments["(none)"]["mql"] == 0
    assert [row["segment"] for row in data["segments"]] == ["beta", "alpha", "(none)"]


def test_the_date_range_and_segments_select_the_leads(database, funnel_data):
    everything = {r["stage"]: r["reached"] for r in report(database)["funnel"]["stages"]}
    assert everything == {"lead": 7, "mql": 5, "sql": 3, "accepted": 2, "opportunity": 0, "won": 0}
    before = report(database, until=T0)["funnel"]["stages"]
    assert [r["reached"] for r in before] == [1, 1, 1, 0, 0, 0]
    assert before[1]["median_seconds_from_previous"] == 1 * HOUR
    assert before[2]["median_seconds_from_previous"] == 0
    alpha = report(database, segments=("alpha",), since=T0)
    assert [r["reached"] for r in alpha["funnel"]["stages"]] == [2, 2, 2, 2, 0, 0]
    assert [row["segment"] for row in alpha["segments"]] == ["alpha"]
    unsegmented = report(database, segments=("(none)", "beta"), since=T0)
    assert unsegmented["funnel"]["stages"][0]["reached"] == 4
    empty = report(database, since=at(1))
    assert [r["reached"] for r in empty["funnel"]["stages"]] == [0, 0, 0, 0, 0, 0]
    assert empty["funnel"]["overall_rate"] is None and empty["segments"] == []


# --- past accepted: the CRM's opportunities and wins -------------------------------------------

NO_OUTCOMES = {"opportunity": 0, "won": 0, "opportunity_rate": None, "won_rate": None,
               "won_revenue": {}}  # fmt: skip


def crm(lead_id: str | None, opportunity: str, *events: tuple, email: str | None = None):
    """The CRM's events of one opportunity: (kind, hour, amount, currency[, lost reason])."""
    out = []
    for kind, hours, amount, currency, *reason in events:
        out.append(OutcomeEventIn(
            opportunity_id=opportunity, kind=kind, occurred_at=at(hours), lead_id=lead_id,
            email=email, amount=amount, currency=currency,
            lost_reason=reason[0] if reason else None,
        ))  # fmt: skip
    return out


def walk(rows: Rows, lead_id: str, *steps: tuple[str, float]) -> None:
    """The lead's stage changes from `lead`, each (stage, hour)."""
    before = ["lead", *(stage for stage, _ in steps[:-1])]
    rows.stages(lead_id, *((old, new, at(h)) for old, (new, h) in zip(before, steps, strict=True)))


@pytest.fixture
def outcome_data(database):
    """Opportunities stored as the CRM's events are (sales/outcome_store.py), and the
    stage changes the lead workflow makes of their news a little later (+0.1h)."""
    rows = Rows(database)
    # a1: accepted at 3h; an opportunity at 5h, won at 29h for $12,000.50.
    rows.lead("a1", "alpha", at(0))
    walk(rows, "a1", ("mql", 1), ("sql", 2), ("accepted", 3), ("opportunity", 5.1),
         ("customer", 29.1))  # fmt: skip
    # a2: accepted at 4h; lost its first opportunity (8h-20h), recycled, won a second
    # in euros (50h-60h): its sales cycle is the second's 10h, not 52h from the first.
    rows.lead("a2", "alpha", at(0))
    walk(rows, "a2", ("mql", 1), ("sql", 2), ("accepted", 4), ("opportunity", 8.1),
         ("closed_lost", 20.1), ("lead", 40), ("opportunity", 50.1),
         ("customer", 60.1))  # fmt: skip
    # b1: an SQL sales never accepted in Nurture; the CRM opened an opportunity anyway at
    # 6h, whose news is not delivered yet (no stage change).
    rows.lead("b1", "beta", at(0))
    walk(rows, "b1", ("mql", 1), ("sql", 3))
    # b2: accepted at 5h, opportunity at 9h, lost at 12h.
    rows.lead("b2", "beta", at(0))
    walk(rows, "b2", ("mql", 2), ("sql", 2), ("accepted", 5), ("opportunity", 9.1),
         ("closed_lost", 12.1))  # fmt: skip
    # b3: accepted at 6h; opportunity (7h) and customer (13h) by its stage changes alone.
    rows.lead("b3", "beta", at(0))
    walk(rows, "b3", ("mql", 2), ("sql", 4), ("accepted", 6), ("opportunity", 7),
         ("customer", 13))  # fmt: skip
    rows.lead("c1", None, at(0))
    # Created before the range: a $1,000 win.
    rows.lead("old", "alpha", at(-48))
    walk(rows, "old", ("opportunity", -40), ("customer", -30))
    events = [
        *crm("a1", "opp-a1", ("created", 5, 10000, "USD"), ("won", 29, "12000.50", "USD")),
        *crm("a2", "opp-a2", ("created", 8, 5000, "USD"), ("lost", 20, 5000, "USD", "budget")),
        *crm("a2", "opp-a2b", ("created", 50, 3000, "EUR"), ("won", 60, 3000, "EUR")),
        *crm("b1", "opp-b1", ("created", 6, 7000, "USD")),
        *crm("b2", "opp-b2", ("created", 9, 4000, "USD"), ("lost", 12, 4000, "USD", "timing")),
        *crm("old", "opp-old", ("created", -40, 1000, "USD"), ("won", -30, 1000, "USD")),
        # Won, for an email no lead has yet: no lead's figure.
        *crm(None, "opp-x", ("won", 7, 50000, "USD"), email="nobody@example.com"),
    ]
    assert store_outcomes(database.sessions, events, "test").waiting == 1
    return rows


def test_the_funnel_goes_on_to_opportunity_and_won(database, outcome_data):
    data = report(database, since=T0)
    stages = {row["stage"]: row for row in data["funnel"]["stages"]}
    assert list(stages) == ["lead", "mql", "sql", "accepted", "opportunity", "won"]
    assert [stages[s]["reached"] for s in stages] == [6, 5, 5, 4, 5, 3]
    # b1's opportunity came without an acceptance: more opportunities than acceptances.
    assert stages["opportunity"]["rate_from_previous"] == 1.25
    assert stages["opportunity"]["rate_from_leads"] == 0.8333
    assert stages["won"]["rate_from_previous"] == 0.6 and stages["won"]["rate_from_leads"] == 0.5
    assert data["funnel"]["overall_rate"] == 0.6667  # lead -> accepted, as it was
    # accepted -> opportunity, to the CRM's opening (not the stage change 0.1h later):
    # a1 2h, a2 4h, b2 4h, b3 1h (b1 was never accepted).
    assert stages["opportunity"]["median_seconds_from_previous"] == 3 * HOUR
    assert stages["opportunity"]["timed_leads"] == 4
    # The won opportunity's own cycle: a1 24h, a2 10h (b3 has no opportunity to time).
    assert stages["won"]["median_seconds_from_previous"] == 17 * HOUR
    assert stages["won"]["timed_leads"] == 2

    segments = rows_of(data, "segments", "segment")
    assert {k: v for k, v in segments["alpha"].items() if k in NO_OUTCOMES} == {
        "opportunity": 2, "won": 2, "opportunity_rate": 1.0, "won_rate": 1.0,
        "won_revenue": {"EUR": Decimal("3000"), "USD": Decimal("12000.5")},
    }  # fmt: skip
    assert {k: v for k, v in segments["beta"].items() if k in NO_OUTCOMES} == {
        "opportunity": 3, "won": 1, "opportunity_rate": 1.5, "won_rate": 0.3333,
        "won_revenue": {},
    }  # fmt: skip
    assert {k: v for k, v in segments["(none)"].items() if k in NO_OUTCOMES} == NO_OUTCOMES

    # All time: the old lead's win too, never added across currencies.
    everything = report(database)
    assert [r["reached"] for r in everything["funnel"]["stages"]][4:] == [6, 4]
    alpha = rows_of(everything, "segments", "segment")["alpha"]
    assert alpha["won_revenue"] == {"EUR": Decimal("3000"), "USD": Decimal("13000.5")}
    assert [r["reached"] for r in report(database, segments=("beta",))["funnel"]["stages"]] == [
        3, 3, 3, 2, 3, 1
    ]  # fmt: skip


def test_the_report_command_shows_opportunities_and_won_revenue(
    database, outcome_data, settings, monkeypatch
):
    cli_env(monkeypatch, settings)
    since = ("--since", "2024-05-01T09:00")
    text = invoke("report", "--section", "funnel", "--section", "segments", *since).stdout
    assert re.search(r"│ opportunity +│ 5 +│ 125\.0% +│ 83\.3% +│ 3h.* \(4 leads\) +│", text), text
    assert re.search(r"│ won +│ 3 +│ 60\.0% +│ 50\.0% +│ 17h.* \(2 leads\) +│", text), text
    alpha = text[text.index("│ alpha") :]
    assert re.search(r"│ 2 +│ 2 +│ 100\.0% +│ 100\.0% +│ EUR 3,000 +│", alpha), text
    assert re.search(r"^│ +(│ +){13}USD 12,000\.5 +│", alpha, re.MULTILINE), text

    as_json = json.loads(invoke("report", "--json", *since).stdout)
    assert [r["reached"] for r in as_json["funnel"]["stages"]] == [6, 5, 5, 4, 5, 3]
    alpha_json = rows_of(as_json, "segments", "segment")["alpha"]
    assert alpha_json["won_revenue"] == {"EUR": 3000.0, "USD": 12000.5}

    as_csv = invoke("report", "--csv", *since).stdout
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    won = next(r for r in rows if r["section"] == "funnel" and r["stage"] == "won")
    assert (won["reached"], won["rate_from_previous"], won["timed_leads"]) == ("3", "0.6", "2")
    alpha_csv = next(r for r in rows if r["section"] == "segments" and r["segment"] == "alpha")
    assert alpha_csv["won_revenue"] == "EUR 3000; USD 12000.5"
    assert (alpha_csv["opportunity"], alpha_csv["won_rate"]) == ("2", "1.0")
    # The columns there were keep their places; the new ones come after them.
    header = as_csv.splitlines()[0].split(",")
    assert header[-6:] == ["overall_rate", "opportunity", "won", "opportunity_rate", "won_rate",
                           "won_revenue"]  # fmt: skip


def test_leads_by_segment_including_none(database, funnel_data, settings, monkeypatch):
    cli_env(monkeypatch, settings)

    def emails(*args):
        result = invoke("leads", "--json", *args)
        assert result.exit_code == 0, result.output
        return sorted(row["email"] for row in json.loads(result.stdout))

    assert emails("--segment", "(none)") == ["l6@example.com"]
    assert emails("--segment", "beta", "--segment", "(none)") == [
        "l3@example.com", "l4@example.com", "l5@example.com", "l6@example.com"
    ]  # fmt: skip
    assert len(emails("--limit", "0")) == 7 and len(emails("--limit", "3")) == 3


def test_dates_on_the_command_line():
    now = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
    assert parse_moment("2024-05-01", now) == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_moment("2024-05-31", now, end=True) == datetime(2024, 6, 1, tzinfo=UTC)
    assert parse_moment("2024-05-01T09:30", now, end=True) == datetime(2024, 5, 1, 9, 30,
                                                                       tzinfo=UTC)  # fmt: skip
    assert parse_moment("2024-05-01T09:30+02:00", now) == datetime(2024, 5, 1, 7, 30, tzinfo=UTC)
    assert parse_moment("30d", now) == datetime(2024, 5, 2, 12, 0, tzinfo=UTC)
    assert parse_moment("12h", now) == datetime(2024, 6, 1, 0, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="not a date"):
        parse_moment("last tuesday", now)


# --- sequences, steps and attribution -------------------------------------------------------------


@pytest.fixture
def send_data(database):
    rows = Rows(database)
    # l1: opens its intro three times (linked by message ID), clicks it (a response naming
    # only the step), replies to the SMS by text (naming no message: the last SMS before),
    # gets the follow-up, becomes an SQL, then one more email, answered by a plain reply.
    rows.lead("l1", "alpha", at(-1))
    intro = rows.send("l1", "s1", "intro", at(1), delivery_status="delivered")
    for n in range(3):
        rows.respond("l1", "email.open", at(1.1 + n / 10), intro)
    rows.respond("l1", "email.click", at(1.5), step="intro", sequence="s1")
    rows.respond("l1", "email.click", at(1.6), step="intro", sequence="another")  # no such send
    rows.respond("l1", "page.view", at(1.7), step="intro")  # not about a message
    rows.send("l1", "s1", "text", at(2), channel="sms")
    rows.respond("l1", "sms.reply", at(2.5), body="sounds good")
    rows.send("l1", "s1", "follow", at(3))
    rows.stages("l1", ("lead", "mql", at(3.5)), ("mql", "sql", at(4)))
    rows.send("l1", "s1", "after", at(5))
    rows.respond("l1", "email.reply", at(6))
    # l2: bounces (linked), and unsubscribes by the link (no message: the last email).
    rows.lead("l2", "beta", at(-1))
    intro2 = rows.send("l2", "s1", "intro", at(1))
    rows.respond("l2", "email.bounce", at(1.2), intro2, bounce_type="hard")
    rows.respond("l2", "email.unsubscribe", at(1.5), via="unsubscribe link")
    rows.send("l2", "s1", "follow", at(3), status="skipped")  # not a send
    # l3: its intro went out before the range; SQL after the follow-up in the range.
    rows.lead("l3", "alpha", at(-72))
    rows.send("l3", "s1", "intro", at(-48), delivery_status="delivered")
    follow3 = rows.send("l3", "s1", "follow", at(2.2))
    rows.respond("l3", "email.delivered", at(2.3), follow3)
    rows.stages("l3", ("lead", "mql", at(3)), ("mql", "sql", at(3)))
    # l4: another sequence, deferred and never sent.
    rows.lead("l4", "beta", at(0))
    rows.send("l4", "s2", "hello", at(1), status="deferred")
    return rows


ZERO = dict.fromkeys(
    (
        "delivered",
        "opened",
        "clicked",
        "replied",
        "unsubscribed",
        "bounced",
        "open_events",
        "click_events",
        "sql_first_touch",
        "sql_last_touch",
    ),
    0,
)


def test_steps_count_leads_once_and_match_responses_to_sends(database, send_data):
    data = report(database, since=T0)
    steps = {(row["sequence"], row["step"]): row for row in data["steps"]}
    assert list(steps) == [("s1", "intro"), ("s1", "text"), ("s1", "follow"), ("s1", "after")]
    assert steps["s1", "intro"] == ZERO | {
        "sequence": "s1", "step": "intro", "channel": "email", "sent": 2, "recipients": 2,
        "delivered": 1, "opened": 1, "clicked": 1, "unsubscribed": 1, "bounced": 1,
        "open_events": 3, "click_events": 1, "sql_first_touch": 1,
    }  # fmt: skip
    assert steps["s1", "text"] == ZERO | {
        "sequence": "s1", "step": "text", "channel": "sms", "sent": 1, "recipients": 1,
        "replied": 1,
    }  # fmt: skip
    # l1's last send before its SQL, and l3's (whose first touch is out of the range).
    assert steps["s1", "follow"] == ZERO | {
        "sequence": "s1", "step": "follow", "channel": "email", "sent": 2, "recipients": 2,
        "delivered": 1, "sql_last_touch": 2,
    }  # fmt: skip
    assert steps["s1", "after"] == ZERO | {
        "sequence": "s1", "step": "after", "channel": "email", "sent": 1, "recipients": 1,
        "replied": 1,
    }  # fmt: skip
    # The sequence counts leads once over its steps: l1 replied twice, counted once.
    (s1,) = data["sequences"]
    assert s1 == ZERO | {
        "sequence": "s1", "sent": 6, "recipients": 3, "delivered": 2, "opened": 1, "clicked": 1,
        "replied": 1, "unsubscribed": 1, "bounced": 1, "open_events": 3, "click_events": 1,
        "sql_first_touch": 1, "sql_last_touch": 2, "enrolled": 3, "goals_met": 0,
        "goal_rate": 0.0,
    }  # fmt: skip


def test_attribution_is_computed_over_all_sends_and_counted_in_the_range(database, send_data):
    everything = report(database)
    intro = rows_of(everything, "steps", "step")["intro"]
    assert (intro["sent"], intro["sql_first_touch"], intro["sql_last_touch"]) == (3, 2, 0)
    assert everything["sequences"][0]["sql_first_touch"] == 2
    beta = report(database, segments=("beta",))
    assert [(r["step"], r["sent"], r["bounced"]) for r in beta["steps"]] == [("intro", 1, 1)]
    later = report(database, since=at(4.5))
    assert [(r["step"], r["sent"], r["replied"]) for r in later["steps"]] == [("after", 1, 1)]
    assert report(database, until=T0)["steps"][0]["step"] == "intro"


def test_report_command_table_csv_and_json(database, send_data, settings, monkeypatch):
    cli_env(monkeypatch, settings)
    # PostgreSQL without statistics (autovacuum is off on some machines, this one's
    # included): the report analyzes its tables once, and says so on stderr.
    first = invoke("report", "--section", "funnel")
    assert first.exit_code == 0, first.output
    if database.engine.dialect.name == "postgresql":
        assert "analyzed enrollments, leads, messages, responses, stage_changes" in first.stderr
    assert "analyzed" not in invoke("report", "--section", "funnel").stderr

    table = invoke("report", "--since", "2024-05-01T09:00")
    assert table.exit_code == 0, table.output
    text = table.stdout
    for heading in ("funnel", "median time from previous", "sends in the range", "by segment"):
        assert heading in text
    assert re.search(r"│ lead +│ 1 +│ - +│ 100\.0% +│ - +│", text), text
    s1 = text[text.index("sequence s1") :]
    assert re.search(r"│ \(all steps\) +│ +│ 6 +│ 3 +│ 2 \(67%\) +│ 1 \(33%\) +│", s1), text
    assert re.search(
        r"│ intro +│ email │ 2 +│ 2 +│ 1 \(50%\) +│ 1 \(50%\) +│ 1 \(50%\) +│ 0 +│", s1
    ), text
    assert re.search(r"│ beta +│ 1 +│ 0 +│ 0 +│ 0 +│ 0\.0% +│ - +│ - +│ 0\.0% +│", text), text
    assert "\x1b[" not in text  # no colours off a terminal

    as_json = json.loads(invoke("report", "--json", "--since", "2024-05-01T09:00").stdout)
    assert as_json == json.loads(json.dumps(report(database, since=T0), default=str))

    as_csv = invoke("report", "--csv", "--since", "2024-05-01T09:00")
    assert as_csv.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["section"] for r in rows].count("funnel") == 6
    assert {r["section"] for r in rows} == {"funnel", "sequences", "steps", "segments"}
    intro = next(r for r in rows if r["section"] == "steps" and r["step"] == "intro")
    assert (intro["sequence"], intro["sent"], intro["opened"], intro["stage"]) == (
        "s1",
        "2",
        "1",
        "",
    )
    assert as_csv.stdout == to_csv(report(database, since=T0))

    steps_only = invoke("report", "--csv", "--section", "steps", "--segment", "beta")
    header, *lines = steps_only.stdout.splitlines()
    assert header.startswith("section,sequence,step,channel,sent,recipients,delivered")
    assert len(lines) == 1 and lines[0].startswith("steps,s1,intro,email,1,1,0,0,0,0,1,1")
    funnel_only = json.loads(invoke("report", "--json", "--section", "funnel").stdout)
    assert set(funnel_only) == {"filter", "funnel"}
    flat = invoke("report", "--section", "steps", "--since", "2024-05-01T09:00").stdout
    assert "sequence s1" in flat and "(all steps)" not in flat
    assert re.search(r"│ intro +│ email │ 2 +│ 2 +│", flat), flat
    assert "funnel" not in flat and "by segment" not in flat
    nothing = invoke("report", "--section", "steps", "--since", "2030-01-01")
    assert "no sends in the range" in nothing.stdout

    for bad in (["--since", "soon"], ["--section", "money"], ["--csv", "--json"],
                ["--since", "2024-06-01", "--until", "2024-05-01"]):  # fmt: skip
        result = invoke("report", *bad)
        assert result.exit_code == 2, (bad, result.output)


# --- one timestamp format in every --json ------------------------------------------------------

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?\+00:00")
A_MOMENT = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d")


def moments(value) -> list[str]:
    """Every string in a JSON document that holds a date and a time."""
    if isinstance(value, dict):
        return [m for v in value.values() for m in moments(v)]
    if isinstance(value, list):
        return [m for v in value for m in moments(v)]
    return [value] if isinstance(value, str) and A_MOMENT.match(value) else []


def json_outputs() -> dict[str, object]:
    """What each command that reports prints with --json, parsed."""
    commands = {
        "messages": ["messages", "--json"],  # JSON lines
        "leads": ["leads", "--json"],
        "handoffs": ["handoff", "list", "--json"],
        "status": ["status", "ada@example.com", "--json", "--timeout", "0.5"],
        "report": ["report", "--json", "--since", "2024-05-01"],
    }
    out = {}
    for name, args in commands.items():
        result = invoke(*args)
        assert result.exit_code == 0, (name, result.output)
        if name == "messages":
            out[name] = [json.loads(line) for line in result.stdout.splitlines()]
        else:
            out[name] = json.loads(result.stdout)
    return out


def check_moments(outputs: dict) -> None:
    for name, output in outputs.items():
        found = moments(output)
        assert found and all(ISO_UTC.fullmatch(m) for m in found), (name, found)
    messages = {m["step_id"]: m for m in outputs["messages"]}
    assert messages["intro"]["created_at"] == at(2).isoformat()
    assert messages["later"]["not_before"] == at(6).isoformat()
    assert [lead["created_at"] for lead in outputs["leads"]] == [at(0).isoformat()]
    (handoff,) = outputs["handoffs"]
    assert (handoff["created_at"], handoff["due_at"]) == (at(4).isoformat(), at(5).isoformat())
    status = outputs["status"]
    assert status["lead"]["created_at"] == at(0).isoformat()
    assert status["messages"][0]["sent_at"] == at(2).isoformat()
    assert status["responses"][0]["occurred_at"] == at(2.5).isoformat()
    assert status["handoffs"][0]["due_at"] == at(5).isoformat()
    assert outputs["report"]["filter"]["since"] == "2024-05-01T00:00:00+00:00"


def test_every_json_output_writes_moments_in_utc_with_offset(database, settings, monkeypatch):
    rows = Rows(database)
    lead = rows.lead("ada", "alpha", at(0))
    rows.stages(lead, ("lead", "mql", at(1)))
    intro = rows.send(lead, "s1", "intro", at(2))
    rows.respond(lead, "email.open", at(2.5), intro)
    later = rows.send(lead, "s1", "later", at(3), status="deferred")
    with database.sessions.begin() as session:
        session.get(Message, later).not_before = at(6)
        session.add(Handoff(lead_id=lead, cycle=1, rep_id="alice", score=55.0, reason="setup",
                            created_at=at(4), due_at=at(5)))  # fmt: skip
    cli_env(monkeypatch, settings)
    # SQLite hands back naive datetimes, PostgreSQL aware ones: the same text from both.
    check_moments(json_outputs())
    if database.engine.dialect.name == "postgresql":
        # A session time zone other than UTC (the server's, or PGTZ) changes nothing.
        monkeypatch.setenv("PGTZ", "Asia/Kolkata")
        outputs = json_outputs()
        # Not yet the score card's own timestamps, which scoring/explain.py formats.
        outputs["status"].pop("score")
        check_moments(outputs)


# --- the real workflow: leads nurtured, scored, handed off and accepted -----------------------


async def respond(harness, lead_id: str, kind: str, message_id: str | None = None, **data):
    """A response stored and delivered as intake does, stamped with the wall clock (what
    `status` scores at: the time-skipping server's clock runs ahead of it)."""
    event = EventIn(lead_id=lead_id, type=kind, message_id=message_id, data=data,
                    occurred_at=utcnow())  # fmt: skip
    await harness.intake.deliver(harness.intake.store_events([event]).stored)


def message_of(harness, lead_id: str, step: str) -> str:
    (message,) = [m for m in harness.rows(Message, lead_id) if m.step_id == step]
    return message.id


async def test_commands_on_leads_nurtured_by_the_workflow(
    time_skipping_env, settings, fixture_definitions, monkeypatch
):
    # Cal replies and goes on waiting for a click: the status of a lead mid-wait.
    month = fixture_definitions.sequences["month"].model_copy(update={"on_reply": "continue"})
    definitions = dataclasses.replace(
        fixture_definitions, sequences={**fixture_definitions.sequences, "month": month}
    )
    async with running_harness(time_skipping_env, settings, definitions) as h:
        ann = await h.enroll(email="ann@acme.example", first_name="Ann", company="Acme")
        bea = await h.enroll(email="bea@acme.example", first_name="Bea", company="Acme")
        cal = await h.enroll(email="cal@initech.example", first_name="Cal", last_name="Ng",
                             company="Initech", title="CTO")  # fmt: skip
        dan = await h.enroll(email="dan@example.de", first_name="Dan", country="DE")
        eve = await h.enroll(email="eve@example.com", first_name="Eve")
        for lead_id in (ann, bea, cal, eve):
            await h.until(lead_id, lambda s: s.sent_steps == ["welcome"])
        await h.until(dan, lambda s: s.sent_steps == ["first"])

        # Responses, as the providers and the API bring them.
        await respond(h, ann, "email.delivered", message_of(h, ann, "welcome"))
        await respond(h, ann, "email.click", message_of(h, ann, "welcome"), url="/pricing")
        await respond(h, bea, "email.delivered", message_of(h, bea, "welcome"))
        await respond(h, bea, "email.open", step="welcome", sequence="month")
        await respond(h, bea, "email.open", step="welcome", sequence="month")
        await respond(h, cal, "email.reply")  # by its sender's address: no message named
        await respond(h, dan, "email.bounce", message_of(h, dan, "first"), bounce_type="hard")
        await respond(h, eve, "email.unsubscribe", via="unsubscribe link")
        for lead_id, handled in ((ann, 2), (bea, 3), (cal, 1), (dan, 1), (eve, 1)):
            await h.until(lead_id, lambda s, n=handled: s.responses_handled == n)

        # A week on: Ann clicked, so she is thanked; Cal waits for a click.
        await h.env.sleep(timedelta(days=7, hours=1))
        await h.until(ann, lambda s: s.sent_steps == ["welcome", "thanks"])
        cal_state = await h.until(cal, lambda s: s.step_id == "clicked")
        assert cal_state.waiting_for == "email.click" and cal_state.next_action_at is not None

        # Ann and Bea attend the webinar: SQL; sales accepts Bea.
        await respond(h, ann, "webinar.attended")
        await respond(h, bea, "webinar.attended")
        await h.until(ann, lambda s: s.handoff is not None)
        await h.until(bea, lambda s: s.handoff is not None)
        (handoff,) = h.rows(Handoff, bea)
        answer = HandoffAnswer(handoff_id=handoff.id, answer="accept", by="alice")
        await submit_answer(h.env.client, h.database.sessions, answer)
        await h.until(bea, lambda s: s.stage == "accepted")

        data = report(h.database)
        stages = {row["stage"]: row for row in data["funnel"]["stages"]}
        assert [stages[s]["reached"] for s in ("lead", "mql", "sql", "accepted")] == [5, 3, 2, 1]
        assert [stages[s]["rate_from_previous"] for s in ("mql", "sql", "accepted")] == [
            0.6, 0.6667, 0.5
        ]  # fmt: skip
        assert data["funnel"]["overall_rate"] == 0.2
        assert [stages[s]["timed_leads"] for s in ("mql", "sql", "accepted")] == [3, 2, 1]
        assert all(stages[s]["median_seconds_from_previous"] >= 0 for s in ("mql", "sql"))

        steps = {(r["sequence"], r["step"]): r for r in data["steps"]}
        assert list(steps) == [("exit_early", "first"), ("month", "welcome"), ("month", "thanks")]
        assert steps["month", "welcome"] == ZERO | {
            "sequence": "month", "step": "welcome", "channel": "email", "sent": 4,
            "recipients": 4, "delivered": 2, "opened": 1, "clicked": 1, "replied": 1,
            "unsubscribed": 1, "open_events": 2, "click_events": 1, "sql_first_touch": 2,
            "sql_last_touch": 1,
        }  # fmt: skip
        assert steps["month", "thanks"] == ZERO | {
            "sequence": "month", "step": "thanks", "channel": "email", "sent": 1,
            "recipients": 1, "sql_last_touch": 1,
        }  # fmt: skip
        assert steps["exit_early", "first"] == ZERO | {
            "sequence": "exit_early", "step": "first", "channel": "email", "sent": 1,
            "recipients": 1, "bounced": 1,
        }  # fmt: skip
        month = rows_of(data, "sequences", "sequence")["month"]
        assert (month["sent"], month["recipients"], month["sql_first_touch"],
                month["sql_last_touch"]) == (5, 4, 2, 2)  # fmt: skip
        segments = rows_of(data, "segments", "segment")
        assert {k: segments["everyone"][k] for k in ("leads", "mql", "sql", "accepted")} == {
            "leads": 4, "mql": 3, "sql": 2, "accepted": 1
        }  # fmt: skip
        assert segments["europe"]["leads"] == 1 and segments["europe"]["mql"] == 0

        target = time_skipping_env.client.service_client.config.target_host
        cli_env(monkeypatch, h.settings, target)

        def run(*args):
            return asyncio.to_thread(invoke, *args)

        # The report as a script reads it.
        result = await run("report", "--json", "--segment", "europe")
        assert result.exit_code == 0, result.output
        europe = json.loads(result.stdout)
        assert [r["reached"] for r in europe["funnel"]["stages"]] == [1, 0, 0, 0, 0, 0]
        assert [(r["step"], r["bounced"]) for r in europe["steps"]] == [("first", 1)]

        # leads: filters, table, CSV, JSON.
        listed = await run("leads", "--stage", "mql", "--stage", "sql", "--json")
        assert listed.exit_code == 0, listed.output
        assert {(r["email"], r["stage"]) for r in json.loads(listed.stdout)} == {
            ("cal@initech.example", "mql"), ("ann@acme.example", "sql")
        }  # fmt: skip
        # Scores: Ann 55 (click, webinar), Bea 52 (two opens, webinar), Cal 30 (reply).
        scored = json.loads((await run("leads", "--min-score", "30", "--max-score", "52",
                                       "--json")).stdout)  # fmt: skip
        assert sorted((r["email"], r["score"]) for r in scored) == [
            ("bea@acme.example", 52.0), ("cal@initech.example", 30.0)
        ]  # fmt: skip
        exported = await run("leads", "--segment", "europe", "--csv")
        (row,) = list(csv.DictReader(io.StringIO(exported.stdout)))
        assert (row["id"], row["email"], row["segment"], row["stage"]) == (
            dan, "dan@example.de", "europe", "lead"
        )  # fmt: skip
        in_sequence = json.loads((await run("leads", "--sequence", "exit_early", "--json")).stdout)
        assert [r["email"] for r in in_sequence] == ["dan@example.de"]
        table = await run("leads", "--limit", "2")
        assert table.exit_code == 0
        assert "eve@example.com" in table.stdout and "dan@example.de" in table.stdout
        assert (
            "ann@acme.example" not in table.stdout and "2 lead(s) (--limit reached" in table.stdout
        )
        assert (await run("leads", "--stage", "won")).exit_code == 2
        assert (await run("leads", "--min-score", "60", "--max-score", "10")).exit_code == 2
        assert (await run("leads", "--csv", "--json")).exit_code == 2

        # status: the database and the workflow's state, as a person reads it.
        cal_state = await h.state(cal)
        shown = await run("status", "cal@initech.example")
        assert shown.exit_code == 0, (shown.output, shown.exception)
        out = shown.stdout
        assert "cal@initech.example" in out and "Cal Ng" in out and "CTO, Initech" in out
        assert f"workflow lead-{cal}: running" in out
        assert "sequence month (active)  current step clicked  waiting for email.click" in out
        next_at = cal_state.next_action_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        assert f"next action at {next_at} UTC" in out
        assert "stage history" in out and "lead -> mql" in out
        assert "email_reply" in out and "total 30.0/100" in out
        assert "welcome" in out and "reply" in out

        as_json = json.loads((await run("status", cal, "--json")).stdout)
        state = as_json["workflow"]["state"]
        assert (state["step_id"], state["waiting_for"]) == ("clicked", "email.click")
        # The workflow's own moments too: `+00:00` as everywhere, not pydantic's `Z`.
        assert ISO_UTC.fullmatch(state["next_action_at"]), state["next_action_at"]
        assert as_json["score"]["card"]["reasons"] == ["email_reply +30.0"]
        assert [(c["from"], c["to"]) for c in as_json["score"]["stage_changes"]] == [
            ("lead", "mql")
        ]  # fmt: skip
        (welcome,) = as_json["messages"]
        assert (welcome["step"], welcome["sequence"], welcome["responses"]) == (
            "welcome", "month", {"email.reply": 1}
        )  # fmt: skip
        (reply,) = as_json["responses"]
        assert (reply["type"], reply["step"]) == ("email.reply", "welcome")

        accepted = json.loads((await run("status", "bea@acme.example", "--json")).stdout)
        assert accepted["workflow"]["state"]["handoff"]["status"] == "accepted"
        assert [h_["status"] for h_ in accepted["handoffs"]] == ["accepted"]
        assert [c["to"] for c in accepted["score"]["stage_changes"]] == ["mql", "sql", "accepted"]

        # Temporal unreachable: the database part, said so, still exit 0.
        monkeypatch.setenv("TEMPORAL_ADDRESS", "127.0.0.1:1")
        offline = await run("status", cal)
        assert offline.exit_code == 0, offline.output
        assert "Temporal is not reachable at 127.0.0.1:1" in offline.stdout
        assert "lead -> mql" in offline.stdout and "email_reply" in offline.stdout
        offline_json = json.loads((await run("status", cal, "--json")).stdout)
        assert offline_json["workflow"]["reachable"] is False
        missing = await run("status", "nobody@example.com")
        assert missing.exit_code == 1 and "no lead 'nobody@example.com'" in missing.stderr
