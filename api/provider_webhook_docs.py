"""The OpenAPI entries of the provider webhooks (api/provider_webhooks.py).

Each webhook reads its own body (the signature covers the raw bytes or the form), so
FastAPI cannot see what it takes: these say it, with the signature headers the handler
requires (403 without a valid one) and every status it answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request
from fastapi.security.utils import get_authorization_scheme_param

from api.errors import error_responses

SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
TWILIO_SIGNATURE = "X-Twilio-Signature"


def required_header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": True, "description": description,
            "schema": {"type": "string"}}  # fmt: skip


def _strings(*names: str, **constraints: Any) -> dict[str, Any]:
    return {name: {"type": "string", **constraints} for name in names}


SENDGRID_EVENT = {
    "type": "object",
    "description": "one SendGrid event; kinds Nurture does not use are ignored and counted",
    "properties": {
        **_strings("event", "email", "sg_event_id", "sg_message_id", "url", "reason", "type",
                   "status", "category"),
        "timestamp": {"type": "integer", "description": "Unix time"},
        "lead_id": {"type": "string", "description": "our custom arg"},
        "message_id": {"type": "string", "description": "our custom arg"},
    },
}  # fmt: skip
SENDGRID_EVENTS: dict[str, Any] = {
    "responses": error_responses(400, 403, 413, 429, 503),
    "openapi_extra": {
        "parameters": [
            required_header(SENDGRID_SIGNATURE, "ECDSA P-256 over timestamp + body (base64)"),
            required_header(
                SENDGRID_TIMESTAMP, "Unix time, within NURTURE_WEBHOOK_TOLERANCE_SECONDS"
            ),
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "array", "items": SENDGRID_EVENT}}},
        },
    },
}
# A From header: an address, or a name and an address (RFC 5322's mailbox).
INBOUND_FROM = {"type": "string", "format": "mailbox", "description": "the sender"}
INBOUND_FIELDS = ("to", "subject", "text", "html", "headers", "envelope", "charsets", "SPF")
INBOUND_PARSE: dict[str, Any] = {
    # 401 without basic credentials; 403 with a wrong password (or none configured).
    "responses": error_responses(400, 401, 403, 413, 429, 503),
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["from"],
                        "properties": {"from": INBOUND_FROM, **_strings(*INBOUND_FIELDS)},
                        "additionalProperties": {"type": "string"},
                    }
                }
            },
        }
    },
}
_TWILIO_HEADERS = [required_header(TWILIO_SIGNATURE, "Twilio's signature of NURTURE_PUBLIC_URL "
                                   "+ path and the form, with TWILIO_AUTH_TOKEN")]  # fmt: skip


def _twilio_form(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    text = {"type": "string"}  # a form holds text
    schema = {"type": "object", "required": required, "properties": properties,
              "additionalProperties": text}  # fmt: skip
    return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}


SID = {"type": "string", "minLength": 1, "maxLength": 64, "description": "Twilio's message SID"}
PHONE = {"type": "string", "format": "phone", "description": "E.164"}
TWILIO_SMS: dict[str, Any] = {
    "responses": {
        200: {"description": "empty TwiML", "content": {"application/xml": {}}},
        **error_responses(400, 403, 413, 429, 503),
    },
    "openapi_extra": {
        "parameters": _TWILIO_HEADERS,
        "requestBody": _twilio_form(
            ["MessageSid", "From"],
            {
                "MessageSid": SID,
                "SmsMessageSid": SID,
                "From": PHONE,
                **_strings("AccountSid", "To", "Body"),
            },
        ),
    },
}
TWILIO_STATUS: dict[str, Any] = {
    "responses": error_responses(400, 403, 413, 429, 503),
    "openapi_extra": {
        "parameters": _TWILIO_HEADERS,
        "requestBody": _twilio_form(
            ["MessageSid", "MessageStatus"],
            {
                "MessageSid": SID,
                "MessageStatus": {"type": "string", "minLength": 1, "maxLength": 30},
                "ErrorCode": {"type": "string", "pattern": "^[0-9]{0,10}$"},
                **_strings("AccountSid", "From", "To"),
            },
        ),
    },
}


async def basic_challenge(request: Request) -> None:
    """Inbound Parse without basic credentials: 401 with the challenge (RFC 9110), so a
    client knows to send them; a wrong password is the handler's 403."""
    scheme, _credentials = get_authorization_scheme_param(request.headers.get("Authorization"))
    if scheme.lower() != "basic":
        challenge = {"WWW-Authenticate": 'Basic realm="Inbound Parse"'}
        raise HTTPException(401, "missing Inbound Parse credentials", headers=challenge)
