"""Automatic replies are told from a person's: by RFC 3834 and common headers, then by the
out-of-office subjects of the shipped languages."""

from __future__ import annotations

import pytest

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
