"""Provider webhooks: SendGrid events and Inbound Parse, Twilio inbound SMS and status.

Each request is verified before anything is read into the inbox (a bad or missing
signature is a 403 and nothing is stored), then its events are committed, and only
then answered 2xx; signalling the lead workflows follows (the relay retries).
Providers retry whatever is not answered 2xx, so events we do not use are ignored
(and counted) rather than refused. How events find their lead and message (and why a
rep's never do): docs/webhooks.md.

(No `from __future__ import annotations`: FastAPI must resolve the `Annotated`
dependencies of the handlers defined inside `webhook_router`.)
"""

import binascii
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ValidationError
from sendgrid.helpers.eventwebhook import EventWebhook
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from api import provider_webhook_docs as docs
from channels.base import OutgoingSms, SmsChannel
from channels.links import Links
from channels.out_of_office import return_date
from channels.replies import AUTO_REPLY, is_automatic
from infra.settings import Settings
from models.consent import sms_keyword
from models.db import Lead, Message, new_id, utcnow
from services import operations
from services.intake import EventIn, Intake
from services.runtime import build_channels

log = logging.getLogger("nurture.webhooks")

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
SENDGRID_EVENTS = {
    "processed": "email.processed",
    "delivered": "email.delivered",
    "deferred": "email.deferred",
    "open": "email.open",
    "click": "email.click",
    "bounce": "email.bounce",
    "dropped": "email.dropped",
    "spamreport": "email.spamreport",
    "unsubscribe": "email.unsubscribe",
    "group_unsubscribe": "email.unsubscribe",
}
# SendGrid events we log loudly when they are about a rep's notification: the rep may not
# be getting handoffs by email.
REP_TROUBLE = {"bounce", "dropped", "spamreport"}
MAX_TEXT = 10_000  # characters of an inbound email kept
# SendGrid's `dkim` field: "{@example.com : pass, @other.example : fail}".
DKIM_RESULT = re.compile(r"@([A-Za-z0-9.-]+)\s*:\s*([A-Za-z]+)")


class WebhookOut(BaseModel):
    accepted: int
    duplicates: int
    pending: int = 0  # kept for a lead (or a message) not known yet
    ignored: int = 0  # events of kinds Nurture does not use, or about messages to reps
    unverified: int = 0  # replies kept but not given to a lead: SPF and DKIM did not pass


REFUSAL_REASON = 120  # characters of a refusal's reason kept in its count


