"""Provider webhooks: SendGrid events and Inbound Parse, Twilio inbound SMS and status.

Each request is verified before anything is read into the inbox (a bad or missing
signature is a 403 and nothing is stored), then its events are committed, and only
then answered 2xx; signalling the lead workflows follows (the relay retries).
Providers retry whatever is not answered 2xx, so events we do not use are ignored
(and counted) rather than refused.

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
import time
from datetime import UTC, datetime
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ValidationError
from sendgrid.helpers.eventwebhook import EventWebhook
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from channels.links import Links
from models.db import Message
from nurture.intake import EventIn, Intake
from nurture.settings import Settings

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
# Twilio statuses worth a response row; the others only update the message.
TWILIO_STATUSES = {"delivered": "sms.delivered", "undelivered": "sms.undelivered",
                   "failed": "sms.undelivered"}  # fmt: skip
MAX_TEXT = 10_000  # characters of an inbound email kept


class WebhookOut(BaseModel):
    accepted: int
    duplicates: int
    pending: int = 0  # kept for a lead not known yet
    ignored: int = 0  # events of kinds Nurture does not use


def webhook_router(intake: Intake, settings: Settings, links: Links) -> APIRouter:
    router = APIRouter(prefix="/webhooks", tags=["webhooks"])
    basic = HTTPBasic(auto_error=False)

    async def accept(events: list[EventIn], source: str, ignored: int = 0) -> WebhookOut:
        result = await run_in_threadpool(
            intake.store_events, events, source=source, unknown_ids_pending=True
        )
        await intake.deliver_now(result.stored)
        return WebhookOut(accepted=len(result.stored) + len(result.pending),
                          duplicates=result.duplicates, pending=len(result.pending),
                          ignored=ignored)  # fmt: skip

    @router.post("/sendgrid/events", response_model=WebhookOut)
    async def sendgrid_events(request: Request) -> WebhookOut:
        """SendGrid Event Webhook batch; Signed Event Webhook required."""
        raw = await request.body()
        _verify_sendgrid(raw, request, settings)
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
        return await accept(events, "sendgrid", ignored)

    @router.post("/sendgrid/inbound", response_model=WebhookOut)
    async def sendgrid_inbound(
        request: Request,
        credentials: Annotated[HTTPBasicCredentials | None, Depends(basic)],
    ) -> WebhookOut:
        """SendGrid Inbound Parse (multipart): a reply, matched by its reply-to token or
        its sender. Authenticated with the basic-auth password SENDGRID_INBOUND_SECRET."""
        secret = settings.inbound_parse_secret
        if (
            secret is None
            or credentials is None
            or not hmac.compare_digest(
                credentials.password.encode(), secret.get_secret_value().encode()
            )
        ):
            raise HTTPException(403, "missing or wrong Inbound Parse credentials")
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        event = _inbound_reply(fields, links)
        if event is None:
            raise HTTPException(400, "no sender address (`from`) in the parsed email")
        return await accept([event], "sendgrid")

    @router.post("/twilio/sms", response_class=Response,
                 responses={200: {"content": {"application/xml": {}}}})  # fmt: skip
    async def twilio_sms(request: Request) -> Response:
        """Inbound SMS. STOP/START and their synonyms change consent; anything else is an
        `sms.reply`. Answers with TwiML (empty: Twilio answers the keywords itself)."""
        form = await _verified_twilio_form(request, settings)
        sid = form.get("MessageSid") or form.get("SmsMessageSid")
        if not sid or not form.get("From"):
            raise HTTPException(400, "MessageSid and From are required")
        data = {"body": form.get("Body", "")[:1600], "to": form.get("To")}
        event = _event(type="sms.reply", phone=form["From"], event_id=f"twilio:{sid}", data=data)
        await accept([event], "twilio")
        return Response(str(MessagingResponse()), media_type="application/xml")

    @router.post("/twilio/status", response_model=WebhookOut)
    async def twilio_status(request: Request) -> WebhookOut:
        """Delivery status callbacks of the SMS we sent."""
        form = await _verified_twilio_form(request, settings)
        sid, status = form.get("MessageSid"), form.get("MessageStatus")
        if not sid or not status:
            raise HTTPException(400, "MessageSid and MessageStatus are required")
        if len(status) > 30 or len(sid) > 64 or "\x00" in sid + status:
            raise HTTPException(400, "MessageSid or MessageStatus is not one of Twilio's")
        with intake.sessions.begin() as session:
            message = session.query(Message).filter_by(provider_message_id=sid).first()
            if message is not None:
                message.delivery_status = status
            lead_id, message_id = (message.lead_id, message.id) if message else (None, None)
        kind = TWILIO_STATUSES.get(status)
        if kind is None or (lead_id is None and not form.get("To")):
            return WebhookOut(accepted=0, duplicates=0, ignored=1)
        event = _event(type=kind, lead_id=lead_id, phone=None if lead_id else form.get("To"),
                       event_id=f"twilio:{sid}:{status}", message_id=message_id,
                       data={"status": status, "error_code": form.get("ErrorCode")})  # fmt: skip
        return await accept([event], "twilio")

    return router


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


# --- translation -------------------------------------------------------------------------------


def _event(**fields: Any) -> EventIn:
    """An EventIn from provider data; a field we cannot use is a 400, never a 500."""
    try:
        return EventIn(**fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise HTTPException(400, f"unusable event: {problems}") from None


def _sendgrid_event(item: dict[str, Any], index: int) -> EventIn | None:
    kind = SENDGRID_EVENTS.get(str(item.get("event")))
    if kind is None:
        return None  # e.g. group_resubscribe: not a response Nurture scores
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
    lead_id, message_id = item.get("lead_id"), item.get("message_id")  # our custom_args
    email = item.get("email") if isinstance(item.get("email"), str) else None
    if not (lead_id or email):
        raise HTTPException(400, f"event {index}: no lead_id custom arg and no email")
    return _event(type=kind, lead_id=_short(lead_id), email=email,
                  event_id=f"sendgrid:{str(event_id)[:180]}", occurred_at=occurred_at,
                  message_id=_short(message_id), data=data)  # fmt: skip


def _short(value: Any) -> str | None:
    """One of our 32-character IDs, or None for anything else."""
    return value if isinstance(value, str) and 0 < len(value) <= 32 else None


def _inbound_reply(fields: dict[str, str], links: Links) -> EventIn | None:
    """An `email.reply`: the lead of the message its reply+token address names (signed by
    us), or else the lead with the sender's address."""
    recipients = [address for _name, address in getaddresses([fields.get("to", "")])]
    with contextlib.suppress(ValueError, AttributeError, RecursionError):  # else use `to`
        envelope_to = json.loads(fields.get("envelope") or "{}").get("to")
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
    event_id = f"inbound:{hashlib.sha256(key.encode()).hexdigest()[:40]}"
    if message_id is not None:  # the token wins over a From header anyone can write
        return _event(type="email.reply", message_id=message_id, event_id=event_id, data=data)
    return _event(type="email.reply", email=sender, event_id=event_id, data=data)
