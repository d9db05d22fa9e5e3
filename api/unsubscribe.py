"""Unsubscribe links: `GET /unsubscribe/{token}` asks, `POST` does (RFC 8058 one-click).

A GET never unsubscribes: mail scanners fetch links. The POST is what the confirm
button sends, and what mail clients send for `List-Unsubscribe-Post:
List-Unsubscribe=One-Click`. The token is signed and names the lead and channel.
"""

from html import escape

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from api.database import HandlerDatabase
from api.errors import error_responses
from channels.links import BadToken, Links
from models.db import Lead
from services.intake import EventIn, Intake

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title></head>
<body style="font-family:Helvetica,Arial,sans-serif;max-width:32em;margin:3em auto;padding:0 1em">
<h1 style="font-size:1.4em">{title}</h1>{body}</body></html>"""
OPT_OUT_TYPES = {"email": "email.unsubscribe", "sms": "sms.stop"}
# 404 (a page): a token we did not sign, or for a lead or channel we do not have.
PAGE_RESPONSES = error_responses(413, 422, 429, 503, html=(404,))


def unsubscribe_router(
    intake: Intake, links: Links, company: str, db: HandlerDatabase
) -> APIRouter:
    router = APIRouter(tags=["unsubscribe"])

    def page(title: str, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(PAGE.format(title=escape(title), body=body), status_code=status)

    async def lead_for(token: str) -> tuple[Lead, str] | HTMLResponse:
        try:
            lead_id, channel = links.read_unsubscribe(token)
        except BadToken:
            return page("This link is not valid", "<p>Please use the link in the "
                        "message you received.</p>", 404)  # fmt: skip
        lead = await db.run(_lead, intake, lead_id)
        if lead is None or channel not in OPT_OUT_TYPES:
            return page("This link is not valid", "<p>We do not know this address.</p>", 404)
        return lead, channel

    @router.get("/unsubscribe/{token}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
    async def confirm(token: str) -> HTMLResponse:
        """A page asking to confirm (a GET never unsubscribes: mail scanners follow links)."""
        found = await lead_for(token)
        if isinstance(found, HTMLResponse):
            return found
        lead, channel = found
        what = "emails" if channel == "email" else "text messages"
        return page(
            f"Unsubscribe from {company} {what}?",
            f"<p>{escape(masked(lead, channel))} will get no more {what} from "
            f"{escape(company)}.</p><form method='post'><button type='submit' "
            "style='font-size:1em;padding:.6em 1.2em'>Unsubscribe</button></form>",
        )

    @router.post("/unsubscribe/{token}", response_class=HTMLResponse, responses=PAGE_RESPONSES)
    async def unsubscribe(token: str) -> HTMLResponse:
        """Unsubscribe: the confirm button, and RFC 8058 one-click (List-Unsubscribe-Post)."""
        found = await lead_for(token)
        if isinstance(found, HTMLResponse):
            return found
        lead, channel = found
        if getattr(lead, f"{channel}_consent"):  # a second click changes nothing
            opt_out = EventIn(type=OPT_OUT_TYPES[channel], lead_id=lead.id,
                              data={"via": "unsubscribe link"})  # fmt: skip
            result = await db.run(intake.store_events, [opt_out], source="unsubscribe")
            await intake.deliver_now(result.stored)  # committed: else the relay does
        return page("You are unsubscribed", f"<p>{escape(masked(lead, channel))} will get "
                    f"no more of these messages from {escape(company)}.</p>")  # fmt: skip

    return router


def _lead(intake: Intake, lead_id: str) -> Lead | None:
    with intake.sessions() as session:
        return session.get(Lead, lead_id)


def masked(lead: Lead, channel: str) -> str:
    if channel == "sms":
        return f"{(lead.phone or '')[:4]}***{(lead.phone or '')[-2:]}"
    local, _, domain = lead.email.partition("@")
    return f"{local[:2]}***@{domain}"
