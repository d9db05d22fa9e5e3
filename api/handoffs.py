"""Answers to handoffs: the page behind a notification's signed links, and the API.

- `GET /handoffs/{id}?token=...[&answer=accept]`: the rep's answer page (a GET never
  answers: mail scanners and chat unfurlers open links).
- `POST /handoffs/{id}/answer`: the page's form (with its signed token), or JSON with
  the API bearer token. 200 with the result; 409 with the reason when it is refused
  (already answered, reassigned, a rejection without a reason); 404 unknown handoff;
  503 Temporal or the database unreachable (nothing was changed: send it again).
  The form is answered with pages, the JSON with JSON.
"""

import asyncio
from html import escape
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field, ValidationError
from temporalio.client import WorkflowUpdateRPCTimeoutOrCancelledError

from api.database import HandlerDatabase
from api.errors import HTML, error_responses
from api.tokens import BearerTokens
from channels.links import BadToken, Links
from models.workflow_io import REJECT_REASONS, AnswerResult, HandoffAnswer
from services.answering import AnswerRefused, HandoffView, find_handoff, submit_answer
from services.audit import record_now
from services.intake import Intake

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family:Helvetica,Arial,sans-serif;max-width:36em;margin:3em auto;padding:0 1em">
<h1 style="font-size:1.4em">{title}</h1>{body}</body></html>"""
RETRY_AFTER = {"Retry-After": "10"}
# Seconds an answer waits for the lead's workflow to take it: with no worker running, the
# update would wait for one indefinitely, and the rep (or the API client) with it.
ANSWER_TIMEOUT = 10.0


class AnswerIn(BaseModel):
    answer: Literal["accept", "reject", "disqualify"]
    reason: str | None = Field(default=None, description=f"one of {', '.join(REJECT_REASONS)}")
    note: str | None = Field(default=None, max_length=2000)
    by: str | None = Field(default=None, max_length=200, description="who answers")


class AnswerForm(BaseModel):
    """What the answer page's form posts (the rep is the one its signed token names)."""

    token: str = Field(description="the signed token of the answer link")
    answer: Literal["accept", "reject", "disqualify"]
    reason: str | None = Field(default=None, description="empty, or one of the reasons")
    note: str | None = Field(default=None, max_length=2000)


# The answer route reads its body itself (a form or JSON): its OpenAPI entry says which.
ANSWER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": AnswerIn.model_json_schema()},
            "application/x-www-form-urlencoded": {"schema": AnswerForm.model_json_schema()},
        },
    },
    "security": [{}],  # appended to HTTPBearer's: the form needs no bearer, its token
}
ANSWER_RESPONSES = {
    200: {"model": AnswerResult, "content": HTML,
          "description": "the result (JSON), or a page saying it (a form)"},
    **error_responses(401, 413, 422, 429, 503),
    # JSON for the API, a page for the form:
    **{status: {**error_responses(status)[status],
                "content": {**error_responses(status)[status]["content"], **HTML}}
       for status in (403, 404, 409)},
}  # fmt: skip


# Checked before any lookup: PostgreSQL refuses a NUL in text outright (a 500, not a 404).
HandoffId = Annotated[
    str,
    Path(
        max_length=64, pattern=r"^[^\x00]+$", description="The handoff's id, from its answer link."
    ),
]


