"""The handoff's side effects, each idempotent: assign a rep, notify them on each
channel, handle a lapsed SLA (remind, then reassign), record the answer, recycle.

A retried activity finds what its earlier attempt stored (the handoff per (lead,
cycle); a `handoff_events` row per unique key) and answers the same, so a crash
never assigns twice, reminds twice or notifies twice on a channel that cannot
repeat a send safely.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from channels.base import EmailChannel, OutgoingEmail, OutgoingSms, SmsChannel
from channels.errors import ProviderRejected, ProviderUnavailable
from channels.links import Links
from channels.template_sets import TemplateVersions
from infra import metrics
from models.db import (
    CompanyOwner,
    Handoff,
    HandoffEvent,
    Lead,
    Opportunity,
    Response,
    SalesRepRow,
    ScoreChange,
    StageChange,
    as_utc,
    utcnow,
)
from models.definition_set import Definitions
from models.definitions import SalesRep, SalesTeam
from models.workflow_io import (
    AnswerResult,
    Assignment,
    AssignRequest,
    EnrollRequest,
    HandoffAnswer,
    NotifyRequest,
    OutcomeApplied,
    OutcomeRequest,
    RecycleRequest,
    SlaLapse,
    SlaOutcome,
)
from sales.hours import add_working_time
from sales.notify import (
    HandoffNotice,
    TimelineItem,
    crm_payload,
    render_email,
    render_sms,
    slack_payload,
)
from sales.outbound_webhooks import WebhookFailed, post_json
from sales.routing import NoRepAvailable, RepLoad, company_domain, route
from scoring.engine import prediction_line

log = logging.getLogger("nurture.sales")

# Retried with back-off up to this many attempts; the last one records the failure.
NOTIFY_ATTEMPTS = 8
SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
ANSWER_STAGE = {"accept": "accepted", "disqualify": "disqualified", "reject": "lead"}
ANSWER_STATUS = {"accept": "accepted", "reject": "rejected", "disqualify": "disqualified"}


class SalesActivities:
    def __init__(
        self,
        sessions: sessionmaker,
        definitions: Definitions,
        email: EmailChannel,
        sms: SmsChannel,
        links: Links,
        templates_dir: Path,
        sender: dict[str, str],
        environ: Mapping[str, str] | None = None,
    ):
        self.sessions = sessions
        self.definitions = definitions
        self.email = email
        self.sms = sms
        self.links = links
        # The notification templates: the definitions' own, else the shipped ones.
        own = Path(templates_dir)
        self.templates_dir = own if (own / "sales" / "notice.html").exists() else SHIPPED_TEMPLATES
        self.sender = sender
        self.template_versions = TemplateVersions(definitions.templates_dir, sessions)
        self.environ = os.environ if environ is None else environ
        self._tls = None

    def http_client(self) -> httpx.Client:
        """A client per notification (one connection each, as before), on a TLS context
        built once: loading the CA bundle took ~30 ms of every webhook post."""
        if self._tls is None:
            self._tls = httpx.create_ssl_context()
        return httpx.Client(verify=self._tls, timeout=5.0)

    @property
    def team(self) -> SalesTeam:
        return self.definitions.sales

    # --- assignment ------------------------------------------------------------------------

    @activity.defn
    def assign_handoff(self, request: AssignRequest) -> Assignment:
        """Route the lead to a rep and store the handoff: once per (lead, cycle)."""
        at = as_utc(request.at)
        for _attempt in range(20):
            try:
                with self.sessions.begin() as session:
                    handoff = _handoff_of(session, request.lead_id, request.cycle)
                    created = handoff is None
                    if created:
                        handoff = self._assign(session, request, at)
                        if handoff is None:
                            continue  # another handoff took the rep first: route again
                    assignment = self._assignment(handoff)
                if created:  # committed
                    metrics.record(metrics.HANDOFFS, pool=handoff.pool, rep=handoff.rep_id)
                return assignment
            except IntegrityError:  # a concurrent attempt stored it first
                continue
        raise ApplicationError("could not assign a rep: too much contention, will retry")

    def _assign(self, session: Session, request: AssignRequest, at: datetime) -> Handoff | None:
        lead = session.get(Lead, request.lead_id)
        if lead is None:
            raise ApplicationError(f"lead {request.lead_id} does not exist", non_retryable=True)
        profile = lead.profile()
        domain = company_domain(lead.email)
        owner = session.get(CompanyOwner, domain) if domain else None
        loads = _loads(session)
        try:
            routing = route(self.team, profile, at, loads,
                            owner_rep_id=owner.rep_id if owner else None)  # fmt: skip
        except NoRepAvailable as exc:
            # Retried (the workflow's policy has no limit) until sales.yaml has someone.
            raise ApplicationError(f"no rep for lead {lead.id}: {exc}") from None
        if not _take_turn(session, routing.rep_id, loads.get(routing.rep_id)):
            return None
        rep = self.team.rep(routing.rep_id)
        card = latest_card(session, lead.id)
        handoff = Handoff(
            lead_id=lead.id, cycle=request.cycle, rep_id=rep.id, score=lead.score,
            grade=lead.grade, reason="; ".join(top_reasons(card, 5)), card=card,
            pool=routing.pool, routing=routing.reason, created_at=at,
            due_at=self._due(rep, at),
        )  # fmt: skip
        session.add(handoff)
        session.flush()
        lead.owner_rep_id = rep.id
        if domain and owner is None:
            session.add(CompanyOwner(domain=domain, rep_id=rep.id, since=at))
        _event(session, handoff.id, "assigned:0", "assigned", rep.id, detail=routing.reason)
        log.info("handoff lead=%s rep=%s pool=%s: %s", lead.id, rep.id, routing.pool,
                 routing.reason)  # fmt: skip
        return handoff

    def _due(self, rep: SalesRep, start: datetime) -> datetime | None:
        seconds = rep.sla or self.team.sla.answer_within
        return add_working_time(rep, start, seconds) if seconds else None

    def _channels(self, rep_id: str) -> list[str]:
        channels = list(self.team.rep(rep_id).notify)
        if self.team.crm_webhook is not None:
            channels.append("crm")
        return channels

    def _assignment(self, handoff: Handoff) -> Assignment:
        rep = self.team.rep(handoff.rep_id)
        return Assignment(
            handoff_id=handoff.id, rep_id=rep.id, rep_name=rep.name,
            channels=self._channels(rep.id),
            due_at=as_utc(handoff.due_at) if handoff.due_at else None,
            reminders=self.team.sla.reminders, status=handoff.status,
        )  # fmt: skip

    # --- notifications ----------------------------------------------------------------------

    @activity.defn
    def notify_rep(self, request: NotifyRequest) -> str:
        """Tell a rep about a handoff on one channel; once per key. Returns the outcome:
        sent, skipped (no secret / no address), unknown (an interrupted send that cannot
        be repeated safely) or raises to be retried."""
        with self.sessions.begin() as session:
            event = session.scalars(
                select(HandoffEvent).where(HandoffEvent.handoff_id == request.handoff_id,
                                           HandoffEvent.key == request.key)
            ).first()  # fmt: skip
            if event is not None and event.status in ("sent", "skipped", "failed", "unknown"):
                return event.status
            if (
                event is not None
                and event.status == "sending"
                and not self._repeatable(request.channel)
            ):
                event.status, event.detail = "unknown", "interrupted: not sent again"
                _count_notice(request, "unknown")
                return "unknown"
            if event is None:
                event = _event(
                    session,
                    request.handoff_id,
                    request.key,
                    "notified",
                    request.rep_id,
                    channel=request.channel,
                    status="sending",
                )
            event.attempts += 1
            event.updated_at = utcnow()
            notice = self._notice(session, request)
        try:
            outcome = self._send(request, notice)
        except (WebhookFailed, ProviderUnavailable, ProviderRejected) as exc:
            retryable = getattr(exc, "retryable", isinstance(exc, ProviderUnavailable))
            last = activity.info().attempt >= NOTIFY_ATTEMPTS
            status = "failed" if (last or not retryable) else "retrying"
            self._mark(request, status, str(exc))
            _count_notice(request, status)
            log.warning("handoff %s: %s to %s %s (%s)", request.handoff_id, request.channel,
                        request.rep_id, status, exc)  # fmt: skip
            if status == "failed":
                raise ApplicationError(str(exc), non_retryable=True) from None
            raise ApplicationError(str(exc)) from None
        self._mark(request, outcome[0], outcome[1])
        _count_notice(request, outcome[0])
        if outcome[0] == "sent" and request.kind == "new" and metrics.enabled():
            self._record_speed_to_lead(request)
        return outcome[0]

    def _record_speed_to_lead(self, request: NotifyRequest) -> None:
        """The handoff's first notification sent: seconds since the SQL-crossing response
        occurred (`nurture_handoff_latency_seconds`). Never raises."""
        try:
            with self.sessions() as session:
                first = session.scalars(
                    select(HandoffEvent.key).where(
                        HandoffEvent.handoff_id == request.handoff_id,
                        HandoffEvent.kind == "notified", HandoffEvent.status == "sent")
                    .order_by(HandoffEvent.updated_at, HandoffEvent.id).limit(1)
                ).first()  # fmt: skip
                if first != request.key:
                    return  # another channel got there first
                lead_id = session.get(Handoff, request.handoff_id).lead_id
                crossing = session.scalars(
                    select(StageChange.change_key).where(
                        StageChange.lead_id == lead_id, StageChange.to_stage == "sql")
                    .order_by(StageChange.id.desc()).limit(1)
                ).first()  # fmt: skip
                if crossing is None:
                    return
                occurred = session.scalars(
                    select(Response.occurred_at).where(
                        Response.lead_id == lead_id,
                        Response.event_id == crossing.removesuffix(":sql"))
                ).first()  # fmt: skip
            if occurred is not None:  # else a rescore or decay crossed, not a response
                seconds = (utcnow() - as_utc(occurred)).total_seconds()
                metrics.record(metrics.HANDOFF_LATENCY, max(seconds, 0.0))
        except Exception:
            log.debug("speed to lead of handoff %s not measured", request.handoff_id,
                      exc_info=True)  # fmt: skip

    def _repeatable(self, channel: str) -> bool:
        if channel == "email":
            return self.email.idempotent
        if channel == "sms":
            return self.sms.idempotent
        return True  # webhooks carry the delivery ID: receivers drop repeats

    def _mark(self, request: NotifyRequest, status: str, detail: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                update(HandoffEvent)
                .where(HandoffEvent.handoff_id == request.handoff_id,
                       HandoffEvent.key == request.key)
                .values(status=status, detail=detail[:2000], updated_at=utcnow())
            )  # fmt: skip

    def _send(self, request: NotifyRequest, notice: HandoffNotice) -> tuple[str, str]:
        rep = notice.rep
        delivery_id = f"{request.handoff_id}:{request.key}"
        # A rep's message names no lead in its tags: the provider echoes them in every
        # event (a rep's bounce must never opt the lead out).
        if request.channel == "email":
            subject, html, text = render_email(notice, self.templates_dir)
            result = self.email.send_email(OutgoingEmail(
                message_id=f"handoff-{request.handoff_id}-{_slug(request.key)}",
                to=rep["email"], from_email=self.sender["email"], from_name="Nurture",
                subject=subject, html=html, text=text,
                tags={"handoff_id": request.handoff_id, "audience": "rep"},
                categories=("handoff", request.kind),
            ))  # fmt: skip
            return "sent", f"{result.provider}:{result.provider_message_id}"
        if request.channel == "sms":
            if not rep.get("phone"):
                return "skipped", "the rep has no phone number"
            result = self.sms.send_sms(OutgoingSms(
                message_id=f"handoff-{request.handoff_id}-{_slug(request.key)}",
                to=rep["phone"], body=render_sms(notice),
                tags={"handoff_id": request.handoff_id, "audience": "rep"},
            ))  # fmt: skip
            return "sent", f"{result.provider}:{result.provider_message_id}"
        if request.channel == "webhook":
            if not rep.get("webhook_url"):
                return "skipped", "the rep has no webhook URL"
            with self.http_client() as client:
                status = post_json(rep["webhook_url"], slack_payload(notice),
                                   delivery_id=delivery_id, client=client)  # fmt: skip
            return "sent", f"HTTP {status}"
        if request.channel == "crm":
            crm = self.team.crm_webhook
            secret = self.environ.get(crm.secret_env) if crm else None
            if crm is None or not secret:
                return "skipped", f"{crm.secret_env if crm else 'crm_webhook'} is not set"
            # Several secrets, comma-separated, while rotating: one signature each.
            with self.http_client() as client:
                status = post_json(str(crm.url), crm_payload(notice), delivery_id=delivery_id,
                                   secret=[part.strip() for part in secret.split(",")],
                                   client=client)  # fmt: skip
            return "sent", f"HTTP {status}"
        raise ApplicationError(f"unknown channel {request.channel!r}", non_retryable=True)

    def _notice(self, session: Session, request: NotifyRequest) -> HandoffNotice:
        handoff = session.get(Handoff, request.handoff_id)
        lead = session.get(Lead, handoff.lead_id)
        rep = self.team.rep(request.rep_id)
        other = self.team.rep(request.other_rep_id) if request.other_rep_id else None
        card = handoff.card or {}
        links = {"page": self.links.handoff_url(handoff.id, rep.id)} | {
            answer: self.links.handoff_url(handoff.id, rep.id, answer)
            for answer in ("accept", "reject", "disqualify")
        }
        return HandoffNotice(
            handoff_id=handoff.id,
            kind=request.kind,
            rep=rep_dict(rep),
            lead=lead.profile() | {"id": lead.id},
            score={
                "total": round(handoff.score, 1),
                "fit": card.get("fit"),
                "engagement": card.get("engagement"),
                "grade": handoff.grade,
                "stage": lead.stage,
                "model": card.get("model"),
            },  # fmt: skip
            reasons=top_reasons(card, 5),
            timeline=recent_timeline(session, lead.id),
            links=links,
            due_at=as_utc(handoff.due_at) if handoff.due_at else None,
            previous_rep=rep_dict(other) if other else None,
            created_at=utcnow(),  # deadlines in the notice count from when it is made
        )

    # --- the SLA ----------------------------------------------------------------------------

    @activity.defn
    def handle_sla_lapse(self, request: SlaLapse) -> SlaOutcome:
        """The rep did not answer in time: remind them (a new SLA window), or reassign the
        lead to the next rep the routing gives (never one who already had it). Or a
        manager reassigns it (`to_rep_id`): to that rep, with a new SLA window."""
        at = as_utc(request.at)
        key = (f"lapse:{at.isoformat()}" if request.to_rep_id is None
               else f"reassign:{request.reassignment}")  # fmt: skip
        for _attempt in range(20):
            try:
                with self.sessions.begin() as session:
                    handoff = session.get(Handoff, request.handoff_id)
                    done = session.scalars(
                        select(HandoffEvent.detail).where(
                            HandoffEvent.handoff_id == handoff.id, HandoffEvent.key == key)
                    ).first()  # fmt: skip
                    if done is not None:
                        return SlaOutcome.model_validate_json(done)
                    if handoff.status != "pending":
                        return SlaOutcome(status=handoff.status, rep_id=handoff.rep_id)
                    if request.to_rep_id is not None:
                        return self._reassign_by_hand(session, handoff, at, request, key)
                    outcome = (self._remind(handoff, at, "") if request.remind
                               else self._reassign(session, handoff, at))  # fmt: skip
                    if outcome is None:
                        continue  # lost the rep's turn to a concurrent handoff
                    kind = ("reassigned" if outcome.previous_rep_id
                            else "reminded" if outcome.due_at else "unanswered")  # fmt: skip
                    _event(session, handoff.id, key, kind, outcome.rep_id,
                           detail=outcome.model_dump_json())  # fmt: skip
                    return outcome
            except IntegrityError:
                continue
        raise ApplicationError("could not handle the SLA: too much contention, will retry")

    def _remind(self, handoff: Handoff, at: datetime, note: str) -> SlaOutcome:
        rep = self.team.rep(handoff.rep_id)
        handoff.reminders += 1
        handoff.due_at = self._due(rep, at)
        return SlaOutcome(status="pending", rep_id=rep.id, channels=self._channels(rep.id),
                          due_at=handoff.due_at, note=note)  # fmt: skip

    def _reassign(self, session: Session, handoff: Handoff, at: datetime) -> SlaOutcome | None:
        lead = session.get(Lead, handoff.lead_id)
        had = set(session.scalars(
            select(HandoffEvent.rep_id).where(
                HandoffEvent.handoff_id == handoff.id,
                HandoffEvent.kind.in_(("assigned", "reassigned", "reassigned_to")))
        ))  # fmt: skip
        had.add(handoff.rep_id)
        loads = _loads(session)
        try:
            routing = route(self.team, lead.profile(), at, loads, exclude=frozenset(had))
        except NoRepAvailable as exc:
            # Every rep who could take it has had it: stop chasing (it stays with this
            # rep, pending, on `nurture handoff list --status pending`), never loop.
            handoff.due_at = None
            return SlaOutcome(
                status="pending",
                rep_id=handoff.rep_id,
                due_at=None,
                note=f"unanswered by every rep who could take it ({exc})",
            )
        if not _take_turn(session, routing.rep_id, loads.get(routing.rep_id)):
            return None
        why = f"reassigned from {handoff.rep_id} (no answer in time): {routing.reason}"
        return self._move(session, handoff, self.team.rep(routing.rep_id), at, why,
                          routing.reason)  # fmt: skip

    def _move(self, session: Session, handoff: Handoff, rep: SalesRep, at: datetime,
              why: str, note: str) -> SlaOutcome:  # fmt: skip
        """The handoff (and the lead, and its company) to `rep`, whose SLA starts now."""
        lead = session.get(Lead, handoff.lead_id)
        previous = handoff.rep_id
        handoff.rep_id, handoff.reminders = rep.id, 0
        handoff.reassignments += 1
        handoff.routing = why
        handoff.due_at = self._due(rep, at)
        lead.owner_rep_id = rep.id
        domain = company_domain(lead.email)
        if domain:
            session.execute(update(CompanyOwner).where(
                CompanyOwner.domain == domain, CompanyOwner.rep_id == previous
            ).values(rep_id=rep.id, since=at))  # fmt: skip
        return SlaOutcome(
            status="pending", rep_id=rep.id, previous_rep_id=previous,
            channels=self._channels(rep.id), previous_channels=self._channels(previous),
            due_at=handoff.due_at, note=note,
        )  # fmt: skip

    def _reassign_by_hand(self, session: Session, handoff: Handoff, at: datetime,
                          request: SlaLapse, key: str) -> SlaOutcome:  # fmt: skip
        """A manager's choice of rep: no routing and no turn taken; refused (for good)
        for a rep who is not an active one of sales.yaml, or who has it already."""
        rep = next((r for r in self.team.reps if r.id == request.to_rep_id), None)
        if rep is None or not rep.active:
            raise ApplicationError(f"{request.to_rep_id} is not an active rep of sales.yaml",
                                   non_retryable=True)  # fmt: skip
        if rep.id == handoff.rep_id:
            raise ApplicationError(f"handoff {handoff.id} is already with {rep.id}",
                                   non_retryable=True)  # fmt: skip
        previous = handoff.rep_id
        why = f"reassigned from {previous} by {request.by or 'a manager'}"
        outcome = self._move(session, handoff, rep, at, why, why)
        outcome.reminders = self.team.sla.reminders
        _event(session, handoff.id, f"{key}:away", "reassigned_away", previous, detail=why)
        _event(session, handoff.id, key, "reassigned_to", rep.id,
               detail=outcome.model_dump_json())  # fmt: skip
        log.info("handoff %s %s to %s", handoff.id, why, rep.id)
        return outcome

    # --- answers ----------------------------------------------------------------------------

    @activity.defn
    def answer_handoff(self, answer: HandoffAnswer) -> AnswerResult:
        """Store sales' answer, once: the handoff's status, the lead's stage (accepted,
        disqualified, or back to nurture after a cool-down) and a stage change saying why."""
        with self.sessions.begin() as session:
            handoff = session.get(Handoff, answer.handoff_id)
            if handoff is None:
                raise ApplicationError(f"no handoff {answer.handoff_id}", non_retryable=True)
            stored = session.scalars(
                select(HandoffEvent.detail).where(HandoffEvent.handoff_id == handoff.id,
                                                  HandoffEvent.key == "answer")
            ).first()  # fmt: skip
            if stored is not None:
                result = AnswerResult.model_validate_json(stored)
                if result.answer == answer.answer:
                    return result  # a retry of this very answer
                raise ApplicationError(_already(handoff), non_retryable=True)
            now = as_utc(answer.at) if answer.at else utcnow()
            lead = session.get(Lead, handoff.lead_id)
            rep = self.team.rep(handoff.rep_id)
            handoff.status = ANSWER_STATUS[answer.answer]
            handoff.answered_at, handoff.answered_by = now, answer.by or rep.id
            handoff.answer_reason, handoff.answer_note = answer.reason, answer.note
            old_stage, new_stage = lead.stage, ANSWER_STAGE[answer.answer]
            cool_down_until = None
            why = f"{handoff.status} by {handoff.answered_by}"
            if answer.reason:
                why += f": {answer.reason.replace('_', ' ')}"
            if answer.answer == "reject":
                cool_down_until = now + timedelta(seconds=self.team.recycle.cool_down)
                lead.sql_hold_until = cool_down_until
                why += f" (recycled: back to nurture from {cool_down_until:%Y-%m-%d})"
            lead.stage = new_stage
            session.add(
                StageChange(
                    lead_id=lead.id,
                    change_key=f"handoff:{handoff.id}",
                    from_stage=old_stage,
                    to_stage=new_stage,
                    reason=why,
                )
            )
            result = AnswerResult(handoff_id=handoff.id, answer=answer.answer, stage=new_stage,
                                  message=why, cool_down_until=cool_down_until)  # fmt: skip
            _event(session, handoff.id, "answer", "answered", handoff.rep_id,
                   detail=result.model_dump_json())  # fmt: skip
            log.info("handoff %s %s", handoff.id, why)
        metrics.record(metrics.STAGE_CHANGES, from_stage=old_stage, to_stage=new_stage)
        return result

    @activity.defn
    def apply_outcome(self, request: OutcomeRequest) -> OutcomeApplied:
        """Move the lead's stage by an opportunity's news, once (a retry finds its stage
        change): open -> opportunity, won -> customer, lost -> closed_lost with the
        recycle cool-down. A customer stays one, and a loss while another opportunity of
        the lead is open moves nothing."""
        key = f"outcome:{request.event_id}"
        with self.sessions.begin() as session:
            lead = session.get(Lead, request.lead_id)
            if lead is None:
                raise ApplicationError(f"no lead {request.lead_id}", non_retryable=True)
            done = session.scalar(select(StageChange).where(
                StageChange.lead_id == lead.id, StageChange.change_key == key))  # fmt: skip
            cool_down = as_utc(request.at) + timedelta(seconds=self.team.recycle.cool_down)
            cool_down_until = cool_down if request.status == "lost" else None
            if done is not None:
                return OutcomeApplied(stage=done.to_stage, moved=True,
                                      cool_down_until=cool_down_until)  # fmt: skip
            opportunity_id = _opportunity_of(session, lead.id, request.event_id)
            new_stage = OUTCOME_STAGE[request.status]
            if lead.stage == "customer" or (
                request.status == "lost" and _other_open(session, lead.id, opportunity_id)
            ):
                return OutcomeApplied(stage=lead.stage, moved=False)
            why = f"opportunity {opportunity_id} {request.status} in the CRM"
            if cool_down_until is not None:
                why += f" (recycled: back to nurture from {cool_down_until:%Y-%m-%d})"
            session.add(StageChange(lead_id=lead.id, change_key=key, from_stage=lead.stage,
                                    to_stage=new_stage, reason=why))  # fmt: skip
            old_stage, lead.stage = lead.stage, new_stage
        metrics.record(metrics.STAGE_CHANGES, from_stage=old_stage, to_stage=new_stage)
        return OutcomeApplied(stage=new_stage, moved=True, cool_down_until=cool_down_until)

    @activity.defn
    def recycle_lead(self, request: RecycleRequest) -> EnrollRequest | None:
        """After a rejection's (or a loss's) cool-down: back to the nurture stages, and
        the recycle sequence to enroll the lead in."""
        with self.sessions.begin() as session:
            lead = session.get(Lead, request.lead_id)
            if lead.stage == "closed_lost":  # sales-owned until now: scored again from here
                session.add(StageChange(lead_id=lead.id, change_key=f"recycle:{request.cycle}",
                                        from_stage=lead.stage, to_stage="lead",
                                        reason="recycled after a lost opportunity"))  # fmt: skip
                lead.stage = "lead"
        sequence_id = self.team.recycle.sequence
        if not sequence_id:
            return None
        sequence = self.definitions.sequences[sequence_id]
        with self.sessions() as session:
            lead = session.get(Lead, request.lead_id)
            profile, segment = lead.profile(), lead.segment
        return EnrollRequest(
            enrollment_id=f"{request.lead_id}:{sequence.id}:v{sequence.version}:c{request.cycle}",
            sequence=sequence, segment=segment, profile=profile,
            templates=self.template_versions.current(),  # a new enrollment: today's
            holdout_percent=self.definitions.holdout(segment),  # a held-out lead stays so
        )  # fmt: skip


# --- helpers --------------------------------------------------------------------------------


OUTCOME_STAGE = {"open": "opportunity", "won": "customer", "lost": "closed_lost"}


def _opportunity_of(session: Session, lead_id: str, event_id: str) -> str:
    data = session.scalar(select(Response.data).where(Response.lead_id == lead_id,
                                                      Response.event_id == event_id))  # fmt: skip
    return (data or {}).get("opportunity_id", "?")


def _other_open(session: Session, lead_id: str, opportunity_id: str) -> bool:
    return session.scalar(select(func.count()).select_from(Opportunity).where(
        Opportunity.lead_id == lead_id, Opportunity.status == "open",
        Opportunity.crm_id != opportunity_id)) > 0  # fmt: skip


def _count_notice(request: NotifyRequest, status: str) -> None:
    metrics.record(metrics.REP_NOTIFICATIONS, channel=request.channel, kind=request.kind,
                   status=status)  # fmt: skip


def _handoff_of(session: Session, lead_id: str, cycle: int) -> Handoff | None:
    return session.scalars(
        select(Handoff).where(Handoff.lead_id == lead_id, Handoff.cycle == cycle)
    ).one_or_none()


def _loads(session: Session) -> dict[str, RepLoad]:
    """Each rep's open handoffs and last assignment: what routing weighs."""
    open_counts = dict(session.execute(
        select(Handoff.rep_id, func.count()).where(Handoff.status == "pending")
        .group_by(Handoff.rep_id)
    ).all())  # fmt: skip
    return {
        rep_id: RepLoad(
            open_handoffs=open_counts.get(rep_id, 0),
            last_assigned_at=as_utc(last) if last else None,
        )  # fmt: skip
        for rep_id, last in session.execute(select(SalesRepRow.id, SalesRepRow.last_assigned_at))
    }


