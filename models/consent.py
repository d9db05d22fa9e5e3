"""Consent: who may be contacted on which channel. The one writer of a lead's consent.

Opt-outs come from the lead's responses (unsubscribe, STOP and its synonyms, a
hard bounce, a spam report), from providers (an address they reject as bad,
Twilio's 21610 for a number that replied STOP to Twilio) and from people
(`nurture consent`). START re-subscribes SMS. Every change is a ConsentChange
row; the send activity reads the lead's flags at send time, whatever sequence
is running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from models.db import ConsentChange, Lead

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
    on consent, if any."""
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
    if getattr(lead, flag) == effect.opted_in:
        return False
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
        )
    )
    return True


def give_consent(
    session: Session, lead: Lead, channel: str, detail: str, source_event_id: str | None
) -> None:
    """Consent the lead gave (a ticked box on a form): recorded even when the lead was
    opted in already, since the record of when and where it was given is the evidence.
    An address the provider rejects stays off: a ticked box does not make it deliverable."""
    reason = getattr(lead, f"{channel}_opt_out_reason") or ""
    if not reason.startswith(ADDRESS_PROBLEMS):
        setattr(lead, f"{channel}_consent", True)
        setattr(lead, f"{channel}_opt_out_reason", None)
    session.add(ConsentChange(lead_id=lead.id, channel=channel, opted_in=True, reason="form",
                              detail=detail, source_event_id=source_event_id))  # fmt: skip


def _reason_text(effect: ConsentEffect) -> str:
    return f"{effect.reason}: {effect.detail}" if effect.detail else effect.reason


def opt_out_reason(lead: Lead, channel: str) -> str | None:
    """Why nothing may go to this lead on `channel` now, or None if it may."""
    if channel == "email" and not lead.email_consent:
        return f"opted out of email ({lead.email_opt_out_reason or 'no reason recorded'})"
    if channel == "sms":
        if not lead.sms_consent:
            return f"opted out of SMS ({lead.sms_opt_out_reason or 'no reason recorded'})"
        if not lead.phone:
            return "lead has no phone number"
    return None