def handoff_router(
    intake: Intake, links: Links, tokens: BearerTokens, db: HandlerDatabase
) -> APIRouter:
    router = APIRouter(tags=["handoffs"])
    bearer = HTTPBearer(auto_error=False)

    @router.get("/handoffs/{handoff_id}", response_class=HTMLResponse,
                responses=error_responses(413, 422, 429, 503, html=(403, 404)))  # fmt: skip
    async def answer_page(
        handoff_id: HandoffId, token: str, answer: str | None = None
    ) -> HTMLResponse:
        """The rep's answer page: the lead, and a form (a GET never answers)."""
        try:
            rep_id = _rep_of(links, handoff_id, token)
            view = await db.run(find_handoff, intake.sessions, handoff_id)
        except AnswerRefused as exc:
            return page("This link is not valid", f"<p>{escape(str(exc))}</p>", exc.status)
        summary = _summary(view)
        if view.status != "pending" or view.rep_id != rep_id:
            state = (f"already {view.status}" if view.status != "pending"
                     else "reassigned to another rep")  # fmt: skip
            return page(f"{view.lead_name}: {state}", summary)
        return page(f"{view.lead_name}: your answer", summary + _form(view.id, token, answer))

    @router.post("/handoffs/{handoff_id}/answer", response_model=None,
                 responses=ANSWER_RESPONSES, openapi_extra=ANSWER_DOC)  # fmt: skip
    async def answer_handoff(
        handoff_id: HandoffId,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> dict | HTMLResponse:
        """Accept, reject (with a reason) or disqualify a handoff: the page's form (its
        signed token), or JSON with the API bearer token."""
        if "application/x-www-form-urlencoded" in request.headers.get("content-type", ""):
            return await _answer_form(intake, links, handoff_id, request)
        holder = await tokens.check(credentials, "handoffs:answer")
        body = _answer_in(await request.body())
        answer = HandoffAnswer(handoff_id=handoff_id, answer=body.answer, reason=body.reason,
                               note=body.note, by=body.by or holder.email)  # fmt: skip
        try:
            result = await _answered(intake, answer, actor=holder.email)
        except AnswerRefused as exc:
            headers = RETRY_AFTER if exc.status == 503 else None
            raise HTTPException(exc.status, str(exc), headers=headers) from None
        return AnswerResult.model_validate(result).model_dump(mode="json")

    return router


def _rep_of(links: Links, handoff_id: str, token: str) -> str:
    """The rep an answer link's signed token names, if it is this handoff's link."""
    try:
        token_handoff, rep_id = links.read_handoff(token)
    except BadToken:
        raise AnswerRefused("this answer link is not valid", 403) from None
    if token_handoff != handoff_id:
        raise AnswerRefused("this answer link is for another handoff", 403)
    return rep_id


async def _answered(
    intake: Intake, answer: HandoffAnswer, rep_id: str | None = None, *, actor: str
) -> AnswerResult:
    """The answer, taken by the lead's workflow within ANSWER_TIMEOUT (else a 503), and
    `actor`'s entry in the audit log."""
    try:
        result = await asyncio.wait_for(
            submit_answer(intake.client, intake.sessions, answer, rep_id), ANSWER_TIMEOUT
        )
        detail = {"answer": answer.answer, "reason": answer.reason, "by": answer.by}
        await asyncio.to_thread(record_now, intake.sessions, actor, "handoff.answer",
                                answer.handoff_id, detail)  # fmt: skip
        return result
    # The SDK answers the cancelling of its update call with its own error. Temporal
    # took the update, or not: a repeat says which.
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        raise AnswerRefused(
            f"the lead's workflow did not take the answer within {ANSWER_TIMEOUT:.0f} s "
            "(no worker running?); send it again: an answer already taken is reported",
            503,
        ) from None


async def _answer_form(
    intake: Intake, links: Links, handoff_id: str, request: Request
) -> HTMLResponse:
    """The answer page's form posted: answered with a page, whatever happens."""
    fields = await request.form()
    try:
        rep_id = _rep_of(links, handoff_id, str(fields.get("token", "")))
        body = AnswerIn(answer=fields.get("answer"), reason=fields.get("reason") or None,
                        note=fields.get("note") or None, by=rep_id)  # fmt: skip
        answer = HandoffAnswer(handoff_id=handoff_id, answer=body.answer, reason=body.reason,
                               note=body.note, by=rep_id)  # fmt: skip
        result = await _answered(intake, answer, rep_id, actor=f"rep:{rep_id} (signed link)")
    except AnswerRefused as exc:
        headers = RETRY_AFTER if exc.status == 503 else None
        return page("Your answer was not taken", f"<p>{escape(str(exc))}</p>", exc.status,
                    headers)  # fmt: skip
    except ValidationError as exc:  # a malformed form
        problems = "; ".join(e["msg"] for e in exc.errors())
        return page("Your answer was not taken", f"<p>{escape(problems)}</p>", 422)
    return page("Thank you", f"<p>{escape(result.message)}</p>")


def page(title: str, body: str, status: int = 200, headers: dict | None = None) -> HTMLResponse:
    html = PAGE.format(title=escape(title), body=body)
    return HTMLResponse(html, status_code=status, headers=headers)


def _answer_in(raw: bytes) -> AnswerIn:
    """The JSON body, parsed by pydantic: whatever it is (not JSON, not UTF-8, nested
    thousands deep), a 422 naming the field, never an exception of the parser."""
    try:
        return AnswerIn.model_validate_json(raw)
    except ValidationError as exc:  # answered like any body's errors (api/app.py)
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from None


def _summary(view: HandoffView) -> str:
    company = f" ({escape(view.company)})" if view.company else ""
    due = f"<p>Answer by {view.due_at:%Y-%m-%d %H:%M} UTC.</p>" if view.due_at else ""
    return (
        f"<p><b>{escape(view.lead_name)}</b>{company}, {escape(view.lead_email)}<br>"
        f"score {view.score:.0f}, grade {escape(view.grade or '-')}</p>"
        f"<p>{escape(view.reason)}</p>{due if view.status == 'pending' else ''}"
    )


def _form(handoff_id: str, token: str, preselected: str | None) -> str:
    def option(value: str, label: str) -> str:
        checked = " checked" if value == preselected else ""
        return (f"<label style='display:block;margin:.4em 0'><input type='radio' name='answer' "
                f"value='{value}' required{checked}> {label}</label>")  # fmt: skip

    reasons = "".join(f"<option value='{r}'>{r.replace('_', ' ')}</option>" for r in REJECT_REASONS)
    return (
        # Relative to /handoffs/{id}: works behind a path prefix too.
        f"<form method='post' action='{escape(handoff_id)}/answer' style='margin-top:1.5em'>"
        f"<input type='hidden' name='token' value='{escape(token)}'>"
        + option("accept", "Accept: I take it from here")
        + option("reject", "Reject: back to nurture for now")
        + option("disqualify", "Disqualify: never a customer")
        + "<label style='display:block;margin:.8em 0'>Reason (needed to reject) "
        f"<select name='reason'><option value=''>-</option>{reasons}</select></label>"
        "<label style='display:block'>Note<br><textarea name='note' rows='3' cols='40'>"
        "</textarea></label><button type='submit' style='font-size:1em;padding:.6em 1.2em;"
        "margin-top:1em'>Send</button></form>"
    )
