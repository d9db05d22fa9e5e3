"""SendGrid and Twilio through their official SDKs, against our imitation of their APIs."""

from __future__ import annotations

import dataclasses
import shutil
import threading
from unittest.mock import ANY

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from temporalio.exceptions import ApplicationError
from temporalio.runtime import MetricBuffer, Runtime, TelemetryConfig
from temporalio.testing import ActivityEnvironment

import activities.lead as activities_module
from channels.outbox import OutboxChannel
from channels.sendgrid_email import SendGridEmailChannel
from channels.twilio_sms import TwilioSmsChannel
from models.db import Enrollment, Lead, Message, as_utc
from models.workflow_io import SendRequest
from services.runtime import build_activities, build_channels
from tests.conftest import FIXTURE_DEFINITIONS


def lead_and_request(database, channel: str, template: str, step: str = "welcome"):
    with database.sessions.begin() as session:
        lead = Lead(email="ada@example.com", first_name="Ada", phone="+14155550199")
        session.add(lead)
        session.flush()
        lead_id = lead.id
        session.add(Enrollment(id=f"{lead_id}:month:v1", lead_id=lead_id, sequence_id="month",
                               sequence_version=1, workflow_id=f"lead-{lead_id}"))  # fmt: skip
    return SendRequest(lead_id=lead_id, enrollment_id=f"{lead_id}:month:v1", sequence_id="month",
                       step_id=step, visit=1, channel=channel, template=template)  # fmt: skip


def test_channels_chosen_by_settings(settings, provider_settings):
    email, sms = build_channels(settings)
    assert isinstance(email, OutboxChannel) and isinstance(sms, OutboxChannel)
    email, sms = build_channels(provider_settings)
    assert isinstance(email, SendGridEmailChannel) and isinstance(sms, TwilioSmsChannel)


