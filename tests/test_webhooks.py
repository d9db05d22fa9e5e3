"""Provider webhooks and unsubscribe links, signed with real keys; forgeries store nothing.

The app runs in-process (TestClient) against a real database; Temporal is the
dev server's client with no worker on the queue, so a signal is accepted
and waits: what is under test is what the API stores and answers.

The second half: provider events find the lead and the message they are about, and
nothing else. Sends go through the official SDKs to the provider imitation
(testkit/providers.py) and their events come back signed: a rep's email events never
touch the lead, Twilio's status callbacks move a message forward only and may arrive
before the send has written the SID, a reply sent back at once is the send's, a From
that SPF and DKIM do not vouch for is not a lead's reply, and what waits for a lead too
long expires (docs/webhooks.md).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from api.app import create_app
from channels.links import Links
from infra.settings import Settings
from models.db import (
    ConsentChange,
    EarlyStatus,
    Enrollment,
    Lead,
    Message,
    Response,
    WebhookRefusal,
    new_id,
    utcnow,
)
from models.definitions import ConsentPolicy
from models.workflow_io import AssignRequest, NotifyRequest, SendRequest
from scoring.records import lead_responses
from services.intake import Intake, LeadIn
from services.reports import response_links
from services.runtime import build_activities, build_links

TWILIO_TOKEN = "twilio-test-token"
INBOUND_SECRET = "inbound-secret"


@pytest.fixture(scope="module")
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def app_settings(settings, sendgrid_key):
    public = sendgrid_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return settings.model_copy(update={
        "sendgrid_webhook_public_key": base64.b64encode(public).decode(),
        "twilio_auth_token": SecretStr(TWILIO_TOKEN),
        "inbound_parse_secret": SecretStr(INBOUND_SECRET),
        "inbound_domain": "in.example.com",
        "public_url": "https://nurture.example.com",
        "max_body_bytes": 50_000,
    })  # fmt: skip


@pytest.fixture
def api(app_settings, database, fixture_definitions, dev_server_env):
    intake = Intake(fixture_definitions, database.sessions, dev_server_env.client,
                    f"no-worker-{uuid.uuid4().hex[:6]}")  # fmt: skip
    lead, _ = intake.upsert_lead(LeadIn(email="ada@example.com", phone="+14155550123"))
    with TestClient(create_app(intake, app_settings, relay=False)) as client:
        client.lead_id = lead.id
        client.intake = intake
        yield client


def responses(database) -> list[Response]:
    with database.sessions() as session:
        return list(session.scalars(select(Response).order_by(Response.received_at)))


def signed(key, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    timestamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        "Content-Type": "application/json",
    }


def sendgrid_batch(lead_id: str, *events: str) -> bytes:
    return json.dumps([
        {"email": "ada@example.com", "timestamp": 1795000000 + i, "event": kind,
         "sg_event_id": f"sg-{kind}-{i}", "sg_message_id": "abc.filter", "lead_id": lead_id,
         "message_id": "m" * 32, "step_id": "welcome", "url": "https://example.com/pricing"}
        for i, kind in enumerate(events)
    ]).encode()  # fmt: skip


# --- SendGrid Event Webhook ------------------------------------------------------------------


def test_signed_sendgrid_events_are_stored_once(api, database, sendgrid_key):
    body = sendgrid_batch(api.lead_id, "delivered", "open", "click", "group_resubscribe")
    answer = api.post("/webhooks/sendgrid/events", content=body, headers=signed(sendgrid_key, body))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 3, "duplicates": 0, "pending": 0, "ignored": 1,
                             "unverified": 0}  # fmt: skip
    again = api.post("/webhooks/sendgrid/events", content=body, headers=signed(sendgrid_key, body))
    assert again.json()["duplicates"] == 3  # SendGrid retries: counted, not stored again
    rows = responses(database)
    assert [r.type for r in rows] == ["email.delivered", "email.open", "email.click"]
    assert all(r.lead_id == api.lead_id and r.source == "sendgrid" for r in rows)
    assert rows[2].event_id == "sendgrid:sg-click-2" and rows[2].data["step"] == "welcome"
    assert rows[2].data["url"] == "https://example.com/pricing"
    assert [r.duplicates for r in rows] == [1, 1, 1]


@pytest.mark.parametrize(
    "forgery",
    ["tampered body", "no signature", "stale timestamp", "other key", "garbage signature"],
)
def test_forged_sendgrid_events_are_refused_and_nothing_is_stored(
    forgery, api, database, sendgrid_key
):
    body = sendgrid_batch(api.lead_id, "click")
    headers = signed(sendgrid_key, body)
    if forgery == "tampered body":
        body = body.replace(b"pricing", b"careers")
    elif forgery == "no signature":
        del headers["X-Twilio-Email-Event-Webhook-Signature"]
    elif forgery == "stale timestamp":
        headers = signed(sendgrid_key, body, int(time.time()) - 3600)
    elif forgery == "other key":
        headers = signed(ec.generate_private_key(ec.SECP256R1()), body)
    else:
        headers["X-Twilio-Email-Event-Webhook-Signature"] = "not base64!"
    answer = api.post("/webhooks/sendgrid/events", content=body, headers=headers)
    assert answer.status_code == 403 and answer.json()["detail"]
    assert responses(database) == []


def test_unsigned_webhooks_are_refused_until_a_key_is_set(settings, database, fixture_definitions):
    intake = Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")
    client = TestClient(create_app(intake, settings, relay=False))
    answer = client.post("/webhooks/sendgrid/events", content=b"[]")
    assert answer.status_code == 403 and "SENDGRID_WEBHOOK_PUBLIC_KEY" in answer.json()["detail"]
    assert client.post("/webhooks/twilio/sms", data={"Body": "hi"}).status_code == 403
    assert client.post("/webhooks/twilio/sms", data={"Body": "hi"}).status_code == 403
    # Nothing of a refused request is stored, but that it came is counted, by kind, for
    # the console's Operations page (services/operations.py).
    with database.sessions() as session:
        counted = {(r.source, r.reason, r.status): r.count
                   for r in session.scalars(select(WebhookRefusal))}  # fmt: skip
    assert counted == {
        ("sendgrid/events", "SENDGRID_WEBHOOK_PUBLIC_KEY is not set: events refused", 403): 1,
        ("twilio/sms", "TWILIO_AUTH_TOKEN is not set: Twilio webhooks refused", 403): 2,
    }


def test_bounce_and_unknown_address_events(api, database, sendgrid_key):
    body = json.dumps([
        {"email": "ada@example.com", "event": "bounce", "type": "bounce", "lead_id": api.lead_id,
         "sg_event_id": "b1", "reason": "550 5.1.1 unknown user", "timestamp": 1795000000},
        {"email": "stranger@example.com", "event": "open", "sg_event_id": "o1",
         "timestamp": 1795000001},
    ]).encode()  # fmt: skip
    answer = api.post("/webhooks/sendgrid/events", content=body, headers=signed(sendgrid_key, body))
    assert answer.json() == {"accepted": 2, "duplicates": 0, "pending": 1, "ignored": 0,
                             "unverified": 0}  # fmt: skip
    with database.sessions() as session:
        ada = session.get(Lead, api.lead_id)
        assert not ada.email_consent and ada.email_opt_out_reason.startswith("hard_bounce")
    stranger = next(r for r in responses(database) if r.lead_id is None)
    assert stranger.lead_email == "stranger@example.com"
    later, _ = api.intake.upsert_lead(LeadIn(email="Stranger@example.com"))
    with database.sessions() as session:
        assert session.get(Response, stranger.id).lead_id == later.id  # matched on arrival


def test_malformed_and_oversized_bodies(api, database, sendgrid_key):
    bad = b"[{not json"
    answer = api.post("/webhooks/sendgrid/events", content=bad, headers=signed(sendgrid_key, bad))
    assert answer.status_code == 400 and answer.json() == {"detail": "body is not JSON"}
    huge = b"[" + b'{"event": "open"},' * 5000 + b"{}]"
    answer = api.post("/webhooks/sendgrid/events", content=huge, headers=signed(sendgrid_key, huge))
    assert answer.status_code == 413 and "50000 bytes" in answer.json()["detail"]
    auth = {"Authorization": "Bearer test-token"}
    events = api.post(
        "/events", content=b'{"type": ', headers=auth | {"Content-Type": "application/json"}
    )
    assert events.status_code == 422 and events.json()["problems"]
    wrong = api.post("/events", json={"type": "page.view", "lead_id": 5}, headers=auth)
    assert wrong.status_code == 422
    assert wrong.json()["problems"] == [
        {"field": "lead_id", "message": "Input should be a valid string"}
    ]
    in_batch = api.post("/events", json=[{"type": "page.teleport", "email": "a@b.co"}],
                        headers=auth)  # fmt: skip
    assert [p["field"] for p in in_batch.json()["problems"]] == ["0.type"]
    assert responses(database) == []


# --- SendGrid Inbound Parse --------------------------------------------------------------------


def test_inbound_reply_matched_by_reply_token_or_sender(api, database, app_settings):
    with database.sessions.begin() as session:
        session.add(Message(id="f" * 32, send_key="k", lead_id=api.lead_id, channel="email",
                            template="hello", recipient="ada@example.com", body="",
                            status="sent"))  # fmt: skip
    reply_to = build_links(app_settings).reply_to("f" * 32)
    fields = {"from": "Ada L <ada.personal@example.net>", "to": reply_to, "subject": "Re: hi",
              "text": "Sounds good, call me",
              "headers": "Message-ID: <r1@example.net>\n"}  # fmt: skip
    auth = ("sendgrid", INBOUND_SECRET)
    first = api.post("/webhooks/sendgrid/inbound", data=fields)  # no credentials: the challenge
    assert first.status_code == 401 and first.headers["WWW-Authenticate"].startswith("Basic")
    assert api.post("/webhooks/sendgrid/inbound", data=fields, auth=("x", "no")).status_code == 403
    answer = api.post("/webhooks/sendgrid/inbound", data=fields, auth=auth)
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    assert api.post("/webhooks/sendgrid/inbound", data=fields, auth=auth).json()["duplicates"] == 1
    by_sender = {"from": "ada@example.com", "to": "hello@example.com", "subject": "Question",
                 "text": "Pricing?", "dkim": "{@example.com : pass}",
                 "SPF": "softfail"}  # fmt: skip
    assert api.post("/webhooks/sendgrid/inbound", data=by_sender, auth=auth).status_code == 200
    forged = fields | {"to": "reply+forged.token@in.example.com", "headers": "Message-ID: <r2>\n"}
    answer = api.post("/webhooks/sendgrid/inbound", data=forged, auth=auth)
    # A forged token is no match, and its sender is vouched for by neither SPF nor DKIM.
    assert answer.json()["unverified"] == 1
    rows = responses(database)
    assert [(r.type, r.lead_id) for r in rows] == [
        ("email.reply", api.lead_id), ("email.reply", api.lead_id),
        ("email.reply_unverified", None),
    ]  # fmt: skip
    assert rows[0].message_id == "f" * 32 and rows[0].data["text"] == "Sounds good, call me"


@pytest.mark.parametrize(
    ("headers", "subject", "why"),
    [
        ("Auto-Submitted: auto-replied\n", "Re: hi", "Auto-Submitted: auto-replied"),
        ("X-Autoreply: yes\n", "Re: hi", "X-Autoreply: yes"),
        ("X-Autorespond: 1\n", "Re: hi", "X-Autorespond: 1"),
        ("Precedence: auto_reply\n", "Re: hi", "Precedence: auto_reply"),
        ("", "Automatic reply: hi", "subject: Automatic reply: hi"),
        ("", "Abwesenheitsnotiz: hi", "subject: Abwesenheitsnotiz: hi"),
        ("", "AW: Automatische Antwort: hi", "subject: AW: Automatische Antwort: hi"),
    ],
)
def test_an_automatic_reply_is_kept_as_its_own_type_not_as_a_reply(
    headers, subject, why, api, database, app_settings
):
    with database.sessions.begin() as session:
        session.add(Message(id="f" * 32, send_key="k", lead_id=api.lead_id, channel="email",
                            template="hello", recipient="ada@example.com", body="",
                            status="sent"))  # fmt: skip
    fields = {"from": "ada@example.com", "to": build_links(app_settings).reply_to("f" * 32),
              "subject": subject, "text": "I am away until Monday.",
              "headers": f"Message-ID: <ooo@example.com>\n{headers}"}  # fmt: skip
    answer = api.post("/webhooks/sendgrid/inbound", data=fields, auth=AUTH)
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    (row,) = responses(database)
    assert (row.type, row.lead_id, row.message_id) == ("email.auto_reply", api.lead_id, "f" * 32)
    assert row.data["automatic"] == why and row.data["text"] == "I am away until Monday."


def test_an_out_of_office_keeps_the_day_its_sender_is_back(api, database, app_settings):
    with database.sessions.begin() as session:
        session.add(Message(id="f" * 32, send_key="k", lead_id=api.lead_id, channel="email",
                            template="hello", recipient="ada@example.com", body="",
                            status="sent"))  # fmt: skip
    last_day = datetime.now(UTC).date() + timedelta(days=10)
    fields = {"from": "ada@example.com", "to": build_links(app_settings).reply_to("f" * 32),
              "subject": "Out of office", "text": f"I am away until {last_day:%d %B %Y}.",
              "headers": "Message-ID: <ooo-dated@example.com>\n"}  # fmt: skip
    assert api.post("/webhooks/sendgrid/inbound", data=fields, auth=AUTH).status_code == 200
    (row,) = responses(database)
    back = datetime.fromisoformat(row.data["return_date"])
    assert row.type == "email.auto_reply" and back.date() == last_day + timedelta(days=1)


def test_a_persons_reply_stays_a_reply_whatever_auto_submitted_says_no(api, database):
    headers = "Message-ID: <p@example.com>\nAuto-Submitted: no\n"
    fields = ADA_REPLY | {"dkim": "{@example.com : pass}", "subject": "Re: out of stock?",
                          "headers": headers}  # fmt: skip
    assert api.post("/webhooks/sendgrid/inbound", data=fields, auth=AUTH).status_code == 200
    (row,) = responses(database)
    assert row.type == "email.reply" and "automatic" not in row.data


def test_an_unverified_automatic_reply_is_kept_unverified_with_why(api, database):
    fields = ADA_REPLY | {"subject": "Out of office", "SPF": "fail"}
    assert api.post("/webhooks/sendgrid/inbound", data=fields, auth=AUTH).json()["unverified"] == 1
    (row,) = responses(database)
    assert (row.type, row.lead_id) == ("email.reply_unverified", None)
    assert row.data["automatic"] == "subject: Out of office"


# --- Twilio ------------------------------------------------------------------------------------


def twilio_post(api, path: str, form: dict[str, str], signature: str | None = None):
    url = f"https://nurture.example.com{path}"
    if signature is None:
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
    return api.post(path, data=form, headers={"X-Twilio-Signature": signature})


def test_inbound_sms_stop_start_and_replies(api, database):
    def sms(sid: str, body: str):
        return twilio_post(api, "/webhooks/twilio/sms",
                           {"MessageSid": sid, "From": "+14155550123", "To": "+14155550000",
                            "Body": body})  # fmt: skip

    answer = sms("SM1", "STOP")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/xml")
    assert answer.text == '<?xml version="1.0" encoding="UTF-8"?><Response />'
    assert sms("SM1", "STOP").status_code == 200  # Twilio retried: one row
    sms("SM2", "Who is this?")
    sms("SM3", "start")
    rows = responses(database)
    assert [(r.type, r.event_id) for r in rows] == [
        ("sms.stop", "twilio:SM1"), ("sms.reply", "twilio:SM2"), ("sms.start", "twilio:SM3")
    ]  # fmt: skip
    with database.sessions() as session:
        changes = session.scalars(select(ConsentChange.reason).order_by(ConsentChange.id))
        assert list(changes) == ["stop", "start"]
        assert session.get(Lead, api.lead_id).sms_consent


def test_twilio_signature_is_checked(api, database):
    form = {"MessageSid": "SM9", "From": "+14155550123", "Body": "STOP"}
    good = RequestValidator(TWILIO_TOKEN).compute_signature(
        "https://nurture.example.com/webhooks/twilio/sms", form
    )
    assert twilio_post(api, "/webhooks/twilio/sms", form | {"Body": "START"}, good).status_code \
        == 403  # fmt: skip
    other = RequestValidator("another-token").compute_signature(
        "https://nurture.example.com/webhooks/twilio/sms", form
    )
    assert twilio_post(api, "/webhooks/twilio/sms", form, other).status_code == 403
    assert api.post("/webhooks/twilio/sms", data=form).status_code == 403
    assert responses(database) == []


HELP_TEXT = "Acme: product news by text. Reply STOP to opt out, START to opt back in."


def test_help_is_answered_by_sms_with_the_help_text_once(
    app_settings, database, fixture_definitions, dev_server_env, providers
):
    """HELP (or INFO) is answered through Twilio's SDK with delivery.yaml's `consent.sms_help`,
    once per inbound message; the answer is a message of the lead with that number."""
    settings = app_settings.model_copy(update={
        "twilio_account_sid": providers.twilio_sid, "twilio_from_number": "+14155550000",
        "twilio_api_base": providers.url,
    })  # fmt: skip
    # The product's consent defaults: Ada gave no SMS consent, and is answered all the same.
    policy = ConsentPolicy(sms_help=HELP_TEXT)
    definitions = dataclasses.replace(fixture_definitions, consent=policy)
    intake = Intake(definitions, database.sessions, dev_server_env.client,
                    f"no-worker-{uuid.uuid4().hex[:6]}")  # fmt: skip
    lead, _ = intake.upsert_lead(LeadIn(email="ada@example.com", phone="+14155550123"))
    with TestClient(create_app(intake, settings, relay=False)) as api:

        def sms(sid: str, number: str, body: str):
            return twilio_post(api, "/webhooks/twilio/sms",
                               {"MessageSid": sid, "From": number, "To": "+14155550000",
                                "Body": body})  # fmt: skip

        assert sms("SMh1", "+14155550123", " Help ").status_code == 200
        assert sms("SMh1", "+14155550123", " Help ").status_code == 200  # Twilio retried
        assert sms("SMh2", "+14155550999", "INFO").status_code == 200  # a number no lead has
        assert sms("SMh3", "+14155550123", "Who is this?").status_code == 200
    answers = [r for r in providers.requests if r.path.endswith("/Messages.json")]
    callback = "https://nurture.example.com/webhooks/twilio/status"
    assert [r.form() for r in answers] == [
        {"To": "+14155550123", "From": "+14155550000", "Body": HELP_TEXT,
         "StatusCallback": callback},
        {"To": "+14155550999", "From": "+14155550000", "Body": HELP_TEXT,
         "StatusCallback": callback},
    ]  # fmt: skip
    with database.sessions() as session:
        (answer,) = session.scalars(select(Message)).all()
    assert (answer.lead_id, answer.send_key, answer.template, answer.status) == (
        lead.id, "help:SMh1", "sms_help", "sent")  # fmt: skip
    assert (answer.recipient, answer.body, answer.provider_message_id) == (
        "+14155550123", HELP_TEXT, providers.issued[0])  # fmt: skip
    assert not answer.counts_for_caps  # asked for: not counted against the caps
    # The messages themselves are kept, as every inbound SMS; consent is unchanged.
    assert [(r.type, r.event_id) for r in responses(database)] == [
        ("sms.reply", "twilio:SMh1"), ("sms.reply", "twilio:SMh2"),
        ("sms.reply", "twilio:SMh3")]  # fmt: skip
    with database.sessions() as session:
        assert not session.get(Lead, lead.id).sms_consent


def test_twilio_status_callbacks(api, database):
    with database.sessions.begin() as session:
        session.add(Message(id="e" * 32, send_key="k2", lead_id=api.lead_id, channel="sms",
                            template="ping", recipient="+14155550123", body="", status="sent",
                            provider="twilio", provider_message_id="SMabc"))  # fmt: skip
    for status in ("queued", "sent", "undelivered"):
        form = {"MessageSid": "SMabc", "MessageStatus": status, "To": "+14155550123"}
        if status == "undelivered":
            form["ErrorCode"] = "30006"  # a landline
        assert twilio_post(api, "/webhooks/twilio/status", form).status_code == 200
    (row,) = responses(database)
    assert (row.type, row.message_id, row.event_id) == (
        "sms.undelivered",
        "e" * 32,
        "twilio:SMabc:undelivered",
    )
    with database.sessions() as session:
        assert session.get(Message, "e" * 32).delivery_status == "undelivered"
        lead = session.get(Lead, api.lead_id)
        assert not lead.sms_consent and lead.sms_opt_out_reason == "bad_address: Twilio 30006"


# --- unsubscribe -------------------------------------------------------------------------------


def test_unsubscribe_link_asks_then_one_click_post_unsubscribes(api, database, app_settings):
    url = build_links(app_settings).unsubscribe_url(api.lead_id)
    path = url.removeprefix("https://nurture.example.com")
    page = api.get(path)
    assert page.status_code == 200 and "ad***@example.com" in page.text
    assert "<form method='post'>" in page.text
    assert responses(database) == []  # a GET (a mail scanner, say) changes nothing
    done = api.post(path, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert api.post(path).status_code == 200  # a second click: nothing more
    (row,) = responses(database)
    assert row.type == "email.unsubscribe" and row.source == "unsubscribe"
    with database.sessions() as session:
        assert not session.get(Lead, api.lead_id).email_consent
    tampered = api.post(path[:-3] + "xyz")
    assert tampered.status_code == 404 and "not valid" in tampered.text
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(ConsentChange)) == 1


def test_openapi_document_lists_every_endpoint(api):
    document = api.get("/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert {
        "/health", "/leads", "/events", "/webhooks/sendgrid/events", "/webhooks/sendgrid/inbound",
        "/webhooks/twilio/sms", "/webhooks/twilio/status", "/unsubscribe/{token}",
    } <= set(document["paths"])  # fmt: skip
    assert set(document["paths"]["/unsubscribe/{token}"]) == {"get", "post"}


# --- matching events to leads and messages --------------------------------------------------

AUTH = ("sendgrid", INBOUND_SECRET)


@pytest.fixture
def activities(provider_settings, database):
    return build_activities(provider_settings, database)


def send(api, database, activities, channel: str, template: str, step: str = "welcome"):
    """The lead's message sent for real (to the imitation); its Message row."""
    enrollment_id = f"{api.lead_id}:month:v1"
    with database.sessions.begin() as session:
        if session.get(Enrollment, enrollment_id) is None:
            session.add(Enrollment(id=enrollment_id, lead_id=api.lead_id, sequence_id="month",
                                   sequence_version=1,
                                   workflow_id=f"lead-{api.lead_id}"))  # fmt: skip
    request = SendRequest(lead_id=api.lead_id, enrollment_id=enrollment_id, sequence_id="month",
                          step_id=step, visit=1, channel=channel, template=template)  # fmt: skip
    outcome = activities.lead.send_message(request)
    assert outcome.status == "sent", outcome
    with database.sessions() as session:
        return session.get(Message, outcome.message_id)


