"""A lead's reply forwarded to its owner (a sequence's `notify_owner: true`): the lead's
rep, else its company's owner, hears of it on each of their channels, with the lead's
summary; once per reply and channel, whatever is retried or redelivered.

The workflow tests run on the time-skipping server with real activities; the rep's email
goes through SendGrid's SDK to the imitation (testkit/providers.py) and their Slack message
to a local sink. The activity's tests call it as Temporal would (ActivityEnvironment).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from pydantic import SecretStr
from sqlalchemy import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from models.db import CompanyOwner, Enrollment, Lead, ReplyNotice
from models.definitions import SalesTeam
from models.workflow_io import ReplyForward
from sales.reply_notice import ReplyNotice as Notice
from sales.reply_notice import headline, render_sms, slack_payload
from services.definitions import load_definitions
from services.intake import EventIn, Intake, LeadIn
from services.lead_story import lead_story
from services.runtime import build_activities, open_database, sync_sales_reps
from testkit import FIXTURE_DEFINITIONS
from testkit.webhook_sink import WebhookSink
from tests.harness import eventually, running_harness

WORDS = "Thanks, this looks useful.\nCall me tomorrow at 10 about pricing?"
ALWAYS = {"days": "every day", "hours": "00:00-24:00"}


def team(sink: WebhookSink) -> SalesTeam:
    return SalesTeam.model_validate({
        "reps": [
            {"id": "alice", "name": "Alice Rep", "email": "alice@example.com",
             "webhook_url": sink.url_for("/slack/alice"), "working_hours": ALWAYS},
            {"id": "bob", "name": "Bob Rep", "email": "bob@example.com",
             "phone": "+14155550112", "notify": ["email", "sms"], "working_hours": ALWAYS},
            {"id": "carol", "name": "Carol Gone", "email": "carol@example.com",
             "active": False},
        ],
        "pools": {"team": ["alice", "bob"]},
        "fallback_pool": "team",
    })  # fmt: skip


@pytest.fixture
def sink():
    with WebhookSink() as server:
        yield server


@pytest.fixture
def told_definitions(tmp_path, sink):
    """The fixtures, with `month_told`: the month's steps, forwarding replies."""
    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    month = yaml.safe_load((root / "sequences" / "month.yaml").read_text())
    told = month | {"id": "month_told", "name": "Month, told", "notify_owner": True}
    (root / "sequences" / "month_told.yaml").write_text(yaml.safe_dump(told))
    return dataclasses.replace(load_definitions(root), sales=team(sink))


def provider_update(providers) -> dict:
    return {
        "sendgrid_api_key": SecretStr(providers.sendgrid_key), "sendgrid_host": providers.url,
        "twilio_account_sid": providers.twilio_sid,
        "twilio_auth_token": SecretStr(providers.twilio_token),
        "twilio_from_number": "+14155550000", "twilio_api_base": providers.url,
        "public_url": "https://nurture.example.com",
    }  # fmt: skip


def rep_emails(providers) -> list[dict]:
    sent = [r.json() for r in providers.requests if r.path == "/v3/mail/send"]
    return [e for e in sent if "reply_notice" in e.get("categories", [])]


def notices(database, lead_id: str) -> list[ReplyNotice]:
    with database.sessions() as session:
        return list(session.scalars(select(ReplyNotice).where(ReplyNotice.lead_id == lead_id)
                                    .order_by(ReplyNotice.channel)))  # fmt: skip


def own(database, domain: str, rep_id: str) -> None:
    with database.sessions.begin() as session:
        session.add(CompanyOwner(domain=domain, rep_id=rep_id))


# --- in the workflow ------------------------------------------------------------------


@pytest.fixture
async def harness(time_skipping_env, sqlite_settings, told_definitions, providers):
    settings = sqlite_settings.model_copy(update={"definitions_dir": told_definitions.root}
                                          | provider_update(providers))  # fmt: skip
    async with running_harness(time_skipping_env, settings, told_definitions) as h:
        h.providers = providers
        yield h


