"""Email through SendGrid's v3 Mail Send API, with the official `sendgrid` SDK."""

from __future__ import annotations

import json
import re

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Category, CustomArg, Header, Mail, ReplyTo

from channels.base import PROVIDER_TIMEOUT_SECONDS, OutgoingEmail, SendResult
from channels.errors import classify


class SendGridEmailChannel:
    name = "sendgrid"
    idempotent = False  # SendGrid has no idempotency key: a repeat is a second email

    def __init__(self, api_key: str, host: str = "https://api.sendgrid.com"):
        self.client = SendGridAPIClient(api_key=api_key, host=host)
        # A hung connection must fail well inside the activity's timeout (then retried).
        self.client.client.timeout = PROVIDER_TIMEOUT_SECONDS

    def send_email(self, email: OutgoingEmail) -> SendResult:
        mail = Mail(
            from_email=(email.from_email, email.from_name),
            to_emails=email.to,
            subject=email.subject,
            plain_text_content=email.text,
            html_content=email.html,
        )
        for key, value in email.tags.items():
            # Echoed back in every event webhook: how events find their message.
            mail.add_custom_arg(CustomArg(key, value))
        for category in email.categories:
            mail.add_category(Category(category))
        for name, value in email.headers.items():
            mail.add_header(Header(name, value))
        if email.reply_to:
            mail.reply_to = ReplyTo(email.reply_to)
        try:
            response = self.client.send(mail)
        except HTTPError as exc:
            reason, bad_address = _reason(exc)
            consent = "bad_address" if bad_address else None
            raise classify(exc.status_code, reason, consent) from None
        return SendResult(self.name, response.headers.get("X-Message-Id", ""))


def _reason(exc: HTTPError) -> tuple[str, bool]:
    """SendGrid's error messages, and whether they are about the recipient's address
    (an error on the field `personalizations.N.to.N.email`)."""
    body = exc.body.decode() if isinstance(exc.body, bytes) else str(exc.body)
    try:
        errors = json.loads(body).get("errors") or []
    except (ValueError, AttributeError):
        return body[:500], False
    messages = "; ".join(str(e.get("message")) for e in errors if isinstance(e, dict))
    bad_address = any(
        re.fullmatch(r"personalizations\.\d+\.to(\.\d+\.email)?", str(e.get("field") or ""))
        for e in errors if isinstance(e, dict)
    )  # fmt: skip
    return (messages or body)[:500], bad_address