def custom_args(recorded) -> dict[str, str]:
    payload = recorded.json()
    return payload["personalizations"][0].get("custom_args") or payload.get("custom_args", {})


def post_events(api, key, *events: dict):
    body = json.dumps(list(events)).encode()
    answer = api.post("/webhooks/sendgrid/events", content=body, headers=signed(key, body))
    assert answer.status_code == 200, answer.text
    return answer.json()


def relay(api) -> None:
    """One round of the API's relay (what it does every 2 s)."""
    asyncio.run(api.intake.redeliver())


# --- 3: SendGrid events are matched by message and recipient; a rep's are never a lead's ------


def test_a_reps_bounce_and_click_never_touch_the_lead(
    api, database, activities, providers, sendgrid_key
):
    sales = activities.sales
    assignment = sales.assign_handoff(AssignRequest(lead_id=api.lead_id, cycle=1, at=utcnow()))
    notified = sales.notify_rep(NotifyRequest(handoff_id=assignment.handoff_id,
                                              rep_id=assignment.rep_id, channel="email",
                                              kind="new", key="notify:email"))  # fmt: skip
    assert notified == "sent"
    (notification,) = providers.requests
    rep_email = notification.json()["personalizations"][0]["to"][0]["email"]
    assert rep_email.endswith("@example.com") and rep_email != "ada@example.com"
    echoed = custom_args(notification)  # what SendGrid echoes back in each event
    base = {"email": rep_email, "timestamp": int(time.time()),
            "sg_message_id": f"{providers.issued[0]}.filter0001", **echoed}  # fmt: skip
    answer = post_events(
        api, sendgrid_key,
        base | {"event": "bounce", "type": "bounce", "sg_event_id": "rep-bounce",
                "reason": "550 5.1.1 mailbox unavailable"},
        base | {"event": "click", "sg_event_id": "rep-click", "url": "https://example.com/x"},
    )  # fmt: skip
    assert answer["ignored"] == 2 and answer["accepted"] == 0
    assert responses(database) == []  # no response row: nothing to deliver, score or match
    with database.sessions() as session:
        lead = session.get(Lead, api.lead_id)
        assert lead.email_consent and lead.email_opt_out_reason is None
        assert session.scalar(select(func.count()).select_from(ConsentChange)) == 0


