"""Answers to handoffs: the page behind a notification's signed links, and the API.

- `GET /handoffs/{id}?token=...[&answer=accept]`: the rep's answer page (a GET never
  answers: mail scanners and chat unfurlers open links).
- `POST /handoffs/{id}/answer`: the page's form (with its signed token), or JSON with
  the API bearer token. 200 with the result; 409 with the reason when it is refused
  (already answered, reassigned, a rejection without a reason); 404 unknown handoff;
  503 Temporal unreachable (nothing was changed: send it again).
"""

import hmac
from html import escape
from typing import Annotated, Literal

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from channels.links import BadToken, Links
from models.workflow_io import REJECT_REASONS, AnswerResult, HandoffAnswer
from nurture.intake import Intake
from sales.answering import AnswerRefused, HandoffView, find_handoff, submit_answer

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family:Helvetica,Arial,sans-serif;max-width:36em;margin:3em auto;padding:0 1em">
<h1 style="font-size:1.4em">{title}</h1>{body}</body></html>"""


class AnswerIn(BaseModel):
    answer: Literal["accept", "reject", "disqualify"]
    reason: str | None = Field(default=None, description=f"one of {', '.join(REJECT_REASONS)}")
    note: str | None = Field(default=None, max_length=2000)
    by: str | None = Field(default=None, max_length=200, description="who answers")


def handoff_router(intake: Intake, links: Links, api_token: str) -> APIRouter:
    router = APIRouter(tags=["handoffs"])

    def page(title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(PAGE.format(title=escape(title), body=body), status_code=status)

    def rep_of(handoff_id: str, token: str) -> str:
        try:
            token_handoff, rep_id = links.read_handoff(token)
        except BadToken:
            raise AnswerRefused("this answer link is not valid", 403) from None
        if token_handoff != handoff_id:
            raise AnswerRefused("this answer link is for another handoff", 403)
        return rep_id

    @router.get("/handoffs/{handoff_id}", response_class=HTMLResponse)
    async def answer_page(handoff_id: str, token: str, answer: str | None = None) -> HTMLResponse:
        try:
            rep_id = rep_of(handoff_id, token)
            view = find_handoff(intake.sessions, handoff_id)
        except AnswerRefused as exc:
            return page("This link is not valid", f"<p>{escape(str(exc))}</p>", exc.status)
        summary = _summary(view)
        if view.status != "pending" or view.rep_id != rep_id:
            state = (f"already {view.status}" if view.status != "pending"
                     else "reassigned to another rep")  # fmt: skip
            return page(f"{view.lead_name}: {state}", summary)
        return page(f"{view.lead_name}: your answer", summary + _form(view.id, token, answer))

    @router.post("/handoffs/{handoff_id}/answer")
    async def answer_handoff(
        handoff_id: str,
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
    ):
        """Accept, reject (with a reason) or disqualify a handoff."""
        form = "application/x-www-form-urlencoded" in request.headers.get("content-type", "")
        try:
            if form:
                fields = await request.form()
                rep_id = rep_of(handoff_id, str(fields.get("token", "")))
                body = AnswerIn(answer=fields.get("answer"), reason=fields.get("reason") or None,
                                note=fields.get("note") or None, by=rep_id)  # fmt: skip
            else:
                expected = f"Bearer {api_token}".encode()
                if not authorization or not hmac.compare_digest(authorization.encode(), expected):
                    raise HTTPException(401, "missing or wrong bearer token")
                body, rep_id = AnswerIn.model_validate(await request.json()), None
            answer = HandoffAnswer(handoff_id=handoff_id, answer=body.answer, reason=body.reason,
                                   note=body.note, by=body.by or "api")  # fmt: skip
            result = await submit_answer(intake.client, intake.sessions, answer, rep_id)
        except AnswerRefused as exc:
            if form:
                return page("Your answer was not taken", f"<p>{escape(str(exc))}</p>", exc.status)
            raise HTTPException(exc.status, str(exc)) from None
        except ValueError as exc:  # a malformed body
            if form:
                return page("Your answer was not taken", f"<p>{escape(str(exc))}</p>", 422)
            raise HTTPException(422, str(exc)) from None
        if form:
            return page("Thank you", f"<p>{escape(result.message)}</p>")
        return AnswerResult.model_validate(result).model_dump(mode="json")

    return router


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
