"""One lead's story for the console (services/lead_story.py) on SQLite and PostgreSQL,
from hand-made rows: the timeline of every kind of happening, newest first and paged
without losing or repeating one; consent per channel; the score over time; a rep's
access; the Temporal UI link; and the workflow said unavailable when Temporal is not
there."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest

from models.db import (
    ConsentChange,
    Enrollment,
    Handoff,
    HandoffEvent,
    Lead,
    Message,
    OutcomeEvent,
    Response,
    ScoreChange,
    StageChange,
)
from services.lead_story import (
    LeadNotFound,
    NotHandedOffToRep,
    lead_story,
    temporal_ui_url,
    with_workflow,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


# What the `lead` fixture stores, as the timeline titles it, by minute after T0.
EXPECTED = [
    (0, "email sent: welcome"),
    (5, "email.open"),
    (6, "email.click"),
    (6, "score 0.0 → 30.0"),
    (6, "stage lead → mql"),
    (20, "form.submitted"),
    (21, "score 30.0 → 60.0"),
    (21, "stage mql → sql"),
    (22, "handed off to alice (score 60.0, now accepted)"),
    (22, "handoff assigned (alice)"),
    (23, "handoff notified by email (alice)"),
    (40, "sales answered: accepted"),
    (41, "stage sql → accepted"),
    (50, "email opt-out"),
    (60, "email failed: nudge"),
    (90, "opportunity won"),
]


@pytest.fixture
def lead(database) -> str:
    """A lead taken through a whole story: sent to, responding, scored, handed off to
    alice, accepted, opted out of email, and won."""
    with database.sessions.begin() as session:
        lead = Lead(email="ada@acme.example", first_name="Ada", segment="everyone",
                    stage="accepted", score=60.0, email_consent=False,
                    email_opt_out_reason="unsubscribe", created_at=at(-60))  # fmt: skip
        session.add(lead)
        session.flush()
        lead_id = lead.id
        session.add(Enrollment(id=f"{lead_id}-1", lead_id=lead_id, sequence_id="month",
                               sequence_version=1, workflow_id=f"lead-{lead_id}",
                               started_at=at(-1)))  # fmt: skip
        session.flush()
        for n, (step, status, minute) in enumerate((("welcome", "sent", 0),
                                                    ("nudge", "failed", 60))):  # fmt: skip
            session.add(Message(send_key=f"k{n}", lead_id=lead_id, enrollment_id=f"{lead_id}-1",
                                step_id=step, channel="email", template=step,
                                recipient="ada@acme.example", body="", status=status,
                                subject=f"about {step}", created_at=at(minute),
                                sent_at=at(minute) if status == "sent" else None))  # fmt: skip
        for kind, minute in (("email.open", 5), ("email.click", 6), ("form.submitted", 20)):
            session.add(Response(event_id=f"e-{kind}", lead_id=lead_id, type=kind,
                                 data={"form": "demo-request"} if kind == "form.submitted"
                                 else {}, occurred_at=at(minute)))  # fmt: skip
        for n, (old, new, minute) in enumerate(((0, 30, 6), (30, 60, 21))):
            session.add(ScoreChange(lead_id=lead_id, event_id=f"s{n}", cause="test",
                                    old_score=old, new_score=new, reason=f"reason {n}",
                                    scored_at=at(minute), created_at=at(minute)))  # fmt: skip
        for old, new, minute in (("lead", "mql", 6), ("mql", "sql", 21), ("sql", "accepted", 41)):
            session.add(StageChange(lead_id=lead_id, change_key=new, from_stage=old, to_stage=new,
                                    reason=f"to {new}", created_at=at(minute)))  # fmt: skip
        session.add(ConsentChange(lead_id=lead_id, channel="email", opted_in=False,
                                  reason="unsubscribe", created_at=at(50)))  # fmt: skip
        handoff = Handoff(lead_id=lead_id, cycle=1, rep_id="alice", score=60.0, reason="hot",
                          status="accepted", created_at=at(22), answered_at=at(40),
                          answered_by="alice@example.com", answer_reason="good fit")  # fmt: skip
        session.add(handoff)
        session.flush()
        for key, kind, channel, minute in (("assigned:0", "assigned", None, 22),
                                           ("notify:email", "notified", "email", 23),
                                           ("answer", "answered", None, 40)):  # fmt: skip
            session.add(HandoffEvent(handoff_id=handoff.id, key=key, kind=kind, rep_id="alice",
                                     channel=channel, created_at=at(minute)))  # fmt: skip
        session.add(OutcomeEvent(key="o1", opportunity_crm_id="deal-1", kind="won",
                                 source="api", occurred_at=at(90), lead_id=lead_id,
                                 payload={"amount": "1200", "currency": "EUR"}))  # fmt: skip
    return lead_id


def story(database, definitions, lead_id, **options):
    with database.sessions() as session:
        return lead_story(session, definitions, lead_id, at(120), **options)


def titled(happenings) -> list[tuple[int, str]]:
    return [(round((h.at - T0).total_seconds() / 60), h.title) for h in happenings]


def test_the_timeline_tells_everything_newest_first(database, fixture_definitions, lead):
    told = story(database, fixture_definitions, lead)
    assert sorted(titled(told.timeline), key=lambda t: -t[0]) == titled(told.timeline)
    assert sorted(titled(told.timeline)) == sorted(EXPECTED)
    assert told.older is None
    details = {h.title: h.detail for h in told.timeline}
    assert details["sales answered: accepted"] == "by alice@example.com; good fit"
    assert details["form.submitted"] == "form demo-request; from api"
    assert details["opportunity won"] == "CRM deal-1; 1200 EUR"
    assert details["email sent: welcome"] == "about welcome"
    tones = {h.title: h.tone for h in told.timeline}
    assert tones["email failed: nudge"] == "bad" and tones["email opt-out"] == "warn"


def test_pages_of_the_timeline_miss_and_repeat_nothing(database, fixture_definitions, lead):
    """Pages of 4: minute 6 has three happenings and minute 21 two, and a page never ends
    inside a moment (the next page starts strictly before its cursor)."""
    pages, before = [], None
    while True:
        told = story(database, fixture_definitions, lead, before=before, limit=4)
        pages.append(titled(told.timeline))
        if told.older is None:
            break
        assert told.older == told.timeline[-1].at
        before = told.older
    seen = [line for page in pages for line in page]
    assert sorted(seen) == sorted(EXPECTED) and len(seen) == len(EXPECTED)
    for page, following in zip(pages, pages[1:], strict=False):
        assert page[-1][0] > following[0][0]  # a moment is on one page
    assert len(pages) > 4


def test_pages_of_one_kind_alone(database, fixture_definitions):
    """Five responses and nothing else, two a page: three pages."""
    with database.sessions.begin() as session:
        lead = Lead(email="quiet@acme.example")
        session.add(lead)
        session.flush()
        for minute in range(5):
            session.add(Response(event_id=f"q{minute}", lead_id=lead.id, type="page.view",
                                 occurred_at=at(minute)))  # fmt: skip
    pages, before = [], None
    while len(pages) < 5:
        told = story(database, fixture_definitions, lead.id, before=before, limit=2)
        pages.append([int((h.at - T0).total_seconds() // 60) for h in told.timeline])
        if told.older is None:
            break
        before = told.older
    assert pages == [[4, 3], [2, 1], [0]]


def test_profile_consent_score_and_series(database, fixture_definitions, lead):
    told = story(database, fixture_definitions, lead)
    assert told.lead.email == "ada@acme.example"
    consent = {c.channel: c for c in told.consent}
    assert not consent["email"].allowed
    assert consent["email"].why_not == "opted out of email (unsubscribe)"
    assert consent["email"].changed_at == at(50) and consent["email"].change == "unsubscribe"
    assert not consent["sms"].allowed and consent["sms"].why_not == "lead has no phone number"
    assert told.series == [(at(6), 30.0), (at(21), 60.0)]
    card = told.score["card"]
    assert {"total", "fit", "engagement", "grade", "reasons", "breakdown"} <= set(card)
    assert [e.sequence_id for e in told.enrollments] == ["month"]
    assert [h.rep_id for h in told.handoffs] == ["alice"]
    assert told.workflow_id == f"lead-{lead}"


def test_a_rep_reads_only_the_leads_handed_off_to_it(database, fixture_definitions, lead):
    assert story(database, fixture_definitions, lead, rep_id="alice").lead.id == lead
    with pytest.raises(NotHandedOffToRep):
        story(database, fixture_definitions, lead, rep_id="bob")
    with pytest.raises(LeadNotFound):
        story(database, fixture_definitions, "no-such-lead")


def test_the_temporal_ui_link(settings):
    custom = settings.model_copy(update={"temporal_address": "temporal.internal:7233",
                                         "temporal_ui_port": 8080,
                                         "temporal_namespace": "sales"})  # fmt: skip
    assert temporal_ui_url(custom, "lead-abc") == (
        "http://temporal.internal:8080/namespaces/sales/workflows/lead-abc")  # fmt: skip


async def test_the_workflow_is_unavailable_when_temporal_does_not_answer(
    database, fixture_definitions, lead, settings
):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nowhere = settings.model_copy(update={"temporal_address": f"127.0.0.1:{port}"})
    told = await with_workflow(story(database, fixture_definitions, lead), nowhere)
    assert told.workflow["reachable"] is False and told.workflow["error"]
    assert told.timeline  # the rest is still there
