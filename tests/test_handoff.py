"""The sales handoff in the lead workflow: notifications on every channel, answers,
the SLA (remind, then reassign), recycling after a rejection.

On the time-skipping server with real activities, SQLite, the outbox for the reps'
email and SMS, and a local HTTP sink for the reps' webhooks and the CRM.
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError

from api.app import create_app
from models.db import AuditEntry, Handoff, HandoffEvent, Lead, StageChange
from models.definitions import SalesTeam
from models.workflow_io import HandoffAnswer
from sales.outbound_webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from services.answering import AnswerRefused, submit_answer
from testkit.webhook_sink import WebhookSink
from tests.harness import eventually, running_harness
from workflows.lead import LeadWorkflow

SECRET = "crm-test-secret"
ROTATED = "crm-next-secret"


def team(sink: WebhookSink, **changes) -> SalesTeam:
    always = {"days": "every day", "hours": "00:00-24:00"}
    data = {
        "reps": [
            {"id": "alice", "name": "Alice Rep", "email": "alice@example.com",
             "phone": "+14155550111", "webhook_url": sink.url_for("/slack/alice"),
             "working_hours": always},
            {"id": "bob", "name": "Bob Rep", "email": "bob@example.com",
             "webhook_url": sink.url_for("/slack/bob"), "working_hours": always},
        ],
        "pools": {"team": ["alice", "bob"]},
        "fallback_pool": "team",
        "sla": {"answer_within": "15m", "reminders": 1},
        "crm_webhook": {"url": sink.url_for("/crm")},
        "recycle": {"sequence": "quick", "cool_down": "2d"},
    } | changes  # fmt: skip
    return SalesTeam.model_validate(data)


@pytest.fixture
def sink():
    with WebhookSink() as server:
        yield server


@pytest.fixture
def definitions(fixture_definitions, sink, monkeypatch):
    # Two secrets while rotating: each request carries a signature for both.
    monkeypatch.setenv("NURTURE_CRM_WEBHOOK_SECRET", f"{SECRET}, {ROTATED}")
    return dataclasses.replace(fixture_definitions, sales=team(sink))


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, definitions):
    async with running_harness(time_skipping_env, sqlite_settings, definitions) as h:
        yield h


async def qualify(harness, email: str) -> tuple[str, Handoff]:
    """Enroll a lead and make it sales-qualified (webinar.attended alone crosses SQL)."""
    lead_id = await harness.enroll(email=email, first_name="Ada", company="Acme")
    # The welcome goes out first: a response scored in the workflow task that starts the
    # sequence would stop the nurture before its first send is dispatched.
    await eventually(lambda: harness.sent_steps(lead_id), what="the welcome sent")
    await harness.respond(lead_id, "webinar.attended")
    await harness.until(lead_id, lambda s: s.handoff is not None)
    (handoff,) = harness.rows(Handoff, lead_id)
    return lead_id, handoff


async def arrived(sink: WebhookSink, count: int, path: str):
    """The sink's first `count` requests on `path` (waiting off the event loop, which
    the worker needs meanwhile)."""
    return await asyncio.to_thread(sink.wait_for, count, path, 30)


def events(harness, handoff_id: str) -> list[HandoffEvent]:
    with harness.database.sessions() as session:
        return list(
            session.query(HandoffEvent)
            .filter(HandoffEvent.handoff_id == handoff_id)
            .order_by(HandoffEvent.id)
        )


async def answer(harness, handoff_id: str, decision: str, **fields):
    request = HandoffAnswer(handoff_id=handoff_id, answer=decision, **fields)
    return await submit_answer(harness.env.client, harness.database.sessions, request)


async def test_a_handoff_notifies_every_channel_with_the_reasons(harness, sink):
    lead_id, handoff = await qualify(harness, "ada@acme.example")
    assert handoff.status == "pending" and handoff.rep_id in ("alice", "bob")
    assert handoff.card["total"] == 50 and handoff.due_at is not None
    slack = f"/slack/{handoff.rep_id}"
    (crm,) = await arrived(sink, 1, "/crm")
    (chat,) = await arrived(sink, 1, slack)

    # The CRM webhook: signed as documented (HMAC-SHA256 over "timestamp." + body).
    assert verify(SECRET, crm.header(TIMESTAMP_HEADER), crm.body, crm.header(SIGNATURE_HEADER))
    assert verify(ROTATED, crm.header(TIMESTAMP_HEADER), crm.body, crm.header(SIGNATURE_HEADER))
    assert not verify("another", crm.header(TIMESTAMP_HEADER), crm.body,
                      crm.header(SIGNATURE_HEADER))  # fmt: skip
    payload = crm.json()
    assert payload["handoff_id"] == handoff.id and payload["lead"]["email"] == "ada@acme.example"
    assert payload["score"]["total"] == 50 and payload["reasons"]
    assert payload["timeline"][0]["type"] == "webinar.attended"
    assert "/handoffs/" in payload["links"]["accept"] and "token=" in payload["links"]["accept"]
    assert "Ada" in chat.json()["text"]

    # Email (and SMS for alice, who has a phone) through the outbox: once each.
    await eventually(lambda: [e for e in events(harness, handoff.id) if e.channel == "email"
                              and e.status == "sent"], what="email sent")  # fmt: skip
    emails = list(harness.settings.outbox_dir.glob(f"handoff-{handoff.id}-*.eml"))
    assert len(emails) == 1
    text = emails[0].read_text()
    assert "Ada" in text and "Acme" in text and "webinar" in text.lower()
    expected = {("email", "sent"), ("webhook", "sent"), ("crm", "sent")}
    if handoff.rep_id == "alice":
        expected.add(("sms", "sent"))

    def notified():
        return {(e.channel, e.status) for e in events(harness, handoff.id) if e.kind == "notified"}

    await eventually(lambda: notified() == expected, what=f"notified on {expected}")
    stages = [(c.from_stage, c.to_stage) for c in harness.rows(StageChange, lead_id)]
    assert stages == [("lead", "mql"), ("mql", "sql")]


async def test_accept_ends_nurture_and_a_second_answer_is_refused(harness):
    lead_id, handoff = await qualify(harness, "accept@acme.example")
    result = await answer(harness, handoff.id, "accept", by="alice")
    assert result.stage == "accepted"
    state = await harness.until(lead_id, lambda s: s.handoff.status == "accepted")
    assert state.stage == "accepted"
    with pytest.raises(AnswerRefused, match="already accepted by alice") as refused:
        await answer(harness, handoff.id, "reject", reason="not_ready")
    assert refused.value.status == 409
    with harness.database.sessions() as session:
        assert session.get(Lead, lead_id).stage == "accepted"
        stored = session.get(Handoff, handoff.id)
        assert stored.status == "accepted" and stored.answered_by == "alice"
    # Nothing more is sent to the lead, and the SLA (15 min) does not chase an answered
    # handoff.
    await harness.env.sleep(timedelta(hours=2))
    assert harness.sent_steps(lead_id) == ["welcome"]
    assert [e.kind for e in events(harness, handoff.id) if e.kind != "notified"] == [
        "assigned", "answered"
    ]  # fmt: skip


async def test_the_workflow_refuses_a_second_answer_itself(harness):
    """Past the database check (two answers racing): the update's validator decides."""
    lead_id, handoff = await qualify(harness, "race@acme.example")
    handle = harness.handle(lead_id)

    await handle.execute_update(
        LeadWorkflow.answer, HandoffAnswer(handoff_id=handoff.id, answer="disqualify")
    )
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            LeadWorkflow.answer, HandoffAnswer(handoff_id=handoff.id, answer="accept")
        )
    assert "already answered (disqualified)" in refused.value.cause.message
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(
            LeadWorkflow.answer, HandoffAnswer(handoff_id="nope", answer="accept")
        )
    assert "not this lead's open handoff" in refused.value.cause.message
    state = await harness.state(lead_id)
    assert state.stage == "disqualified"