def _take_turn(session: Session, rep_id: str, load: RepLoad | None) -> bool:
    """Round-robin: move the rep to the back of the queue with a compare-and-set on
    `last_assigned_at`, so two handoffs routed at the same moment cannot both take
    the same turn (on SQLite as on PostgreSQL); the loser routes again."""
    previous = load.last_assigned_at if load else None
    unchanged = (SalesRepRow.last_assigned_at.is_(None) if previous is None
                 else SalesRepRow.last_assigned_at == previous)  # fmt: skip
    taken = session.execute(
        update(SalesRepRow).where(SalesRepRow.id == rep_id, unchanged)
        .values(last_assigned_at=utcnow()).execution_options(synchronize_session=False)
    )  # fmt: skip
    return taken.rowcount == 1


def _event(
    session: Session, handoff_id: str, key: str, kind: str, rep_id: str | None,
    *, channel: str | None = None, status: str = "done", detail: str | None = None,
) -> HandoffEvent:  # fmt: skip
    event = HandoffEvent(handoff_id=handoff_id, key=key, kind=kind, rep_id=rep_id,
                         channel=channel, status=status, detail=detail)  # fmt: skip
    session.add(event)
    session.flush()
    return event


def latest_card(session: Session, lead_id: str) -> dict[str, Any] | None:
    return session.scalars(
        select(ScoreChange.breakdown).where(ScoreChange.lead_id == lead_id,
                                            ScoreChange.breakdown.is_not(None))
        .order_by(ScoreChange.id.desc()).limit(1)
    ).first()  # fmt: skip