def test_an_event_is_the_leads_only_for_the_recipient_of_its_message(
    api, database, activities, providers, sendgrid_key
):
    message = send(api, database, activities, "email", "hello")
    args = custom_args(providers.requests[0])
    base = {"timestamp": int(time.time()), "event": "click", "url": "https://example.com/a",
            **args}  # fmt: skip
    answer = post_events(
        api, sendgrid_key,
        base | {"email": "someone.else@example.org", "sg_event_id": "other"},  # args copied
        base | {"email": "ADA@example.com", "sg_event_id": "ada"},
    )  # fmt: skip
    assert (answer["accepted"], answer["ignored"]) == (1, 1)
    (row,) = responses(database)
    assert (row.event_id, row.lead_id, row.message_id) == ("sendgrid:ada", api.lead_id, message.id)


def test_sendgrid_delivery_status_only_moves_forward(
    api, database, activities, providers, sendgrid_key
):
    message = send(api, database, activities, "email", "hello")
    base = {"email": "ada@example.com", "timestamp": int(time.time()),
            **custom_args(providers.requests[0])}  # fmt: skip
    post_events(api, sendgrid_key, base | {"event": "delivered", "sg_event_id": "d"})
    post_events(api, sendgrid_key, base | {"event": "processed", "sg_event_id": "p"})  # late
    with database.sessions() as session:
        assert session.get(Message, message.id).delivery_status == "delivered"


