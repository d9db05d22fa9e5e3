"""Consent per channel: opt-outs from responses, providers and people, checked at send time.

Sends go through the official SDKs to the provider imitation, so "nothing went out"
is read from the imitation's request log, not from our own records.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import select

from models.consent import (
    ConsentEffect,
    classify_response,
    opt_out_reason,
    set_consent,
    sms_keyword,
)
from models.db import ConsentChange, Lead, Message, Response
from models.workflow_io import SendRequest, StartEnrollment
from services.intake import EventIn, Intake, LeadIn
from services.runtime import build_activities

_numbers = itertools.count(100)


def new_lead(database, fixture_definitions, **fields) -> tuple[Lead, Intake]:
    intake = Intake(fixture_definitions, database.sessions, client=None, task_queue="unused")
    n = next(_numbers)
    lead, _ = intake.upsert_lead(
        LeadIn(email=f"lead{n}@example.com", first_name="Kim", phone=f"+1415555{n:04d}", **fields)
    )
    return lead, intake


class Sender:
    """Sends numbered steps of two enrollments (two sequences) for one lead."""

    def __init__(self, activities, lead_id: str):
        self.activities, self.lead_id, self.steps = activities, lead_id, itertools.count()
        for sequence in ("month", "quick"):
            activities.start_enrollment(
                StartEnrollment(lead_id=lead_id, enrollment_id=f"{lead_id}:{sequence}:v1",
                                workflow_id=f"lead-{lead_id}", sequence_id=sequence,
                                sequence_version=1)
            )  # fmt: skip

    def send(self, channel: str):
        step = next(self.steps)
        sequence = ("month", "quick")[step % 2]  # whatever sequence is running
        return self.activities.send_message(
            SendRequest(lead_id=self.lead_id, enrollment_id=f"{self.lead_id}:{sequence}:v1",
                        sequence_id=sequence, step_id=f"s{step}", visit=1, channel=channel,
                        template="hello" if channel == "email" else "ping")
        )  # fmt: skip


def lead_row(database, lead_id: str) -> Lead:
    with database.sessions() as session:
        return session.get(Lead, lead_id)


@pytest.mark.parametrize("body", ["STOP", "stop", " Quit ", "Unsubscribe!", "cancel", "END"])
def test_stop_and_its_synonyms_opt_out_of_sms_only(
    body, provider_settings, database, providers, fixture_definitions
):
    lead, intake = new_lead(database, fixture_definitions)
    sender = Sender(build_activities(provider_settings, database).lead, lead.id)
    stored = intake.store_events([EventIn(lead_id=lead.id, type="sms.reply",
                                             data={"body": body})])  # fmt: skip
    stored = stored.stored
    assert stored[0].type == "sms.stop"  # recorded as what it is
    outcome = sender.send("sms")
    assert outcome.status == "skipped" and outcome.reason.startswith("opted out of SMS (stop")
    assert sender.send("email").status == "sent"  # email consent is separate
    assert providers.for_lead(lead.id, lead.phone) == {"email": 1, "sms": 0}
    with database.sessions() as session:
        (change,) = session.scalars(select(ConsentChange).where(ConsentChange.lead_id == lead.id))
        assert (change.channel, change.opted_in, change.reason) == ("sms", False, "stop")
        assert change.source_event_id == stored[0].event_id


def test_start_resubscribes_sms_and_yes_only_when_opted_out(
    provider_settings, database, providers, fixture_definitions
):
    lead, intake = new_lead(database, fixture_definitions)
    sender = Sender(build_activities(provider_settings, database).lead, lead.id)

    def reply(body: str) -> str:
        (row,) = intake.store_events([EventIn(lead_id=lead.id, type="sms.reply",
                                              data={"body": body})]).stored  # fmt: skip
        return row.type

    assert reply("YES") == "sms.reply"  # an answer to "reply YES", not an opt-in
    assert reply("STOP") == "sms.stop"
    assert sender.send("sms").status == "skipped"
    assert reply("Stop please") == "sms.reply"  # not a keyword: more than one word
    assert reply("START") == "sms.start"
    assert sender.send("sms").status == "sent"
    assert reply("stopall") == "sms.stop"
    assert reply("yes") == "sms.start"  # from an opted-out number, YES opts back in
    assert sender.send("sms").status == "sent"
    assert providers.for_lead(lead.id, lead.phone)["sms"] == 2


@pytest.mark.parametrize(
    ("event_type", "data", "opted_out_reason"),
    [
        ("email.unsubscribe", {}, "unsubscribe"),
        ("email.spamreport", {}, "spam_report"),
        ("email.bounce", {"reason": "550 no such user"}, "hard_bounce: 550 no such user"),
        ("email.bounce", {"bounce_type": "blocked"}, None),  # soft: the address is fine
        ("email.dropped", {"reason": "Bounced Address"}, "hard_bounce: Bounced Address"),
        ("email.dropped", {"reason": "Invalid SMTPAPI header"}, None),  # the message's fault
    ],
)
def test_email_opt_outs(event_type, data, opted_out_reason, settings, database,
                        fixture_definitions):  # fmt: skip
    lead, intake = new_lead(database, fixture_definitions)
    intake.store_events([EventIn(lead_id=lead.id, type=event_type, data=data)])
    row = lead_row(database, lead.id)
    assert row.email_consent is (opted_out_reason is None)
    assert row.email_opt_out_reason == opted_out_reason
    expected = "sent" if opted_out_reason is None else "skipped"
    sender = Sender(build_activities(settings, database).lead, lead.id)
    assert sender.send("email").status == expected


def test_a_duplicate_event_changes_consent_once(settings, database, fixture_definitions):
    lead, intake = new_lead(database, fixture_definitions)
    event = EventIn(lead_id=lead.id, type="sms.stop", event_id="tw-1")
    assert intake.store_events([event]).duplicates == 0
    assert intake.store_events([event]).duplicates == 1  # the duplicate is dropped
    with database.sessions() as session:
        changes = session.scalars(select(ConsentChange).where(ConsentChange.lead_id == lead.id))
        assert len(list(changes)) == 1


@pytest.mark.parametrize(
    ("channel", "failure", "reason"),
    [
        ("sms", {"status": 400, "message": "Invalid 'To' Phone Number", "code": 21211},
         "bad_address"),
        ("sms", {"status": 400, "message": "Attempt to send to unsubscribed recipient",
                 "code": 21610}, "stop"),
        ("email", {"status": 400, "message": "Does not contain a valid address.",
                   "field": "personalizations.0.to.0.email"}, "bad_address"),
        ("email", {"status": 400, "message": "The subject is required.", "field": "subject"},
         None),
    ],
)  # fmt: skip
def test_provider_refusal_flags_a_bad_address(
    channel, failure, reason, provider_settings, database, providers, fixture_definitions
):
    lead, _intake = new_lead(database, fixture_definitions)
    sender = Sender(build_activities(provider_settings, database).lead, lead.id)
    providers.fail_next(**failure)
    first = sender.send(channel)
    assert first.status == "failed" and failure["message"] in first.reason
    row = lead_row(database, lead.id)
    if reason is None:  # a refusal about the message, not the address: the lead is fine
        assert getattr(row, f"{channel}_consent") is True
        assert sender.send(channel).status == "sent"
        return
    assert getattr(row, f"{channel}_opt_out_reason").startswith(f"{reason}: ")
    assert sender.send(channel).status == "skipped"  # nothing more to a bad address
    assert providers.for_lead(lead.id, lead.phone)[channel] == 1  # the refused one only


def test_a_new_number_lifts_a_bad_number_flag_but_not_a_stop(
    provider_settings, database, providers, fixture_definitions
):
    lead, intake = new_lead(database, fixture_definitions)
    sender = Sender(build_activities(provider_settings, database).lead, lead.id)
    providers.fail_next(400, "Invalid 'To' Phone Number", code=21211)
    assert sender.send("sms").status == "failed"
    intake.upsert_lead(LeadIn(email=lead.email, phone="+14155559876"))
    assert sender.send("sms").status == "sent"
    intake.store_events([EventIn(lead_id=lead.id, type="sms.stop")])
    intake.upsert_lead(LeadIn(email=lead.email, phone="+14155559877"))
    assert sender.send("sms").status == "skipped"  # a STOP is the person's, not the number's


# --- the rules, without a database (found by mutation testing: scripts/mutation.py) ---------


class RecordingSession:
    """What set_consent needs of a session: somewhere to add the audit row."""

    def __init__(self):
        self.added: list = []

    def add(self, row) -> None:
        self.added.append(row)


def transient_lead(**fields) -> Lead:
    defaults = {"id": "L1", "email_consent": True, "sms_consent": True, "phone": "+14155550100",
                "email_opt_out_reason": None, "sms_opt_out_reason": None}  # fmt: skip
    return Lead(**(defaults | fields))


@pytest.mark.parametrize(
    ("body", "keyword"),
    [
        *((word, "stop") for word in ("STOP", "stopall", "Unsubscribe", "cancel", "END", "quit",
                                      "revoke", "optout", " Stop. ", "stop!", "STOP!.")),
        ("start", "start"), ("Unstop", "start"), ("YES", "yes"), ("yes!", "yes"),
        ("help", "help"), ("INFO", "help"),
        (None, None), ("", None), ("stop please", None), ("stopX", None), ("xSTOP", None),
        ("yes please", None), (".", None), ("STOP STOP", None),
    ],
)  # fmt: skip
def test_sms_keywords(body, keyword):
    assert sms_keyword(body) == keyword


@pytest.mark.parametrize(
    ("kind", "data", "sms_consent", "recorded", "effect"),
    [
        ("sms.reply", {"body": "Stop"}, True, "sms.stop", ("sms", False, "stop", "Stop")),
        ("sms.reply", {"body": "START"}, False, "sms.start", ("sms", True, "start", "START")),
        ("sms.reply", {"body": "yes"}, False, "sms.start", ("sms", True, "start", "yes")),
        ("sms.reply", {"body": "yes"}, True, "sms.reply", None),
        ("sms.reply", {"body": "help"}, False, "sms.reply", None),
        ("sms.reply", {"body": "Sounds good"}, True, "sms.reply", None),
        ("sms.stop", {}, True, "sms.stop", ("sms", False, "stop", None)),
        ("sms.start", {}, False, "sms.start", ("sms", True, "start", None)),
        ("email.unsubscribe", {"reason": "x"}, True, "email.unsubscribe",
         ("email", False, "unsubscribe", None)),
        ("email.spamreport", {}, True, "email.spamreport", ("email", False, "spam_report", None)),
        ("email.bounce", {"reason": "550 no such user"}, True, "email.bounce",
         ("email", False, "hard_bounce", "550 no such user")),
        ("email.bounce", {"bounce_type": "hard"}, True, "email.bounce",
         ("email", False, "hard_bounce", None)),
        *(("email.bounce", {"bounce_type": soft}, True, "email.bounce", None)
          for soft in ("soft", "blocked", "deferred")),
        ("email.dropped", {"reason": "Bounced Address"}, True, "email.dropped",
         ("email", False, "hard_bounce", "Bounced Address")),
        ("email.dropped", {"reason": "Unsubscribed Address"}, True, "email.dropped",
         ("email", False, "unsubscribe", "Unsubscribed Address")),
        ("email.dropped", {"reason": "Spam Reporting Address"}, True, "email.dropped",
         ("email", False, "spam_report", "Spam Reporting Address")),
        ("email.dropped", {"reason": "Invalid"}, True, "email.dropped",
         ("email", False, "bad_address", "Invalid")),
        # About the message, not the address: nothing changes.
        *(("email.dropped", {"reason": reason}, True, "email.dropped", None)
          for reason in ("Invalid SMTPAPI header", "Spam Content", "Recipient List over Package "
                         "Quota", "", None)),
        ("email.dropped", {}, True, "email.dropped", None),
        *(("sms.undelivered", {"error_code": code}, True, "sms.undelivered",
           ("sms", False, "bad_address", f"Twilio {code}")) for code in ("30005", 30006)),
        ("sms.undelivered", {"error_code": "30003"}, True, "sms.undelivered", None),
        ("sms.undelivered", {}, True, "sms.undelivered", None),
        ("email.click", {"reason": "x", "body": "STOP"}, True, "email.click", None),
    ],
)  # fmt: skip
def test_classify_response(kind, data, sms_consent, recorded, effect):
    lead = transient_lead(sms_consent=sms_consent)
    expected = ConsentEffect(*effect) if effect else None
    assert classify_response(kind, data, lead) == (recorded, expected)


def test_a_dropped_email_to_a_bounced_address_opts_email_out():
    lead, session = transient_lead(), RecordingSession()
    _kind, effect = classify_response("email.dropped", {"reason": "Bounced Address"}, lead)
    assert set_consent(session, lead, effect, "sg-1") is True
    assert (lead.email_consent, lead.email_opt_out_reason) == (False, "hard_bounce: Bounced "
                                                                "Address")  # fmt: skip
    assert (lead.sms_consent, lead.sms_opt_out_reason) == (True, None)


def test_stop_then_start_records_each_change_with_the_sms_body():
    lead, session = transient_lead(), RecordingSession()
    for body, source in (("Stop", "tw-1"), ("START", "tw-2")):
        _kind, effect = classify_response("sms.reply", {"body": body}, lead)
        assert set_consent(session, lead, effect, source) is True
        if body == "Stop":
            assert (lead.sms_consent, lead.sms_opt_out_reason) == (False, "stop: Stop")
    assert (lead.sms_consent, lead.sms_opt_out_reason) == (True, None)  # START clears the why
    audit = [(c.lead_id, c.channel, c.opted_in, c.reason, c.detail, c.source_event_id)
             for c in session.added]  # fmt: skip
    assert audit == [("L1", "sms", False, "stop", "Stop", "tw-1"),
                     ("L1", "sms", True, "start", "START", "tw-2")]  # fmt: skip
    assert all(isinstance(c, ConsentChange) for c in session.added)


def test_set_consent_changes_nothing_when_nothing_changes():
    lead, session = transient_lead(sms_consent=False, sms_opt_out_reason="stop: STOP"), \
        RecordingSession()  # fmt: skip
    assert set_consent(session, lead, ConsentEffect("sms", False, "stop", "STOP again")) is False
    assert set_consent(session, lead, ConsentEffect("email", True, "manual")) is False
    assert session.added == [] and lead.sms_opt_out_reason == "stop: STOP"
    assert set_consent(session, lead, ConsentEffect("email", False, "manual")) is True
    assert (lead.email_opt_out_reason, session.added[0].detail) == ("manual", None)
    assert session.added[0].source_event_id is None


def test_opt_out_reason():
    assert opt_out_reason(transient_lead(), "email") is None
    assert opt_out_reason(transient_lead(), "sms") is None
    out = transient_lead(email_consent=False, email_opt_out_reason="hard_bounce: 550")
    assert opt_out_reason(out, "email") == "opted out of email (hard_bounce: 550)"
    assert opt_out_reason(out, "sms") is None  # the channels are separate
    assert opt_out_reason(transient_lead(email_consent=False), "email") == (
        "opted out of email (no reason recorded)")  # fmt: skip
    stopped = transient_lead(sms_consent=False, sms_opt_out_reason="stop: STOP", phone=None)
    assert opt_out_reason(stopped, "sms") == "opted out of SMS (stop: STOP)"
    assert opt_out_reason(stopped, "email") is None
    assert opt_out_reason(transient_lead(sms_consent=False), "sms") == (
        "opted out of SMS (no reason recorded)")  # fmt: skip
    assert opt_out_reason(transient_lead(phone=None), "sms") == "lead has no phone number"
    assert opt_out_reason(transient_lead(phone=""), "sms") == "lead has no phone number"


# --- the property ---------------------------------------------------------------------------

# What the lead does, and what a person does, in any order, between sends. The expected
# effect is written out here independently of models/consent.py.
OPT_EVENTS = [
    ("sms.reply", {"body": "STOP"}, ("sms", False)),
    ("sms.reply", {"body": "quit"}, ("sms", False)),
    ("sms.reply", {"body": "END"}, ("sms", False)),
    ("sms.stop", {}, ("sms", False)),
    ("sms.reply", {"body": "START"}, ("sms", True)),
    ("sms.reply", {"body": "unstop"}, ("sms", True)),
    ("sms.reply", {"body": "YES"}, "yes"),
    ("sms.reply", {"body": "Sounds good"}, None),
    ("email.unsubscribe", {}, ("email", False)),
    ("email.spamreport", {}, ("email", False)),
    ("email.bounce", {}, ("email", False)),
    ("email.bounce", {"bounce_type": "soft"}, None),
    ("email.click", {}, None),
]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.sampled_from(["email", "sms"])),
        st.tuples(st.just("event"), st.sampled_from(range(len(OPT_EVENTS)))),
        st.tuples(st.just("manual"), st.sampled_from(["email", "sms"]), st.booleans()),
    ),
    max_size=20,
)


@hypothesis_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations)
def test_nothing_reaches_an_opted_out_channel(
    ops, provider_settings, database, providers, fixture_definitions
):
    lead, intake = new_lead(database, fixture_definitions)
    sender = Sender(build_activities(provider_settings, database).lead, lead.id)
    consent = {"email": True, "sms": True}
    expected_sends = {"email": 0, "sms": 0}
    for op in ops:
        if op[0] == "send":
            outcome = sender.send(op[1])
            assert outcome.status == ("sent" if consent[op[1]] else "skipped"), (op, consent)
            expected_sends[op[1]] += consent[op[1]]
        elif op[0] == "event":
            kind, data, effect = OPT_EVENTS[op[1]]
            intake.store_events([EventIn(lead_id=lead.id, type=kind, data=data)])
            if effect == "yes":
                effect = ("sms", True) if not consent["sms"] else None
            if effect:
                consent[effect[0]] = effect[1]
        else:
            _manual, channel, opted_in = op
            with database.sessions.begin() as session:
                effect = ConsentEffect(channel, opted_in, "manual")
                set_consent(session, session.get(Lead, lead.id), effect)
            consent[channel] = opted_in
    # The provider's own log: exactly the sends made while the channel was allowed.
    assert providers.for_lead(lead.id, lead.phone) == expected_sends
    with database.sessions() as session:
        rows = session.scalars(select(Message).where(Message.lead_id == lead.id)).all()
        assert sum(m.status == "sent" for m in rows) == sum(expected_sends.values())
        recorded = session.scalars(select(Response.type).where(Response.lead_id == lead.id))
        assert all(kind in {e[0] for e in OPT_EVENTS} | {"sms.start"} for kind in recorded)
