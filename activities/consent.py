"""Double opt-in's side effects (workflows/confirmation.py), each idempotent.

The confirmation email and its one reminder are claimed in `messages` under
`confirm:<request>:<first|reminder>` before the provider is called, and marked `sending`
just before the call, as a sequence's sends are (activities/lead.py, docs/sending.md): a
retry finds its earlier attempt's row, and a send whose outcome a crash hid is recorded
`unknown`, never repeated. The expiry changes a request only while it is still pending.
Neither counts for the frequency caps: the lead asked for it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from channels.base import EmailChannel, OutgoingEmail
from channels.consent_links import confirm_url
from channels.errors import ProviderRejected, ProviderUnavailable
from channels.links import Links
from channels.render import RenderedEmail, localised
from models.consent import ConsentEffect, confirmation_pending, expire_confirmation, set_consent
from models.db import Lead, Message, utcnow
from models.jinja import template_environment
from models.locales import DEFAULT_LOCALE

log = logging.getLogger("nurture.activities.consent")

SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
TEMPLATE = "consent/confirm"  # consent/confirm_subject.txt, confirm.html, confirm.txt


class ConfirmationRequest(BaseModel):
    """The confirmation workflow's input: whose request, and its timings (seconds from
    the start)."""

    lead_id: str
    confirmation_id: str
    reminder_after: int
    expires_after: int


class ConfirmationEmail(BaseModel):
    lead_id: str
    confirmation_id: str
    kind: Literal["first", "reminder"]


class ConsentActivities:
    def __init__(
        self,
        sessions: sessionmaker,
        email: EmailChannel,
        links: Links,
        templates_dir: Path,
        sender: dict[str, str],
        default_locale: str = DEFAULT_LOCALE,
    ):
        self.sessions = sessions
        self.email = email
        self.links = links
        # The confirmation templates: the definitions' own, else the shipped ones.
        own = Path(templates_dir)
        found = (own / "consent" / "confirm.html").exists()
        self.templates_dir = own if found else SHIPPED_TEMPLATES
        self.sender = sender
        self.default_locale = default_locale

    @activity.defn
    def send_confirmation(self, request: ConfirmationEmail) -> str:
        """The confirmation email (or its reminder), at most once: `sent`, `ended` (the
        request is not pending any more: nothing sent), `failed` or `unknown`."""
        with self.sessions() as session:
            lead = session.get(Lead, request.lead_id)
            if not confirmation_pending(lead, request.confirmation_id):
                return "ended"
        message = self._claim(request)
        if message.status in ("sent", "failed", "unknown"):
            return message.status  # an earlier attempt finished it
        if message.status == "sending" and not self.email.idempotent:
            self._set_status(message.id, "unknown", "interrupted during the provider call")
            return "unknown"
        email = self._render(request, lead, message.id)
        if not self._mark_sending(message.id, email):
            return "unknown"  # another attempt is calling the provider
        try:
            result = self.email.send_email(email)
        except ProviderRejected as exc:
            return self._rejected(request, message.id, exc)
        except ProviderUnavailable as exc:  # nothing sent: release the claim, retry later
            self._set_status(message.id, "retrying", str(exc))
            raise ApplicationError(f"provider unavailable: {exc}") from None
        with self.sessions.begin() as session:
            session.execute(update(Message).where(Message.id == message.id).values(
                status="sent", sent_at=utcnow(), provider=result.provider,
                provider_message_id=result.provider_message_id))  # fmt: skip
        log.info("sent the %s confirmation email lead=%s", request.kind, request.lead_id)
        return "sent"

    @activity.defn
    def expire_confirmation(self, request: ConfirmationRequest) -> str:
        """The link was not followed in time: `expired` (recorded now) or `ended`."""
        with self.sessions.begin() as session:
            lead = session.get(Lead, request.lead_id)
            if lead is None or not expire_confirmation(session, lead, request.confirmation_id):
                return "ended"
        return "expired"

    def _claim(self, request: ConfirmationEmail) -> Message:
        key = f"confirm:{request.confirmation_id}:{request.kind}"
        try:
            with self.sessions.begin() as session:
                message = Message(send_key=key, lead_id=request.lead_id, channel="email",
                                  template=TEMPLATE, recipient="", body="",
                                  counts_for_caps=False)  # fmt: skip
                session.add(message)
            return message
        except IntegrityError:
            with self.sessions.begin() as session:
                message = session.scalars(select(Message).where(Message.send_key == key)).one()
                if message.status == "retrying":  # nothing went out: claim it again
                    message.status = "claimed"
                return message

    def _render(self, request: ConfirmationEmail, lead: Lead, message_id: str) -> OutgoingEmail:
        profile = lead.profile()
        context = {
            "lead": profile, "sender": self.sender, "reminder": request.kind == "reminder",
            "confirm_url": confirm_url(self.links, lead.id, request.confirmation_id),
            "locale": profile.get("locale") or self.default_locale,
        }  # fmt: skip
        rendered = render_confirmation(self.templates_dir, context)
        return OutgoingEmail(
            message_id=message_id, to=lead.email, from_email=self.sender["email"],
            from_name=self.sender["name"], subject=rendered.subject, html=rendered.html,
            text=rendered.text, categories=("double_opt_in", request.kind),
            tags={"lead_id": lead.id, "message_id": message_id},
        )  # fmt: skip

    def _mark_sending(self, message_id: str, email: OutgoingEmail) -> bool:
        allowed = ("claimed", "sending") if self.email.idempotent else ("claimed",)
        with self.sessions.begin() as session:
            return session.execute(
                update(Message).where(Message.id == message_id, Message.status.in_(allowed))
                .values(status="sending", recipient=email.to, subject=email.subject,
                        body=email.text)
                .execution_options(synchronize_session=False)
            ).rowcount == 1  # fmt: skip

    def _rejected(self, request: ConfirmationEmail, message_id: str, exc: ProviderRejected):
        """Refused for good: a bad address stops email (and so ends the request)."""
        with self.sessions.begin() as session:
            message = session.get(Message, message_id)
            message.status, message.status_reason = "failed", exc.reason
            if exc.consent_reason:
                effect = ConsentEffect("email", False, exc.consent_reason, exc.reason)
                set_consent(session, session.get(Lead, request.lead_id), effect)
        log.warning("the provider refused a confirmation email lead=%s: %s", request.lead_id,
                    exc.reason)  # fmt: skip
        return "failed"

    def _set_status(self, message_id: str, status: str, reason: str) -> None:
        with self.sessions.begin() as session:
            message = session.get(Message, message_id)
            message.status, message.status_reason = status, reason


def render_confirmation(templates_dir: Path, context: dict) -> RenderedEmail:
    """The confirmation email in the lead's language (consent/confirm*.{locale}.*)."""
    env = template_environment(str(templates_dir))

    def part(file: str) -> str:
        return localised(env, f"consent/{file}", context).render(context)

    return RenderedEmail(
        subject=" ".join(part("confirm_subject.txt").split()),
        html=part("confirm.html"),
        text=part("confirm.txt").strip() + "\n",
    )
