"""Every side effect of the lead workflow, each idempotent.

A retried activity must find the row its earlier attempt wrote (unique keys:
the message send key, (lead, event) for score changes, (lead, cycle) for
handoffs) and return the same answer instead of acting twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from channels.base import EmailChannel, OutgoingEmail, OutgoingSms, SendResult, SmsChannel
from channels.errors import ProviderRejected, ProviderUnavailable
from channels.links import Links
from channels.policy import SendTime, earliest_send_time
from channels.render import compliance_problems, message_context, render_email, render_sms
from channels.template_sets import TemplateVersions
from experiments.store import assign_arm
from infra import metrics
from models.consent import (
    ConsentEffect,
    confirmation_recheck,
    opt_out_reason,
    set_consent,
)
from models.db import (
    Enrollment,
    Handoff,
    Lead,
    Message,
    PausedSequence,
    Response,
    SalesRepRow,
    ScoreChange,
    StageChange,
    as_utc,
    utcnow,
)
from models.definition_set import Definitions
from models.definitions import DeliveryPolicy
from models.jinja import template_environment
from models.locales import DEFAULT_LOCALE
from models.workflow_io import (
    CONFIRMATION_WAIT,
    PAUSED_REASON,
    PAUSED_RECHECK,
    ArmAssigned,
    ArmRequest,
    FinishEnrollment,
    HandoffRequest,
    HandoffResult,
    MigrateEnrollment,
    ScoreRequest,
    ScoreResult,
    ScoreUpdate,
    SendOutcome,
    SendRequest,
    StartEnrollment,
)
from scoring.engine import ResponseFact, ScoreCard, decide_stage, score
from scoring.records import lead_responses, mark_scored, record_card, stage_change_rows

if TYPE_CHECKING:  # scikit-learn is imported only where scoring runs (not by the API)
    from scoring.model_store import ActiveModel
    from scoring.predictive import PredictiveModel

log = logging.getLogger("nurture.activities")

# Message states a new attempt may claim again: nothing went out in them.
RECLAIMABLE = ("retrying", "deferred")
# claimed (checks, rendering: nothing sent) -> sending (the provider call) -> sent | failed
# | retrying. Only `sending` can hide a send we do not know about.


class _Outgoing(NamedTuple):
    """A rendered message, as stored on its row, and the provider call that sends it."""

    recipient: str
    subject: str | None  # None for an SMS
    body: str  # an email's text part
    deliver: Callable[[], SendResult]


class LeadActivities:
    def __init__(
        self,
        sessions: sessionmaker,
        email: EmailChannel,
        sms: SmsChannel,
        templates_dir: Path,
        sender: dict[str, str],
        links: Links,
        delivery: DeliveryPolicy,
        definitions: Definitions | None = None,
        predictive: ActiveModel | None = None,
        default_locale: str = DEFAULT_LOCALE,
    ):
        self.sessions = sessions
        self.delivery = delivery
        self.definitions = definitions  # the scoring models
        # The active predictive model, checked at most every 30 s (scoring/model_store.py).
        self.predictive = predictive or _active_model(sessions)
        self.email = email
        self.sms = sms
        self.templates_dir = Path(templates_dir)
        self.template_versions = TemplateVersions(self.templates_dir, sessions)
        self.sender = sender
        self.links = links
        self.default_locale = default_locale  # for a lead with none

    # --- enrollments ---------------------------------------------------------------------

    @activity.defn
    def start_enrollment(self, request: StartEnrollment) -> None:
        with self.sessions.begin() as session:
            if session.get(Enrollment, request.enrollment_id) is None:
                session.add(
                    Enrollment(
                        id=request.enrollment_id,
                        lead_id=request.lead_id,
                        sequence_id=request.sequence_id,
                        sequence_version=request.sequence_version,
                        segment=request.segment,
                        workflow_id=request.workflow_id,
                    )
                )

    @activity.defn
    def assign_arm(self, request: ArmRequest) -> ArmAssigned:
        """The lead's arm of an experiment: the one stored, else drawn and stored now."""
        with self.sessions.begin() as session:
            return assign_arm(session, request)

    @activity.defn
    def migrate_enrollment(self, request: MigrateEnrollment) -> None:
        """The enrollment now follows a newer version of its sequence (`nurture migrate-leads`)."""
        with self.sessions.begin() as session:
            enrollment = session.get(Enrollment, request.enrollment_id)
            if enrollment is not None:
                enrollment.sequence_version = request.sequence_version

    @activity.defn
    def finish_enrollment(self, request: FinishEnrollment) -> FinishEnrollment:
        """Ends the enrollment's row (once). Answers the request: run as a local activity,
        its history keeps only the answer, which is how `nurture simulate` reads the end."""
        with self.sessions.begin() as session:
            enrollment = session.get(Enrollment, request.enrollment_id)
            if enrollment is not None and enrollment.ended_at is None:
                enrollment.status = request.status
                enrollment.exit_reason = request.reason
                enrollment.ended_at = utcnow()
        return request

    # --- sends ------------------------------------------------------------------------------

    @activity.defn
    def send_message(self, request: SendRequest) -> SendOutcome:
        """Send one step's message at most once: claim, check consent, quiet hours and caps
        (deferring if needed), render, call the provider, record its answer."""
        answered = _answer_kept_by_an_earlier_attempt()
        message = self._claim(request)
        channel = self.email if request.channel == "email" else self.sms
        if message.status == "sending" and answered and answered["message_id"] == message.id:
            # The provider took it, but the database was away longer than an attempt
            # waits: record the answer the earlier attempt left with Temporal.
            result = SendResult(answered["provider"], answered["provider_message_id"])
            return self._record_sent(message.id, request, result, _kept_time(answered))
        if message.status == "sending" and not channel.idempotent:
            return self._unknown(message.id, request)
        if message.status not in ("claimed", "sending"):
            return _outcome(message)  # an earlier attempt finished this send

        # Checks and rendering change nothing outside our database: a crash here is
        # harmless, and the next attempt starts again from the claim.
        checked = self._check_send(request, message.id)
        if isinstance(checked, SendOutcome):
            return checked  # skipped or deferred
        outgoing = self._render(request, message.id, *checked)
        if isinstance(outgoing, SendOutcome):
            return outgoing  # failed: not fit to send
        return self._call_provider(request, message.id, channel.idempotent, outgoing)

    def _check_send(self, request: SendRequest, message_id: str) -> tuple[str, dict] | SendOutcome:
        """Consent, quiet hours and caps: the outcome of a send they skip or defer, else
        the recipient and the lead's profile to render with."""
        with self.sessions.begin() as session:
            lead = session.get(Lead, request.lead_id)
            message = session.get(Message, message_id)
            if lead is None:
                raise ApplicationError(f"lead {request.lead_id} does not exist", non_retryable=True)
            # Consent is read here, at send time, whatever sequence asked for the send.
            if held := _held_for_confirmation(request, message, lead):
                return held
            skip = opt_out_reason(lead, request.channel)
            if skip:
                message.status, message.status_reason = "skipped", skip
                _count_send(request, "skipped")
                return _outcome(message)
            if session.get(PausedSequence, request.sequence_id) is not None:
                return _hold_while_paused(request, message)
            due = max(as_utc(request.due_at) if request.due_at else utcnow(), utcnow())
            when = self._send_time(session, lead, request, due)
            message.scheduled_at = when.at
            message.counts_for_caps = not request.ignore_frequency_caps
            if when.deferred:
                message.status, message.not_before = "deferred", when.at
                message.status_reason = "; ".join(when.reasons)
                _count_send(request, "deferred")
                return _outcome(message)
            profile = lead.profile()
            recipient = lead.email if request.channel == "email" else lead.phone
            return recipient, profile

    def _render(
        self, request: SendRequest, message_id: str, recipient: str, profile: dict
    ) -> _Outgoing | SendOutcome:
        """The message rendered for its channel, with the provider call that sends it; the
        outcome instead for an email missing what every marketing email must have."""
        unsubscribe_url = self.links.unsubscribe_url(request.lead_id, request.channel)
        track = partial(self.links.tracked_url, lead_id=request.lead_id)  # links to the site
        context = message_context(profile, self.sender, unsubscribe_url, self.default_locale,
                                  track)  # fmt: skip
        tags = {
            "sequence_id": request.sequence_id,
            "lead_id": request.lead_id,
            "enrollment_id": request.enrollment_id,
            "step_id": request.step_id,
            "message_id": message_id,
        }
        if request.channel != "email":
            body = render_sms(self._templates(request), request.template, context)
            sms = OutgoingSms(message_id, recipient, body, tags)
            return _Outgoing(recipient, None, body, partial(self.sms.send_sms, sms))
        rendered = render_email(self._templates(request), request.template, context)
        missing = compliance_problems(rendered, self.sender, context["unsubscribe_url"])
        if missing:  # never send a marketing email without them (CAN-SPAM, RFC 8058)
            outcome = self._set_status(message_id, "failed", "; ".join(missing))
            _count_send(request, "failed")
            return outcome
        email = OutgoingEmail(
            message_id=message_id,
            to=recipient,
            from_email=self.sender["email"],
            from_name=self.sender["name"],
            subject=rendered.subject,
            html=rendered.html,
            text=rendered.text,
            headers={  # RFC 8058 one-click unsubscribe
                "List-Unsubscribe": f"<{context['unsubscribe_url']}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
            tags=tags,
            categories=(request.sequence_id, f"{request.sequence_id}:{request.step_id}"),
            reply_to=self.links.reply_to(message_id),  # replies find their lead
        )
        deliver = partial(self.email.send_email, email)
        return _Outgoing(recipient, rendered.subject, rendered.text, deliver)

    def _call_provider(
        self, request: SendRequest, message_id: str, idempotent: bool, outgoing: _Outgoing
    ) -> SendOutcome:
        """Mark the message `sending`, call the provider and record its answer."""
        # From here a crash leaves the outcome unknown: mark it just before the call.
        if not self._mark_sending(
            message_id, idempotent, outgoing.recipient, outgoing.subject, outgoing.body
        ):
            return self._concurrent_outcome(message_id, request)
        # The send's time is the call's start: a reply can come back before the answer is
        # written, and is attributed to the send it follows by this time.
        started = utcnow()
        try:
            result = outgoing.deliver()
        except ProviderRejected as exc:  # final: record the provider's reason
            return self._rejected(message_id, request, exc)
        except ProviderUnavailable as exc:  # nothing sent: release the claim, retry later
            self._set_status(message_id, "retrying", str(exc))
            _count_send(request, "retrying")
            if exc.status == 429:
                metrics.record(metrics.PROVIDER_THROTTLED, channel=request.channel)
            raise ApplicationError(f"provider unavailable: {exc}") from None
        _keep_provider_answer(message_id, result, started)
        return self._record_sent(message_id, request, result, started)

    def _record_sent(
        self, message_id: str, request: SendRequest, result: SendResult, started: datetime
    ):
        def record_sent() -> Message:
            with self.sessions.begin() as session:
                sent = session.get(Message, message_id)
                if sent.status != "sent":  # not again when an earlier attempt got to it
                    sent.provider = result.provider
                    sent.provider_message_id = result.provider_message_id
                    sent.status, sent.sent_at = "sent", started
                return sent

        # The provider has it: the database being away for a moment must not turn the
        # send into `unknown` (a retry would find it `sending`), so keep trying a while;
        # past that the next attempt records it from the answer kept with Temporal.
        message = _despite_database_outage(record_sent)
        log.info("sent %s step=%s lead=%s", request.channel, request.step_id, request.lead_id)
        _count_send(request, "sent")
        return _outcome(message)

    def _send_time(self, session: Session, lead: Lead, request: SendRequest, due) -> SendTime:
        """Quiet hours in the lead's time zone, then caps over the lead's earlier sends on
        this channel from every sequence."""
        window = request.send_window or self.delivery.send_windows[request.channel]
        caps = self.delivery.frequency_caps[request.channel]
        if request.ignore_frequency_caps:
            caps = ()
        sent = []
        if caps:
            sent = [
                as_utc(moment)
                for moment in session.scalars(
                    select(Message.scheduled_at).where(
                        Message.lead_id == lead.id,
                        Message.channel == request.channel,
                        Message.counts_for_caps.is_(True),
                        Message.status.in_(("sent", "unknown")),
                        Message.scheduled_at.is_not(None),
                    )
                )
            ]
        return earliest_send_time(due, _zone(lead.timezone), window, caps, sent, request.channel)

    def _rejected(self, message_id: str, request: SendRequest, exc: ProviderRejected):
        """A final refusal: keep the provider's reason; a bad address or a provider-side
        opt-out stops the channel for this lead."""

        def record_refusal() -> Message:
            with self.sessions.begin() as session:
                message = session.get(Message, message_id)
                message.status, message.status_reason = "failed", exc.reason
                if exc.consent_reason:
                    effect = ConsentEffect(request.channel, False, exc.consent_reason, exc.reason)
                    set_consent(session, session.get(Lead, request.lead_id), effect)
                return message

        message = _despite_database_outage(record_refusal)
        log.warning("provider refused %s step=%s lead=%s: %s", request.channel,
                    request.step_id, request.lead_id, exc.reason)  # fmt: skip
        _count_send(request, "failed")
        return _outcome(message)

    def _set_status(self, message_id: str, status: str, reason: str) -> SendOutcome:
        def write() -> Message:
            with self.sessions.begin() as session:
                message = session.get(Message, message_id)
                message.status, message.status_reason = status, reason
                return message

        return _outcome(_despite_database_outage(write))

    def _claim(self, request: SendRequest) -> Message:
        """Claim the send key before anything else, or find the earlier claim.

        A claim left `retrying` (the provider refused with a 429/5xx) or `deferred`
        (quiet hours, a cap) sent nothing, so it is claimed again."""
        try:
            with self.sessions.begin() as session:
                message = Message(
                    send_key=request.send_key,
                    lead_id=request.lead_id,
                    enrollment_id=request.enrollment_id,
                    step_id=request.step_id,
                    channel=request.channel,
                    template=request.template,
                    recipient="",
                    body="",
                )
                session.add(message)
            return message
        except IntegrityError:
            with self.sessions.begin() as session:
                existing = session.scalars(
                    select(Message).where(Message.send_key == request.send_key)
                ).one_or_none()
                if existing is None:
                    raise  # not a duplicate claim: a real integrity problem
                session.execute(
                    update(Message)
                    .where(Message.id == existing.id, Message.status.in_(RECLAIMABLE))
                    .values(status="claimed")
                    .execution_options(synchronize_session=False)
                )
                session.expire(existing)
                session.refresh(existing)
                return existing

    def _mark_sending(
        self, message_id: str, idempotent: bool, recipient: str, subject: str | None, body: str
    ) -> bool:
        """claimed -> sending, committed immediately before the provider is called.

        A compare-and-set: of two attempts racing (a timed-out one still alive), one
        calls the provider. An idempotent channel may repeat a `sending` message."""
        allowed = ("claimed", "sending") if idempotent else ("claimed",)
        with self.sessions.begin() as session:
            return (
                session.execute(
                    update(Message)
                    .where(Message.id == message_id, Message.status.in_(allowed))
                    .values(status="sending", recipient=recipient, subject=subject, body=body)
                    .execution_options(synchronize_session=False)
                ).rowcount
                == 1
            )

    def _unknown(self, message_id: str, request: SendRequest) -> SendOutcome:
        """An earlier attempt died during the provider call: the message may have gone
        out. Never risk a second send; record that we do not know, loudly."""
        log.warning(
            "send outcome unknown: step=%s lead=%s message=%s (interrupted during the provider "
            "call; not repeated - check the provider)", request.step_id, request.lead_id,
            message_id,
        )  # fmt: skip
        outcome = self._set_status(
            message_id, "unknown", "interrupted during the provider call; outcome unknown"
        )
        _count_send(request, "unknown")
        return outcome

    def _concurrent_outcome(self, message_id: str, request: SendRequest) -> SendOutcome:
        """Another attempt took the send first: its outcome, or unknown while it runs."""
        with self.sessions() as session:
            message = session.get(Message, message_id)
        if message.status in ("sending", "claimed"):
            return _outcome(message).model_copy(update={"status": "unknown"})
        return _outcome(message)

    # --- scoring ------------------------------------------------------------------------------

    @activity.defn
    def score_lead(self, request: ScoreRequest) -> ScoreResult:
        """Score the lead with its segment's model at the workflow's moment and store the
        card, the score change and any stage changes with the lead row, in one transaction.

        Once per (lead, event): a retry finds the stored result and answers the same.
        A decay or rescore that moves nothing stores nothing.
        """
        if self.definitions is None:
            raise ApplicationError("this worker has no scoring models", non_retryable=True)
        predictive = self._predictive_model()  # before the transaction: its own session
        try:
            with self.sessions.begin() as session:
                stored = _stored_result(session, request)
                if stored is not None:
                    return stored
                lead = session.get(Lead, request.lead_id)
                if lead is None:
                    raise ApplicationError(
                        f"lead {request.lead_id} does not exist", non_retryable=True
                    )
                model = self.definitions.scoring_model(lead.segment)
                if request.model_fingerprint and request.model_fingerprint != model.fingerprint:
                    # Retried until the workers run the model `nurture rescore` used.
                    raise ApplicationError(
                        f"this worker scores with {model.fingerprint} but the rescore used "
                        f"{request.model_fingerprint}: restart the workers on the new "
                        "scoring.yaml"
                    )
                responses = lead_responses(
                    session, lead.id, request.event_id, *request.batch_event_ids
                )
                # A response stamped a moment after the workflow's clock still counts.
                at = max([as_utc(request.at), *(r.occurred_at for r in responses)])
                profile = lead.profile()
                card = score(model, profile, responses, at)
                # Before the stage: stage rules and the SQL gate may use `predicted`.
                self._predict(predictive, card, profile, responses, as_utc(lead.created_at))
                held = lead.sql_hold_until is not None and as_utc(lead.sql_hold_until) > at
                decision = decide_stage(model, lead.stage, card, profile, hold_sql=held)
                predicted_line = card.prediction_line()  # a rep reads it first in a handoff
                result = ScoreResult(
                    total=card.total, fit=card.fit, engagement=card.engagement,
                    grade=card.grade, old_stage=decision.old, stage=decision.new,
                    entered=decision.entered, recycled=decision.recycled,
                    decaying=card.decaying,
                    reasons=[predicted_line, *card.reasons()] if predicted_line
                    else card.reasons(),
                    rescore_in=model.rescore_every if card.decaying else None,
                    requested_at=request.at, predicted=card.predicted,
                    predicted_reasons=card.predicted_reasons,
                    predictive_model=card.predictive_model,
                )  # fmt: skip
                for problem in card.problems:
                    log.warning("scoring %s: %s", lead.id, problem)
                old_score = lead.score
                written = record_card(
                    session, lead, model, card, decision, request.event_id, request.cause,
                    result=result.model_dump(mode="json"),
                    always=request.cause not in ("decay", "rescore"),
                    responses=[request.event_id, *request.batch_event_ids],
                )  # fmt: skip
            if written:  # committed
                rows = stage_change_rows(lead.id, decision, request.event_id, card.total)
                _count_score(request.cause, old_score, card.total,
                             [(row["from_stage"], row["to_stage"]) for row in rows])  # fmt: skip
                self._count_batch(request)
            return result
        except IntegrityError:  # a concurrent attempt stored it first
            with self.sessions() as session:
                stored = _stored_result(session, request)
            if stored is None:
                raise
            return stored

    def _predictive_model(self) -> PredictiveModel | None:
        """The active model; None when none is, or when the active one cannot be loaded
        (its artifact changed): the rules still score, and the error is logged."""
        try:
            return self.predictive.get()
        except ValueError:
            log.exception("the active predictive model cannot be loaded: scoring without it")
            return None

    def _predict(
        self,
        model: PredictiveModel | None,
        card: ScoreCard,
        profile: dict,
        responses: list[ResponseFact],
        created_at: datetime,
    ) -> None:
        """Add the model's `predicted` and its top reasons to the card: from the same
        profile, responses and moment the card has."""
        if model is None:
            return
        prediction = model.predict(profile, responses, card.at, created_at)
        limit = self.definitions.scoring.predictive.reasons
        card.add_prediction(prediction.probability, prediction.reason_lines(limit),
                            prediction.fingerprint, model.horizon_days)  # fmt: skip

    def _count_batch(self, request: ScoreRequest) -> None:
        """Responses scored together with `request.event_id`, counted by type."""
        batch = getattr(request, "batch_event_ids", None)
        if not batch or not metrics.enabled():
            return
        try:
            with self.sessions() as session:
                kinds = session.scalars(select(Response.type).where(
                    Response.lead_id == request.lead_id, Response.event_id.in_(batch)
                )).all()  # fmt: skip
            for kind in kinds:
                metrics.record(metrics.RESPONSES, type=kind)
        except Exception:
            log.debug("responses of a batch not counted", exc_info=True)

    @activity.defn
    def record_score(self, update: ScoreUpdate) -> None:
        """Store the score change and any stage changes with the lead row, in one transaction."""
        try:
            with self.sessions.begin() as session:
                lead = session.get(Lead, update.lead_id)
                if lead is None:
                    raise ApplicationError(
                        f"lead {update.lead_id} does not exist", non_retryable=True
                    )
                change = ScoreChange(
                    lead_id=update.lead_id,
                    event_id=update.event_id,
                    old_score=update.old_score,
                    new_score=update.new_score,
                    reason=update.reason,
                )
                session.add(change)
                mark_scored(session, update.lead_id, change, [update.event_id])
                previous = update.old_stage
                for stage in update.stages_entered:
                    session.add(
                        StageChange(
                            lead_id=update.lead_id,
                            change_key=f"{update.cycle}:{stage}",
                            from_stage=previous,
                            to_stage=stage,
                            reason=f"score {update.new_score} after {update.reason}",
                        )
                    )
                    previous = stage
                lead.score, lead.stage = update.new_score, update.new_stage
        except IntegrityError:
            return  # an earlier attempt stored this change already
        stages = [update.old_stage, *update.stages_entered]
        _count_score(update.response_type, update.old_score, update.new_score,
                     list(zip(stages, stages[1:], strict=False)))  # fmt: skip

    # --- handoff -------------------------------------------------------------------------------

    @activity.defn
    def hand_off(self, request: HandoffRequest) -> HandoffResult:
        """Assign a rep (round-robin over active reps), store the handoff, notify the rep."""
        with self.sessions.begin() as session:
            handoff = session.scalars(
                select(Handoff).where(
                    Handoff.lead_id == request.lead_id, Handoff.cycle == request.cycle
                )
            ).one_or_none()
            if handoff is None:
                handoff = self._assign(session, request)
            rep = session.get(SalesRepRow, handoff.rep_id)
            lead = session.get(Lead, request.lead_id)
            profile, rep_email, rep_name = lead.profile(), rep.email, rep.name
            handoff_id = handoff.id

        env = template_environment(str(self.templates_dir))
        context = {"lead": profile, "rep": {"name": rep_name}, "score": request.score,
                   "reasons": request.reasons, "handoff_id": handoff_id}  # fmt: skip
        self.email.send_email(
            OutgoingEmail(
                message_id=f"handoff-{handoff_id}",  # same ID on retry: one notification
                to=rep_email,
                from_email=self.sender["email"],
                from_name="Nurture",
                subject=" ".join(
                    env.get_template("sales/handoff_subject.txt").render(context).split()
                ),
                html=env.get_template("sales/handoff.html").render(context),
                text=env.get_template("sales/handoff.txt").render(context),
                tags={"handoff_id": handoff_id, "audience": "rep"},
            )
        )
        log.info("handed off lead=%s rep=%s", request.lead_id, rep_name)
        return HandoffResult(handoff_id=handoff_id, rep_id=handoff.rep_id, rep_name=rep_name)

    def _templates(self, request: SendRequest):
        """The templates the lead was enrolled with; the files as they are now for
        enrollments made before template versions were kept."""
        if request.templates is None:
            return template_environment(str(self.templates_dir))
        return self.template_versions.environment(request.templates)

    @staticmethod
    def _assign(session: Session, request: HandoffRequest) -> Handoff:
        rep_id = _next_rep(session)
        handoff = Handoff(
            lead_id=request.lead_id,
            cycle=request.cycle,
            rep_id=rep_id,
            score=request.score,
            reason="; ".join(request.reasons),
        )
        session.add(handoff)
        session.get(Lead, request.lead_id).owner_rep_id = rep_id
        session.flush()
        return handoff


def _active_model(sessions: sessionmaker) -> ActiveModel:
    """Imported here, when a worker builds its activities: the API, which imports this
    module too, does not pay for scikit-learn; a worker pays at start, not in an activity."""
    from scoring.model_store import ActiveModel

    return ActiveModel(sessions)


def _next_rep(session: Session) -> str:
    """Round-robin: the active rep assigned longest ago (never-assigned first).

    Taken with a compare-and-set on `last_assigned_at`, so two handoffs at the
    same moment cannot both take the same rep, on SQLite as on PostgreSQL.
    """
    for _attempt in range(20):
        rep = session.scalars(
            select(SalesRepRow)
            .where(SalesRepRow.active.is_(True))
            .order_by(SalesRepRow.last_assigned_at.asc().nulls_first(), SalesRepRow.id)
            .limit(1)
        ).first()
        if rep is None:
            raise ApplicationError("no active sales rep to hand the lead to (check sales.yaml)")
        previous = rep.last_assigned_at
        unchanged = (
            SalesRepRow.last_assigned_at.is_(None)
            if previous is None
            else SalesRepRow.last_assigned_at == previous
        )
        taken = session.execute(
            update(SalesRepRow)
            .where(SalesRepRow.id == rep.id, unchanged)
            .values(last_assigned_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        session.expire(rep)
        if taken.rowcount == 1:
            return rep.id
    raise ApplicationError("could not assign a rep: too much contention, will retry")


def _stored_result(session: Session, request: ScoreRequest) -> ScoreResult | None:
    """What an earlier attempt stored for this request: the change keyed by its event,
    or the one that already counted its response (in a burst, by an earlier run)."""
    counted_in = select(Response.scored_in).where(Response.event_id == request.event_id)
    stored = session.scalars(
        select(ScoreChange.result).where(
            ScoreChange.lead_id == request.lead_id,
            or_(
                ScoreChange.event_id == request.event_id,
                ScoreChange.id == counted_in.scalar_subquery(),
            ),
        )  # fmt: skip
    ).first()
    return ScoreResult.model_validate(stored) if stored else None


def _count_score(cause: str, old: float | None, new: float, stages: list[tuple[str, str]]) -> None:
    kind = metrics.response_cause(cause)
    if kind == "response":
        metrics.record(metrics.RESPONSES, type=cause)
    metrics.record(metrics.SCORE_CHANGES, cause=kind, direction=metrics.direction(old, new))
    for old_stage, new_stage in stages:
        metrics.record(metrics.STAGE_CHANGES, from_stage=old_stage, to_stage=new_stage)


def _count_send(request: SendRequest, status: str) -> None:
    metrics.record(metrics.MESSAGES, channel=request.channel, status=status,
                   sequence=request.sequence_id)  # fmt: skip


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):  # intake checks zones; older rows may not be
        return ZoneInfo("UTC")


# How long an activity keeps retrying a write the provider's answer depends on: within
# the send activity's 30 s, after a provider call of at most 10 s.
OUTAGE_PATIENCE = 15.0


def _keep_provider_answer(message_id: str, result: SendResult, started: datetime) -> None:
    """Heartbeat the provider's answer (and when the call started) before writing it:
    Temporal keeps an activity's last heartbeat details for its next attempt, so the
    answer outlives a database outage longer than this attempt waits (or the worker
    dying before the write)."""
    if activity.in_activity():  # not when a test calls the activity directly
        activity.heartbeat({"message_id": message_id, "provider": result.provider,
                            "provider_message_id": result.provider_message_id,
                            "sent_at": started.isoformat()})  # fmt: skip


def _kept_time(answered: dict) -> datetime:
    """When the kept answer's call started; now for an answer kept without it (an attempt
    of an earlier version)."""
    try:
        return as_utc(datetime.fromisoformat(answered["sent_at"]))
    except (KeyError, TypeError, ValueError):
        return utcnow()


def _answer_kept_by_an_earlier_attempt() -> dict | None:
    """The provider's answer an earlier attempt of this send kept (see above), passed on
    again at once so that an attempt failing before it gets to use it does not lose it."""
    if not activity.in_activity() or not activity.info().heartbeat_details:
        return None
    answered = activity.info().heartbeat_details[0]
    activity.heartbeat(answered)
    return answered if isinstance(answered, dict) else None


def _despite_database_outage(write):
    """Run `write` (a transaction of its own), retrying while the database cannot be
    reached, for up to OUTAGE_PATIENCE seconds; then the error goes up as before."""
    deadline = time.monotonic() + OUTAGE_PATIENCE
    pause = 0.25
    while True:
        try:
            return write()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + pause > deadline:
                raise
            log.warning("database unreachable, retrying in %.1f s: %s", pause,
                        type(exc).__name__)  # fmt: skip
            time.sleep(pause)
            pause = min(pause * 2, 4.0)


def _hold_while_paused(request: SendRequest, message: Message) -> SendOutcome:
    """Deferred, not dropped: the workflow waits for the resume signal (or the recheck) and
    asks again; quiet hours and caps are judged then, at the time it goes out."""
    message.status, message.status_reason = "deferred", PAUSED_REASON
    due = max(as_utc(request.due_at) if request.due_at else utcnow(), utcnow())
    message.not_before = due + PAUSED_RECHECK  # the workflow's time, as quiet hours are
    _count_send(request, "deferred")
    return _outcome(message)


def _held_for_confirmation(
    request: SendRequest, message: Message, lead: Lead
) -> SendOutcome | None:
    """An email to a lead whose consent waits for its confirmation (double opt-in) is
    deferred, not skipped: it goes once the lead confirms, and is skipped if it never does
    (docs/design.md, "A lead's email waits for its confirmation")."""
    due = max(as_utc(request.due_at) if request.due_at else utcnow(), utcnow())
    recheck = confirmation_recheck(lead, request.channel, as_utc(message.created_at), due)
    if recheck is None:
        return None
    message.status, message.status_reason = "deferred", CONFIRMATION_WAIT
    message.not_before = recheck
    _count_send(request, "deferred")
    return _outcome(message)


def _outcome(message: Message) -> SendOutcome:
    return SendOutcome(
        message_id=message.id,
        status=message.status,
        reason=message.status_reason,
        retry_at=as_utc(message.not_before) if message.status == "deferred" else None,
        provider=message.provider,
        provider_message_id=message.provider_message_id,
    )
