"""Web tracking (docs/tracking.md): the snippet's page views, and visitors joined to leads.

A view of a visitor no lead has yet waits in `visitor_views`. A form post carrying the
visitor's ID (services/forms.py), or a view from a tracked email link (`nt`, signed:
channels/links.py), joins the visitor to the lead (`visitors`) and turns each waiting view
into a `page.view` response of the lead through the inbox (`Intake.store_events`, event ID
`view:<view id>`, so a view is stored once however often it is joined), then deletes it.
A joined visitor's later views go straight to the inbox. The caller delivers the returned
responses (`Intake.deliver_now`), so they are scored at once; the relay has the rest.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from crawlerdetect import CrawlerDetect
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from channels.links import TRACKING_PARAMETER, Links
from models.db import Lead, Response, Visitor, VisitorView, new_id, utcnow
from services.intake import UTM_FIELDS, EventIn, Intake, storable

log = logging.getLogger("nurture.tracking")

# The form field the snippet adds to forms posting to /forms/ (services/forms.py reads it).
VISITOR_FIELD = "nurture_visitor"
VISITOR_ID = r"^[A-Za-z0-9_-]{16,64}$"  # the snippet makes 32 hex digits
MAX_URL = 2000
# An address as a browser's location.href is: http(s), a host (punycode, or an IPv6
# address in brackets; no user name or password), a port, then printable ASCII (the rest
# is percent-encoded).
URL = (r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)(:[0-9]{1,5})?"
       r"([/?#][!-~]*)?$")  # fmt: skip
MAX_TITLE = 500
MAX_UTM = 200  # as EventIn's UTM fields
PROMOTE_BATCH = 500  # waiting views turned into responses per transaction
# A real browser's User-Agent is a few hundred characters; the bot patterns are not run
# over more than this.
MAX_USER_AGENT = 1000
_CRAWLERS = CrawlerDetect()


class ViewIn(BaseModel):
    """A page view as the snippet sends it to POST /collect."""

    model_config = ConfigDict(extra="forbid")

    visitor: str = Field(pattern=VISITOR_ID, description="the visitor's ID, from its cookie")
    url: str = Field(
        max_length=MAX_URL, pattern=URL,
        description="the page's address; its utm_* parameters are the view's campaign",
    )  # fmt: skip
    title: str | None = Field(default=None, max_length=MAX_TITLE)
    referrer: str | None = Field(default=None, max_length=MAX_URL)
    nt: str | None = Field(
        default=None, max_length=100,
        description="the `nt` parameter of a tracked email link the page was opened from: "
        "a lead's signed ID, which joins the visitor to it (one that does not verify is "
        "ignored)",
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        if isinstance(data, dict):
            storable(data)
        return data

    @field_validator("title", "referrer", "nt")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value else None


def tracking_refused(headers: Mapping[str, str]) -> bool:
    """The browser asks not to be tracked: `DNT: 1` or `Sec-GPC: 1` (Global Privacy Control)."""
    return headers.get("dnt", "").strip() == "1" or headers.get("sec-gpc", "").strip() == "1"


def is_bot(user_agent: str | None) -> bool:
    """A crawler, spider or headless browser by its User-Agent (CrawlerDetect's patterns),
    or no browser at all: no User-Agent, or one longer than any browser sends."""
    agent = (user_agent or "").strip()
    if not agent or len(agent) > MAX_USER_AGENT:
        return True
    return _CRAWLERS.is_crawler(agent)


def page(url: str) -> tuple[str, dict[str, str]]:
    """The page's address as stored (without a tracked link's `nt`), and its UTM fields.
    One Python cannot split (a bad IPv6 address) has no parameters to read: kept as sent."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, {}
    query = parse_qsl(parts.query, keep_blank_values=True)
    utm = {}
    for name, value in query:
        if name in UTM_FIELDS and value.strip() and name not in utm:
            utm[name] = value.strip()[:MAX_UTM]
    if any(name == TRACKING_PARAMETER for name, _ in query):
        kept = [(name, value) for name, value in query if name != TRACKING_PARAMETER]
        url = urlunsplit(parts._replace(query=urlencode(kept)))
    return url, utm