async def reply(harness, lead_id: str, event_id: str, kind: str = "email.reply", **data):
    occurred_at = await harness.env.get_current_time()
    data = data or {"subject": "Re: Welcome", "text": WORDS, "from": "x@example.com"}
    rows = harness.intake.store_events(
        [EventIn(lead_id=lead_id, type=kind, event_id=event_id, occurred_at=occurred_at, data=data)]
    ).stored
    await harness.intake.deliver(rows)  # fmt: skip


async def test_a_reply_goes_to_the_company_owner_with_the_lead_summary(
    harness, sink, told_definitions
):
    own(harness.database, "acme.example", "alice")
    lead_id = await harness.enroll("month_told", email="ada@acme.example", first_name="Ada",
                                   last_name="Lovelace", company="Acme")  # fmt: skip
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    await reply(harness, lead_id, "inbound:ada-1")
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    (chat,) = await asyncio.to_thread(sink.wait_for, 1, "/slack/alice", 30)
    (email,) = await eventually(lambda: rep_emails(harness.providers), what="the rep's email")

    assert email["personalizations"][0]["to"] == [{"email": "alice@example.com"}]
    assert email["reply_to"] == {"email": "ada@acme.example"}  # answering writes to Ada
    assert email["subject"] == "Ada Lovelace (Acme) replied: Re: Welcome"
    html, text = (c["value"] for c in sorted(email["content"], key=lambda c: c["type"]))
    for part in (text, html):
        assert "Call me tomorrow at 10 about pricing?" in part
        assert "Month, told" in part and "ended the sequence" in part
        assert f"https://nurture.example.com/console/leads/{lead_id}" in part
        assert "you own acme.example" in part
    assert "email.reply" in text  # the recent activity
    assert "lead" not in str(email.get("custom_args", {})).replace("audience", "")
    assert chat.json()["text"] == "Ada Lovelace (Acme) replied: Re: Welcome"
    assert "> Call me tomorrow at 10 about pricing?" in str(chat.json()["blocks"])
    recorded = [("email", "alice", "sent"), ("webhook", "alice", "sent")]
    await eventually(lambda: [(n.channel, n.rep_id, n.status)
                              for n in notices(harness.database, lead_id)] == recorded,
                     what="both channels recorded as sent")  # fmt: skip

    # The lead's page in the console says so.
    with harness.database.sessions() as session:
        story = lead_story(session, told_definitions, lead_id, datetime.now(UTC))
    titles = {h.title for h in story.timeline}
    assert {"reply forwarded to alice by email: sent",
            "reply forwarded to alice by webhook: sent"} <= titles  # fmt: skip

    # The same reply again (a provider's retry): scored once, forwarded once.
    await reply(harness, lead_id, "inbound:ada-1")
    await harness.env.sleep(timedelta(minutes=5))
    assert len(rep_emails(harness.providers)) == 1 and len(sink.requests("/slack/alice")) == 1
    (enrollment,) = harness.rows(Enrollment, lead_id)
    assert enrollment.exit_reason == "replied"

    # A second reply, the sequence over: still the owner's to hear, once.
    await harness.env.sleep(timedelta(days=1))
    await reply(harness, lead_id, "inbound:ada-2", subject="Re: Welcome", text="3pm works too")
    emails = await eventually(lambda: rep_emails(harness.providers)[1:], what="the second")
    assert len(emails) == 1 and "3pm works too" in str(emails[0]["content"])
    assert "had already ended" in str(emails[0]["content"])
    assert len(await asyncio.to_thread(sink.wait_for, 2, "/slack/alice", 30)) == 2


async def test_an_out_of_office_is_not_forwarded(harness, sink):
    own(harness.database, "away.example", "alice")
    lead_id = await harness.enroll("month_told", email="max@away.example")
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    await reply(harness, lead_id, "inbound:max-1", "email.auto_reply",
                subject="Out of office", text="Back on Monday.")  # fmt: skip
    await harness.until(lead_id, lambda s: s.responses_handled == 1)
    await harness.env.sleep(timedelta(minutes=5))
    assert rep_emails(harness.providers) == [] and notices(harness.database, lead_id) == []
    assert (await harness.state(lead_id)).enrollment_status == "active"


