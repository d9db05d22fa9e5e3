"""One lead's story for the console: who it is, what it allows, its score card and the
score over time, and what happened to it, newest first, a page at a time.

The score card with its reasons (and `predicted` with its reasons when a predictive model
is active) and the stage checks are `nurture score`'s (what `nurture status` shows:
scoring/explain.py); the current step and next action time are the lead
workflow's `state` query through `services.status.workflow_status`, with a short timeout
(Temporal not answering is said, the rest still shows). The timeline merges sends,
responses, score and stage changes, consent changes, handoffs and each of their events
(notifications, reminders, reassignments, answers), replies forwarded to the lead's
owner and the CRM's outcome events. The experiments the lead is in come with its arm of
each (experiment_assignments). Each source is read newest first, at most a page of it,
before the page's cursor: a lead with thousands of responses costs what a lead with
fifty does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from infra.settings import Settings
from models.consent import opt_out_reason
from models.db import (
    ConsentChange,
    Enrollment,
    ExperimentAssignment,
    Handoff,
    HandoffEvent,
    Lead,
    Message,
    OutcomeEvent,
    ReplyNotice,
    Response,
    ScoreChange,
    StageChange,
    as_utc,
)
from models.definition_set import Definitions
from scoring.explain import explain
from services.lead_client import lead_workflow_id
from services.status import workflow_status

TIMELINE_PAGE = 50
SERIES_POINTS = 200  # the latest score changes drawn
WORKFLOW_TIMEOUT = 2.0  # seconds the page waits for Temporal
CHANNELS = ("email", "sms")
# What a response's data says about it, worth a line in the timeline.
RESPONSE_DETAIL = ("url", "form", "action", "step", "body", "text", "reason", "via")


class LeadNotFound(LookupError):
    pass


class NotHandedOffToRep(PermissionError):
    """A rep asked for a lead none of whose handoffs is assigned to it."""


@dataclass(frozen=True)
class Happening:
    """One line of the timeline."""

    at: datetime
    kind: str  # send response score stage consent handoff handoff_event reply_notice outcome
    title: str
    detail: str = ""
    tone: str = ""  # ok | warn | bad: a badge's colour, or none


@dataclass(frozen=True)
class ChannelConsent:
    channel: str
    allowed: bool
    why_not: str | None  # as the send activity would say it (models/consent.py)
    changed_at: datetime | None = None  # the last ConsentChange on the channel
    change: str | None = None  # its reason and detail
    # What intake was last told (docs/consent.md): its status, source, time and basis.
    status: str | None = None
    source: str | None = None
    given_at: datetime | None = None
    basis: str | None = None


@dataclass
class LeadStory:
    lead: Lead
    consent: list[ChannelConsent]
    score: dict[str, Any]  # scoring.explain's: the card, its reasons, the stage checks
    series: list[tuple[datetime, float]]  # the score after each change, oldest first
    enrollments: list[Enrollment]
    handoffs: list[Handoff]
    timeline: list[Happening]
    older: datetime | None  # the next page's cursor (`before`), if there is one
    workflow_id: str = ""
    workflow: dict[str, Any] = field(default_factory=dict)  # workflow_status's, once asked
    experiments: list[ExperimentAssignment] = field(default_factory=list)  # its arms, in order


def lead_story(
    session: Session, definitions: Definitions, lead_id: str, now: datetime, *,
    before: datetime | None = None, rep_id: str | None = None, limit: int = TIMELINE_PAGE,
) -> LeadStory:  # fmt: skip
    """Everything the lead page shows from the database. `rep_id`: only if one of the
    lead's handoffs is that rep's (NotHandedOffToRep otherwise)."""
    lead = session.get(Lead, lead_id)
    if lead is None:
        raise LeadNotFound(lead_id)
    if rep_id is not None and not session.scalar(
        select(exists().where(Handoff.lead_id == lead_id, Handoff.rep_id == rep_id))
    ):
        raise NotHandedOffToRep(lead_id)
    happenings = _timeline(session, lead_id, before, limit)
    timeline, older = _page(happenings, limit)
    return LeadStory(
        lead=lead,
        consent=consent_by_channel(session, lead),
        score=explain(session, definitions, lead, now),
        series=score_series(session, lead_id),
        enrollments=list(session.scalars(
            select(Enrollment).where(Enrollment.lead_id == lead_id).order_by(Enrollment.started_at)
        )),
        handoffs=list(session.scalars(
            select(Handoff).where(Handoff.lead_id == lead_id).order_by(Handoff.cycle)
        )),
        timeline=timeline,
        older=older,
        workflow_id=lead_workflow_id(lead_id),
        experiments=list(session.scalars(
            select(ExperimentAssignment).where(ExperimentAssignment.lead_id == lead_id)
            .order_by(ExperimentAssignment.assigned_at, ExperimentAssignment.experiment)
        )),
    )  # fmt: skip


async def with_workflow(story: LeadStory, settings: Settings) -> LeadStory:
    """The story with what the lead's workflow says now (`story.workflow`: see
    services/status.py `workflow_status`; "reachable" False when Temporal does not answer)."""
    story.workflow = await workflow_status(settings, story.lead.id, WORKFLOW_TIMEOUT)
    return story


def temporal_ui_url(settings: Settings, workflow_id: str) -> str:
    """The workflow's page in the Temporal UI, on the Temporal server's host."""
    host = settings.temporal_address.rsplit(":", 1)[0]
    return (f"http://{host}:{settings.temporal_ui_port}/namespaces/"
            f"{settings.temporal_namespace}/workflows/{workflow_id}")  # fmt: skip


def consent_by_channel(session: Session, lead: Lead) -> list[ChannelConsent]:
    """Each channel: may we send, why not, and its last consent change."""
    last: dict[str, ConsentChange] = {}
    told: dict[str, ConsentChange] = {}  # the last change with a source or basis
    for change in session.scalars(
        select(ConsentChange).where(ConsentChange.lead_id == lead.id).order_by(ConsentChange.id)
    ):
        last[change.channel] = change
        if change.source or change.basis:
            told[change.channel] = change
    found = []
    for channel in CHANNELS:
        why_not = opt_out_reason(lead, channel)
        change = last.get(channel)
        found.append(ChannelConsent(
            channel, why_not is None, why_not,
            as_utc(change.created_at) if change else None,
            _joined(change.reason, change.detail) if change else None,
            *_told(told.get(channel)),
        ))  # fmt: skip
    return found


def _told(change: ConsentChange | None) -> tuple:
    """(status, source, given at, basis) of a consent change intake recorded, or Nones."""
    if change is None:
        return None, None, None, None
    at = as_utc(change.given_at) if change.given_at else None
    return change.status, change.source, at, change.basis


def score_series(session: Session, lead_id: str) -> list[tuple[datetime, float]]:
    """The score after each of the latest SERIES_POINTS changes, oldest first."""
    at = func.coalesce(ScoreChange.scored_at, ScoreChange.created_at)
    rows = session.execute(
        select(at, ScoreChange.new_score).where(ScoreChange.lead_id == lead_id)
        .order_by(ScoreChange.id.desc()).limit(SERIES_POINTS)
    ).all()  # fmt: skip
    return [(as_utc(moment), score) for moment, score in reversed(rows)]


# --- the timeline ------------------------------------------------------------------------


def _timeline(
    session: Session, lead_id: str, before: datetime | None, limit: int
) -> list[Happening]:
    """Up to `limit` + 1 of each kind before `before`: a page of them merged, and whether
    there is more."""
    cutoff = before.astimezone(UTC) if before else None
    found: list[Happening] = []
    for read in (_sends, _responses, _score_changes, _stage_changes, _consent_changes,
                 _handoffs, _handoff_events, _reply_notices, _outcomes):  # fmt: skip
        found.extend(read(session, lead_id, cutoff, limit + 1))
    return found


def _page(happenings: list[Happening], limit: int) -> tuple[list[Happening], datetime | None]:
    """The newest `limit`, and the cursor of the rest. A moment is never split between
    two pages (the next page starts strictly before the cursor)."""
    happenings.sort(key=lambda h: h.at, reverse=True)
    if len(happenings) <= limit:
        return happenings, None
    page = happenings[:limit]
    boundary = page[-1].at
    if happenings[limit].at == boundary:
        page = [h for h in page if h.at > boundary] or [h for h in happenings if h.at >= boundary]
    return page, page[-1].at


def _newest(query, moment, cutoff: datetime | None, limit: int):
    if cutoff is not None:
        query = query.where(moment < cutoff)
    return query.order_by(moment.desc()).limit(limit)


def _sends(session, lead_id, cutoff, limit) -> list[Happening]:
    at = func.coalesce(Message.sent_at, Message.created_at)
    query = select(Message, at).where(Message.lead_id == lead_id)
    found = []
    for message, moment in session.execute(_newest(query, at, cutoff, limit)):
        tone = {"sent": "ok", "failed": "bad", "unknown": "bad", "skipped": "warn",
                "deferred": "warn", "retrying": "warn"}.get(message.status, "")  # fmt: skip
        title = f"{message.channel} {message.status}: {message.step_id or message.template}"
        detail = _joined(message.subject, message.delivery_status and
                         f"provider: {message.delivery_status}", message.status_reason)  # fmt: skip
        found.append(Happening(as_utc(moment), "send", title, detail, tone))
    return found


def _responses(session, lead_id, cutoff, limit) -> list[Happening]:
    query = select(Response).where(Response.lead_id == lead_id)
    found = []
    for response in session.scalars(_newest(query, Response.occurred_at, cutoff, limit)):
        data = response.data or {}
        detail = _joined(*(f"{key} {str(data[key])[:120]}" for key in RESPONSE_DETAIL
                           if data.get(key)), f"from {response.source}")  # fmt: skip
        found.append(Happening(as_utc(response.occurred_at), "response", response.type, detail))
    return found


def _score_changes(session, lead_id, cutoff, limit) -> list[Happening]:
    query = select(ScoreChange).where(ScoreChange.lead_id == lead_id)
    return [
        Happening(as_utc(c.created_at), "score", f"score {c.old_score:.1f} → {c.new_score:.1f}",
                  c.reason, "ok" if c.new_score > c.old_score else "")
        for c in session.scalars(_newest(query, ScoreChange.created_at, cutoff, limit))
    ]  # fmt: skip


def _stage_changes(session, lead_id, cutoff, limit) -> list[Happening]:
    query = select(StageChange).where(StageChange.lead_id == lead_id)
    return [
        Happening(as_utc(c.created_at), "stage", f"stage {c.from_stage} → {c.to_stage}",
                  c.reason, "ok")
        for c in session.scalars(_newest(query, StageChange.created_at, cutoff, limit))
    ]  # fmt: skip


def _consent_changes(session, lead_id, cutoff, limit) -> list[Happening]:
    query = select(ConsentChange).where(ConsentChange.lead_id == lead_id)
    return [
        Happening(as_utc(c.created_at), "consent",
                  f"{c.channel} {'opt-in' if c.opted_in else 'opt-out'}",
                  _joined(c.reason, c.detail), "ok" if c.opted_in else "warn")
        for c in session.scalars(_newest(query, ConsentChange.created_at, cutoff, limit))
    ]  # fmt: skip


def _handoffs(session, lead_id, cutoff, limit) -> list[Happening]:
    query = select(Handoff).where(Handoff.lead_id == lead_id)
    return [
        Happening(as_utc(h.created_at), "handoff",
                  f"handed off to {h.rep_id} (score {h.score:.1f}, now {h.status})",
                  _joined(h.reason, h.routing), "ok")
        for h in session.scalars(_newest(query, Handoff.created_at, cutoff, limit))
    ]  # fmt: skip


def _handoff_events(session, lead_id, cutoff, limit) -> list[Happening]:
    query = (select(HandoffEvent, Handoff).join(Handoff, Handoff.id == HandoffEvent.handoff_id)
             .where(Handoff.lead_id == lead_id))  # fmt: skip
    found = []
    for event, handoff in session.execute(_newest(query, HandoffEvent.created_at, cutoff, limit)):
        title = f"handoff {event.kind}" + (f" by {event.channel}" if event.channel else "")
        if event.rep_id:
            title += f" ({event.rep_id})"
        tone = "bad" if event.status == "failed" else ""
        if event.kind == "answered":
            title = f"sales answered: {handoff.status}"
            detail = _joined(handoff.answered_by and f"by {handoff.answered_by}",
                             handoff.answer_reason, handoff.answer_note)  # fmt: skip
            tone = "ok" if handoff.status == "accepted" else "warn"
        else:
            detail = _readable(event.detail)
        found.append(Happening(as_utc(event.created_at), "handoff_event", title, detail, tone))
    return found


def _reply_notices(session, lead_id, cutoff, limit) -> list[Happening]:
    """Each reply forwarded to the lead's owner, per channel (`notify_owner: true`)."""
    query = select(ReplyNotice).where(ReplyNotice.lead_id == lead_id)
    found = []
    for notice in session.scalars(_newest(query, ReplyNotice.created_at, cutoff, limit)):
        if notice.channel == "none":
            title, tone = "reply forwarded to nobody", "warn"
        else:
            title = f"reply forwarded to {notice.rep_id} by {notice.channel}: {notice.status}"
            tone = {"sent": "ok", "failed": "bad", "unknown": "bad"}.get(notice.status, "warn")
        detail = _joined(notice.detail and notice.detail[:300],
                         notice.sequence_id and f"sequence {notice.sequence_id}")  # fmt: skip
        found.append(Happening(as_utc(notice.created_at), "reply_notice", title, detail, tone))
    return found