async def test_reject_recycles_after_the_cool_down_and_keeps_the_episode(harness):
    lead_id, handoff = await qualify(harness, "reject@acme.example")
    with pytest.raises(AnswerRefused, match="needs a reason"):
        await answer(harness, handoff.id, "reject")
    result = await answer(harness, handoff.id, "reject", reason="not_ready", note="Q3")
    assert result.cool_down_until is not None and "not ready" in result.message
    # Still engaged: back to MQL at once, but SQL is held during the cool-down.
    state = await harness.until(lead_id, lambda s: s.stage == "mql")
    assert state.cool_down_until is not None
    await harness.respond(lead_id, "webinar.attended")
    state = await harness.until(lead_id, lambda s: s.responses_handled == 2)
    assert state.stage == "mql" and len(harness.rows(Handoff, lead_id)) == 1

    # After the cool-down: the recycle sequence, then a new qualification cycle.
    await harness.env.sleep(timedelta(days=2, hours=1))
    state = await harness.until(lead_id, lambda s: s.sequence_id == "quick")
    assert state.cool_down_until is None
    await harness.respond(lead_id, "email.reply")
    await harness.respond(lead_id, "webinar.attended")
    await harness.until(lead_id, lambda s: s.handoff and s.handoff.handoff_id != handoff.id)
    first, second = sorted(harness.rows(Handoff, lead_id), key=lambda h: h.cycle)
    assert (first.cycle, first.status, first.answer_reason) == (1, "rejected", "not_ready")
    assert (second.cycle, second.status) == (2, "pending")
    stages = [(c.from_stage, c.to_stage) for c in harness.rows(StageChange, lead_id)]
    assert stages[:4] == [("lead", "mql"), ("mql", "sql"), ("sql", "lead"), ("lead", "mql")]
    assert stages[-1] == ("mql", "sql")
    rejected = [c for c in harness.rows(StageChange, lead_id) if c.from_stage == "sql"]
    assert "rejected by" in rejected[0].reason and "not ready" in rejected[0].reason
    # The new rep's notifications: sent like the first time.
    await eventually(lambda: {e.status for e in events(harness, second.id)
                              if e.kind == "notified"} == {"sent"}, what="notified")  # fmt: skip