# --- 4: Twilio status callbacks: forward only, early ones kept, replies by send time ----------


def status(api, sid: str, value: str, **extra: str):
    form = {"MessageSid": sid, "MessageStatus": value, "To": "+14155550123", **extra}
    answer = twilio_post(api, "/webhooks/twilio/status", form)
    assert answer.status_code == 200, answer.text
    return answer.json()


def delivery_status(database, message_id: str) -> str | None:
    with database.sessions() as session:
        return session.get(Message, message_id).delivery_status


def test_twilio_statuses_out_of_order_only_move_forward(api, database, activities):
    message = send(api, database, activities, "sms", "ping", "nudge")
    sid = message.provider_message_id
    status(api, sid, "delivered")
    status(api, sid, "sent")  # Twilio does not promise the order of its callbacks
    status(api, sid, "queued")
    assert delivery_status(database, message.id) == "delivered"
    status(api, sid, "read")
    assert delivery_status(database, message.id) == "read"
    (row,) = responses(database)
    assert (row.type, row.message_id, row.lead_id) == ("sms.delivered", message.id, api.lead_id)


def held_send(api, database, activities, providers, channel: str, template: str):
    """Start a send whose provider answer is held back; returns (thread, issued id, result)."""
    providers.hold()
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(
            message=send(api, database, activities, channel, template, "nudge")
        )
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not providers.issued and time.monotonic() < deadline:
        time.sleep(0.01)
    assert providers.issued, "the provider was never called"
    return thread, providers.issued[0], result