def _outcomes(session, lead_id, cutoff, limit) -> list[Happening]:
    query = select(OutcomeEvent).where(OutcomeEvent.lead_id == lead_id)
    found = []
    for event in session.scalars(_newest(query, OutcomeEvent.occurred_at, cutoff, limit)):
        payload = event.payload or {}
        detail = _joined(f"CRM {event.opportunity_crm_id}", payload.get("stage"),
                         payload.get("amount") and f"{payload.get('amount')} "
                         f"{payload.get('currency') or ''}".strip())  # fmt: skip
        tone = {"won": "ok", "lost": "bad"}.get(event.kind, "")
        found.append(Happening(as_utc(event.occurred_at), "outcome",
                               f"opportunity {event.kind}", detail, tone))  # fmt: skip
    return found


def _readable(detail: str | None) -> str:
    """A handoff event's detail: its text, or what a person wants of its JSON."""
    if not detail:
        return ""
    try:
        data = json.loads(detail)
    except ValueError:
        return detail[:300]
    if not isinstance(data, dict):
        return detail[:300]
    return _joined(data.get("message"), data.get("note"),
                   data.get("previous_rep_id") and f"from {data['previous_rep_id']}")  # fmt: skip


def _joined(*parts: Any) -> str:
    return "; ".join(str(part) for part in parts if part)