def webhook_router(intake: Intake, settings: Settings, links: Links) -> APIRouter:
    router = APIRouter(prefix="/webhooks", tags=["webhooks"],
                       route_class=refusals_counted(intake.sessions))  # fmt: skip
    basic = HTTPBasic(auto_error=False)
    # The API's relay expires what waits for a lead; this is where its settings reach it.
    intake.pending_retention = timedelta(days=settings.pending_event_retention_days)

    @router.post("/sendgrid/events", response_model=WebhookOut, **docs.SENDGRID_EVENTS)
    async def sendgrid_events(request: Request) -> WebhookOut:
        """SendGrid Event Webhook batch; Signed Event Webhook required."""
        raw = await request.body()
        _verify_sendgrid(raw, request, settings)
        events, ignored = _sendgrid_batch(raw)
        return await _accept(intake, events, "sendgrid", ignored)

    @router.post("/sendgrid/inbound", response_model=WebhookOut, **docs.INBOUND_PARSE)
    async def sendgrid_inbound(
        request: Request,
        credentials: Annotated[HTTPBasicCredentials | None, Depends(basic)],
        _challenge: Annotated[None, Depends(docs.basic_challenge)],
    ) -> WebhookOut:
        """SendGrid Inbound Parse (multipart): a reply, matched by its reply-to token or
        its sender. Authenticated with the basic-auth password SENDGRID_INBOUND_SECRET."""
        _verify_inbound_parse(credentials, settings)
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        reply = _inbound_reply(fields, links)
        if reply is None:
            raise HTTPException(400, "no sender address (`from`) in the parsed email")
        event, verified = reply
        if verified:
            return await _accept(intake, [event], "sendgrid")
        result = await run_in_threadpool(intake.keep_unverified, event, "sendgrid")
        return WebhookOut(accepted=result.unverified, duplicates=result.duplicates,
                          unverified=result.unverified)  # fmt: skip

    help_desk = HelpDesk(intake, settings)

    @router.post("/twilio/sms", response_class=Response, **docs.TWILIO_SMS)
    async def twilio_sms(request: Request) -> Response:
        """Inbound SMS. STOP/START and their synonyms change consent; anything else is an
        `sms.reply`, and HELP (or INFO) is also answered with delivery.yaml's help text,
        by SMS. Answers with empty TwiML."""
        form = await _verified_twilio_form(request, settings)
        sid = form.get("MessageSid") or form.get("SmsMessageSid")
        if not sid or not form.get("From"):
            raise HTTPException(400, "MessageSid and From are required")
        data = {"body": form.get("Body", "")[:1600], "to": form.get("To")}
        event = _event(type="sms.reply", phone=form["From"], event_id=f"twilio:{sid}", data=data)
        answer = await _accept(intake, [event], "twilio")
        if sms_keyword(data["body"]) == "help" and answer.accepted:  # not a retry's repeat
            await run_in_threadpool(help_desk.answer, sid, event.phone)
        return Response(str(MessagingResponse()), media_type="application/xml")

    @router.post("/twilio/status", response_model=WebhookOut, **docs.TWILIO_STATUS)
    async def twilio_status(request: Request) -> WebhookOut:
        """Delivery status callbacks of the SMS we sent: the status only moves forward; one
        that arrives before the send has stored the SID waits for it (`pending`)."""
        form = await _verified_twilio_form(request, settings)
        sid, status, error_code = _twilio_status(form)
        # Matched by the SID only: the message's lead, never whoever has the `To` number
        # (a rep's notification SMS has no message row, and touches no lead).
        result, waiting = await run_in_threadpool(intake.record_status, sid, status, error_code)
        await intake.deliver_now(result.stored)
        return WebhookOut(accepted=0 if result.duplicates else 1, duplicates=result.duplicates,
                          pending=int(waiting))  # fmt: skip

    return router


# The answer to HELP when delivery.yaml's `consent.sms_help` gives none.
DEFAULT_HELP = "{company}: marketing texts. Reply STOP to opt out, START to opt back in."


class HelpDesk:
    """Answers an SMS `HELP` with the help text through the SMS channel (Twilio, or the
    outbox), once per inbound message (its SID), whatever the number's consent: carriers
    require it. The answer is a `messages` row of the lead with that number (template
    `sms_help`, not counted for caps); a number no lead has is answered too, and logged."""

    def __init__(self, intake: Intake, settings: Settings):
        self.intake, self.settings = intake, settings
        self.text = intake.definitions.consent.sms_help or DEFAULT_HELP.format(
            company=settings.sender_company
        )
        self._channel: SmsChannel | None = None

    def answer(self, sid: str, number: str) -> None:
        message_id = new_id()
        lead_id = self._lead_of(number)
        if lead_id is not None and not self._claim(message_id, sid, lead_id, number):
            return  # answered already
        try:
            result = self._sms().send_sms(OutgoingSms(message_id, number, self.text,
                                                      tags={"purpose": "help"}))  # fmt: skip
        except Exception as exc:  # refused, or unreachable: the event is stored all the same
            log.warning("could not answer HELP from %s: %s", number, exc)
            self._record(message_id, lead_id, status="failed", status_reason=str(exc))
            return
        self._record(message_id, lead_id, status="sent", sent_at=utcnow(),
                     provider=result.provider,
                     provider_message_id=result.provider_message_id)  # fmt: skip
        if lead_id is None:
            log.info("answered HELP from %s, a number no lead has", number)

    def _sms(self) -> SmsChannel:
        if self._channel is None:
            self._channel = build_channels(self.settings)[1]
        return self._channel

    def _lead_of(self, number: str) -> str | None:
        with self.intake.sessions() as session:  # shared phones: the newest lead, as events
            return session.scalars(select(Lead.id).where(Lead.phone == number)
                                   .order_by(Lead.created_at.desc())).first()  # fmt: skip

    def _claim(self, message_id: str, sid: str, lead_id: str, number: str) -> bool:
        try:
            with self.intake.sessions.begin() as session:
                session.add(Message(id=message_id, send_key=f"help:{sid}", lead_id=lead_id,
                                    channel="sms", template="sms_help", recipient=number,
                                    body=self.text, status="sending",
                                    counts_for_caps=False))  # fmt: skip
        except IntegrityError:
            return False
        return True

    def _record(self, message_id: str, lead_id: str | None, **values) -> None:
        if lead_id is not None:
            with self.intake.sessions.begin() as session:
                session.execute(update(Message).where(Message.id == message_id).values(**values))