async def test_sla_reminds_then_reassigns_and_tells_the_first_rep(harness, sink):
    lead_id, handoff = await qualify(harness, "slow@acme.example")
    first = handoff.rep_id
    other = "bob" if first == "alice" else "alice"
    await arrived(sink, 1, f"/slack/{first}")

    await harness.env.sleep(timedelta(minutes=16))  # SLA lapsed once: a reminder
    await eventually(lambda: any(e.kind == "reminded" for e in events(harness, handoff.id)),
                     what="reminder")  # fmt: skip
    reminders = await arrived(sink, 2, f"/slack/{first}")
    assert "reminder" in reminders[1].json()["text"].lower()

    await harness.env.sleep(timedelta(minutes=16))  # lapsed again: reassigned
    state = await harness.until(lead_id, lambda s: s.handoff.rep_id == other)
    assert state.handoff.reassignments == 1
    (moved,) = await arrived(sink, 1, f"/slack/{other}")
    told = (await arrived(sink, 3, f"/slack/{first}"))[2]
    assert "reassigned" in told.json()["text"].lower() or "reassigned" in str(told.json())
    with harness.database.sessions() as session:
        stored = session.get(Handoff, handoff.id)
        assert stored.rep_id == other and stored.reassignments == 1
        assert session.get(Lead, lead_id).owner_rep_id == other
    # The first rep's link no longer answers; the new rep's does.
    with pytest.raises(AnswerRefused, match="reassigned"):
        await submit_answer(
            harness.env.client,
            harness.database.sessions,
            HandoffAnswer(handoff_id=handoff.id, answer="accept"),
            first,
        )
    result = await submit_answer(
        harness.env.client,
        harness.database.sessions,
        HandoffAnswer(handoff_id=handoff.id, answer="accept"),
        other,
    )
    assert result.stage == "accepted" and moved.json()


async def test_a_failing_rep_webhook_is_retried_without_holding_up_the_others(harness, sink):
    sink.fail_next(500, path="/slack/alice", times=2)
    sink.fail_next(500, path="/slack/bob", times=2)
    lead_id, handoff = await qualify(harness, "flaky@acme.example")
    slack = f"/slack/{handoff.rep_id}"
    # The CRM and the email went out while the rep's webhook kept failing.
    await arrived(sink, 1, "/crm")
    await eventually(lambda: [e for e in events(harness, handoff.id)
                              if e.channel == "webhook" and e.status == "sent"],
                     what="webhook delivered after retries")  # fmt: skip
    attempts = sink.requests(slack)
    assert len(attempts) == 3  # two 500s, then delivered
    assert len({r.header("X-Nurture-Delivery") for r in attempts}) == 1  # one delivery ID
    (webhook,) = [e for e in events(harness, handoff.id) if e.channel == "webhook"]
    assert webhook.attempts == 3
    email = [e for e in events(harness, handoff.id) if e.channel == "email"]
    assert email[0].status == "sent" and email[0].attempts == 1


