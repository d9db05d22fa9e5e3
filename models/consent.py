"""Consent: who may be contacted on which channel. The one writer of a lead's consent.

Opt-outs come from the lead's responses (unsubscribe, STOP and its synonyms, a
hard bounce, a spam report), from providers (an address they reject as bad,
Twilio's 21610 for a number that replied STOP to Twilio) and from people
(`nurture consent`). START re-subscribes SMS. Every change is a ConsentChange
row; the send activity reads the lead's flags at send time, whatever sequence
is running.

Intake (`POST /leads`, import, forms) is told each channel's consent with its status,
source, time and legal basis (`Told`); a new lead told nothing starts as delivery.yaml's
`consent.defaults` say for its country, and SMS needs explicit consent. Email consent given
where double opt-in applies waits (`pending`) for the lead to confirm it by the link in a
confirmation email (docs/consent.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from models.db import ConsentChange, Lead, new_id
from models.definitions import CHANNELS, ChannelDefault, ConsentPolicy

# Carrier and Twilio conventions: one word, any case, nothing else in the message.
SMS_STOP_WORDS = frozenset(
    {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"}
)
SMS_START_WORDS = frozenset({"START", "UNSTOP"})
SMS_YES = "YES"  # an opt-in from a number that opted out; an ordinary reply otherwise
SMS_HELP_WORDS = frozenset({"HELP", "INFO"})

# Bounce types that say nothing about the address itself: no opt-out.
SOFT_BOUNCES = frozenset({"soft", "blocked", "deferred"})
# SendGrid drops a message to an address on one of its suppression lists; the reason says
# which. Ours must agree, or every later send is dropped again. The reason is one of a fixed
# set: "Invalid" is an invalid address, but "Invalid SMTPAPI header" (or "Spam Content") is
# about the message, so the whole reason is matched.
DROP_REASONS = {
    "bounced address": "hard_bounce",
    "unsubscribed address": "unsubscribe",
    "spam reporting address": "spam_report",
    "invalid": "bad_address",
}
# Twilio delivery error codes that say the number cannot take SMS.
UNDELIVERABLE_NUMBER_CODES = frozenset({"30005", "30006"})  # unknown number; landline
# Opt-outs about the address itself, not the person's wish.
ADDRESS_PROBLEMS = ("hard_bounce", "bad_address")


@dataclass(frozen=True)
class ConsentEffect:
    channel: str
    opted_in: bool
    reason: str
    detail: str | None = None
    # What a person changing it by hand says of it: where it was given (or withdrawn), on
    # which legal basis (LEGAL_BASES).
    source: str | None = None
    basis: str | None = None


def sms_keyword(body: str | None) -> str | None:
    """The keyword an inbound SMS is, if it is one word of STOP, START, YES or HELP."""
    word = (body or "").strip().rstrip(".!").upper()
    if word in SMS_STOP_WORDS:
        return "stop"
    if word in SMS_START_WORDS:
        return "start"
    if word == SMS_YES:
        return "yes"
    if word in SMS_HELP_WORDS:
        return "help"
    return None


def classify_response(
    response_type: str, data: dict[str, Any], lead: Lead
) -> tuple[str, ConsentEffect | None]:
    """The response type to record (an SMS reply `STOP` is an `sms.stop`) and its effect
    on consent, if any. (`HELP` stays an `sms.reply`: the webhook answers it.)"""
    if response_type == "sms.reply":
        keyword = sms_keyword(data.get("body"))
        if keyword == "stop":
            response_type = "sms.stop"
        elif keyword == "start" or (keyword == "yes" and not lead.sms_consent):
            response_type = "sms.start"
    detail = data.get("body") or data.get("reason")
    effects = {
        "email.unsubscribe": ConsentEffect("email", False, "unsubscribe"),
        "email.spamreport": ConsentEffect("email", False, "spam_report"),
        "sms.stop": ConsentEffect("sms", False, "stop", detail),
        "sms.start": ConsentEffect("sms", True, "start", detail),
    }
    effect = effects.get(response_type)
    if response_type == "email.bounce" and data.get("bounce_type", "hard") not in SOFT_BOUNCES:
        effect = ConsentEffect("email", False, "hard_bounce", detail)
    if response_type == "email.dropped":
        found = DROP_REASONS.get(str(data.get("reason") or "").strip().lower())
        effect = ConsentEffect("email", False, found, detail) if found else None
    if response_type == "sms.undelivered" and str(data.get("error_code")) in (
        UNDELIVERABLE_NUMBER_CODES
    ):
        effect = ConsentEffect("sms", False, "bad_address", f"Twilio {data['error_code']}")
    return response_type, effect


def set_consent(
    session: Session,
    lead: Lead,
    effect: ConsentEffect,
    source_event_id: str | None = None,
) -> bool:
    """Apply `effect` to the lead in the caller's transaction; True if consent changed.

    Only changes are recorded: a second STOP from an opted-out number changes nothing.
    """
    flag = f"{effect.channel}_consent"
    waiting = effect.channel == "email" and lead.email_confirmation == PENDING
    if getattr(lead, flag) == effect.opted_in and not waiting:
        return False
    if waiting:  # an opt-out (or a person's opt-in) ends the wait for a confirmation
        lead.email_confirmation = None if effect.opted_in else "withdrawn"
    setattr(lead, flag, effect.opted_in)
    reason = None if effect.opted_in else _reason_text(effect)
    setattr(lead, f"{effect.channel}_opt_out_reason", reason)
    session.add(
        ConsentChange(
            lead_id=lead.id,
            channel=effect.channel,
            opted_in=effect.opted_in,
            reason=effect.reason,
            detail=effect.detail,
            source_event_id=source_event_id,
            status="given" if effect.opted_in else "withdrawn",
            source=effect.source,
            basis=effect.basis,
        )
    )
    return True


def give_consent(
    session: Session, lead: Lead, channel: str, detail: str, source_event_id: str | None,
    policy: ConsentPolicy | None = None, created: bool = False,
) -> None:  # fmt: skip
    """Consent the lead gave (a ticked box on a form): recorded even when the lead was
    opted in already, since the record of when and where it was given is the evidence.
    Email waits for a confirmation where `policy` asks for double opt-in."""
    told = Told("given", "consent", detail, datetime.now(UTC))
    record_told(session, lead, channel, told, policy or ConsentPolicy(), "form", created,
                source_event_id, detail)  # fmt: skip


def _reason_text(effect: ConsentEffect) -> str:
    return f"{effect.reason}: {effect.detail}" if effect.detail else effect.reason


def opt_out_reason(lead: Lead, channel: str) -> str | None:
    """Why nothing may go to this lead on `channel` now, or None if it may."""
    if channel == "email" and not lead.email_consent:
        if lead.email_confirmation == PENDING:
            return "email consent waits for the lead's confirmation (double opt-in)"
        return f"opted out of email ({lead.email_opt_out_reason or 'no reason recorded'})"
    if channel == "sms":
        if not lead.sms_consent:
            return f"opted out of SMS ({lead.sms_opt_out_reason or 'no reason recorded'})"
        if not lead.phone:
            return "lead has no phone number"
    return None


# --- consent at intake ---------------------------------------------------------------------

# The legal bases of GDPR article 6(1), as a `basis` is written.
LEGAL_BASES = ("consent", "contract", "legal_obligation", "vital_interests", "public_task",
               "legitimate_interest")  # fmt: skip
INTAKE_STATUSES = ("given", "withdrawn", "pending")
PENDING = "pending"
PENDING_REASON = "pending: waiting for the lead to confirm (double opt-in)"
EXPIRED_REASON = "not confirmed: the double opt-in link expired"
# A send held for a confirmation asks again after a quarter of the time it has waited,
# within these bounds: a lead confirming soon gets its first email soon (most confirm
# within minutes), and one that never does costs about 50 checks in 7 days, not one a
# minute.
RECHECK_MIN, RECHECK_MAX = timedelta(minutes=5), timedelta(hours=6)


@dataclass(frozen=True)
class Told:
    """A channel's consent as intake was told it: given, withdrawn or pending (to be
    confirmed), on which legal basis, where it was collected and when."""

    status: str
    basis: str | None
    source: str
    at: datetime


def apply_intake_consent(
    session: Session, lead: Lead, created: bool, told: dict[str, Told], policy: ConsentPolicy,
    cause: str, source_event_id: str | None = None,
) -> None:  # fmt: skip
    """What intake was told about each channel, in the caller's transaction; a channel it
    was told nothing about starts, for a new lead, as the policy's default for its country
    (a lead we had keeps what it has). `cause`: api, import, form (the rows' reason)."""
    if told and (lead.id is None or lead in session.new):
        session.flush()  # the rows name the lead: its row goes first
    for channel in CHANNELS:
        if channel in told:
            record_told(session, lead, channel, told[channel], policy, cause, created,
                        source_event_id)  # fmt: skip
        elif created:
            start_with_default(lead, channel, getattr(policy.defaults, channel))


def start_with_default(lead: Lead, channel: str, rule: ChannelDefault) -> None:
    """A new lead told nothing about `channel`: opted in or out as `rule` says (no row: no
    consent was given or withdrawn; the reason says why it may not be sent to)."""
    country = (lead.country or "").upper()
    allowed = rule.starts_opted_in(country)
    setattr(lead, f"{channel}_consent", allowed)
    if allowed:
        reason = None
    elif rule.default == "opted_in":
        reason = f"no consent given: {country} is an opt-in country"
    elif channel == "sms":
        reason = "no consent given: SMS needs explicit consent"
    else:
        reason = "no consent given (the default is opted out)"
    setattr(lead, f"{channel}_opt_out_reason", reason)


def record_told(
    session: Session, lead: Lead, channel: str, told: Told, policy: ConsentPolicy, cause: str,
    created: bool, source_event_id: str | None = None, detail: str | None = None,
) -> None:  # fmt: skip
    """Apply and record what intake was told: a row even when nothing changes (the record
    of when and where consent was given is the evidence)."""
    if told.status == "withdrawn":
        allowed, status = False, "withdrawn"
        _set_flag(lead, channel, False, f"withdrawn ({told.source})")
    elif channel == "email" and _needs_confirmation(lead, told, policy, created):
        allowed, status = False, PENDING
        if lead.email_confirmation != PENDING:  # else the running request goes on
            lead.email_confirmation, lead.email_confirmation_id = PENDING, new_id()
        _set_flag(lead, channel, False, PENDING_REASON)
    else:
        allowed, status = True, "given"
        reason = getattr(lead, f"{channel}_opt_out_reason") or ""
        if not reason.startswith(ADDRESS_PROBLEMS):  # a given consent does not make an
            _set_flag(lead, channel, True, None)  # address deliverable
    session.add(ConsentChange(
        lead_id=lead.id, channel=channel, opted_in=allowed, reason=cause, detail=detail,
        source_event_id=source_event_id, status=status, source=told.source,
        given_at=told.at, basis=told.basis,
    ))  # fmt: skip


def _needs_confirmation(lead: Lead, told: Told, policy: ConsentPolicy, created: bool) -> bool:
    """Whether email consent given now waits for the lead's confirmation: asked for
    (`pending`), or given as consent where double opt-in applies to a lead not opted in
    already. A confirmed lead, or an address a provider refused, is not asked again."""
    if (lead.email_opt_out_reason or "").startswith(ADDRESS_PROBLEMS) and not created:
        return False
    if told.status == PENDING:
        return not (lead.email_consent and lead.email_confirmation == "confirmed")
    applies = told.basis == "consent" and policy.double_opt_in.applies(lead.country)
    return applies and (created or not lead.email_consent)


def _set_flag(lead: Lead, channel: str, allowed: bool, reason: str | None) -> None:
    setattr(lead, f"{channel}_consent", allowed)
    setattr(lead, f"{channel}_opt_out_reason", reason)
    if channel == "email" and lead.email_confirmation == PENDING and reason != PENDING_REASON:
        lead.email_confirmation = None if allowed else "withdrawn"  # told otherwise meanwhile


def confirm_email(session: Session, lead: Lead, confirmation_id: str, at: datetime) -> str:
    """The lead followed its confirmation link: `confirmed` now, `already` confirmed, or
    `ended` (expired, withdrawn, or the link of an earlier request)."""
    if lead.email_confirmation_id != confirmation_id:
        return "ended"
    if lead.email_confirmation == "confirmed":
        return "already"
    if lead.email_confirmation != PENDING:
        return "ended"
    lead.email_confirmation = "confirmed"
    lead.email_consent, lead.email_opt_out_reason = True, None
    session.add(ConsentChange(
        lead_id=lead.id, channel="email", opted_in=True, reason="confirmed",
        detail="double opt-in link", status="confirmed", source="double opt-in link",
        given_at=at, basis="consent",
    ))  # fmt: skip
    return "confirmed"


def expire_confirmation(session: Session, lead: Lead, confirmation_id: str) -> bool:
    """The link was not followed in time: email stays off, recorded. False if the request
    is over already (confirmed, withdrawn, or replaced)."""
    if not confirmation_pending(lead, confirmation_id):
        return False
    lead.email_confirmation, lead.email_opt_out_reason = "expired", EXPIRED_REASON
    session.add(ConsentChange(
        lead_id=lead.id, channel="email", opted_in=False, reason="confirmation_expired",
        status="expired",
    ))  # fmt: skip
    return True


def confirmation_pending(lead: Lead | None, confirmation_id: str) -> bool:
    return (
        lead is not None
        and lead.email_confirmation == PENDING
        and lead.email_confirmation_id == confirmation_id
    )


def confirmation_recheck(
    lead: Lead, channel: str, claimed_at: datetime, now: datetime
) -> datetime | None:
    """When an email held for the lead's confirmation asks again; None if it is not held.
    Held, not skipped: the sequence's first email goes once the lead confirms."""
    if channel != "email" or lead.email_confirmation != PENDING:
        return None
    waited = max(now - claimed_at, timedelta())
    return now + min(max(waited / 4, RECHECK_MIN), RECHECK_MAX)