async def _accept(
    intake: Intake, events: list[EventIn], source: str, ignored: int = 0
) -> WebhookOut:
    """Commit the events (off the event loop), then signal their leads' workflows."""
    result = await run_in_threadpool(
        intake.store_events, events, source=source, unknown_ids_pending=True
    )
    await intake.deliver_now(result.stored)
    return WebhookOut(accepted=len(result.stored) + len(result.pending),
                      duplicates=result.duplicates, pending=len(result.pending),
                      ignored=ignored + result.ignored)  # fmt: skip


# --- verification ----------------------------------------------------------------------------


def _verify_sendgrid(raw: bytes, request: Request, settings: Settings) -> None:
    """ECDSA P-256 over timestamp + raw body, with SendGrid's key; timestamp in tolerance."""
    key = settings.sendgrid_webhook_public_key
    if not key:
        raise HTTPException(403, "SENDGRID_WEBHOOK_PUBLIC_KEY is not set: events refused")
    signature = request.headers.get(SENDGRID_SIGNATURE)
    timestamp = request.headers.get(SENDGRID_TIMESTAMP)
    if not signature or not timestamp:
        raise HTTPException(403, f"missing {SENDGRID_SIGNATURE} or {SENDGRID_TIMESTAMP}")
    try:
        age = abs(time.time() - int(timestamp))
    except ValueError:
        raise HTTPException(403, "the webhook timestamp is not a number") from None
    if age > settings.webhook_tolerance_seconds:
        raise HTTPException(403, "the webhook timestamp is outside the tolerance window")
    try:
        valid = _sendgrid_verifier(key).verify_signature(raw.decode("utf-8"), signature, timestamp)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        valid = False
    if not valid:
        raise HTTPException(403, "the SendGrid webhook signature does not match")


@functools.lru_cache(maxsize=4)
def _sendgrid_verifier(public_key: str) -> EventWebhook:
    """The key is parsed once, not on every webhook request (a hot path)."""
    return EventWebhook(public_key)


async def _verified_twilio_form(request: Request, settings: Settings) -> dict[str, str]:
    """The form of a request signed by Twilio (X-Twilio-Signature over our public URL)."""
    token = settings.twilio_auth_token
    if token is None:
        raise HTTPException(403, "TWILIO_AUTH_TOKEN is not set: Twilio webhooks refused")
    signature = request.headers.get("X-Twilio-Signature")
    if not signature:
        raise HTTPException(403, "missing X-Twilio-Signature")
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    # Twilio signs the URL it called: ours as the world sees it, not as uvicorn does.
    url = settings.public_url.rstrip("/") + request.url.path
    if request.url.query:
        url += f"?{request.url.query}"
    try:
        valid = RequestValidator(token.get_secret_value()).validate(url, form, signature)
    except (UnicodeError, ValueError):  # text Twilio could not have signed
        valid = False
    if not valid:
        raise HTTPException(403, "the Twilio signature does not match")
    return form


def _verify_inbound_parse(credentials: HTTPBasicCredentials | None, settings: Settings) -> None:
    """Inbound Parse posts with the basic-auth password SENDGRID_INBOUND_SECRET."""
    secret = settings.inbound_parse_secret
    if (
        secret is None
        or credentials is None
        or not hmac.compare_digest(
            credentials.password.encode(), secret.get_secret_value().encode()
        )
    ):
        raise HTTPException(403, "missing or wrong Inbound Parse credentials")


# --- translation -------------------------------------------------------------------------------


