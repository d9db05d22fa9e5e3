"""Outcomes come in (issue 17, point 1): the signed CRM webhook (valid, forged, stale,
rotated secrets) and `POST /outcomes`, stored once, folded whatever the order, matched to
the lead by ID, handoff or email, kept until an unknown email's lead arrives; a bad
event is a 4xx naming its field and stores nothing. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from api.app import create_app
from models.db import Opportunity, OutcomeEvent
from sales.outbound_webhooks import sign
from services.intake import Intake, LeadIn
from tests.harness import lead_with_handoff

OLD, NEW = "old-secret-1234567890", "new-secret-0987654321"
AUTH = {"Authorization": "Bearer test-token"}


@pytest.fixture
def api(settings, database, fixture_definitions):
    app_settings = settings.model_copy(update={"crm_webhook_secrets": SecretStr(f"{OLD}, {NEW}")})
    intake = Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")
    lead, _ = intake.upsert_lead(LeadIn(email="ada@example.com"))
    with TestClient(create_app(intake, app_settings, relay=False)) as client:
        client.lead_id = lead.id
        client.intake = intake
        yield client


def signed_post(client, events: list[dict], secret: str = NEW, at: int | None = None,
                signature: str | None = None):  # fmt: skip
    body = json.dumps({"events": events}).encode()
    timestamp = int(time.time()) if at is None else at
    headers = {"Content-Type": "application/json", "X-Nurture-Timestamp": str(timestamp),
               "X-Nurture-Signature": signature or sign(secret, timestamp, body)}  # fmt: skip
    return client.post("/webhooks/crm", content=body, headers=headers)


def won(**fields) -> dict:
    return {"opportunity_id": "opp-1", "kind": "won", "email": "ada@example.com",
            "occurred_at": "2026-11-20T10:00:00Z", "amount": "12000.50", "currency": "USD",
            **fields}  # fmt: skip


def created(**fields) -> dict:
    return won(kind="created", occurred_at="2026-11-02T10:00:00Z", amount="10000", **fields)


def stored(database) -> tuple[int, list[Opportunity]]:
    with database.sessions() as session:
        events = session.scalar(select(func.count()).select_from(OutcomeEvent))
        return events, list(session.scalars(select(Opportunity)))


def test_signed_events_are_stored_once_and_converge_whatever_their_order(api, database):
    answer = signed_post(api, [won(event_id="crm-2")])  # the win arrives first
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"accepted": 1, "duplicates": 0, "waiting": 0,
                             "opportunities": ["opp-1"]}  # fmt: skip
    later = signed_post(api, [created(event_id="crm-1"), won(event_id="crm-2")], secret=OLD)
    assert later.json()["accepted"] == 1 and later.json()["duplicates"] == 1

    events, (opportunity,) = stored(database)
    assert events == 2
    assert (opportunity.status, opportunity.amount, opportunity.currency) == (
        "won", Decimal("12000.5"), "USD")  # fmt: skip
    assert opportunity.lead_id == api.lead_id and opportunity.events == 2


@pytest.mark.parametrize("problem", ["forged", "stale", "unknown secret", "unsigned"])
def test_a_bad_signature_is_refused_and_nothing_is_stored(api, database, problem):
    if problem == "forged":
        answer = signed_post(api, [won()], signature="v1=" + "0" * 64)
    elif problem == "stale":
        answer = signed_post(api, [won()], at=int(time.time()) - 3600)
    elif problem == "unknown secret":
        answer = signed_post(api, [won()], secret="retired-secret-000000")
    else:
        answer = api.post("/webhooks/crm", json={"events": [won()]})
    assert answer.status_code == 403
    assert stored(database) == (0, [])


def test_the_webhook_is_refused_until_a_secret_is_set(settings, database, fixture_definitions):
    intake = Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")
    with TestClient(create_app(intake, settings, relay=False)) as client:
        answer = signed_post(client, [won()])
    assert answer.status_code == 403
    assert "NURTURE_CRM_WEBHOOK_SECRETS" in answer.json()["detail"]


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (won(amount="-5"), "events.1.amount"),
        (won(currency=None), "events.1"),
        (won(occurred_at="2026-11-20 10:00"), "events.1.occurred_at"),
    ],
)
def test_a_bad_event_is_a_422_naming_its_field_and_stores_nothing(api, database, event, field):
    answer = signed_post(api, [created(), event])
    assert answer.status_code == 422, answer.text
    assert any(p["field"].startswith(field) for p in answer.json()["problems"]), answer.json()
    assert stored(database) == (0, [])


@pytest.mark.parametrize("name", ["lead_id", "handoff_id"])
def test_an_unknown_lead_or_handoff_id_is_a_404_and_stores_nothing(api, database, name):
    answer = signed_post(api, [created(), won(**{name: "no-such-one", "email": None})])
    assert answer.status_code == 404, answer.text
    assert f"events.1.{name}" in answer.json()["detail"]
    assert stored(database) == (0, [])


def test_post_outcomes_takes_the_bearer_token_and_matches_by_handoff(api, database):
    lead, handoff = lead_with_handoff(api.intake, database)
    event = won(opportunity_id="opp-h", handoff_id=handoff.id, email=None)
    assert api.post("/outcomes", json={"events": [event]}).status_code == 401
    answer = api.post("/outcomes", json={"events": [event]}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    _, (opportunity,) = stored(database)
    assert (opportunity.lead_id, opportunity.status) == (lead.id, "won")


def test_an_outcome_for_an_unknown_email_waits_for_its_lead(api, database):
    answer = signed_post(api, [won(opportunity_id="opp-late", email="late@example.com")])
    assert answer.json()["waiting"] == 1
    _, (opportunity,) = stored(database)
    assert opportunity.lead_id is None and opportunity.status == "won"

    lead, _ = api.intake.upsert_lead(LeadIn(email="Late@Example.com"))
    _, (opportunity,) = stored(database)
    assert opportunity.lead_id == lead.id
