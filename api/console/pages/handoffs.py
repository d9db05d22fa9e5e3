"""The Handoffs page: a rep's "My leads" (its open handoffs, each with why the lead is hot
and an SLA countdown, and the ones answered lately), every rep's queue with a rep filter
for the roles that see them all, the answers and a manager's reassign.

An answer takes the signed links' way (services/answering.py): the handoff is checked
against the database (a rep answers only its own; an admin any), then the lead's workflow
update decides; an audit entry follows. With htmx a POST is answered with the row as it is
now; without, a redirect back to the inbox with a message. A refusal is a page saying why
(409); Temporal unreachable is a 503 page: nothing was changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from markupsafe import Markup, escape
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

from api.console.web import Console, Forbidden, Viewer, page_responses
from api.handoffs import ANSWER_TIMEOUT
from models.definitions import SalesTeam
from models.workflow_io import REJECT_REASONS, HandoffAnswer, ReassignRequest
from services import audit
from services.answering import AnswerRefused, submit_answer, submit_reassign
from services.handoff_inbox import ANSWERED_SINCE, OPEN_LIMIT, inbox, inbox_item, open_counts

T = TypeVar("T")
INBOX = "/console/handoffs"
# Checked before any lookup: PostgreSQL refuses a NUL in text outright.
HandoffId = Annotated[str, Path(max_length=64, pattern=r"^[^\x00]+$")]
RepId = Annotated[str, Query(max_length=64, description="a rep's id: only their queue")]
PageNumber = Annotated[int, Query(ge=1, le=10_000, description="the page of the open ones")]
BACK = "done (a form without htmx): back to the inbox, with a message"
BADGES = {"accepted": "ok", "rejected": "warn", "disqualified": "bad"}
# Drawn once, not escaped anew in every row: the reasons are identifiers.
REASON_OPTIONS = Markup("".join(f'<option value="{reason}">{reason.replace("_", " ")}</option>'
                                for reason in REJECT_REASONS))  # fmt: skip
# The queue a form was posted from, to go back to: a rep's id, or empty for every rep.
Back = Annotated[str, Form(max_length=64)]


def routes(console: Console) -> APIRouter:
    router = APIRouter(tags=["console"])

    @router.get(INBOX, response_class=HTMLResponse, responses=page_responses())
    async def handoffs_page(request: Request, rep: RepId = "", page: PageNumber = 1,
                            viewer: Viewer = Depends(console.allowed("handoffs"))):  # fmt: skip
        """A rep's open handoffs (OPEN_LIMIT a page, the soonest due first) and the ones it
        answered lately; every rep's (or one rep's, `rep`) for the roles that see them
        all. 403: a rep asking for another's."""
        return await _inbox_page(console, request, viewer, _queue(viewer, rep), page=page)

    @router.post(f"{INBOX}/{{handoff_id}}/answer", response_class=HTMLResponse,
                 responses=page_responses(404, 409, 503, redirect=BACK))  # fmt: skip
    async def answer_handoff(
        request: Request,
        handoff_id: HandoffId,
        answer: Annotated[Literal["accept", "reject", "disqualify"], Form()],
        reason: Annotated[str, Form(max_length=40)] = "",
        note: Annotated[str, Form(max_length=2000)] = "",
        back: Back = "",
        viewer: Viewer = Depends(console.form_checked("answer")),
    ):
        """Accept, reject (with a reason) or disqualify a handoff, as its signed links do.
        409: refused (answered already, reassigned, a rejection without a reason)."""
        decision = HandoffAnswer(handoff_id=handoff_id, answer=answer, reason=reason or None,
                                 note=note or None, by=viewer.email[:200])  # fmt: skip
        call = submit_answer(console.intake.client, console.sessions, decision,
                             _answering_rep(viewer), run=console.db.run)  # fmt: skip
        try:
            result = await _in_time(call)
        except AnswerRefused as refused:
            return await _refused(console, request, viewer, back, refused)
        detail = {"answer": answer, "reason": decision.reason, "stage": result.stage}
        await console.db.run(audit.record_now, console.sessions, viewer.email, "handoff.answer",
                             handoff_id, detail)  # fmt: skip
        return await _done(console, request, viewer, handoff_id, back, result.message)

    @router.post(f"{INBOX}/{{handoff_id}}/reassign", response_class=HTMLResponse,
                 responses=page_responses(404, 409, 503, redirect=BACK))  # fmt: skip
    async def reassign_handoff(
        request: Request,
        handoff_id: HandoffId,
        rep_id: Annotated[str, Form(min_length=1, max_length=64)],
        back: Back = "",
        viewer: Viewer = Depends(console.form_checked("reassign")),
    ):
        """Move a pending handoff to another active rep: the SLA starts again for them,
        and both reps are told. 409: answered already, or not a rep who can take it."""
        move = ReassignRequest(handoff_id=handoff_id, rep_id=rep_id, by=viewer.email[:200])
        team = console.definitions.sales
        call = submit_reassign(console.intake.client, console.sessions, team, move,
                               run=console.db.run)  # fmt: skip
        try:
            result = await _in_time(call)
        except AnswerRefused as refused:
            return await _refused(console, request, viewer, back, refused)
        detail = {"from": result.previous_rep_id, "to": result.rep_id}
        await console.db.run(audit.record_now, console.sessions, viewer.email, "handoff.reassign",
                             handoff_id, detail)  # fmt: skip
        message = f"Reassigned from {result.previous_rep_id} to {result.rep_id}."
        return await _done(console, request, viewer, handoff_id, back, message)

    return router