def answers_audited(harness, handoff_id: str) -> list[tuple[str, str]]:
    with harness.database.sessions() as session:
        rows = session.scalars(
            select(AuditEntry).where(
                AuditEntry.target == handoff_id, AuditEntry.action == "handoff.answer"
            )
        )
        return [(row.actor, row.detail["answer"]) for row in rows]


async def test_answers_through_the_api_and_the_signed_link(harness):
    lead_id, handoff = await qualify(harness, "api@acme.example")
    app = create_app(harness.intake, harness.settings, relay=False)
    links = [e for e in events(harness, handoff.id)]
    assert links  # assigned at least
    from services.runtime import build_links

    link = build_links(harness.settings).handoff_url(handoff.id, handoff.rep_id, "reject")
    path_and_query = link.split("://", 1)[1].split("/", 1)[1]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://nurture") as client:
        page = await client.get(f"/{path_and_query}")
        assert page.status_code == 200 and "value='reject' required checked" in page.text
        forged = await client.get(f"/handoffs/{handoff.id}?token=forged")
        assert forged.status_code == 403
        no_token = await client.post(f"/handoffs/{handoff.id}/answer", json={"answer": "accept"})
        assert no_token.status_code == 401
        token = link.split("token=")[1].split("&")[0]
        done = await client.post(f"/handoffs/{handoff.id}/answer",
                                 data={"token": token, "answer": "accept"})  # fmt: skip
        assert done.status_code == 200 and "accepted by" in done.text
        again = await client.post(
            f"/handoffs/{handoff.id}/answer", json={"answer": "disqualify"},
            headers={"Authorization": "Bearer test-token"},
        )  # fmt: skip
        assert again.status_code == 409 and "already accepted" in again.json()["detail"]
    state = await harness.state(lead_id)
    assert state.stage == "accepted"
    # Who answered is audited; a refused answer is not.
    assert answers_audited(harness, handoff.id) == [(f"rep:{handoff.rep_id} (signed link)",
                                                     "accept")]  # fmt: skip


async def test_a_companys_next_lead_goes_to_its_owner(harness):
    _, first = await qualify(harness, "one@bigco.example")
    _, second = await qualify(harness, "two@bigco.example")
    assert second.rep_id == first.rep_id and "owner" in second.routing
    # Free mail is not a company: round-robin as usual (the owner took the last turn).
    _, third = await qualify(harness, "three@gmail.com")
    assert third.rep_id != first.rep_id and "owner" not in third.routing


async def test_handoff_commands_list_show_and_answer(harness, time_skipping_env, monkeypatch):
    import json

    from typer.testing import CliRunner

    from cli.app import app

    lead_id, handoff = await qualify(harness, "cli@acme.example")
    settings = harness.settings
    for name, value in {
        "DATABASE_URL": settings.effective_database_url,
        "NURTURE_DEFINITIONS": str(settings.definitions_dir),
        "NURTURE_STATE_DIR": str(settings.state_dir),
        "TEMPORAL_ADDRESS": time_skipping_env.client.service_client.config.target_host,
    }.items():
        monkeypatch.setenv(name, value)

    def run(*args):
        return asyncio.to_thread(CliRunner().invoke, app, ["handoff", *args])

    listed = await run("list", "--status", "pending", "--json")
    assert listed.exit_code == 0, listed.output
    (item,) = json.loads(listed.stdout)
    assert (item["id"], item["lead"], item["status"]) == (handoff.id, "cli@acme.example", "pending")
    shown = await run("show", handoff.id)
    assert shown.exit_code == 0 and "assigned" in shown.stdout and handoff.rep_id in shown.stdout

    no_reason = await run("answer", handoff.id, "reject")
    assert no_reason.exit_code == 2 and "needs --reason" in no_reason.stderr
    done = await run("answer", handoff.id, "reject", "--reason", "no_budget", "--by", "alice")
    assert done.exit_code == 0, (done.output, done.exception)
    assert "rejected by alice: no budget" in done.stdout
    again = await run("answer", handoff.id, "accept")
    assert again.exit_code == 1 and "already rejected by alice" in again.stderr
    state = await harness.until(lead_id, lambda s: s.handoff.status == "rejected")
    assert state.cool_down_until is not None
    ((actor, answer),) = answers_audited(harness, handoff.id)
    assert actor.startswith("cli:") and answer == "reject"