def test_a_status_callback_that_beats_the_sid_is_applied_when_the_message_has_it(
    api, database, activities, providers
):
    thread, sid, sent = held_send(api, database, activities, providers, "sms", "ping")
    try:
        early = status(api, sid, "undelivered", ErrorCode="30006")  # before the SID is written
        assert (early["accepted"], early["pending"]) == (1, 1)
        assert status(api, sid, "undelivered", ErrorCode="30006")["pending"] == 1  # a retry
    finally:
        providers.release()
        thread.join(timeout=30)
    message = sent["message"]
    assert message.provider_message_id == sid
    relay(api)
    assert delivery_status(database, message.id) == "undelivered"
    (row,) = responses(database)
    assert (row.type, row.message_id, row.lead_id) == ("sms.undelivered", message.id, api.lead_id)
    assert row.delivered_at is not None  # the relay gave it to the lead's workflow
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(EarlyStatus)) == 0
        lead = session.get(Lead, api.lead_id)
        assert lead.sms_opt_out_reason == "bad_address: Twilio 30006"  # its consent effect
    assert status(api, sid, "undelivered")["duplicates"] == 1  # a late repeat: counted


def test_a_status_callback_with_a_bad_error_code_is_refused_naming_it(api, database):
    form = {"MessageSid": "SM" + "1" * 32, "MessageStatus": "failed", "ErrorCode": "30006; x"}
    answer = twilio_post(api, "/webhooks/twilio/status", form)
    assert answer.status_code == 400 and "ErrorCode" in answer.json()["detail"]
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(EarlyStatus)) == 0


