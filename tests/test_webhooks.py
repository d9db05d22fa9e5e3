"""Provider webhooks and unsubscribe links, signed with real keys; forgeries store nothing.

The app runs in-process (TestClient) against a real database; Temporal is the
dev server's client with no worker on the queue, so a signal is accepted
and waits: what is under test is what the API stores and answers.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from api.app import create_app
from models.db import ConsentChange, Lead, Message, Response
from nurture.intake import Intake, LeadIn
from nurture.runtime import build_links

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
    assert answer.json() == {"accepted": 3, "duplicates": 0, "pending": 0, "ignored": 1}
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


def test_bounce_and_unknown_address_events(api, database, sendgrid_key):
    body = json.dumps([
        {"email": "ada@example.com", "event": "bounce", "type": "bounce", "lead_id": api.lead_id,
         "sg_event_id": "b1", "reason": "550 5.1.1 unknown user", "timestamp": 1795000000},
        {"email": "stranger@example.com", "event": "open", "sg_event_id": "o1",
         "timestamp": 1795000001},
    ]).encode()  # fmt: skip
    answer = api.post("/webhooks/sendgrid/events", content=body, headers=signed(sendgrid_key, body))
    assert answer.json() == {"accepted": 2, "duplicates": 0, "pending": 1, "ignored": 0}
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
    first = api.post("/webhooks/sendgrid/inbound", data=fields)
    assert first.status_code == 403, first.text
    assert api.post("/webhooks/sendgrid/inbound", data=fields, auth=("x", "no")).status_code == 403
    answer = api.post("/webhooks/sendgrid/inbound", data=fields, auth=auth)
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    assert api.post("/webhooks/sendgrid/inbound", data=fields, auth=auth).json()["duplicates"] == 1
    by_sender = {"from": "ada@example.com", "to": "hello@example.com", "subject": "Question",
                 "text": "Pricing?"}  # fmt: skip
    assert api.post("/webhooks/sendgrid/inbound", data=by_sender, auth=auth).status_code == 200
    forged = fields | {"to": "reply+forged.token@in.example.com", "headers": "Message-ID: <r2>\n"}
    answer = api.post("/webhooks/sendgrid/inbound", data=forged, auth=auth)
    assert answer.json()["pending"] == 1  # a forged token is no match: only its sender counts
    rows = responses(database)
    assert [(r.type, r.lead_id) for r in rows] == [
        ("email.reply", api.lead_id), ("email.reply", api.lead_id), ("email.reply", None)
    ]  # fmt: skip
    assert rows[0].message_id == "f" * 32 and rows[0].data["text"] == "Sounds good, call me"


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
