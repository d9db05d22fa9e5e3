"""Double opt-in links: `GET /confirm/{token}` asks, `POST` confirms (docs/consent.md).

Public: the link is in the confirmation email. As with unsubscribe links, a GET changes
nothing: mail scanners open links, and a confirmation a scanner made would prove no
consent. The page's button posts; the consent is committed with that answer, and only
then are the request's workflow and the lead's told (a signal that does not arrive costs
nothing: the request's workflow checks the database, and the lead's email held for the
confirmation goes at its next recheck instead of at once). Confirming twice is fine.

(No `from __future__ import annotations`: FastAPI resolves the handlers' annotations.)
"""

import asyncio
import contextlib
import logging
from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from temporalio.service import RPCError

from api.database import HandlerDatabase
from api.errors import HTML, error_responses
from api.unsubscribe import PAGE, masked
from channels.consent_links import read_confirm
from channels.links import BadToken, Links
from models.consent import confirm_email
from models.db import Lead, utcnow
from services import confirmation_client, lead_client
from services.intake import Intake

log = logging.getLogger("nurture.api.confirm")
SIGNAL_TIMEOUT = 1.0  # seconds the answer waits for Temporal: the consent is committed
# 404 (a page): a token we did not sign, or of a lead we do not have; 410: the request
# expired, was withdrawn or replaced by a newer one.
PAGE_RESPONSES = error_responses(413, 422, 429, 503, html=(404,)) | {
    410: {"description": "the confirmation request expired, was withdrawn or replaced by a "
          "newer one (a page)", "content": HTML},
}  # fmt: skip
GONE = ("This link has expired", "<p>It is older than its request allows, or a newer "
        "confirmation email replaced it. Sign up again to get a new one.</p>")  # fmt: skip


def confirm_router(intake: Intake, links: Links, company: str, db: HandlerDatabase) -> APIRouter:
    router = APIRouter(tags=["consent"])

    def page(title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(PAGE.format(title=escape(title), body=body), status_code=status)

    @router.get("/confirm/{token}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
    async def ask(token: str) -> HTMLResponse:
        """The confirmation page: a button that confirms (a GET never does). 410: expired."""
        found = await db.run(_request_of, intake, links, token)
        if found is None:
            return page("This link is not valid", "<p>Please use the link in the email you "
                        "received.</p>", 404)  # fmt: skip
        lead, request = found
        if lead.email_confirmation == "confirmed":
            return page("You are confirmed", f"<p>{escape(masked(lead, 'email'))} gets "
                        f"emails from {escape(company)}.</p>")  # fmt: skip
        if lead.email_confirmation != "pending" or lead.email_confirmation_id != request:
            return page(*GONE, 410)
        return page(
            f"Confirm emails from {company}",
            f"<p>Confirm that {escape(masked(lead, 'email'))} wants emails from "
            f"{escape(company)}.</p><form method='post'><button type='submit' "
            "style='font-size:1em;padding:.6em 1.2em'>Confirm</button></form>",
        )

    @router.post("/confirm/{token}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
    async def confirm(token: str) -> HTMLResponse:
        """Confirm the email consent the token's request asked for (again: no change).
        410: the request expired, was withdrawn or replaced."""
        outcome = await db.run(_confirm, intake, links, token)
        if outcome is None:
            return page("This link is not valid", "<p>Please use the link in the email you "
                        "received.</p>", 404)  # fmt: skip
        result, request, lead_id = outcome
        if result == "ended":
            return page(*GONE, 410)
        if result == "confirmed":
            await _tell_workflows(intake, request, lead_id)
        return page("Thank you: you are confirmed", f"<p>You will get emails from "
                    f"{escape(company)}. Each has a link to unsubscribe.</p>")  # fmt: skip

    return router


def _request_of(intake: Intake, links: Links, token: str) -> tuple[Lead, str] | None:
    try:
        lead_id, request = read_confirm(links, token)
    except BadToken:
        return None
    with intake.sessions() as session:
        lead = session.get(Lead, lead_id)
    return None if lead is None else (lead, request)


def _confirm(intake: Intake, links: Links, token: str) -> tuple[str, str, str] | None:
    """(confirmed | already | ended, the request's ID, the lead's), committed; None for a
    bad token."""
    try:
        lead_id, request = read_confirm(links, token)
    except BadToken:
        return None
    with intake.sessions.begin() as session:
        lead = session.get(Lead, lead_id)
        if lead is None:
            return None
        return confirm_email(session, lead, request, utcnow()), request, lead.id


async def _tell_workflows(intake: Intake, request: str, lead_id: str) -> None:
    """Best effort, bounded: the request's workflow stops reminding, and the lead's sends an
    email held for the confirmation now. Each finds the consent confirmed anyway (the
    lead's at its next recheck)."""
    client = intake.client
    with contextlib.suppress(TimeoutError, RPCError):
        await asyncio.wait_for(asyncio.gather(
            confirmation_client.confirmed(client, request),
            lead_client.consent_confirmed(client, lead_id),
            return_exceptions=True,
        ), timeout=SIGNAL_TIMEOUT)  # fmt: skip