def test_email_goes_through_sendgrid_with_tracking_fields(provider_settings, database, providers):
    activities = build_activities(provider_settings, database).lead
    request = lead_and_request(database, "email", "hello")
    outcome = activities.send_message(request)
    assert outcome.status == "sent" and outcome.provider == "sendgrid"
    (call,) = providers.requests
    assert call.path == "/v3/mail/send"
    payload = call.json()
    assert payload["personalizations"][0]["to"] == [{"email": "ada@example.com"}]
    assert payload["subject"] == "Hello Ada"
    assert [c["type"] for c in payload["content"]] == ["text/plain", "text/html"]
    # Rendered, autoescaped, and the <style> rules inlined for mail clients.
    assert '<p style="color: #333333;">Hi Ada &amp; welcome.</p>' in payload["content"][1]["value"]
    assert "<style>" not in payload["content"][1]["value"]
    custom_args = payload["personalizations"][0].get("custom_args") or payload.get("custom_args")
    assert custom_args["lead_id"] == request.lead_id
    assert custom_args["step_id"] == "welcome" and custom_args["message_id"] == outcome.message_id
    assert set(payload["categories"]) == {"month", "month:welcome"}
    assert payload["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert payload["headers"]["List-Unsubscribe"].startswith("<http")
    with database.sessions() as session:
        stored = session.get(Message, outcome.message_id)
        assert stored.provider_message_id == outcome.provider_message_id
        assert stored.provider_message_id.startswith("sg-")


def test_sms_goes_through_twilio(provider_settings, database, providers):
    activities = build_activities(provider_settings, database).lead
    outcome = activities.send_message(lead_and_request(database, "sms", "ping", "nudge"))
    assert outcome.status == "sent" and outcome.provider_message_id.startswith("SM")
    (call,) = providers.requests
    form = call.form()
    assert form["To"] == "+14155550199" and form["From"] == "+14155550000"
    assert form["Body"].startswith("Hi Ada, reply YES")
    assert form["StatusCallback"].endswith("/webhooks/twilio/status")


def test_provider_5xx_is_retried_without_a_second_send(provider_settings, database, providers):
    activities = build_activities(provider_settings, database).lead
    request = lead_and_request(database, "email", "hello")
    providers.fail_next(503, "try later")
    with pytest.raises(ApplicationError, match="provider unavailable"):
        activities.send_message(request)
    with database.sessions() as session:
        assert session.scalars(select(Message.status)).one() == "retrying"
    outcome = activities.send_message(request)  # Temporal's retry
    assert outcome.status == "sent"
    assert activities.send_message(request) == outcome  # and a late duplicate retry
    assert len(providers.requests) == 2  # the refused one and the one that went out


@pytest.mark.parametrize("channel, template", [("email", "hello"), ("sms", "ping")])
def test_a_429_is_counted_by_channel_and_retried(provider_settings, database, providers,
                                                 channel, template):  # fmt: skip
    """nurture_provider_throttled_total counts the providers' 429s (and only those): a
    steady count says the configured sends per second are above the account's limit."""
    buffer = MetricBuffer(1000)
    env = ActivityEnvironment()
    env.metric_meter = Runtime(telemetry=TelemetryConfig(metrics=buffer)).metric_meter
    activities = build_activities(provider_settings, database).lead
    request = lead_and_request(database, channel, template, "nudge")
    providers.fail_next(429, "too many requests")
    providers.fail_next(503, "try later")
    for _refused in range(2):
        with pytest.raises(ApplicationError, match="provider unavailable"):
            env.run(activities.send_message, request)
    assert env.run(activities.send_message, request).status == "sent"
    throttled = [(u.value, dict(u.attributes)) for u in buffer.retrieve_updates()
                 if u.metric.name == "nurture_provider_throttled_total"]  # fmt: skip
    assert [(value, labels["channel"]) for value, labels in throttled] == [(1, channel)]


def test_provider_4xx_is_final_with_the_reason(provider_settings, database, providers):
    activities = build_activities(provider_settings, database).lead
    request = lead_and_request(database, "sms", "ping", "nudge")
    providers.fail_next(400, "The 'To' number is not a valid phone number.")
    outcome = activities.send_message(request)
    assert outcome.status == "failed" and "not a valid phone number" in outcome.reason
    assert activities.send_message(request).status == "failed"
    assert len(providers.requests) == 1


def died_during_the_call(activities, request) -> None:
    """What a worker killed inside the provider call leaves behind."""
    message = activities._claim(request)
    assert activities._mark_sending(message.id, False, "ada@example.com", "Hello", "...")


def test_send_interrupted_during_the_call_is_never_repeated(provider_settings, database, providers):
    activities = build_activities(provider_settings, database).lead
    request = lead_and_request(database, "email", "hello")
    died_during_the_call(activities, request)
    outcome = activities.send_message(request)
    assert outcome.status == "unknown" and providers.requests == []
    assert "interrupted during the provider call" in outcome.reason
    assert activities.send_message(request).status == "unknown"  # and stays so


def test_an_answer_the_database_missed_is_recorded_from_the_heartbeat(
    provider_settings, database, providers, monkeypatch
):
    """PostgreSQL (here SQLite) goes away the moment the provider answers and stays away
    longer than the attempt waits: the attempt fails, but the answer it heartbeated
    reaches the next attempt, which records the send `sent` with the provider's ID."""
    monkeypatch.setattr(activities_module, "OUTAGE_PATIENCE", 0.5)
    activities = build_activities(provider_settings, database).lead
    request = lead_and_request(database, "sms", "ping", "nudge")
    outage = threading.Event()

    @event.listens_for(database.engine, "before_cursor_execute")
    def _unreachable(*_args):
        if outage.is_set():
            raise OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    first = ActivityEnvironment()
    kept = []
    first.on_heartbeat = lambda *details: (kept.append(details), outage.set())
    with pytest.raises(OperationalError):
        first.run(activities.send_message, request)
    (call,) = providers.requests
    (issued,) = providers.issued
    assert kept == [({"message_id": ANY, "provider": "twilio", "provider_message_id": issued,
                      "sent_at": ANY},)]  # fmt: skip
    outage.clear()
    with database.sessions() as session:
        assert session.scalars(select(Message.status)).one() == "sending"

    # Temporal's next attempt, with the last heartbeat's details; it passes them on at
    # once (an attempt failing early must not lose them).
    second = ActivityEnvironment()
    second.info = dataclasses.replace(second.info, attempt=2, heartbeat_details=list(kept[0]))
    passed_on = []
    second.on_heartbeat = lambda *details: passed_on.append(details)
    outcome = second.run(activities.send_message, request)
    assert (outcome.status, outcome.provider_message_id) == ("sent", issued)
    assert passed_on == kept
    assert activities.send_message(request) == outcome  # and a late duplicate retry
    assert len(providers.requests) == 1  # never sent twice
    with database.sessions() as session:
        stored = session.scalars(select(Message)).one()
        assert (stored.status, stored.provider_message_id) == ("sent", issued)
        assert stored.body.startswith("Hi Ada, reply YES")
        # The send's time is when the first attempt called the provider, not the record's.
        assert as_utc(stored.sent_at).isoformat() == kept[0][0]["sent_at"]


def test_send_interrupted_before_the_call_is_sent_once(provider_settings, database, providers):
    activities = build_activities(provider_settings, database).lead
    request = lead_and_request(database, "email", "hello")
    activities._claim(request)  # claimed, then the worker died checking or rendering
    assert activities.send_message(request).status == "sent"
    assert activities.send_message(request).status == "sent"
    assert len(providers.requests) == 1


def test_email_without_a_postal_address_is_never_sent(
    provider_settings, database, providers, tmp_path
):
    definitions = tmp_path / "defs"
    shutil.copytree(FIXTURE_DEFINITIONS, definitions)
    (definitions / "templates/email/hello/body.txt").write_text("Hi {{ lead.first_name }}\n")
    settings = provider_settings.model_copy(update={"definitions_dir": definitions})
    outcome = build_activities(settings, database).lead.send_message(
        lead_and_request(database, "email", "hello")
    )
    assert outcome.status == "failed"
    assert outcome.reason == (
        "the text part has no postal address of the sender (CAN-SPAM); "
        "the text part has no unsubscribe link"
    )
    assert providers.requests == []


def test_sms_through_a_messaging_service(provider_settings, database, providers):
    settings = provider_settings.model_copy(
        update={"twilio_from_number": None, "twilio_messaging_service_sid": "MG" + "1" * 32}
    )
    outcome = build_activities(settings, database).lead.send_message(
        lead_and_request(database, "sms", "ping", "nudge")
    )
    assert outcome.status == "sent"
    form = providers.requests[0].form()
    assert form["MessagingServiceSid"] == "MG" + "1" * 32 and "From" not in form