def _queue(viewer: Viewer, rep: str) -> str | None:
    """Whose queue a viewer sees: its own (a rep), or `rep`'s, or every rep's (None)."""
    if viewer.may("handoffs.all"):
        return rep or None
    if not viewer.rep_id:
        raise Forbidden("Your account is not linked to a rep of sales.yaml: ask an admin.")
    if rep and rep != viewer.rep_id:
        raise Forbidden("A rep sees only its own handoffs.")
    return viewer.rep_id


def _answering_rep(viewer: Viewer) -> str | None:
    """The rep an answer must come from: a rep's own (only its handoffs); None for an
    admin (any handoff)."""
    if viewer.role != "rep":
        return None
    if not viewer.rep_id:
        raise Forbidden("Your account is not linked to a rep of sales.yaml: ask an admin.")
    return viewer.rep_id


class NotTakenInTime(AnswerRefused):
    """The workflow did not take it within ANSWER_TIMEOUT: it may still, or not."""


async def _in_time(call: Awaitable[T]) -> T:
    """The workflow's answer within ANSWER_TIMEOUT: with no worker running, an update
    would wait for one indefinitely."""
    try:
        return await asyncio.wait_for(call, ANSWER_TIMEOUT)
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise NotTakenInTime(
            f"The lead's workflow did not take it within {ANSWER_TIMEOUT:.0f} s (no worker "
            "running?). Reload the handoffs to see whether it was taken before trying again.",
            503,
        ) from None


def _context(viewer: Viewer, team: SalesTeam, rep: str) -> dict[str, Any]:
    """What the inbox and its rows are drawn with."""
    mine = viewer.role == "rep"
    return {"mine": mine, "show_rep": not mine, "rep": rep, "reps": team.reps,
            "reason_options": REASON_OPTIONS, "reassign_options": _reassign_options(team),
            "badges": BADGES, "everyone": viewer.may("handoffs.all"),
            "answered_days": ANSWERED_SINCE.days}  # fmt: skip


def _reassign_options(team: SalesTeam) -> dict[str, Markup]:
    """Per rep, the active reps a handoff of theirs can go to, as a select's options."""
    active = [rep for rep in team.reps if rep.active]
    return {owner.id: Markup("").join(
        Markup('<option value="{}">{}</option>').format(rep.id, rep.name)
        for rep in active if rep.id != owner.id) for owner in team.reps}  # fmt: skip


async def _inbox_page(console: Console, request: Request, viewer: Viewer, rep_id: str | None,
                      status: int = 200, problem: str | None = None,
                      page: int = 1) -> HTMLResponse:  # fmt: skip
    team, now, offset = console.definitions.sales, datetime.now(UTC), (page - 1) * OPEN_LIMIT
    box = await console.db.run(inbox, console.sessions, team, rep_id, now, offset=offset)
    everyone = viewer.may("handoffs.all")
    counts = await console.db.run(open_counts, console.sessions) if everyone else {}
    problem = problem or request.query_params.get("problem")
    return console.render(request, "handoffs/inbox.html", status, inbox=box, counts=counts,
                          flash=request.query_params.get("flash"), problem=problem, page=page,
                          **_context(viewer, team, rep_id or ""))  # fmt: skip


async def _refused(console: Console, request: Request, viewer: Viewer, back: str,
                   refused: AnswerRefused) -> HTMLResponse:  # fmt: skip
    """The refusal on a page: the inbox saying why (404, 409), or that nothing was done
    (503: Temporal could not be asked; send it again later)."""
    queue = _queue(viewer, back)
    status, problem = refused.status, _problem(refused)
    headers = {"Retry-After": "10"} if status == 503 else {}
    if _htmx(request):  # htmx swaps no error answer: it follows HX-Redirect to the reason
        headers["HX-Redirect"] = _inbox_url(back, problem=problem)
        return HTMLResponse(escape(problem), status, headers=headers)
    if status == 503:
        page = console.render(request, "handoffs/unavailable.html", 503, message=problem,
                              heading="Not done")  # fmt: skip
    else:
        page = await _inbox_page(console, request, viewer, queue, status, problem)
    page.headers.update(headers)
    return page


def _problem(refused: AnswerRefused) -> str:
    if refused.status != 503 or isinstance(refused, NotTakenInTime):
        return str(refused)
    return f"Nothing was changed: {refused}"


async def _done(console: Console, request: Request, viewer: Viewer, handoff_id: str,
                back: str, message: str) -> HTMLResponse | RedirectResponse:  # fmt: skip
    """htmx: the handoff's row as it is now; a plain form: back to the inbox it came from."""
    if not _htmx(request):
        return RedirectResponse(_inbox_url(back, flash=message), status_code=303)
    team = console.definitions.sales
    item = await console.db.run(inbox_item, console.sessions, team, handoff_id)
    return console.render(request, "handoffs/row.html", item=item, message=message,
                          **_context(viewer, team, back))  # fmt: skip


def _htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


def _inbox_url(rep: str, **message: str) -> str:
    query = ({"rep": rep} if rep else {}) | message
    return f"{INBOX}?{urlencode(query)}"