def record_view(intake: Intake, links: Links, view: ViewIn) -> list[Response]:
    """Store a view (database work: run it in a thread): as a `page.view` of the visitor's
    lead, joining the visitor first when the view carries a valid `nt`; else kept waiting.
    Returns the responses to deliver (the visitor's waiting views with it, at a join)."""
    lead_id = _lead_of_token(intake, links, view.nt)
    if lead_id is not None:
        _join_visitor(intake, view.visitor, lead_id, "link")
    else:
        lead_id = _lead_of_visitor(intake, view.visitor)
    url, utm = page(view.url)
    if lead_id is None:
        with intake.sessions.begin() as session:
            session.add(VisitorView(visitor_id=view.visitor, url=url, title=view.title,
                                    referrer=view.referrer, utm=utm or None))  # fmt: skip
        return []
    # The waiting ones first (also any a join raced with), then this one.
    waiting = _promote(intake, view.visitor, lead_id)
    event = _event(f"view:{new_id()}", lead_id, url, view.title, view.referrer, utm, utcnow())
    return waiting + intake.store_events([event], source="web").stored


def join(intake: Intake, visitor_id: str, lead_id: str, joined_by: str) -> list[Response]:
    """Join the visitor to the lead and make its waiting views the lead's `page.view`
    responses (database work). Idempotent: a view is stored once, however often joined."""
    _join_visitor(intake, visitor_id, lead_id, joined_by)
    return _promote(intake, visitor_id, lead_id)


def read_visitor(value: Any) -> str | None:
    """A form's visitor field, if it holds a visitor ID (else it is ignored)."""
    if isinstance(value, str) and re.fullmatch(VISITOR_ID, value.strip()):
        return value.strip()
    return None


def expire_views(intake: Intake, retention: timedelta) -> int:
    """Delete the views that waited for a join longer than `retention`."""
    with intake.sessions.begin() as session:
        expired = session.execute(
            delete(VisitorView).where(VisitorView.occurred_at < utcnow() - retention)
        ).rowcount
    if expired:
        log.info("expired %d page view(s) never joined to a lead, after %s", expired, retention)
    return expired


def _lead_of_token(intake: Intake, links: Links, token: str | None) -> str | None:
    lead_id = links.read_tracking_token(token) if token else None
    if token and lead_id is None:
        log.info("a view's nt parameter does not verify: kept as an anonymous view")
    if lead_id is None:
        return None
    with intake.sessions() as session:
        return lead_id if session.get(Lead, lead_id) is not None else None


def _lead_of_visitor(intake: Intake, visitor_id: str) -> str | None:
    with intake.sessions() as session:
        return session.scalar(select(Visitor.lead_id).where(Visitor.id == visitor_id))


def _join_visitor(intake: Intake, visitor_id: str, lead_id: str, joined_by: str) -> None:
    """visitor -> lead; a later join moves the visitor to the newer lead."""
    for attempt in range(2):
        try:
            with intake.sessions.begin() as session:
                visitor = session.get(Visitor, visitor_id)
                if visitor is None:
                    session.add(Visitor(id=visitor_id, lead_id=lead_id, joined_by=joined_by))
                elif visitor.lead_id != lead_id:
                    visitor.lead_id, visitor.joined_by = lead_id, joined_by
            return
        except IntegrityError:  # the same visitor joined at once by another request
            if attempt:
                raise


def _promote(intake: Intake, visitor_id: str, lead_id: str) -> list[Response]:
    """The visitor's waiting views as the lead's responses, oldest first, then deleted.
    Stored before deleted: a crash between the two leaves views whose next promotion finds
    their event IDs stored (counted as duplicates, never stored twice)."""
    stored: list[Response] = []
    while True:
        with intake.sessions() as session:
            views = list(session.scalars(
                select(VisitorView).where(VisitorView.visitor_id == visitor_id)
                .order_by(VisitorView.occurred_at, VisitorView.id).limit(PROMOTE_BATCH)
            ))  # fmt: skip
        if not views:
            return stored
        events = [_event(f"view:{v.id}", lead_id, v.url, v.title, v.referrer, v.utm or {},
                         v.occurred_at) for v in views]  # fmt: skip
        stored += intake.store_events(events, source="web").stored
        with intake.sessions.begin() as session:
            session.execute(delete(VisitorView).where(VisitorView.id.in_([v.id for v in views])))


def _event(
    event_id: str, lead_id: str, url: str, title: str | None, referrer: str | None,
    utm: dict[str, str], occurred_at,
) -> EventIn:  # fmt: skip
    data = {"url": url, "title": title, "referrer": referrer}
    return EventIn(
        type="page.view", lead_id=lead_id, event_id=event_id, occurred_at=occurred_at,
        data={key: value for key, value in data.items() if value is not None}, **utm,
    )  # fmt: skip