def top_reasons(card: dict[str, Any] | None, count: int) -> list[str]:
    """The card's biggest contributions, as a rep reads them; first the predictive
    model's chance of a win and why, when one was active when the card was made."""
    if not card:
        return []
    lines = [line for line in card.get("breakdown", []) if line.get("contribution")]
    lines.sort(key=lambda line: -abs(line["contribution"]))
    reasons = []
    if card.get("predicted") is not None:
        reasons.append(prediction_line(card["predicted"], card.get("predicted_horizon_days"),
                                       card.get("predicted_reasons") or []))  # fmt: skip
    for line in lines[:count]:
        times = f" ({line['count']}×)" if line.get("count", 0) > 1 else ""
        reasons.append(f"{line['rule']}{times} {line['contribution']:+.1f}")
    return reasons


def recent_timeline(session: Session, lead_id: str, limit: int = 10) -> list[TimelineItem]:
    rows = session.scalars(
        select(Response).where(Response.lead_id == lead_id)
        .order_by(Response.occurred_at.desc()).limit(limit)
    ).all()  # fmt: skip
    return [
        TimelineItem(at=as_utc(row.occurred_at), type=row.type, detail=_detail(row.data or {}))
        for row in rows
    ]


def _detail(data: dict[str, Any]) -> str:
    keys = ("url", "form", "step", "action", "title", "text")
    return ", ".join(f"{key}={str(data[key])[:80]}" for key in keys if data.get(key))


def rep_dict(rep: SalesRep) -> dict[str, Any]:
    return {"id": rep.id, "name": rep.name, "email": rep.email, "phone": rep.phone,
            "timezone": rep.timezone,
            "webhook_url": str(rep.webhook_url) if rep.webhook_url else None}  # fmt: skip


def _already(handoff: Handoff) -> str:
    when = f" at {as_utc(handoff.answered_at):%Y-%m-%d %H:%M} UTC" if handoff.answered_at else ""
    return f"handoff {handoff.id} was already {handoff.status} by {handoff.answered_by}{when}"


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in key)[:60]
