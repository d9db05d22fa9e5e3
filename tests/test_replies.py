"""Automatic replies are told from a person's: by RFC 3834 and common headers, then by the
out-of-office subjects of the shipped languages."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from channels.out_of_office import return_date
from channels.replies import is_automatic


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"Auto-Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
        ({"auto-submitted": "auto-generated; owner-email=x@example.com"},
         "Auto-Submitted: auto-generated; owner-email=x@example.com"),
        ({"X-Autoreply": "yes"}, "X-Autoreply: yes"),
        ({"X-AUTORESPOND": ""}, "X-Autorespond: "),
        ({"Precedence": "auto_reply"}, "Precedence: auto_reply"),
        ({"Precedence": "Bulk"}, "Precedence: bulk"),
        ({"Precedence": "junk"}, "Precedence: junk"),
    ],
)  # fmt: skip
def test_headers_mark_an_automatic_reply(headers, why):
    assert is_automatic(headers, "Re: our offer") == why


@pytest.mark.parametrize(
    "subject",
    [
        "Out of Office: Re: our offer",
        "Out of the office until 3 June",
        "Automatic reply: our offer",
        "Auto-Reply: our offer",
        "Autoreply",
        "RE: Autoresponse",
        "Abwesenheitsnotiz: Ihr Angebot",
        "AW: Automatische Antwort: Ihr Angebot",
        "Nicht im Büro",
        "Außer Haus bis 12.6.",
    ],
)
def test_out_of_office_subjects_mark_an_automatic_reply(subject):
    assert is_automatic({}, subject) == f"subject: {subject}"


@pytest.mark.parametrize(
    ("headers", "subject"),
    [
        ({"Auto-Submitted": "no"}, "Re: our offer"),
        ({"Precedence": "first-class"}, "Re: our offer"),
        ({}, "Re: pricing for the office"),
        ({}, "Can we talk? I'm out of office tomorrow"),  # a person: not at the start
        ({}, ""),
    ],
)
def test_a_persons_reply_is_not_automatic(headers, subject):
    assert is_automatic(headers, subject) is None


AT = datetime(2026, 12, 3, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("I am out of the office until 14 December with limited access.", date(2026, 12, 15)),
        ("Thanks for your message. I'll be back on Monday, January 4th.", date(2027, 1, 4)),
        ("Out of office: returning 2026-12-10", date(2026, 12, 10)),
        ("Ich bin ab dem 14.12. wieder erreichbar.", date(2026, 12, 14)),
        ("Ich bin bis zum 11.12.2026 nicht im Büro.", date(2026, 12, 12)),
        ("Ich bin bis einschließlich 5. Januar im Urlaub.", date(2027, 1, 6)),
    ],
)
def test_an_out_of_office_names_the_day_its_sender_is_back(text, back):
    found = return_date(text, AT)
    assert found is not None and found.date() == back and found.tzinfo is not None


@pytest.mark.parametrize(
    "text",
    [
        "I am travelling and will reply when I can.",
        "Back in 5 minutes, call me at 555 1234",
        "I'm away until 3 March 2030.",  # too far off to trust
        "I was out until 1 December.",  # in the past: nothing to wait for
        "Back on 31.02.",  # no such day
    ],
)
def test_no_return_date_unless_one_is_named_and_plausible(text):
    assert return_date(text, AT) is None