async def test_a_sequence_without_notify_owner_tells_nobody(harness, sink):
    own(harness.database, "quiet.example", "alice")
    lead_id = await harness.enroll(email="sam@quiet.example")  # the segment's month
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    await reply(harness, lead_id, "inbound:sam-1")
    await harness.until(lead_id, lambda s: s.enrollment_status == "exited")
    await harness.env.sleep(timedelta(minutes=5))
    assert rep_emails(harness.providers) == [] and notices(harness.database, lead_id) == []


async def test_an_sms_reply_of_a_lead_nobody_owns_is_recorded_as_told_to_nobody(harness):
    lead_id = await harness.enroll("month_told", email="solo@gmail.com", phone="+14155550150")
    await harness.until(lead_id, lambda s: s.step_id == "pause")
    await reply(harness, lead_id, "twilio:SM1", "sms.reply", body="call me")
    (row,) = await eventually(lambda: notices(harness.database, lead_id), what="the record")
    assert (row.channel, row.rep_id, row.status) == ("none", None, "skipped")
    assert row.detail == "the lead has no rep and its company no owner"
    assert rep_emails(harness.providers) == []


# --- the activity -----------------------------------------------------------------------


@pytest.fixture
def forwarding(provider_settings, told_definitions, providers):
    """The activities on the test's database (SQLite and PostgreSQL) and the imitation."""
    settings = provider_settings.model_copy(
        update={"definitions_dir": told_definitions.root, "public_url": "https://n.example.com"}
    )
    database = open_database(settings)
    sync_sales_reps(database, told_definitions)
    activities = build_activities(settings, database, told_definitions)
    yield activities.replies, database
    database.engine.dispose()


def stored_reply(database, email: str, event_id: str, owner: str | None = None, **data) -> str:
    intake = Intake(load_definitions(FIXTURE_DEFINITIONS), database.sessions, None, "q")
    lead, _ = intake.upsert_lead(LeadIn(email=email, first_name="Ada"))
    if owner:
        with database.sessions.begin() as session:
            session.get(Lead, lead.id).owner_rep_id = owner
    data = data or {"subject": "Re: hi", "text": WORDS}
    intake.store_events([EventIn(lead_id=lead.id, type="email.reply", event_id=event_id,
                                 data=data)])  # fmt: skip
    return lead.id


def forward(activities, lead_id: str, event_id: str, attempt: int = 1) -> str:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=attempt)
    request = ReplyForward(lead_id=lead_id, event_id=event_id, sequence_id="month_told",
                           sequence_name="Month, told", effect="exit")  # fmt: skip
    return env.run(activities.forward_reply, request)


def test_the_leads_own_rep_comes_before_the_companys_owner(forwarding, providers):
    activities, database = forwarding
    own(database, "both.example", "alice")
    lead_id = stored_reply(database, "kim@both.example", "inbound:kim", owner="bob")
    assert forward(activities, lead_id, "inbound:kim") == "bob: email sent, sms sent"
    (email,) = rep_emails(providers)
    assert email["personalizations"][0]["to"] == [{"email": "bob@example.com"}]
    (sms,) = [r.form() for r in providers.requests if r.path.endswith("/Messages.json")]
    assert sms["To"] == "+14155550112" and '"Thanks, this looks useful. Call me' in sms["Body"]
    assert "https://n.example.com/console/leads/" in sms["Body"]


def test_an_inactive_rep_gives_way_to_the_companys_owner(forwarding, providers, sink):
    activities, database = forwarding
    own(database, "gone.example", "alice")
    lead_id = stored_reply(database, "lee@gone.example", "inbound:lee", owner="carol")
    assert forward(activities, lead_id, "inbound:lee") == "alice: email sent, webhook sent"
    own(database, "nobody.example", "carol")
    lead_id = stored_reply(database, "joe@nobody.example", "inbound:joe")
    assert forward(activities, lead_id, "inbound:joe") == "nobody told: its owner carol is inactive"


