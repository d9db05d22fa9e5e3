"""Reading a lead's responses for the engine and storing what a score card changed.

Shared by the scoring activity (one lead at a time) and `nurture rescore` (in bulk),
so both store the same rows: the lead's figures, a score change with its card, and
a stage change for every stage entered or left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from models.db import Lead, Response, ScoreChange, StageChange, as_utc
from models.scoring_model import ScoringModel
from scoring.engine import ResponseFact, ScoreCard, StageDecision


def lead_responses(session: Session, lead_id: str, *also_event_ids: str) -> list[ResponseFact]:
    """The responses the lead's workflow has been given (plus those being handled now,
    which may not be marked delivered yet)."""
    query = select(Response.type, Response.occurred_at, Response.data).where(
        Response.lead_id == lead_id,
        or_(Response.delivered_at.is_not(None), Response.event_id.in_(also_event_ids))
        if also_event_ids
        else Response.delivered_at.is_not(None),
    )
    return [ResponseFact(kind, as_utc(at), data or {}) for kind, at, data in session.execute(query)]


def stage_change_rows(
    lead_id: str, decision: StageDecision, event_id: str, total: float
) -> list[dict[str, Any]]:
    """One row per stage entered (lowest first), or one for a recycle."""
    if decision.recycled:
        return [
            dict(
                lead_id=lead_id,
                change_key=f"{event_id}:{decision.new}",
                from_stage=decision.old,
                to_stage=decision.new,
                reason=decision.reason,
            )
        ]
    rows, previous = [], decision.old
    for stage in decision.entered:
        reason = (
            decision.reason
            if stage == decision.new
            else (f"passed on the way to {decision.new}: {decision.reason}")
        )
        rows.append(
            dict(
                lead_id=lead_id,
                change_key=f"{event_id}:{stage}",
                from_stage=previous,
                to_stage=stage,
                reason=reason,
            )
        )
        previous = stage
    return rows  # fmt: skip


def record_card(
    session: Session,
    lead: Lead,
    model: ScoringModel,
    card: ScoreCard,
    decision: StageDecision,
    event_id: str,
    cause: str,
    result: dict[str, Any] | None = None,
    always: bool = True,
    responses: Sequence[str] = (),
) -> bool:
    """Store the card on the lead and as a score change (with any stage changes), and
    mark the `responses` (event IDs) it counted for the first time as scored by it.

    With `always=False` nothing is stored unless the score (to 0.1) or the stage moved:
    decay rescoring would otherwise write a row a day for nothing. Returns whether a
    score change was stored.
    """
    old_score = lead.score or 0.0
    moved = round(round(card.total, 2), 1) != round(old_score, 1) or decision.changed  # as stored
    if not always and not moved:
        return False
    change = ScoreChange(
        lead_id=lead.id,
        event_id=event_id,
        cause=cause,
        old_score=round(old_score, 2),
        new_score=round(card.total, 2),
        reason=describe(card, decision, cause),
        model=model.fingerprint,
        predictive_model=card.predictive_model,  # history and replays stay explainable
        breakdown=card.to_dict(),
        result=result,
        scored_at=card.at,
    )
    session.add(change)
    for row in stage_change_rows(lead.id, decision, event_id, card.total):
        session.add(StageChange(**row))
    apply_to_lead(lead, model, card, decision.new)
    if responses:  # last: its flush writes everything above at once (SQLite's lock held briefly)
        mark_scored(session, lead.id, change, responses)
    return True


def mark_scored(session: Session, lead_id: str, change: ScoreChange, event_ids: Sequence[str]):
    """Point each response at the score change that counted it: a burst of responses is
    scored once, and this is how each one shows it was (and by which change)."""
    session.flush()  # the change's ID
    session.execute(
        update(Response)
        .where(Response.lead_id == lead_id, Response.event_id.in_(event_ids))
        .where(Response.scored_in.is_(None))
        .values(scored_in=change.id)
    )


def apply_to_lead(lead: Lead, model: ScoringModel, card: ScoreCard, stage: str) -> None:
    lead.score = round(card.total, 2)
    lead.fit_score = round(card.fit, 2)
    lead.engagement_score = round(card.engagement, 2)
    lead.grade = card.grade
    lead.scoring_model = model.name
    lead.scored_at = card.at
    lead.stage = stage


def describe(card: ScoreCard, decision: StageDecision, cause: str) -> str:
    """One line for people: what caused it, the figures, and the top reasons."""
    text = (f"{cause}: total {card.total:.1f} (fit {card.fit:.0f} grade {card.grade}, "
            f"engagement {card.engagement:.0f})")  # fmt: skip
    reasons = card.reasons(3)
    if reasons:
        text += f"; top: {', '.join(reasons)}"
    if card.predicted is not None:
        text += f"; predicted {card.predicted:.0%}"
    if decision.changed:
        text += f"; {decision.old} -> {decision.new}: {decision.reason}"
    return text