def test_a_callback_about_a_message_that_never_appears_touches_no_lead(api, database):
    # e.g. a rep's notification SMS: the `To` number may even be a lead's.
    answer = status(api, "SM" + "0" * 32, "delivered")
    assert answer["pending"] == 1
    relay(api)
    assert responses(database) == []


def test_an_sms_reply_in_the_same_instant_as_the_send_is_attributed_to_it(
    api, database, activities, providers
):
    thread, _sid, sent = held_send(api, database, activities, providers, "sms", "ping")
    try:  # the lead replies before our send has its answer written
        reply = {"MessageSid": "SMreply1", "From": "+14155550123", "To": "+14155550000",
                 "Body": "Yes, call me"}  # fmt: skip
        assert twilio_post(api, "/webhooks/twilio/sms", reply).status_code == 200
    finally:
        time.sleep(0.05)  # the answer is written a moment after the reply arrived
        providers.release()
        thread.join(timeout=30)
    message = sent["message"]
    with database.sessions() as session:
        links = response_links(api.lead_id)
        links = session.execute(select(links.c.message_id, links.c.response_id, links.c.type))
        links = links.all()
    ((linked, _response_id, kind),) = links
    assert (linked, kind) == (message.id, "sms.reply")


# --- 6: a reply matched only by its From counts only when SPF or DKIM vouch for it -----------

