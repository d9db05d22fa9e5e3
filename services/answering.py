"""Sales' answer to a handoff, from wherever it comes (the signed links' page, `POST
/handoffs/{id}/answer`, `nurture handoff answer`, the console's inbox): checked against the
database for a clear message, then given to the lead's workflow as a validated update,
which is what decides (a second answer is refused there too, even if two race).

A manager's reassignment of a handoff to another rep takes the same way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.orm import sessionmaker
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from models.db import Handoff, Lead, as_utc
from models.definitions import SalesTeam
from models.workflow_io import AnswerResult, HandoffAnswer, ReassignRequest, ReassignResult
from services import lead_client

T = TypeVar("T")
# How the handoff is looked up: in a thread (an API handler passes its own `db.run`).
Run = Callable[..., Awaitable[Any]]


class AnswerRefused(Exception):
    """The answer cannot be taken; `status` is the HTTP status that says why."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HandoffView:
    id: str
    lead_id: str
    lead_email: str
    lead_name: str
    company: str | None
    rep_id: str
    status: str
    score: float
    grade: str | None
    reason: str
    created_at: datetime
    due_at: datetime | None
    answered_at: datetime | None
    answered_by: str | None
    answer_reason: str | None


def find_handoff(sessions: sessionmaker, handoff_id: str) -> HandoffView:
    with sessions() as session:
        handoff = session.get(Handoff, handoff_id)
        if handoff is None:
            raise AnswerRefused(f"no handoff {handoff_id}", 404)
        lead = session.get(Lead, handoff.lead_id)
        name = " ".join(part for part in (lead.first_name, lead.last_name) if part)
        return HandoffView(
            id=handoff.id, lead_id=lead.id, lead_email=lead.email,
            lead_name=name or lead.email, company=lead.company, rep_id=handoff.rep_id,
            status=handoff.status, score=handoff.score, grade=handoff.grade,
            reason=handoff.reason, created_at=as_utc(handoff.created_at),
            due_at=as_utc(handoff.due_at) if handoff.due_at else None,
            answered_at=as_utc(handoff.answered_at) if handoff.answered_at else None,
            answered_by=handoff.answered_by, answer_reason=handoff.answer_reason,
        )  # fmt: skip


def check_answerable(view: HandoffView, rep_id: str | None = None) -> None:
    """Refuse early, with a message a rep understands: already answered, or passed on."""
    if view.status != "pending":
        when = f" at {view.answered_at:%Y-%m-%d %H:%M} UTC" if view.answered_at else ""
        by = f" by {view.answered_by}" if view.answered_by else ""
        raise AnswerRefused(f"handoff {view.id} was already {view.status}{by}{when}", 409)
    if rep_id is not None and rep_id != view.rep_id:
        raise AnswerRefused(
            f"handoff {view.id} was reassigned to {view.rep_id}: this link is no longer yours",
            409,
        )


async def submit_answer(
    client: Client,
    sessions: sessionmaker,
    answer: HandoffAnswer,
    rep_id: str | None = None,
    *,
    run: Run = asyncio.to_thread,
) -> AnswerResult:
    """Answer a handoff through its lead's workflow. `rep_id`: the rep a signed link
    was made for (the answer must come from the handoff's current rep)."""
    # In a thread: an API request handler calls this, and must not hold the event loop.
    view = await run(find_handoff, sessions, answer.handoff_id)
    check_answerable(view, rep_id)
    return await _through_workflow(lead_client.answer(client, view.lead_id, answer), view)


def check_reassignable(view: HandoffView, team: SalesTeam, rep_id: str) -> None:
    """Refuse early: answered already, with that rep already, or not a rep who takes leads."""
    check_answerable(view)
    rep = next((member for member in team.reps if member.id == rep_id), None)
    if rep is None or not rep.active:
        raise AnswerRefused(f"{rep_id} is not an active rep of sales.yaml", 409)
    if rep_id == view.rep_id:
        raise AnswerRefused(f"handoff {view.id} is already with {rep_id}", 409)


async def submit_reassign(
    client: Client,
    sessions: sessionmaker,
    team: SalesTeam,
    request: ReassignRequest,
    *,
    run: Run = asyncio.to_thread,
) -> ReassignResult:
    """Move a pending handoff to another rep through its lead's workflow, which restarts
    the SLA for them and tells both reps."""
    view = await run(find_handoff, sessions, request.handoff_id)
    check_reassignable(view, team, request.rep_id)
    return await _through_workflow(lead_client.reassign(client, view.lead_id, request), view)


async def _through_workflow(update: Awaitable[T], view: HandoffView) -> T:
    """The update's result, or AnswerRefused saying why not (409), or that Temporal could
    not be asked (503: nothing was changed)."""
    try:
        return await update
    except WorkflowUpdateFailedError as exc:  # the validator or the activity said no
        cause = exc.cause
        message = getattr(cause, "message", None) or str(cause or exc)
        raise AnswerRefused(message, 409) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise AnswerRefused(
                f"the workflow of lead {view.lead_id} is not running", 409
            ) from None
        raise AnswerRefused(
            f"Temporal is not reachable now ({exc.message}); try again", 503
        ) from None
