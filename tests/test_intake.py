"""Intake checks what arrives: phone numbers become E.164 or are refused with a reason."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import func, select

from api.app import create_app
from models.db import Lead
from services.intake import Intake, LeadIn


@pytest.mark.parametrize(
    ("phone", "country", "e164"),
    [
        ("+1 (415) 555-0142", None, "+14155550142"),
        ("030 1234567", "DE", "+49301234567"),
        ("06 12 34 56 78", "fr", "+33612345678"),
        ("+44 7911 123456", "US", "+447911123456"),  # a +prefix wins over the country
        ("", None, None),
    ],
)
def test_phones_are_stored_in_e164(phone, country, e164):
    assert LeadIn(email="a@example.com", phone=phone, country=country).phone == e164


@pytest.mark.parametrize(
    ("phone", "country", "message"),
    [
        ("12345", None, "give it with +country code, or give the lead's country"),
        ("555-0100", "US", "is not a valid number in US"),
        ("call me", None, "is not a phone number"),
        ("+44 7700 900123", None, "is not a valid number in GB"),  # reserved for fiction
    ],
)
def test_unusable_phones_are_refused_with_the_reason(phone, country, message):
    with pytest.raises(ValidationError) as raised:
        LeadIn(email="a@example.com", phone=phone, country=country)
    (error,) = raised.value.errors()
    assert error["loc"] == ("phone",) and message in error["msg"]


def test_api_refuses_a_bad_phone_and_stores_nothing(settings, database, fixture_definitions):
    intake = Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")
    client = TestClient(create_app(intake, settings, relay=False))
    response = client.post(
        "/leads",
        json={"email": "bad@example.com", "phone": "555-0100", "country": "US"},
        headers={"Authorization": "Bearer test-token"},
    )
    assert response.status_code == 422
    assert response.json()["problems"] == [
        {"field": "phone", "message": "phone '555-0100' is not a valid number in US"}
    ]
    with database.sessions() as session:
        assert Lead.find(session, "bad@example.com") is None


def test_the_same_new_lead_created_at_once_is_one_lead(database, fixture_definitions):
    """Two APIs (or two requests of one) creating the same new email together: one
    creates it, the other updates it; neither fails on the unique email."""
    intake = Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")
    emails = [f"twice{n}@example.com" for n in range(20)]
    start = threading.Barrier(8)

    def create_all(company: str) -> list[bool]:
        start.wait()
        return [intake.upsert_lead(LeadIn(email=email, company=company))[1] for email in emails]

    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(create_all, [f"Acme {n}" for n in range(8)]))
    assert [sum(column) for column in zip(*created, strict=True)] == [1] * len(emails)
    with database.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Lead)) == len(emails)