ADA_REPLY = {"from": "Ada <ada@example.com>", "to": "hello@example.com", "subject": "Re: hi",
             "text": "Sign me up", "headers": "Message-ID: <forged@example.com>\n"}  # fmt: skip


def envelope(sender: str) -> str:
    return json.dumps({"to": ["hello@example.com"], "from": sender})


@pytest.mark.parametrize(
    "verdicts",
    [
        {"SPF": "fail", "envelope": envelope("ada@example.com")},
        {"SPF": "softfail", "dkim": "{@example.com : fail}"},
        {"SPF": "pass", "envelope": envelope("bounces@mailer.example.net")},  # another domain
        {"SPF": "pass"},  # no envelope: SPF vouches for nobody in particular
        {"dkim": "{@evil.example : pass, @example.com : fail}"},
        {"dkim": "{@com : pass}"},
        {},
    ],
)
def test_a_reply_from_a_leads_address_that_spf_and_dkim_do_not_vouch_for_is_not_scored(
    verdicts, api, database
):
    answer = api.post("/webhooks/sendgrid/inbound", data=ADA_REPLY | verdicts, auth=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["unverified"] == 1 and answer.json()["accepted"] == 1
    (row,) = responses(database)
    assert (row.type, row.lead_id, row.lead_email) == ("email.reply_unverified", None, None)
    assert row.data["from"] == "ada@example.com" and "spf" in row.data  # kept, with why
    relay(api)
    api.intake.upsert_lead(LeadIn(email="ada@example.com"))  # again: nothing waits for it
    with database.sessions() as session:
        assert session.get(Response, row.id).lead_id is None
        assert lead_responses(session, api.lead_id) == []  # the scorer never sees it
    again = api.post("/webhooks/sendgrid/inbound", data=ADA_REPLY | verdicts, auth=AUTH)
    assert again.json()["duplicates"] == 1


@pytest.mark.parametrize(
    "verdicts",
    [
        {"dkim": "{@example.com : pass}", "SPF": "fail"},
        {"dkim": "{@other.example : fail, @Example.COM : pass}"},
        {"SPF": "pass", "envelope": envelope("Bounces <bounce-1@example.com>")},
    ],
)
def test_a_reply_from_a_leads_address_vouched_for_by_spf_or_dkim_is_the_leads(
    verdicts, api, database
):
    answer = api.post("/webhooks/sendgrid/inbound", data=ADA_REPLY | verdicts, auth=AUTH)
    assert answer.json()["accepted"] == 1 and answer.json()["unverified"] == 0
    (row,) = responses(database)
    assert (row.type, row.lead_id) == ("email.reply", api.lead_id)


def test_a_subdomain_sender_is_vouched_for_by_its_parent_domains_signature(api, database):
    fields = ADA_REPLY | {"from": "ada@mail.example.com", "dkim": "{@example.com : pass}"}
    answer = api.post("/webhooks/sendgrid/inbound", data=fields, auth=AUTH)
    assert answer.json()["unverified"] == 0 and answer.json()["pending"] == 1  # no such lead yet


# --- 8: pending events expire; reply addresses fit RFC 5321 ------------------------------------


def test_events_waiting_for_a_lead_expire_after_the_retention(api, database, app_settings, caplog):
    assert api.intake.pending_retention == timedelta(days=30)  # the default
    week = app_settings.model_copy(update={"pending_event_retention_days": 7})
    create_app(api.intake, week, relay=False)  # NURTURE_PENDING_EVENT_RETENTION_DAYS=7
    now = utcnow()

    def response(key: str, age_days: float, **fields) -> Response:
        return Response(event_id=key, type="email.open", source="sendgrid",
                        received_at=now - timedelta(days=age_days), **fields)  # fmt: skip

    with database.sessions.begin() as session:
        session.add_all([
            response("stale", 8, lead_email="nobody@example.com"),
            response("stale-by-phone", 8, lead_phone="+14155550999"),
            response("fresh", 6, lead_email="nobody@example.com"),
            response("the-leads", 8, lead_id=api.lead_id, delivered_at=now),
            Response(event_id="unverified", type="email.reply_unverified", source="sendgrid",
                     received_at=now - timedelta(days=90)),
            EarlyStatus(provider_message_id="SMold", status="sent",
                        received_at=now - timedelta(days=8)),
            EarlyStatus(provider_message_id="SMnew", status="sent", received_at=now),
        ])  # fmt: skip
    with caplog.at_level(logging.INFO, logger="services.intake"):
        relay(api)
    assert "expired 2 event(s) that waited for a lead and 1 status callback(s)" in caplog.text
    assert sorted(r.event_id for r in responses(database)) == [
        "fresh", "the-leads", "unverified"
    ]  # fmt: skip
    with database.sessions() as session:
        assert list(session.scalars(select(EarlyStatus.provider_message_id))) == ["SMnew"]


def test_the_retention_is_a_setting(tmp_path):
    assert Settings(NURTURE_STATE_DIR=tmp_path).pending_event_retention_days == 30
    assert Settings(NURTURE_PENDING_EVENT_RETENTION_DAYS="7").pending_event_retention_days == 7
    with pytest.raises(ValidationError, match="NURTURE_PENDING_EVENT_RETENTION_DAYS"):
        Settings(NURTURE_PENDING_EVENT_RETENTION_DAYS="0")


def test_reply_addresses_fit_rfc_5321_and_are_read_back():
    links = Links("secret", "https://nurture.example.com", "in.example.com")
    message_id = new_id()
    address = links.reply_to(message_id)
    local, domain = address.split("@")
    assert len(local) <= 64 and domain == "in.example.com"
    assert links.read_reply(address) == message_id
    assert links.read_reply(address.upper()) == message_id  # a server folded its case
    assert links.read_reply(address.replace(message_id, new_id())) is None  # not signed by us
    assert Links("another", "https://x", "in.example.com").read_reply(address) is None
    legacy = "reply+" + links._serializer("reply").dumps(message_id) + "@in.example.com"
    assert links.read_reply(legacy) == message_id  # replies to emails sent before
    with pytest.raises(ValueError):
        links.reply_to("not-one-of-our-ids-" + "x" * 40)