def test_a_retry_sends_only_the_channel_that_failed(forwarding, providers, sink):
    activities, database = forwarding
    own(database, "retry.example", "alice")
    lead_id = stored_reply(database, "ann@retry.example", "inbound:ann")
    providers.fail_next(503, "busy")
    with pytest.raises(ApplicationError, match="could not reach alice by email"):
        forward(activities, lead_id, "inbound:ann")
    assert len(sink.requests("/slack/alice")) == 1 and providers.issued == []  # refused
    assert forward(activities, lead_id, "inbound:ann", attempt=2) == (
        "alice: email sent, webhook sent"
    )
    assert forward(activities, lead_id, "inbound:ann", attempt=3) == (
        "alice: email sent, webhook sent"
    )  # a repeat of a finished activity: nothing sent
    assert len(providers.issued) == 1 and len(sink.requests("/slack/alice")) == 1
    email_row, hook_row = notices(database, lead_id)
    assert (email_row.status, email_row.attempts) == ("sent", 2)
    assert (hook_row.status, hook_row.attempts) == ("sent", 1)


def test_the_last_attempt_records_the_failure(forwarding, providers, sink):
    activities, database = forwarding
    own(database, "down.example", "alice")
    lead_id = stored_reply(database, "eve@down.example", "inbound:eve")
    providers.fail_next(503, "still busy")
    assert forward(activities, lead_id, "inbound:eve", attempt=8) == (
        "alice: email failed, webhook sent"
    )
    (email_row, _) = notices(database, lead_id)
    assert email_row.status == "failed" and "still busy" in email_row.detail


# --- rendering ------------------------------------------------------------------------


def notice(**changes) -> Notice:
    data = dict(
        rep={"id": "alice", "name": "Alice Rep", "email": "a@example.com", "timezone": "UTC"},
        why="you own this lead", lead={"id": "L1", "first_name": "Ada", "email": "ada@x.io"},
        score={"total": 42.0, "grade": "B", "stage": "mql"}, reasons=["demo +20"],
        timeline=[], sequence="Trial", effect="pause", channel="sms", subject=None,
        text="<!channel> call me " + "please " * 200, replied_at=datetime(2026, 12, 4, tzinfo=UTC),
    )  # fmt: skip
    return Notice(**(data | changes))


def test_an_sms_notice_fits_two_segments_and_keeps_the_link():
    body = render_sms(notice(lead_url="https://n.example.com/console/leads/L1"))
    assert body.endswith(" https://n.example.com/console/leads/L1")
    assert body.startswith('Ada, score 42 B, replied by sms: "<!channel> call me please')
    from sales.notify import sms_segments

    assert sms_segments(body) <= 2


def test_slack_escapes_the_reply_and_names_what_it_did():
    payload = slack_payload(notice())
    assert payload["text"] == headline(notice()) == "Ada replied by SMS"
    blocks = str(payload["blocks"])
    assert "&lt;!channel&gt; call me" in blocks and "<!channel>" not in blocks
    assert "sends are paused" in blocks and "you own this lead" in blocks


def test_an_unknown_effect_is_refused():
    with pytest.raises(ValueError, match="unknown effect 'stop'"):
        notice(effect="stop")


# --- validate -------------------------------------------------------------------------


def test_validate_warns_when_no_rep_could_be_told(tmp_path):
    from services.definitions import check_definitions

    root = tmp_path / "definitions"
    shutil.copytree(FIXTURE_DEFINITIONS, root)
    month = yaml.safe_load((root / "sequences" / "month.yaml").read_text())
    (root / "sequences" / "month.yaml").write_text(yaml.safe_dump(month | {"notify_owner": True}))
    assert not [p for p in check_definitions(root)[1] if "notify_owner" in str(p)]
    sales = yaml.safe_load((root / "sales.yaml").read_text())
    for rep in sales["reps"]:
        rep["active"] = False
    (root / "sales.yaml").write_text(yaml.safe_dump(sales))
    (warning,) = [p for p in check_definitions(root)[1] if "told to nobody" in p.message]
    assert warning.severity == "warning" and warning.file.endswith("month.yaml")
    assert warning.line is not None and warning.field == "notify_owner"