def _event(**fields: Any) -> EventIn:
    """An EventIn from provider data; a field we cannot use is a 400, never a 500."""
    try:
        return EventIn(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HTTPException(400, f"unusable event: {problems}") from None


def _sendgrid_batch(raw: bytes) -> tuple[list[EventIn], int]:
    """A verified Event Webhook body: the events we use, and how many were ignored."""
    try:
        batch = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HTTPException(400, "body is not JSON") from None
    if not isinstance(batch, list) or not all(isinstance(e, dict) for e in batch):
        raise HTTPException(400, "expected a JSON array of event objects")
    events, ignored = [], 0
    for index, item in enumerate(batch):
        try:
            event = _sendgrid_event(item, index)
        except HTTPException as exc:  # one unusable event must not hold up the batch:
            log.warning("SendGrid event ignored: %s", exc.detail)  # SendGrid would retry
            event = None  # the whole batch for a day
        if event is None:
            ignored += 1
        else:
            events.append(event)
    return events, ignored


def _twilio_status(form: dict[str, str]) -> tuple[str, str, str | None]:
    """A status callback's message SID, status and error code, checked to be Twilio's."""
    sid, status = form.get("MessageSid"), form.get("MessageStatus")
    if not sid or not status:
        raise HTTPException(400, "MessageSid and MessageStatus are required")
    if len(status) > 30 or len(sid) > 64 or "\x00" in sid + status:
        raise HTTPException(400, "MessageSid or MessageStatus is not one of Twilio's")
    error_code = form.get("ErrorCode") or None
    if error_code is not None and not re.fullmatch(r"\d{1,10}", error_code):
        raise HTTPException(400, "ErrorCode is not one of Twilio's (a number)")
    return sid, status, error_code


def _sendgrid_event(item: dict[str, Any], index: int) -> EventIn | None:
    """The event as the lead's, matched by our `message_id` custom arg and the recipient
    (`email`), else by the recipient alone; None for an event we do not use, or one
    about a notification to a rep (it echoes the handoff's `lead_id`, but the email was
    the rep's: their bounce or click is not the lead's)."""
    kind = SENDGRID_EVENTS.get(str(item.get("event")))
    if kind is None:
        return None  # e.g. group_resubscribe: not a response Nurture scores
    if item.get("handoff_id") or item.get("audience") == "rep":
        _log_rep_event(item)
        return None
    event_id = (
        item.get("sg_event_id")
        or hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()[:40]
    )
    try:
        occurred_at = datetime.fromtimestamp(int(item["timestamp"]), UTC)
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        occurred_at = None
    wanted = {"url": "url", "step_id": "step", "sequence_id": "sequence", "reason": "reason",
              "type": "bounce_type", "status": "smtp_status", "category": "category"}  # fmt: skip
    data = {ours: item[theirs] for theirs, ours in wanted.items() if theirs in item}
    # Not the `lead_id` custom arg: what names the lead is the message and its recipient.
    email = item.get("email") if isinstance(item.get("email"), str) else None
    if not email:
        raise HTTPException(400, f"event {index}: no recipient `email`")
    return _event(type=kind, email=email, event_id=f"sendgrid:{str(event_id)[:180]}",
                  occurred_at=occurred_at, message_id=_short(item.get("message_id")),
                  data=data)  # fmt: skip


def _log_rep_event(item: dict[str, Any]) -> None:
    kind, handoff = str(item.get("event"))[:30], str(item.get("handoff_id"))[:40]
    if kind in REP_TROUBLE:
        log.warning("a rep's handoff email (handoff %r) had a %s: %r", handoff, kind,
                    str(item.get("reason") or "")[:300])  # fmt: skip
    else:
        log.debug("a rep's handoff email (handoff %r): %r, ignored", handoff, kind)


def _short(value: Any) -> str | None:
    """One of our 32-character IDs, or None for anything else."""
    return value if isinstance(value, str) and 0 < len(value) <= 32 else None


def _inbound_reply(fields: dict[str, str], links: Links) -> tuple[EventIn, bool] | None:
    """An `email.reply` (an `email.auto_reply` if a machine sent it) and whether it is
    verified: the lead of the message its reply+token address names (signed by us), or
    else the lead with the sender's address, which counts only if SPF or DKIM passed for
    the sender's domain."""
    recipients = [address for _name, address in getaddresses([fields.get("to", "")])]
    envelope = _envelope(fields)
    envelope_to = envelope.get("to")
    if isinstance(envelope_to, list):
        recipients += [r for r in envelope_to if isinstance(r, str)]
    message_id = next((m for r in recipients if (m := links.read_reply(str(r)))), None)
    sender = parseaddr(fields.get("from", ""))[1] or None
    if sender is None and message_id is None:
        return None
    headers = HeaderParser().parsestr(fields.get("headers", ""))
    key = headers.get("Message-ID") or "|".join(
        fields.get(k, "") for k in ("from", "to", "subject", "text")
    )
    data = {"subject": fields.get("subject", "")[:500], "text": fields.get("text", "")[:MAX_TEXT],
            "from": sender}  # fmt: skip
    # An out-of-office is kept as its own type: neither engagement nor a reply.
    kind = "email.reply"
    if automatic := is_automatic(dict(headers.items()), fields.get("subject", "")):
        kind, data["automatic"] = AUTO_REPLY, automatic
        back = return_date(f"{data['subject']}\n{data['text']}", datetime.now(UTC))
        if back is not None:  # the sequence's next send may wait until then
            data["return_date"] = back.isoformat()
    event_id = f"inbound:{hashlib.sha256(key.encode()).hexdigest()[:40]}"
    if message_id is not None:  # the token wins over a From header anyone can write
        return _event(type=kind, message_id=message_id, event_id=event_id,
                      data=data), True  # fmt: skip
    verified = _vouched_for(sender, fields, envelope)
    if not verified:  # why it was not trusted, for whoever reads it
        data |= {"spf": fields.get("SPF", "")[:100], "dkim": fields.get("dkim", "")[:500]}
    return _event(type=kind, email=sender, event_id=event_id, data=data), verified


def _envelope(fields: dict[str, str]) -> dict[str, Any]:
    """Inbound Parse's SMTP envelope ({"to": [...], "from": ...}); {} if unreadable."""
    with contextlib.suppress(ValueError, AttributeError, RecursionError):
        envelope = json.loads(fields.get("envelope") or "{}")
        if isinstance(envelope, dict):
            return envelope
    return {}


def _vouched_for(sender: str, fields: dict[str, str], envelope: dict[str, Any]) -> bool:
    """Whether SendGrid's checks vouch for the sender's domain: a DKIM signature of that
    domain passed, or SPF passed for an envelope sender (return path) of that domain.
    SPF says nothing about the From header by itself: it checks the return path."""
    domain = sender.rpartition("@")[2].lower()
    signed = [d for d, verdict in DKIM_RESULT.findall(fields.get("dkim", "")[:2000])
              if verdict.lower() == "pass"]  # fmt: skip
    if any(_aligned(d.lower(), domain) for d in signed):
        return True
    spf = (fields.get("SPF") or "").strip().lower().split(" ", 1)[0]
    return_path = envelope.get("from") if isinstance(envelope.get("from"), str) else ""
    return spf == "pass" and _aligned(parseaddr(return_path)[1].rpartition("@")[2].lower(), domain)


def _aligned(checked: str, domain: str) -> bool:
    """The checked domain is the sender's, or its parent (a signature of example.com
    vouches for mail.example.com): DMARC's relaxed alignment, without a suffix list."""
    checked = checked.strip(".")
    if "." not in checked:  # not a top-level domain's word for everything under it
        return False
    return domain == checked or domain.endswith(f".{checked}")


def refusals_counted(sessions) -> type[APIRoute]:
    """A route class for webhooks: each request one refuses (4xx: nothing was stored) is
    counted by webhook and reason (services/operations.py, the console's Operations page),
    then answered as before. Numbers in a reason are written N, so a reason names a kind
    of refusal, not each request's."""

    class RefusalsCounted(APIRoute):
        def get_route_handler(self):
            handle = super().get_route_handler()
            if not self.path.startswith("/webhooks/"):
                return handle
            source = self.path.removeprefix("/webhooks/")  # sendgrid/events, crm...

            async def counted(request: Request) -> Response:
                try:
                    return await handle(request)
                except HTTPException as exc:
                    if 400 <= exc.status_code < 500:
                        reason = re.sub(r"\d+", "N", str(exc.detail))[:REFUSAL_REASON]
                        await run_in_threadpool(operations.count_refusal, sessions, source,
                                                exc.status_code, reason)  # fmt: skip
                    raise

            return counted

    return RefusalsCounted
