"""A lead's reply forwarded to its owner (a sequence's `notify_owner: true`): the lead's
rep (the one it was last handed to), else the owner of its company, on each of their
channels, with the lead's summary.

Idempotent per reply and channel (a `reply_notices` row each): a retried activity sends
only the channels not sent yet, and a send cut off mid-way on a channel that cannot
repeat one safely is recorded as `unknown`, not sent again. One failing channel does not
hold back the others: they are sent, then the activity is retried for the one that
failed, until its last attempt records it as `failed`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.sales import (
    NOTIFY_ATTEMPTS,
    SHIPPED_TEMPLATES,
    SalesActivities,
    latest_card,
    recent_timeline,
    rep_dict,
    top_reasons,
)
from channels.base import OutgoingEmail, OutgoingSms
from channels.errors import ProviderRejected, ProviderUnavailable
from models.db import CompanyOwner, Lead, ReplyNotice, Response, as_utc, utcnow
from models.definitions import SalesRep
from models.workflow_io import ReplyForward
from sales import reply_notice
from sales.outbound_webhooks import WebhookFailed, post_json
from sales.routing import company_domain

log = logging.getLogger("nurture.replies")

DONE = ("sent", "skipped", "failed", "unknown")
NOBODY = "none"  # the channel of the row that says nobody was told


class ReplyNoticeActivities:
    """Sends through the handoff's channels and HTTP client (`sales`), so what holds for
    a rep's handoff notices (the outbox, simulate's offline webhooks) holds here."""

    def __init__(self, sales: SalesActivities, templates_dir: Path, console_url: str | None):
        self.sales = sales
        own = Path(templates_dir)
        self.templates_dir = own if (own / "sales" / "reply.html").exists() else SHIPPED_TEMPLATES
        self.console_url = console_url.rstrip("/") if console_url else None

    @activity.defn
    def forward_reply(self, request: ReplyForward) -> str:
        """Tell the lead's owner about its reply on each of their channels; returns what
        became of each ("email sent, webhook sent"), or why nobody was told."""
        with self.sales.sessions.begin() as session:
            lead = session.get(Lead, request.lead_id)
            reply = session.scalars(
                select(Response).where(Response.event_id == request.event_id)
            ).first()
            if lead is None or reply is None:
                raise ApplicationError(f"reply {request.event_id} of lead {request.lead_id} "
                                       "is not stored", non_retryable=True)  # fmt: skip
            rep, why = self._owner(session, lead)
            if rep is None:
                self._claim(session, request, None, NOBODY, status="skipped", detail=why)
                return f"nobody told: {why}"
            channels = {channel: self._claim(session, request, rep.id, channel)
                        for channel in rep.notify}  # fmt: skip
            notice = self._notice(session, request, lead, reply, rep, why)
        outcomes, retry = [], []
        for channel, status in channels.items():
            if status not in DONE:
                status = self._deliver(request, channel, notice)
            outcomes.append(f"{channel} {status}")
            if status == "retrying":
                retry.append(channel)
        if retry:  # the others are sent: the retry sends only these
            raise ApplicationError(f"could not reach {rep.id} by {', '.join(retry)}")
        return f"{rep.id}: {', '.join(outcomes)}"

    def _owner(self, session: Session, lead: Lead) -> tuple[SalesRep | None, str]:
        """The lead's rep, else its company's owner, if still an active rep; else why not."""
        team = self.sales.team
        known = {rep.id: rep for rep in team.reps}
        domain = company_domain(lead.email)
        company = session.get(CompanyOwner, domain) if domain else None
        candidates = [(lead.owner_rep_id, "you own this lead"),
                      (company.rep_id if company else None, f"you own {domain}")]  # fmt: skip
        gone = []
        for rep_id, why in candidates:
            if rep_id is None:
                continue
            rep = known.get(rep_id)
            if rep is not None and rep.active:
                return rep, why
            gone.append(f"{rep_id} is {'inactive' if rep else 'not in sales.yaml'}")
        if gone:
            return None, f"its owner {gone[0]}"
        return None, "the lead has no rep and its company no owner"

    def _claim(self, session: Session, request: ReplyForward, rep_id: str | None, channel: str,
               *, status: str = "sending", detail: str | None = None) -> str:  # fmt: skip
        """The channel's row, made on the first attempt: its status says whether to send.
        A send interrupted on a channel that cannot repeat one safely becomes `unknown`."""
        row = _row(session, request, channel)
        if row is None:
            row = ReplyNotice(lead_id=request.lead_id, event_id=request.event_id,
                              sequence_id=request.sequence_id, rep_id=rep_id, channel=channel,
                              status=status, detail=detail, attempts=0)  # fmt: skip
            session.add(row)
        elif row.status == "sending" and not self._repeatable(channel):
            row.status, row.detail = "unknown", "interrupted: not sent again"
        if row.status not in DONE:
            row.attempts += 1
        row.updated_at = utcnow()
        session.flush()
        return row.status

    def _repeatable(self, channel: str) -> bool:
        if channel == "email":
            return self.sales.email.idempotent
        if channel == "sms":
            return self.sales.sms.idempotent
        return True  # webhooks carry the delivery ID: receivers drop repeats

    def _notice(self, session: Session, request: ReplyForward, lead: Lead, reply: Response,
                rep: SalesRep, why: str) -> reply_notice.ReplyNotice:  # fmt: skip
        data = reply.data or {}
        channel = "sms" if reply.type.startswith("sms.") else "email"
        return reply_notice.ReplyNotice(
            rep=rep_dict(rep), why=why, lead=lead.profile() | {"id": lead.id},
            score={"total": lead.score, "grade": lead.grade, "stage": lead.stage},
            reasons=top_reasons(latest_card(session, lead.id), 5),
            timeline=recent_timeline(session, lead.id), sequence=request.sequence_name,
            effect=request.effect, channel=channel, subject=data.get("subject") or None,
            text=str(data.get("text") or data.get("body") or ""),
            replied_at=as_utc(reply.occurred_at),
            lead_url=f"{self.console_url}/console/leads/{lead.id}" if self.console_url else None,
        )  # fmt: skip

    def _deliver(self, request: ReplyForward, channel: str,
                 notice: reply_notice.ReplyNotice) -> str:  # fmt: skip
        """Send on one channel and record the outcome: sent, skipped, retrying or failed."""
        try:
            status, detail = self._send(request, channel, notice)
        except (WebhookFailed, ProviderUnavailable, ProviderRejected) as exc:
            retryable = getattr(exc, "retryable", isinstance(exc, ProviderUnavailable))
            last = activity.info().attempt >= NOTIFY_ATTEMPTS
            status = "failed" if (last or not retryable) else "retrying"
            detail = str(exc)
            log.warning("reply %s: %s to %s %s (%s)", request.event_id, channel,
                        notice.rep["id"], status, exc)  # fmt: skip
        with self.sales.sessions.begin() as session:
            row = _row(session, request, channel)
            row.status, row.detail, row.updated_at = status, detail[:2000], utcnow()
        return status

    def _send(self, request: ReplyForward, channel: str,
              notice: reply_notice.ReplyNotice) -> tuple[str, str]:  # fmt: skip
        rep, key = notice.rep, f"reply-{request.event_id}-{channel}"[:120]
        # The rep's message names no lead in its tags: the provider echoes them in every
        # event (a rep's bounce must never opt the lead out).
        if channel == "email":
            subject, html, text = reply_notice.render_email(notice, self.templates_dir)
            result = self.sales.email.send_email(OutgoingEmail(
                message_id=key, to=rep["email"], from_email=self.sales.sender["email"],
                from_name="Nurture", subject=subject, html=html, text=text,
                reply_to=notice.lead.get("email") if notice.channel == "email" else None,
                tags={"audience": "rep"}, categories=("reply_notice",),
            ))  # fmt: skip
            return "sent", f"{result.provider}:{result.provider_message_id}"
        if channel == "sms":
            if not rep.get("phone"):
                return "skipped", "the rep has no phone number"
            result = self.sales.sms.send_sms(OutgoingSms(
                message_id=key, to=rep["phone"], body=reply_notice.render_sms(notice),
                tags={"audience": "rep"},
            ))  # fmt: skip
            return "sent", f"{result.provider}:{result.provider_message_id}"
        if channel == "webhook":
            if not rep.get("webhook_url"):
                return "skipped", "the rep has no webhook URL"
            with self.sales.http_client() as client:
                status = post_json(rep["webhook_url"], reply_notice.slack_payload(notice),
                                   delivery_id=key, client=client)  # fmt: skip
            return "sent", f"HTTP {status}"
        return "skipped", f"no such channel {channel!r}"


def _row(session: Session, request: ReplyForward, channel: str) -> ReplyNotice | None:
    """The reply's row for `channel`, if made."""
    return session.scalars(
        select(ReplyNotice).where(ReplyNotice.lead_id == request.lead_id,
                                  ReplyNotice.event_id == request.event_id,
                                  ReplyNotice.channel == channel)
    ).first()  # fmt: skip
